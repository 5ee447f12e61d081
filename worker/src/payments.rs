//! The worker's side of payments: every channel it is paid through, one slot per channel
//! ([`WorkerLedger::lease`]), the deposits read on chain, and the journal written through its
//! owner thread before the worker streams on a voucher's credit. The shared settings,
//! errors and the client's side are in `cocoon_client::payments`.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cocoon_ledger::channel::{WorkerChannel, WorkerState};
use cocoon_ledger::journal::{ChannelTerms, Journal, JournalWriter, WorkerRecord, Write};
use cocoon_ton::client::ChannelClient;
use cocoon_ton::contract::ChannelStatus;
use ed25519_dalek::VerifyingKey;

use cocoon_client::payments::{open_journal, PaymentError, DEPOSIT_TTL};
use cocoon_ton::wallet::basechain;

/// The worker's side: every channel it is paid through, journalled.
///
/// Each channel's core lives in its own slot, held by the job running on it (one at a time:
/// a client runs one job per channel); jobs on other channels never wait for it. Journal
/// writes go to the journal's owner thread ([`JournalWriter`]), which commits concurrent
/// jobs' writes together, off the async runtime.
pub struct WorkerLedger {
    writer: JournalWriter,
    worker_key: [u8; 32],
    payout: [u8; 32],
    credit_limit: u64,
    slots: Mutex<HashMap<[u8; 32], Arc<Slot>>>,
    chain: Option<Arc<ChannelClient>>,
    deposits: Mutex<HashMap<[u8; 32], (u64, std::time::Instant)>>,
}

/// A channel's core and who runs a job on it. A new job on a channel means the client of
/// the running one is gone (a crashed client whose connection is not yet known to be
/// dead): the new job supersedes it and waits for its core, so that its quote states the
/// channel's final delivery.
#[derive(Default)]
struct Slot {
    current: std::sync::atomic::AtomicU64,
    wake: tokio::sync::Notify,
    core: Arc<tokio::sync::Mutex<Option<(ChannelTerms, WorkerChannel)>>>,
}

/// A job's hold on its channel's core (see [`WorkerLedger::lease`]).
pub struct ChannelLease {
    slot: Arc<Slot>,
    job: u64,
    channel: [u8; 32],
    held: tokio::sync::OwnedMutexGuard<Option<(ChannelTerms, WorkerChannel)>>,
}

impl ChannelLease {
    /// Whether a newer job on the channel took over.
    pub fn superseded(&self) -> bool {
        self.slot.current.load(std::sync::atomic::Ordering::Acquire) != self.job
    }

    /// Completes once a newer job on the channel took over.
    pub async fn wait_superseded(&self) {
        loop {
            let woken = self.slot.wake.notified();
            if self.superseded() {
                return;
            }
            woken.await;
        }
    }

    /// The channel's account id.
    pub fn channel(&self) -> [u8; 32] {
        self.channel
    }

    /// The channel's terms.
    pub fn terms(&self) -> ChannelTerms {
        self.held.as_ref().expect("a leased core").0
    }

    /// Takes the core for the job's session; [`Self::put_back`] returns it.
    pub fn take(&mut self) -> WorkerChannel {
        self.held.as_ref().expect("a leased core").1.clone()
    }

    /// Returns the core after the job.
    pub fn put_back(&mut self, core: WorkerChannel) {
        if let Some((_, c)) = self.held.as_mut() {
            *c = core;
        }
    }
}

impl WorkerLedger {
    /// Opens the journal at `path` for a worker with voucher key `worker_key` paid to
    /// `payout`.
    pub fn open(
        path: &Path,
        worker_key: [u8; 32],
        payout: [u8; 32],
        credit_limit: u64,
    ) -> Result<Self, PaymentError> {
        Self::open_batched(
            path,
            worker_key,
            payout,
            credit_limit,
            cocoon_ledger::journal::MAX_BATCH,
        )
    }

    /// [`Self::open`] with at most `max_batch` journal writes per commit (1: no group
    /// commit; `bench/payments.sh` compares the two).
    pub fn open_batched(
        path: &Path,
        worker_key: [u8; 32],
        payout: [u8; 32],
        credit_limit: u64,
        max_batch: usize,
    ) -> Result<Self, PaymentError> {
        Ok(Self {
            writer: JournalWriter::start_batched(open_journal(path)?, max_batch)?,
            worker_key,
            payout,
            credit_limit,
            slots: Mutex::new(HashMap::new()),
            chain: None,
            deposits: Mutex::new(HashMap::new()),
        })
    }

