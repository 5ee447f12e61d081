//! When a worker goes on chain: the settlement policy and the receipt batcher, sans-IO.
//!
//! A channel contract pays the worker once, when it closes (`ton/contract/README.md`), so
//! "settling" a channel is closing it with the best voucher (then finalizing after the
//! challenge window). Every on-chain operation costs fees (about 0.005 TON each, see the gas
//! table), so the policy settles rarely: when the unsettled amount passes a threshold, when a
//! channel has been idle long enough, on shutdown, and always before the contract's
//! `worker_timeout` would let the client take the deposit back. Small balances are not worth
//! their fees and wait (except before that deadline). Receipts of finished jobs are anchored
//! as one Merkle root per batch. With the defaults a channel carries thousands of jobs
//! between its open and its close, and a receipt batch is anchored once a day or per
//! 100,000 jobs: far under one on-chain operation per thousand jobs at steady state
//! (`bench/payments.sh` measures operations and fees).
//!
//! No clock, no I/O: the node's settlement task (and the simulator) pass `now` in.

use serde::{Deserialize, Serialize};

/// How long a sent close is given to land on chain before the same close may be sent
/// again (a worker restarted meanwhile must not pay for a second one), seconds.
pub const CLOSE_PENDING_SECS: u64 = 600;

/// Whether a close with the voucher of `seq` may be sent at `now`, given the last close
/// sent `(its seq, when)`: not while the same or a newer one may still be on its way.
pub fn may_send_close(last: Option<(u64, u64)>, seq: u64, now: u64) -> bool {
    match last {
        Some((sent, at)) => sent < seq || now >= at.saturating_add(CLOSE_PENDING_SECS),
        None => true,
    }
}

/// When to settle.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SettlePolicy {
    /// Settle once this much is unsettled, nanoTON. Default: 0.5 TON.
    pub threshold: u64,
    /// Settle a channel idle this long (and holding at least `min_amount`), seconds.
    /// Default: 6 h.
    pub idle_secs: u64,
    /// Never settle less than this (fees would eat it), except before the deadline,
    /// nanoTON. Default: 0.05 TON.
    pub min_amount: u64,
    /// Settle at the latest this long before `opened_at + worker_timeout −
    /// challenge_period`, seconds. Default: 1 day.
    pub deadline_margin_secs: u64,
    /// Anchor receipts once this many are waiting. Default: 100,000 (a root covers any
    /// number of receipts, and a post costs about 0.004 TON: at the floor price a batch of
    /// 2,000 would cost half of what its jobs earn; see `bench/payments.md`).
    pub anchor_batch: usize,
    /// Anchor a smaller batch once its oldest receipt waited this long, seconds.
    /// Default: 1 day.
    pub anchor_max_wait_secs: u64,
}

impl Default for SettlePolicy {
    fn default() -> Self {
        Self {
            threshold: 500_000_000,
            idle_secs: 6 * 3600,
            min_amount: 50_000_000,
            deadline_margin_secs: 86_400,
            anchor_batch: 100_000,
            anchor_max_wait_secs: 86_400,
        }
    }
}

/// Why a channel is settled now.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reason {
    /// The unsettled amount passed the threshold.
    Threshold,
    /// The channel has been idle.
    Idle,
    /// The node is stopping.
    Shutdown,
    /// The contract's worker timeout is near: settle now or lose the voucher.
    Deadline,
    /// The operator asked (`cocoon ledger settle`).
    Manual,
}

/// One channel as the policy sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChannelFacts {
    /// The best voucher's amount not yet settled on chain, nanoTON.
    pub unsettled: u64,
    /// When the channel last carried a job (unix seconds).
    pub last_activity: u64,
    /// `opened_at + worker_timeout − challenge_period` (unix seconds), when known.
    pub deadline: Option<u64>,
}

impl SettlePolicy {
    /// Whether to settle a channel now, and why.
    pub fn due(&self, c: &ChannelFacts, now: u64, shutdown: bool) -> Option<Reason> {
        if c.unsettled == 0 {
            return None;
        }
        if let Some(deadline) = c.deadline {
            if now.saturating_add(self.deadline_margin_secs) >= deadline {
                return Some(Reason::Deadline);
            }
        }
        if c.unsettled >= self.threshold {
            return Some(Reason::Threshold);
        }
        if c.unsettled < self.min_amount {
            return None;
        }
        if shutdown {
            return Some(Reason::Shutdown);
        }
        (now.saturating_sub(c.last_activity) >= self.idle_secs).then_some(Reason::Idle)
    }

