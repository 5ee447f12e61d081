//! The payment-channel core of both sides, sans-IO.
//!
//! Client ([`ClientChannel`]): signs cumulative vouchers, never beyond the deposit, with a
//! strictly increasing seq; [`Meter`] says when to pay (every N tokens, at the worker's
//! advertised price). Worker ([`WorkerChannel`]): accepts only a voucher for its channel,
//! signed by the client, with a higher seq, a cumulative amount that does not go down and
//! stays within the deposit; it counts what it delivered and refuses to deliver more once the
//! unpaid amount would pass its credit limit. A replayed or reordered voucher is refused, so
//! nothing is paid twice; the worker keeps the best voucher, which is what it settles with.
//!
//! Both sides must journal their state (the client what it signed, the worker its best
//! voucher) before acting on it; [`ClientChannel::restore`] and [`WorkerChannel::restore`]
//! rebuild the cores after a crash.

use ed25519_dalek::{SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::voucher::{SignedVoucher, Voucher};

/// What a job of `prompt` prompt and `completion` completion tokens costs at the given
/// prices (nanoTON per million tokens): one rounding per job, up. Client and worker both bill
/// with this, so they agree to the nanoTON.
pub fn job_cost(prompt_price: u64, completion_price: u64, prompt: u64, completion: u64) -> u64 {
    (prompt_price as u128 * prompt as u128)
        .saturating_add(completion_price as u128 * completion as u128)
        .div_ceil(1_000_000)
        .min(u64::MAX as u128) as u64
}

/// Why the client cannot pay.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PayError {
    /// The deposit does not cover the amount.
    #[error("the deposit of {deposit} nanoTON does not cover {wanted}")]
    InsufficientDeposit {
        /// Deposit.
        deposit: u64,
        /// Cumulative amount asked for.
        wanted: u64,
    },
}

/// Why the worker refuses a voucher.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VoucherError {
    /// For another channel.
    #[error("voucher for another channel")]
    WrongChannel,
    /// Not signed by the channel's client.
    #[error("bad voucher signature")]
    BadSignature,
    /// Not newer than the best one held (replayed or reordered).
    #[error("stale voucher: seq {got} <= {have}")]
    Stale {
        /// Its seq.
        got: u64,
        /// The best seq held.
        have: u64,
    },
    /// Promises less than an earlier voucher.
    #[error("voucher lowers the total from {have} to {got}")]
    Decreasing {
        /// Its amount.
        got: u64,
        /// The best amount held.
        have: u64,
    },
    /// Promises more than the deposit.
    #[error("voucher of {got} exceeds the deposit of {deposit}")]
    AboveDeposit {
        /// Its amount.
        got: u64,
        /// Deposit.
        deposit: u64,
    },
}

/// The client's side of one channel.
#[derive(Clone, Debug)]
pub struct ClientChannel {
    channel: [u8; 32],
    deposit: u64,
    key: SigningKey,
    paid: u64,
    seq: u64,
}

impl ClientChannel {
    /// A fresh channel with `deposit` nanoTON.
    pub fn new(channel: [u8; 32], deposit: u64, key: SigningKey) -> Self {
        Self::restore(channel, deposit, key, 0, 0)
    }

    /// Rebuilds the core from the journal: the last signed cumulative amount and seq.
    pub fn restore(channel: [u8; 32], deposit: u64, key: SigningKey, paid: u64, seq: u64) -> Self {
        Self {
            channel,
            deposit,
            key,
            paid,
            seq,
        }
    }

    /// Signs a voucher raising the total to `cumulative` (journal it before sending). Asking
    /// for less than already signed re-signs nothing and returns `None`.
    pub fn pay_up_to(&mut self, cumulative: u64) -> Result<Option<SignedVoucher>, PayError> {
        if cumulative <= self.paid {
            return Ok(None);
        }
        if cumulative > self.deposit {
            return Err(PayError::InsufficientDeposit {
                deposit: self.deposit,
                wanted: cumulative,
            });
        }
        self.seq += 1;
        self.paid = cumulative;
        Ok(Some(
            Voucher {
                channel: self.channel,
                cumulative,
                seq: self.seq,
            }
            .sign(&self.key),
        ))
    }

