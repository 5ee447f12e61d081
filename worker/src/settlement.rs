//! A worker on chain: it settles its channels with the best vouchers it holds.
//!
//! The decision is the ledger's sans-IO [`SettlePolicy`] (threshold, idle, shutdown, the
//! contract's deadline); this module reads the channels' on-chain state and sends the
//! messages: `worker_close` with the best voucher when a channel is due, `challenge` when a
//! channel is closing with an older voucher than ours (the client closed, or posted a stale
//! voucher), and `finalize` once the challenge window is over, which pays the payout wallet.
//! Job receipts are anchored in batches ([`anchor_receipts`]): the Merkle root of the
//! receipts waiting goes to the worker's own anchor contract when the policy says a batch is
//! due. A daemon has one settlement owner, [`Settler`]: a task that runs a pass every
//! `check_every` and, on shutdown, the final pass after any pass under way, never beside it,
//! so no channel is closed twice. Each close is journalled before it is sent
//! ([`Journal::record_close`]): a worker killed and restarted while its close is on its way
//! does not send a second one ([`may_send_close`]).
//!
//! [`Journal::record_close`]: cocoon_ledger::journal::Journal::record_close

use std::sync::Arc;
use std::time::Duration;

use cocoon_ledger::journal::{AnchorRecord, CloseSent};
use cocoon_ledger::settle::{may_send_close, ChannelFacts, Reason, SettlePolicy};
use cocoon_ton::client::ChannelClient;
use cocoon_ton::contract::anchor_contract;
use cocoon_ton::contract::ChannelStatus;
use cocoon_ton::merkle;
use serde::Serialize;

use cocoon_client::payments::PaymentError;
use cocoon_ton::wallet::basechain;

use crate::payments::WorkerLedger;

/// The chain's clock (its last sync time; the local chain's can be moved), falling back on
/// ours when the endpoint does not say.
pub async fn chain_now(chain: &ChannelClient) -> u64 {
    chain
        .wallet()
        .chain()
        .account(chain.wallet().address())
        .await
        .ok()
        .and_then(|a| a.chain_time)
        .map_or_else(cocoon_client::clock::unix_now, u64::from)
}

/// What a settlement pass did to one channel.
#[derive(Clone, Debug, Serialize)]
pub struct Settled {
    /// The channel (hex account id); for `anchor`, the batch's Merkle root.
    pub channel: String,
    /// `worker_close`, `challenge`, `finalize` or `anchor`.
    pub action: &'static str,
    /// Why (for a close).
    pub reason: Option<Reason>,
    /// The voucher amount it settles, nanoTON; for `anchor`, the receipts in the batch.
    pub amount: u64,
}

/// One pass over every channel in the worker's journal: closes those due, challenges stale
/// closes, finalizes those past their window. `shutdown` settles every balance worth its
/// fees; `manual` every non-zero one. Errors on one channel are logged and the pass goes on.
pub async fn settle_all(
    ledger: &WorkerLedger,
    policy: &SettlePolicy,
    shutdown: bool,
    manual: bool,
) -> Result<Vec<Settled>, PaymentError> {
    let Some(chain) = ledger.chain() else {
        return Ok(Vec::new());
    };
    let channels = ledger.journal().worker_channels()?;
    let now = chain_now(chain).await;
    let mut done = Vec::new();
    for (channel, record) in channels {
        let Some(best) = record.state.best else {
            continue;
        };
        let address = basechain(channel);
        let state = match chain.channel_state(&address).await {
            Ok(Some(s)) => s,
            Ok(None) => continue, // an off-chain channel
            Err(e) => {
                tracing::warn!(channel = %hex::encode(channel), "cannot read the channel: {e}");
                continue;
            }
        };
        let amount = best.voucher.cumulative;
        let action = match state.status {
            ChannelStatus::Open => {
                let facts = ChannelFacts {
                    unsettled: amount,
                    last_activity: record.last_activity,
                    deadline: Some(
                        (state.opened_at as u64 + state.worker_timeout as u64)
                            .saturating_sub(state.challenge_period as u64),
                    ),
                };
                let reason = if manual && amount > 0 {
                    Some(Reason::Manual)
                } else {
                    policy.due(&facts, now, shutdown)
                };
                let Some(reason) = reason else { continue };
                let seq = best.voucher.seq;
                let last = ledger.journal().close_sent(&channel)?;
                if !may_send_close(last.map(|c| (c.seq, c.at)), seq, now) {
                    tracing::info!(channel = %hex::encode(channel), "a close is on its way");
                    continue;
                }
                // Journalled first: a restart while it is on its way does not send another.
                let mark = CloseSent { seq, at: now };
                let journal = ledger.journal().clone();
                tokio::task::spawn_blocking(move || journal.record_close(&channel, &mark))
                    .await
                    .map_err(|e| PaymentError::Chain(e.to_string()))??;
                chain
                    .worker_close(&address, &best)
                    .await
                    .map(|_| ("worker_close", Some(reason)))
            }
            ChannelStatus::Closing if state.settled_seq < best.voucher.seq => chain
                .challenge(&address, &best)
                .await
                .map(|_| ("challenge", None)),
            ChannelStatus::Closing if now >= state.window_ends() => {
                chain.finalize(&address).await.map(|_| ("finalize", None))
            }
            _ => continue,
        };
        ledger.forget_deposit(&channel);
        match action {
            Ok((action, reason)) => {
                tracing::info!(channel = %hex::encode(channel), amount, ?reason, "{action}");
                done.push(Settled {
                    channel: hex::encode(channel),
                    action,
                    reason,
                    amount,
                });
            }
            Err(e) => tracing::warn!(channel = %hex::encode(channel), "settlement failed: {e}"),
        }
    }
    Ok(done)
}