    /// Reads deposits from `chain` instead of trusting the client's word.
    pub fn with_chain(mut self, chain: Arc<ChannelClient>) -> Self {
        self.chain = Some(chain);
        self
    }

    /// Drops the cached deposit of `channel` (its state changed on chain).
    pub fn forget_deposit(&self, channel: &[u8; 32]) {
        self.deposits.lock().expect("ledger lock").remove(channel);
    }

    /// The chain, when the worker settles on one.
    pub fn chain(&self) -> Option<&Arc<ChannelClient>> {
        self.chain.as_ref()
    }

    /// The deposit to check a job's vouchers against: the contract's when the worker has a
    /// chain (the channel must be open there; read at most every [`DEPOSIT_TTL`]), else the
    /// client's claim.
    pub async fn deposit(&self, channel: [u8; 32], claimed: u64) -> Result<u64, PaymentError> {
        let Some(chain) = &self.chain else {
            return Ok(claimed);
        };
        if let Some((deposit, at)) = self.deposits.lock().expect("ledger lock").get(&channel) {
            if at.elapsed() < DEPOSIT_TTL {
                return Ok(*deposit);
            }
        }
        let state = chain
            .channel_state(&basechain(channel))
            .await
            .map_err(|e| PaymentError::Chain(e.to_string()))?
            .ok_or_else(|| PaymentError::NotOpen("not deployed".into()))?;
        if state.status != ChannelStatus::Open {
            return Err(PaymentError::NotOpen(format!("{:?}", state.status)));
        }
        let deposit = u64::try_from(state.deposit).unwrap_or(u64::MAX);
        self.deposits
            .lock()
            .expect("ledger lock")
            .insert(channel, (deposit, std::time::Instant::now()));
        Ok(deposit)
    }

    /// Takes `channel`'s core for `job`: a job still running on it is told to stop, and this
    /// waits (at most `wait`) until it has. The core comes from memory or the journal, with
    /// `deposit` (never lowered).
    pub async fn lease(
        &self,
        channel: [u8; 32],
        terms: ChannelTerms,
        deposit: u64,
        job: u64,
        wait: Duration,
    ) -> Result<ChannelLease, PaymentError> {
        let slot = self
            .slots
            .lock()
            .expect("ledger lock")
            .entry(channel)
            .or_default()
            .clone();
        slot.current
            .store(job, std::sync::atomic::Ordering::Release);
        slot.wake.notify_waiters();
        let mut held = tokio::time::timeout(wait, slot.core.clone().lock_owned())
            .await
            .map_err(|_| PaymentError::ChannelBusy(wait))?;
        if held.is_none() {
            let journal = self.writer.journal().clone();
            let record = tokio::task::spawn_blocking(move || journal.worker(&channel))
                .await
                .map_err(|e| PaymentError::Chain(e.to_string()))??;
            let client = VerifyingKey::from_bytes(&terms.client_key)
                .map_err(|_| PaymentError::Terms("the client key is not an ed25519 key".into()))?;
            let mut core = WorkerChannel::new(channel, deposit, client, self.credit_limit);
            if let Some(r) = record {
                core = core.restore(r.state);
                core.set_deposit(r.deposit);
            }
            *held = Some((terms, core));
        }
        if let Some((_, core)) = held.as_mut() {
            core.set_deposit(deposit);
        }
        Ok(ChannelLease {
            slot,
            job,
            channel,
            held,
        })
    }

    /// Writes durably through the journal's owner thread.
    pub async fn write(&self, w: Write) -> Result<(), PaymentError> {
        Ok(self.writer.write(w).await?)
    }

    /// The journal record of a channel in `state`.
    pub fn record(&self, terms: &ChannelTerms, deposit: u64, state: WorkerState) -> WorkerRecord {
        WorkerRecord {
            terms: Some(*terms),
            deposit,
            client_key: terms.client_key,
            state,
            last_activity: cocoon_client::clock::unix_now(),
        }
    }

    /// The journal.
    pub fn journal(&self) -> &Arc<Journal> {
        self.writer.journal()
    }

    /// The payout wallet.
    pub fn payout(&self) -> [u8; 32] {
        self.payout
    }

    /// The channel key (the node's identity key).
    pub fn worker_key(&self) -> [u8; 32] {
        self.worker_key
    }

    /// The unpaid value it streams ahead of vouchers.
    pub fn credit_limit(&self) -> u64 {
        self.credit_limit
    }
}