    /// Total signed so far.
    pub fn paid(&self) -> u64 {
        self.paid
    }

    /// The last seq used.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Deposit not yet promised.
    pub fn remaining(&self) -> u64 {
        self.deposit - self.paid
    }

    /// Records a top-up.
    pub fn top_up(&mut self, amount: u64) {
        self.deposit = self.deposit.saturating_add(amount);
    }
}

/// The worker's side of one channel.
///
/// A voucher counts towards the credit only once the worker has journalled it
/// ([`Self::journalled`]): the worker never streams more than it holds durably plus its credit
/// limit, and never more than the deposit can pay.
#[derive(Clone, Debug)]
pub struct WorkerChannel {
    channel: [u8; 32],
    deposit: u64,
    client: VerifyingKey,
    best: Option<SignedVoucher>,
    /// The paid total as last journalled (what the credit is measured from).
    durable: u64,
    delivered: u64,
    credit_limit: u64,
}

/// The worker must stop before delivering `cost` more.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CreditExceeded {
    /// More than the credit would be unpaid: wait for a voucher.
    #[error("unpaid {unpaid} nanoTON plus {cost} would exceed the credit limit of {limit}")]
    Credit {
        /// Unpaid now (against the journalled vouchers).
        unpaid: u64,
        /// The delivery asked for.
        cost: u64,
        /// The limit.
        limit: u64,
    },
    /// The deposit cannot pay for it: no voucher can ever cover it.
    #[error(
        "delivering {cost} more nanoTON after {delivered} would pass the deposit of {deposit}"
    )]
    Deposit {
        /// Delivered so far.
        delivered: u64,
        /// The delivery asked for.
        cost: u64,
        /// The channel's deposit.
        deposit: u64,
    },
}

impl CreditExceeded {
    /// Whether a voucher could lift the stop (the credit, not the deposit, ran out).
    pub fn payable(&self) -> bool {
        matches!(self, Self::Credit { .. })
    }
}

/// What a worker journals per channel.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerState {
    /// The best voucher.
    pub best: Option<SignedVoucher>,
    /// Value delivered, nanoTON.
    pub delivered: u64,
}

impl WorkerChannel {
    /// A channel whose client is `client`, with `deposit`, extending `credit_limit` nanoTON
    /// of unpaid service at most.
    pub fn new(channel: [u8; 32], deposit: u64, client: VerifyingKey, credit_limit: u64) -> Self {
        Self {
            channel,
            deposit,
            client,
            best: None,
            durable: 0,
            delivered: 0,
            credit_limit,
        }
    }

    /// Rebuilds the core from the journal (whose vouchers are durable by definition).
    pub fn restore(mut self, state: WorkerState) -> Self {
        self.best = state.best;
        self.delivered = state.delivered;
        self.durable = self.paid();
        self
    }

    /// The state returned by [`Self::state`] is now journalled: its voucher counts for the
    /// credit.
    pub fn journalled(&mut self) {
        self.durable = self.paid();
    }

    /// The credit limit.
    pub fn credit_limit(&self) -> u64 {
        self.credit_limit
    }

    /// The channel's account id.
    pub fn channel(&self) -> [u8; 32] {
        self.channel
    }

    /// What to journal.
    pub fn state(&self) -> WorkerState {
        WorkerState {
            best: self.best,
            delivered: self.delivered,
        }
    }