/// Posts the Merkle root of the receipts waiting when a batch is due (or any are waiting,
/// when `force`) to the worker's anchor contract (owner: its wallet; deployed by the first
/// post), then journals the batch. Returns the batch, if one was posted.
pub async fn anchor_receipts(
    ledger: &WorkerLedger,
    policy: &SettlePolicy,
    shutdown: bool,
    force: bool,
) -> Result<Option<AnchorRecord>, PaymentError> {
    let Some(chain) = ledger.chain() else {
        return Ok(None);
    };
    let pending = ledger.journal().pending_receipts()?;
    let (Some(first), Some(last)) = (pending.first(), pending.last()) else {
        return Ok(None);
    };
    let now = cocoon_client::clock::unix_now();
    let age = now.saturating_sub(first.1.finished_at);
    if !force && !policy.anchor_due(pending.len(), age, shutdown) {
        return Ok(None);
    }
    let leaves: Vec<Vec<u8>> = pending.iter().map(|(_, r)| r.bytes()).collect();
    let root = merkle::root(&leaves).expect("a non-empty batch has a root");
    let chain_err = |e: cocoon_ton::chain::ChainError| PaymentError::Chain(e.to_string());
    let anchor = anchor_contract(Some(chain.wallet().address()))
        .map_err(|e| PaymentError::Chain(e.to_string()))?;
    let count = u32::try_from(leaves.len()).unwrap_or(u32::MAX);
    chain
        .anchor(&anchor, &root, count)
        .await
        .map_err(chain_err)?;
    let record = AnchorRecord {
        root,
        first: first.0,
        last: last.0,
        posted_at: now,
    };
    ledger.journal().record_anchor(&record)?;
    tracing::info!(receipts = count, root = %hex::encode(root), "receipts anchored");
    Ok(Some(record))
}

/// What the final settlement pass did.
#[derive(Clone, Debug, Default)]
pub struct FinalReport {
    /// Channels closed, challenged or finalized.
    pub settled: Vec<Settled>,
    /// The receipt batch anchored.
    pub anchored: Option<AnchorRecord>,
}

/// A worker's one settlement owner: a task that runs a pass every `every` and the final
/// pass on [`Settler::shutdown`], one after another (see the module docs).
pub struct Settler {
    stop: tokio::sync::mpsc::Sender<tokio::sync::oneshot::Sender<FinalReport>>,
    task: tokio::task::JoinHandle<()>,
}

impl Settler {
    /// Starts the owner of `ledger`'s settlement.
    pub fn spawn(ledger: Arc<WorkerLedger>, policy: SettlePolicy, every: Duration) -> Self {
        Self::spawn_with_metrics(ledger, policy, every, None)
    }

    /// [`Self::spawn`], counting what each pass sends to the chain into `metrics`.
    pub fn spawn_with_metrics(
        ledger: Arc<WorkerLedger>,
        policy: SettlePolicy,
        every: Duration,
        metrics: Option<cocoon_metrics::NodeMetrics>,
    ) -> Self {
        let (stop, mut stopped) = tokio::sync::mpsc::channel(1);
        let count = move |report: &FinalReport| {
            let Some(m) = &metrics else { return };
            for s in &report.settled {
                m.chain(s.action);
                if s.action == "worker_close" {
                    m.settled(s.amount);
                }
            }
            if report.anchored.is_some() {
                m.chain("anchor");
            }
        };
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                // A pass runs to its end inside this task: a shutdown waits for it.
                let reply: tokio::sync::oneshot::Sender<FinalReport> = tokio::select! {
                    _ = tick.tick() => {
                        count(&pass(&ledger, &policy, false).await);
                        continue;
                    }
                    reply = stopped.recv() => match reply {
                        Some(reply) => reply,
                        None => return,
                    },
                };
                let report = pass(&ledger, &policy, true).await;
                count(&report);
                let _ = reply.send(report);
                return;
            }
        });
        Self { stop, task }
    }

    /// Runs the final pass (after any pass under way) and stops the owner.
    pub async fn shutdown(self) -> FinalReport {
        let (reply, report) = tokio::sync::oneshot::channel();
        if self.stop.send(reply).await.is_err() {
            return FinalReport::default();
        }
        let report = report.await.unwrap_or_default();
        let _ = self.task.await;
        report
    }

    /// Stops the owner wherever it is, as a killed process would (tests).
    pub fn abort(self) {
        self.task.abort();
    }
}

/// One pass: settle, then anchor; errors are logged.
async fn pass(ledger: &WorkerLedger, policy: &SettlePolicy, shutdown: bool) -> FinalReport {
    let mut report = FinalReport::default();
    match settle_all(ledger, policy, shutdown, false).await {
        Ok(done) => report.settled = done,
        Err(e) => tracing::warn!("settlement pass failed: {e}"),
    }
    match anchor_receipts(ledger, policy, shutdown, false).await {
        Ok(a) => report.anchored = a,
        Err(e) => tracing::warn!("anchoring failed: {e}"),
    }
    report
}