    /// Whether a batch of `waiting` receipts, the oldest `oldest_age` seconds old, is due
    /// for anchoring.
    pub fn anchor_due(&self, waiting: usize, oldest_age: u64, shutdown: bool) -> bool {
        waiting >= self.anchor_batch.max(1)
            || (waiting > 0 && (shutdown || oldest_age >= self.anchor_max_wait_secs))
    }
}

/// A job receipt: what an auditor can later prove was committed in an anchored batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    /// The channel it was paid through.
    pub channel: [u8; 32],
    /// The job id.
    pub job: u64,
    /// Tokens in the prompt and generated.
    pub prompt_tokens: u32,
    /// Completion tokens.
    pub completion_tokens: u32,
    /// What the job cost, nanoTON.
    pub cost: u64,
    /// When it finished (unix seconds).
    pub finished_at: u64,
}

impl Receipt {
    /// The receipt's canonical bytes (the Merkle leaf's input): fixed-width big-endian
    /// fields under a domain tag.
    pub fn bytes(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(80);
        b.extend_from_slice(b"cocoon/receipt/v1");
        b.extend_from_slice(&self.channel);
        b.extend_from_slice(&self.job.to_be_bytes());
        b.extend_from_slice(&self.prompt_tokens.to_be_bytes());
        b.extend_from_slice(&self.completion_tokens.to_be_bytes());
        b.extend_from_slice(&self.cost.to_be_bytes());
        b.extend_from_slice(&self.finished_at.to_be_bytes());
        b
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_close_on_its_way_is_not_sent_again() {
        assert!(may_send_close(None, 3, 1_000));
        assert!(!may_send_close(
            Some((3, 1_000)),
            3,
            1_000 + CLOSE_PENDING_SECS - 1
        ));
        assert!(may_send_close(
            Some((3, 1_000)),
            3,
            1_000 + CLOSE_PENDING_SECS
        ));
        assert!(
            may_send_close(Some((3, 1_000)), 4, 1_001),
            "a newer voucher"
        );
    }

    use super::*;
    use proptest::prelude::*;

    fn facts(unsettled: u64, last_activity: u64) -> ChannelFacts {
        ChannelFacts {
            unsettled,
            last_activity,
            deadline: None,
        }
    }

    #[test]
    fn settles_on_threshold_idle_shutdown_and_deadline_only() {
        let p = SettlePolicy::default();
        let now = 1_000_000;
        assert_eq!(p.due(&facts(0, 0), now, true), None, "nothing to settle");
        assert_eq!(
            p.due(&facts(p.threshold, now), now, false),
            Some(Reason::Threshold)
        );
        assert_eq!(p.due(&facts(p.min_amount, now), now, false), None, "busy");
        assert_eq!(
            p.due(&facts(p.min_amount, now - p.idle_secs), now, false),
            Some(Reason::Idle)
        );
        assert_eq!(
            p.due(&facts(p.min_amount, now), now, true),
            Some(Reason::Shutdown)
        );
        assert_eq!(
            p.due(&facts(p.min_amount - 1, 0), now, true),
            None,
            "not worth its fees"
        );
        let near = ChannelFacts {
            deadline: Some(now + p.deadline_margin_secs),
            ..facts(1, now)
        };
        assert_eq!(p.due(&near, now, false), Some(Reason::Deadline));
        assert!(p.anchor_due(p.anchor_batch, 0, false));
        assert!(!p.anchor_due(p.anchor_batch - 1, 0, false));
        assert!(p.anchor_due(1, 0, true));
        assert!(!p.anchor_due(0, u64::MAX, true));
    }

    proptest! {
        /// At steady state (jobs of `cost` each, every `gap` seconds, one channel), the policy
        /// goes on chain at most once per thousand jobs when a job costs at most the
        /// threshold over a thousand.
        #[test]
        fn at_most_one_settlement_per_thousand_jobs(
            cost in 1u64..=500_000,
            gap in 1u64..60,
            jobs in 1_000usize..20_000,
        ) {
            let p = SettlePolicy::default();
            let (mut unsettled, mut settlements, mut now) = (0u64, 0usize, 1_000_000u64);
            for _ in 0..jobs {
                now += gap;
                unsettled += cost;
                if p.due(&facts(unsettled, now), now, false).is_some() {
                    settlements += 1;
                    unsettled = 0;
                }
            }
            prop_assert!(settlements <= jobs / 1000, "{settlements} settlements for {jobs} jobs");
        }
    }
}