    /// Checks a voucher and keeps it if it is the best so far; returns the new paid total.
    pub fn accept(&mut self, v: &SignedVoucher) -> Result<u64, VoucherError> {
        if v.voucher.channel != self.channel {
            return Err(VoucherError::WrongChannel);
        }
        if !v.verify(&self.client) {
            return Err(VoucherError::BadSignature);
        }
        if let Some(best) = &self.best {
            if v.voucher.seq <= best.voucher.seq {
                return Err(VoucherError::Stale {
                    got: v.voucher.seq,
                    have: best.voucher.seq,
                });
            }
            if v.voucher.cumulative < best.voucher.cumulative {
                return Err(VoucherError::Decreasing {
                    got: v.voucher.cumulative,
                    have: best.voucher.cumulative,
                });
            }
        }
        if v.voucher.cumulative > self.deposit {
            return Err(VoucherError::AboveDeposit {
                got: v.voucher.cumulative,
                deposit: self.deposit,
            });
        }
        self.best = Some(*v);
        Ok(v.voucher.cumulative)
    }

    /// Paid so far (the best voucher's total).
    pub fn paid(&self) -> u64 {
        self.best.map_or(0, |b| b.voucher.cumulative)
    }

    /// Delivered but not paid.
    pub fn unpaid(&self) -> u64 {
        self.delivered.saturating_sub(self.paid())
    }

    /// Asks to deliver work worth `cost`; refused when the unpaid amount afterwards would
    /// pass the credit limit (stop streaming and wait for a voucher) or the total would pass
    /// the deposit. A journalled voucher paid ahead (a prompt paid at the quote) counts.
    pub fn deliver(&mut self, cost: u64) -> Result<(), CreditExceeded> {
        let total = self.delivered.saturating_add(cost);
        if total > self.deposit {
            return Err(CreditExceeded::Deposit {
                delivered: self.delivered,
                cost,
                deposit: self.deposit,
            });
        }
        if total.saturating_sub(self.durable) > self.credit_limit {
            return Err(CreditExceeded::Credit {
                unpaid: self.delivered.saturating_sub(self.durable),
                cost,
                limit: self.credit_limit,
            });
        }
        self.delivered = total;
        Ok(())
    }

    /// The most that can be delivered now without a new voucher.
    pub fn room(&self) -> u64 {
        self.durable
            .saturating_add(self.credit_limit)
            .min(self.deposit)
            .saturating_sub(self.delivered)
    }

    /// The deposit vouchers are checked against.
    pub fn deposit(&self) -> u64 {
        self.deposit
    }

    /// Raises the deposit (a top-up seen on chain); never lowers it.
    pub fn set_deposit(&mut self, deposit: u64) {
        self.deposit = self.deposit.max(deposit);
    }

    /// Counts work already done (the final count of a job whose text is all sent: tokens
    /// that produced no text, like the end-of-sequence token) as far as the credit and the
    /// deposit allow, so that `delivered <= journalled paid + credit limit` always holds (a
    /// client checks exactly that after a crash). Returns what was counted.
    pub fn owe(&mut self, cost: u64) -> u64 {
        let counted = cost.min(self.room());
        self.delivered += counted;
        counted
    }

    /// The voucher to settle with.
    pub fn best(&self) -> Option<&SignedVoucher> {
        self.best.as_ref()
    }
}

/// The client's bill for one job: it pays the prompt when the worker quotes it, then every
/// `every` completion tokens or sooner when half the worker's credit is used, at the quoted
/// price, and the exact total at the end.
#[derive(Clone, Debug)]
pub struct Meter {
    /// Price per million prompt tokens, nanoTON.
    pub prompt_price: u64,
    /// Price per million completion tokens, nanoTON.
    pub completion_price: u64,
    /// Pay after this many tokens.
    pub every: u32,
    /// The channel total this job adds to.
    pub base: u64,
    /// The worker's credit limit: a payment is due when half of it is used.
    pub credit: u64,
    prompt_tokens: u64,
    tokens: u64,
    billed: u64,
    paid: u64,
}

impl Meter {
    /// A meter for one job.
    pub fn new(prompt_price: u64, completion_price: u64, every: u32, base: u64) -> Self {
        Self {
            prompt_price,
            completion_price,
            every: every.max(1),
            base,
            credit: u64::MAX,
            prompt_tokens: 0,
            tokens: 0,
            billed: 0,
            paid: base,
        }
    }

    /// Pays sooner for a worker extending only `credit` nanoTON.
    pub fn with_credit(mut self, credit: u64) -> Self {
        self.credit = credit;
        self
    }

    /// The cumulative channel total that pays for everything counted so far.
    pub fn owed(&self) -> u64 {
        self.base.saturating_add(self.job_cost())
    }

    /// What the job itself costs so far.
    pub fn job_cost(&self) -> u64 {
        job_cost(
            self.prompt_price,
            self.completion_price,
            self.prompt_tokens,
            self.tokens,
        )
    }

    /// Counts the quoted prompt; returns the total to pay up to now.
    pub fn prompt(&mut self, tokens: u64) -> u64 {
        self.prompt_tokens = tokens;
        self.paid = self.owed();
        self.paid
    }

    /// Counts `n` more completion tokens; returns the total to pay up to when a payment is
    /// due.
    pub fn tokens(&mut self, n: u64) -> Option<u64> {
        self.tokens += n;
        let owed = self.owed();
        if self.tokens - self.billed >= self.every as u64 || owed - self.paid >= self.credit / 2 {
            self.billed = self.tokens;
            self.paid = owed;
            return Some(owed);
        }
        None
    }

    /// The final total once the job is done (usage from `Done`).
    pub fn finish(&mut self, prompt_tokens: u64, completion_tokens: u64) -> u64 {
        self.prompt_tokens = prompt_tokens;
        self.tokens = completion_tokens;
        self.billed = completion_tokens;
        self.paid = self.owed();
        self.paid
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const CH: [u8; 32] = [9; 32];

    fn pair(deposit: u64, credit: u64) -> (ClientChannel, WorkerChannel) {
        let key = SigningKey::from_bytes(&[1; 32]);
        let worker = WorkerChannel::new(CH, deposit, key.verifying_key(), credit);
        (ClientChannel::new(CH, deposit, key), worker)
    }

    #[test]
    fn vouchers_grow_replays_and_forgeries_are_refused() {
        let (mut c, mut w) = pair(1_000, 100);
        let v1 = c.pay_up_to(100).unwrap().unwrap();
        let v2 = c.pay_up_to(250).unwrap().unwrap();
        assert_eq!(c.pay_up_to(200).unwrap(), None, "never re-signs less");
        assert_eq!(w.accept(&v2), Ok(250));
        assert_eq!(w.accept(&v1), Err(VoucherError::Stale { got: 1, have: 2 }));
        assert!(matches!(w.accept(&v2), Err(VoucherError::Stale { .. })));
        let mut forged = v2;
        forged.voucher.cumulative = 900;
        forged.voucher.seq = 9;
        assert_eq!(w.accept(&forged), Err(VoucherError::BadSignature));
        let other = Voucher {
            channel: [8; 32],
            cumulative: 10,
            seq: 10,
        }
        .sign(&SigningKey::from_bytes(&[1; 32]));
        assert_eq!(w.accept(&other), Err(VoucherError::WrongChannel));
        assert!(matches!(
            c.pay_up_to(1_001),
            Err(PayError::InsufficientDeposit { .. })
        ));
        // A client that lost its journal and signs a lower total with a higher seq.
        let mut amnesiac = ClientChannel::new(CH, 1_000, SigningKey::from_bytes(&[1; 32]));
        amnesiac.seq = 5;
        let low = amnesiac.pay_up_to(10).unwrap().unwrap();
        assert!(matches!(
            w.accept(&low),
            Err(VoucherError::Decreasing { .. })
        ));
    }

    #[test]
    fn the_worker_stops_past_its_credit_and_resumes_when_paid() {
        let (mut c, mut w) = pair(10_000, 50);
        w.deliver(40).unwrap();
        assert!(w.deliver(20).is_err(), "60 unpaid > 50");
        w.accept(&c.pay_up_to(40).unwrap().unwrap()).unwrap();
        assert!(
            w.deliver(20).is_err(),
            "a voucher not yet journalled does not count"
        );
        w.journalled();
        w.deliver(20).unwrap();
        assert_eq!(w.unpaid(), 20);
        // Paid ahead: a delivery above the credit limit fits once it is prepaid.
        assert!(w.deliver(100).is_err());
        w.accept(&c.pay_up_to(150).unwrap().unwrap()).unwrap();
        w.journalled();
        w.deliver(100).unwrap();
        assert_eq!(w.unpaid(), 10);
        // The final count of a job never passes the credit: what is over is not counted.
        assert_eq!(w.room(), 40);
        assert_eq!(w.owe(70), 40);
        assert_eq!(w.unpaid(), 50);
        // Nor the deposit, which no voucher can pass.
        let mut small = WorkerChannel::new(
            CH,
            100,
            SigningKey::from_bytes(&[1; 32]).verifying_key(),
            1_000,
        );
        assert!(matches!(
            small.deliver(101),
            Err(CreditExceeded::Deposit { .. })
        ));
        assert!(!small.deliver(101).unwrap_err().payable());
        small.deliver(100).unwrap();
        let state = w.state();
        assert_eq!(state.delivered, 200);
        // After a crash the journal restores both sides exactly.
        let restored = WorkerChannel::new(
            CH,
            10_000,
            SigningKey::from_bytes(&[1; 32]).verifying_key(),
            50,
        )
        .restore(state.clone());
        assert_eq!(restored.state(), state);
        assert_eq!(restored.room(), 0, "restored vouchers are durable");
        let again = ClientChannel::restore(
            CH,
            10_000,
            SigningKey::from_bytes(&[1; 32]),
            c.paid(),
            c.seq(),
        );
        assert_eq!(again.paid(), 150);
    }

    #[test]
    fn the_meter_pays_the_prompt_then_every_n_tokens() {
        let mut m = Meter::new(1_000_000, 3_000_000, 4, 100);
        assert_eq!(m.prompt(10), 100 + 10, "the quote pays for the prompt");
        assert_eq!(m.tokens(1), None);
        assert_eq!(m.tokens(2), None);
        assert_eq!(m.tokens(1), Some(100 + 10 + 12));
        assert_eq!(m.tokens(3), None);
        assert_eq!(m.finish(10, 7), 100 + 10 + 21);
        assert_eq!(m.job_cost(), 31);
        // A tight credit makes it pay sooner.
        let mut m = Meter::new(0, 3_000_000, 100, 0).with_credit(10);
        m.prompt(1);
        assert_eq!(m.tokens(1), None);
        assert_eq!(m.tokens(1), Some(6), "half the credit used");
        assert_eq!(job_cost(0, 1, 0, 1), 1, "rounded up");
        assert_eq!(job_cost(1, 1, 1, 1), 1, "once per job");
        assert_eq!(job_cost(u64::MAX, u64::MAX, u64::MAX, u64::MAX), u64::MAX);
    }

    /// One step of the crash model below.
    #[derive(Clone, Debug)]
    enum Step {
        /// The worker delivers work of this cost (if its credit allows); the client receives
        /// it.
        Deliver(u64),
        /// The client pays for everything it received (journal first, then send).
        Pay,
        /// The oldest voucher in flight reaches the worker (which journals it).
        Arrive,
        /// The oldest voucher in flight is lost.
        Lose,
        /// The worker is killed: it restarts from its journal; vouchers in flight are lost.
        CrashWorker,
        /// The client is killed: it restarts from its journal and forgets what it received
        /// beyond what it paid.
        CrashClient,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (1u64..50).prop_map(Step::Deliver),
            Just(Step::Pay),
            Just(Step::Arrive),
            Just(Step::Lose),
            Just(Step::CrashWorker),
            Just(Step::CrashClient),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Whatever the interleaving of deliveries, payments, lost vouchers and crashes of
        /// either side, after the next job's quote (the client pays the larger of what it
        /// signed and what the worker says it delivered) both sides agree on the total, the
        /// worker is paid for everything it journalled as delivered, and nothing exceeds the
        /// deposit.
        #[test]
        fn both_sides_agree_after_any_crashes(steps in proptest::collection::vec(step(), 1..60)) {
            const DEPOSIT: u64 = 100_000;
            let key = SigningKey::from_bytes(&[1; 32]);
            let fresh_worker = || WorkerChannel::new(CH, DEPOSIT, key.verifying_key(), 200);
            let mut worker = fresh_worker();
            let mut worker_journal = worker.state();
            let mut client = ClientChannel::new(CH, DEPOSIT, key.clone());
            let mut client_journal = (0u64, 0u64);
            let mut received = 0u64;
            let mut in_flight: std::collections::VecDeque<SignedVoucher> = Default::default();
            for s in steps {
                match s {
                    Step::Deliver(c) => {
                        if worker.deliver(c).is_ok() {
                            received += c;
                        }
                    }
                    Step::Pay => {
                        if let Ok(Some(v)) = client.pay_up_to(received) {
                            client_journal = (client.paid(), client.seq());
                            in_flight.push_back(v);
                        }
                    }
                    Step::Arrive => {
                        if let Some(v) = in_flight.pop_front() {
                            if worker.accept(&v).is_ok() {
                                worker_journal = worker.state();
                                worker.journalled();
                            }
                        }
                    }
                    Step::Lose => {
                        in_flight.pop_front();
                    }
                    Step::CrashWorker => {
                        worker = fresh_worker().restore(worker_journal.clone());
                        in_flight.clear();
                    }
                    Step::CrashClient => {
                        client = ClientChannel::restore(
                            CH, DEPOSIT, key.clone(), client_journal.0, client_journal.1,
                        );
                        received = client.paid();
                    }
                }
                prop_assert!(worker.paid() <= client.paid() && client.paid() <= DEPOSIT);
            }
            // The next job: its quote says what the worker delivered; the client pays up to
            // the larger total and the voucher arrives.
            let total = client.paid().max(received).max(worker.state().delivered);
            if let Ok(Some(v)) = client.pay_up_to(total) {
                worker.accept(&v).unwrap();
            } else if let Some(v) = in_flight.pop_back() {
                let _ = worker.accept(&v);
            }
            if worker.paid() < client.paid() {
                // The newest voucher was lost: the client sends its journalled last again.
                let v = Voucher { channel: CH, cumulative: client.paid(), seq: client.seq() }
                    .sign(&key);
                worker.accept(&v).unwrap();
            }
            prop_assert_eq!(worker.paid(), client.paid());
            prop_assert!(worker.paid() >= worker.state().delivered);
        }

        /// Whatever order vouchers arrive in (lost, duplicated, reordered), the worker's paid
        /// total only grows, never exceeds what the client signed or the deposit, and the
        /// newest voucher always lands.
        #[test]
        fn paid_only_grows_and_never_exceeds_what_was_signed(
            steps in proptest::collection::vec(0u64..500, 1..30),
            order in proptest::collection::vec(0usize..1000, 0..60),
        ) {
            let (mut c, mut w) = pair(5_000, 1_000);
            let mut signed = Vec::new();
            let mut total = 0;
            for s in steps {
                total += s;
                if let Ok(Some(v)) = c.pay_up_to(total) {
                    signed.push(v);
                }
            }
            let mut last = 0;
            for i in order {
                if signed.is_empty() { break; }
                let _ = w.accept(&signed[i % signed.len()]);
                prop_assert!(w.paid() >= last);
                prop_assert!(w.paid() <= c.paid() && w.paid() <= 5_000);
                last = w.paid();
            }
            if let Some(newest) = signed.last() {
                let _ = w.accept(newest);
                prop_assert_eq!(w.paid(), c.paid());
            }
        }
    }
}
