//! Paying for jobs: the glue between the job protocol's payment messages (`Quote`,
//! `Voucher`), the ledger's sans-IO channel cores and the node's durable journal.
//!
//! A job is paid through a payment channel between the client and the worker (a TON
//! contract, `ledger/contract/`). The client names the channel in its request
//! ([`PaymentTerms`]); the worker checks the channel's address binds its own key and payout
//! wallet, quotes the prompt size and price, and bills every token chunk it sends against
//! its credit limit. The client pays as tokens arrive with cumulative vouchers. Both sides
//! journal before acting: the client each voucher before sending it ([`ClientLedger::pay`]),
//! the worker each voucher it accepts before streaming further ([`WorkerLedger::accept`]),
//! so after a `kill -9` nothing is lost and nothing is paid twice. A client that lost track
//! (it crashed mid-job) learns in the next quote what the worker delivered and pays it; a
//! worker that crashed before a voucher reached it gets the client's journalled voucher
//! again in the next job.
//!
//! Without a chain the channel is off-chain only: the worker takes the client's word for
//! the deposit and the vouchers are claims it cannot yet enforce. With a chain the worker
//! reads the deposit from the contract (see `settlement`).

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cocoon_gossip::Price;
use cocoon_ledger::channel::{ClientChannel, CreditExceeded, Meter, WorkerChannel};
use cocoon_ledger::journal::{ChannelTerms, ClientRecord, Journal, JournalError, WorkerRecord};
use cocoon_ledger::ton::client::ChannelClient;
use cocoon_ledger::ton::contract::{ChannelParams, ChannelStatus};
use cocoon_ledger::voucher::{SignedVoucher, Voucher};
use cocoon_p2p::job::{JobPrice, JobQuote, Payment, PaymentTerms};
use ed25519_dalek::{SigningKey, VerifyingKey};

/// Payment settings of a node (both roles).
#[derive(Clone, Debug)]
pub struct PaymentConfig {
    /// Worker: value it streams ahead of the vouchers, nanoTON. Default: 1,000,000 (0.001
    /// TON, about 33,000 tokens at the default floor price).
    pub credit_limit: u64,
    /// Worker: how long it waits for a voucher when the credit is used up, and for the
    /// final voucher after `Done`. Default: 10 s.
    pub voucher_timeout: Duration,
    /// Client: pay every this many completion tokens. Default: 16.
    pub pay_every: u32,
    /// Client: the deposit of a new channel, nanoTON. Default: 1 TON.
    pub deposit: u64,
    /// Client: a new channel's challenge window, seconds. Default: 3,600.
    pub challenge_period: u32,
    /// Client: a new channel's worker timeout, seconds. Default: 30 days.
    pub worker_timeout: u32,
    /// Client: the price ceiling sent with a job, as a multiple of the advertised price
    /// (prices move between adverts). Default: 1.25.
    pub price_slack: f64,
}

impl Default for PaymentConfig {
    fn default() -> Self {
        Self {
            credit_limit: 1_000_000,
            voucher_timeout: Duration::from_secs(10),
            pay_every: 16,
            deposit: 1_000_000_000,
            challenge_period: 3600,
            worker_timeout: 30 * 86_400,
            price_slack: 1.25,
        }
    }
}

/// Why a payment step failed.
#[derive(Debug, thiserror::Error)]
pub enum PaymentError {
    /// The channel's address does not derive from its parameters and our key / payout.
    #[error("the channel's address does not match its parameters and this worker")]
    WrongChannel,
    /// The voucher was refused.
    #[error("voucher refused: {0}")]
    Voucher(#[from] cocoon_ledger::channel::VoucherError),
    /// The voucher's signature is not 64 bytes.
    #[error("malformed voucher signature")]
    MalformedSignature,
    /// The client cannot pay this much.
    #[error(transparent)]
    Pay(#[from] cocoon_ledger::channel::PayError),
    /// The journal failed; nothing was acted on.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// The channel is unknown.
    #[error("no channel {0}")]
    UnknownChannel(String),
    /// The channel's terms cannot be turned into a contract address.
    #[error("channel parameters: {0}")]
    Terms(String),
    /// The chain could not be read or written.
    #[error("chain: {0}")]
    Chain(String),
    /// The channel is not open on chain.
    #[error("the channel is not open on chain ({0})")]
    NotOpen(String),
}

/// How long a worker trusts a deposit it read on chain before reading it again.
pub const DEPOSIT_TTL: Duration = Duration::from_secs(30);

/// The ed25519 signing key of a libp2p identity: it signs adverts, vouchers and the node's
/// wallet messages.
pub fn signing_key(keypair: &libp2p::identity::Keypair) -> Option<SigningKey> {
    let ed = keypair.clone().try_into_ed25519().ok()?;
    let secret: [u8; 32] = ed.secret().as_ref().try_into().ok()?;
    Some(SigningKey::from_bytes(&secret))
}

/// The journal's file name in a node's data dir.
pub const JOURNAL_FILE: &str = "journal.redb";

/// The basechain account id of the wallet (v4r2) of `key`: a node's wallet, the client
/// address of its channels and a worker's default payout.
pub fn wallet(key: &SigningKey) -> Result<[u8; 32], PaymentError> {
    let wallet = cocoon_ledger::ton::wallet::Wallet::from_seed(&key.to_bytes())
        .map_err(|e| PaymentError::Terms(e.to_string()))?;
    Ok(wallet.address().hash_part.clone().into())
}

/// A basechain address from its account id.
pub fn basechain(account: [u8; 32]) -> tonlib_core::TonAddress {
    tonlib_core::TonAddress::new(0, account.into())
}

/// The contract parameters of journalled channel terms.
pub fn channel_params(t: &ChannelTerms) -> ChannelParams {
    ChannelParams {
        channel_id: t.channel_id,
        client_key: t.client_key,
        worker_key: t.worker_key,
        client_address: basechain(t.client_address),
        worker_payout: basechain(t.worker_payout),
        challenge_period: t.challenge_period,
        worker_timeout: t.worker_timeout,
    }
}

/// The channel contract's account id for `terms` (see `ledger/contract/README.md`).
pub fn channel_address(terms: &ChannelTerms) -> Result<[u8; 32], PaymentError> {
    channel_params(terms)
        .contract()
        .map(|c| c.account_id())
        .map_err(|e| PaymentError::Terms(e.to_string()))
}

/// The wire price from the market's.
pub fn job_price(p: Price) -> JobPrice {
    JobPrice {
        prompt_per_mtok: p.prompt_per_mtok,
        completion_per_mtok: p.completion_per_mtok,
    }
}

/// What a job of `prompt` and `completion` tokens costs at `price`, nanoTON (the one
/// formula both sides bill with).
pub fn job_cost(price: JobPrice, prompt: u64, completion: u64) -> u64 {
    cocoon_ledger::channel::job_cost(
        price.prompt_per_mtok,
        price.completion_per_mtok,
        prompt,
        completion,
    )
}

/// The client's meter for a job quoted as `quote`, after `signed` nanoTON signed on the
/// channel: the job adds to the larger of that and what the worker delivered before (a job
/// the client lost track of in a crash is paid with this one).
pub fn meter(quote: &JobQuote, signed: u64, every: u32) -> Meter {
    Meter::new(
        quote.price.prompt_per_mtok,
        quote.price.completion_per_mtok,
        every,
        signed.max(quote.channel_delivered),
    )
    .with_credit(quote.credit_limit)
}

/// How long a client waits for a channel it opened to show as open on chain.
pub const OPEN_WAIT: Duration = Duration::from_secs(90);

/// How long to wait for a journal another process has open (another `cocoon infer` on the
/// same data dir) before giving up.
pub const JOURNAL_WAIT: Duration = Duration::from_secs(60);

fn open_journal(path: &Path) -> Result<Arc<Journal>, PaymentError> {
    let deadline = std::time::Instant::now() + JOURNAL_WAIT;
    loop {
        match Journal::open(path) {
            Err(JournalError::InUse(what)) if std::time::Instant::now() < deadline => {
                tracing::info!("{what} is in use by another process; waiting");
                std::thread::sleep(Duration::from_millis(200));
            }
            other => return Ok(Arc::new(other?)),
        }
    }
}

/// A worker's view of one channel, as quoted to the client.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChannelView {
    /// The best voucher's amount.
    pub paid: u64,
    /// Its seq.
    pub seq: u64,
    /// Value delivered on the channel.
    pub delivered: u64,
}

/// The worker's side: every channel it is paid through, journalled.
pub struct WorkerLedger {
    journal: Arc<Journal>,
    worker_key: [u8; 32],
    payout: [u8; 32],
    credit_limit: u64,
    channels: Mutex<HashMap<[u8; 32], (ChannelTerms, WorkerChannel)>>,
    slots: Mutex<HashMap<[u8; 32], Arc<Slot>>>,
    chain: Option<Arc<ChannelClient>>,
    deposits: Mutex<HashMap<[u8; 32], (u64, std::time::Instant)>>,
}

/// Who is running a job on a channel. A client runs one job at a time per channel, so a new
/// job on a channel means the client of the running one is gone (a crashed client whose
/// connection is not yet known to be dead): the new job supersedes it, and waits until it
/// stopped, so that its quote states the channel's final delivery.
#[derive(Default)]
struct Slot {
    current: std::sync::atomic::AtomicU64,
    wake: tokio::sync::Notify,
    running: Arc<tokio::sync::Mutex<()>>,
}

/// A job's hold on its channel (see [`WorkerLedger::claim`]).
pub struct JobClaim {
    slot: Arc<Slot>,
    job: u64,
    _running: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl JobClaim {
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
        Ok(Self {
            journal: open_journal(path)?,
            worker_key,
            payout,
            credit_limit,
            channels: Mutex::new(HashMap::new()),
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
    pub async fn deposit(&self, terms: &PaymentTerms) -> Result<u64, PaymentError> {
        let Some(chain) = &self.chain else {
            return Ok(terms.deposit);
        };
        if let Some((deposit, at)) = self
            .deposits
            .lock()
            .expect("ledger lock")
            .get(&terms.channel)
        {
            if at.elapsed() < DEPOSIT_TTL {
                return Ok(*deposit);
            }
        }
        let state = chain
            .channel_state(&basechain(terms.channel))
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
            .insert(terms.channel, (deposit, std::time::Instant::now()));
        Ok(deposit)
    }

    /// Takes `channel` for `job`: a job still running on it is told to stop, and this waits
    /// (at most `wait`) until it has.
    pub async fn claim(&self, channel: [u8; 32], job: u64, wait: Duration) -> JobClaim {
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
        let running = tokio::time::timeout(wait, slot.running.clone().lock_owned())
            .await
            .ok();
        if running.is_none() {
            tracing::warn!("the previous job on a channel did not stop within {wait:?}");
        }
        JobClaim {
            slot,
            job,
            _running: running,
        }
    }

    /// The journal.
    pub fn journal(&self) -> &Arc<Journal> {
        &self.journal
    }

    /// The payout wallet.
    pub fn payout(&self) -> [u8; 32] {
        self.payout
    }

    /// Admits a job's channel: checks that its address derives from its parameters with our
    /// key and payout wallet, then loads its state from the journal (or starts it with the
    /// deposit `deposit`: the client's claim off-chain, the contract's with a chain).
    pub fn admit(&self, terms: &PaymentTerms, deposit: u64) -> Result<ChannelView, PaymentError> {
        let channel_terms = ChannelTerms {
            channel_id: terms.channel_id,
            client_key: terms.client_key,
            worker_key: self.worker_key,
            client_address: terms.client_address,
            worker_payout: self.payout,
            challenge_period: terms.challenge_period,
            worker_timeout: terms.worker_timeout,
        };
        if channel_address(&channel_terms)? != terms.channel {
            return Err(PaymentError::WrongChannel);
        }
        let client = VerifyingKey::from_bytes(&terms.client_key)
            .map_err(|_| PaymentError::Terms("the client key is not a valid ed25519 key".into()))?;
        let mut channels = self.channels.lock().expect("ledger lock");
        let (_, core) = match channels.entry(terms.channel) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                let core = WorkerChannel::new(terms.channel, deposit, client, self.credit_limit);
                let core = match self.journal.worker(&terms.channel)? {
                    Some(r) => {
                        let mut core = core.restore(r.state);
                        core.set_deposit(r.deposit);
                        core
                    }
                    None => core,
                };
                e.insert((channel_terms, core))
            }
        };
        core.set_deposit(deposit);
        Ok(view(core))
    }

    /// The unpaid value it streams ahead of vouchers.
    pub fn credit_limit(&self) -> u64 {
        self.credit_limit
    }

    /// Counts `cost` more delivered on `channel`; refused past the credit limit unless
    /// `anyway` (work already done: the final count at the end of a job).
    pub fn deliver(
        &self,
        channel: &[u8; 32],
        cost: u64,
        anyway: bool,
    ) -> Result<(), CreditExceeded> {
        let mut channels = self.channels.lock().expect("ledger lock");
        match channels.get_mut(channel) {
            Some((_, core)) if anyway => {
                core.owe(cost);
                Ok(())
            }
            Some((_, core)) => core.deliver(cost),
            None => Err(CreditExceeded {
                unpaid: 0,
                cost,
                limit: 0,
            }),
        }
    }

    /// Checks a voucher and, when it is the best so far, journals it before returning the
    /// new paid total (only then may more tokens be streamed).
    pub fn accept(&self, channel: &[u8; 32], p: &Payment) -> Result<u64, PaymentError> {
        let signature: [u8; 64] = p
            .signature
            .as_slice()
            .try_into()
            .map_err(|_| PaymentError::MalformedSignature)?;
        let voucher = SignedVoucher {
            voucher: Voucher {
                channel: *channel,
                cumulative: p.cumulative,
                seq: p.seq,
            },
            signature,
        };
        let mut channels = self.channels.lock().expect("ledger lock");
        let (terms, core) = channels
            .get_mut(channel)
            .ok_or_else(|| PaymentError::UnknownChannel(hex::encode(channel)))?;
        let mut next = core.clone();
        let paid = next.accept(&voucher)?;
        self.journal.record_worker(channel, &record(terms, &next))?;
        *core = next;
        Ok(paid)
    }

    /// Journals what was delivered on `channel` (at the end of a job).
    pub fn record(&self, channel: &[u8; 32]) -> Result<(), PaymentError> {
        let channels = self.channels.lock().expect("ledger lock");
        if let Some((terms, core)) = channels.get(channel) {
            self.journal.record_worker(channel, &record(terms, core))?;
        }
        Ok(())
    }

    /// The channel's state now.
    pub fn view(&self, channel: &[u8; 32]) -> Option<ChannelView> {
        let channels = self.channels.lock().expect("ledger lock");
        channels.get(channel).map(|(_, core)| view(core))
    }
}

fn view(core: &WorkerChannel) -> ChannelView {
    let state = core.state();
    ChannelView {
        paid: core.paid(),
        seq: state.best.map_or(0, |b| b.voucher.seq),
        delivered: state.delivered,
    }
}

fn record(terms: &ChannelTerms, core: &WorkerChannel) -> WorkerRecord {
    WorkerRecord {
        terms: Some(*terms),
        deposit: core.deposit(),
        client_key: terms.client_key,
        state: core.state(),
        last_activity: crate::attestation::unix_now(),
    }
}

/// The client's side: its channels, by worker, journalled.
pub struct ClientLedger {
    journal: Arc<Journal>,
    key: SigningKey,
    address: [u8; 32],
    config: PaymentConfig,
    lock: Mutex<()>,
    in_use: Mutex<HashMap<[u8; 32], Arc<tokio::sync::Mutex<()>>>>,
    chain: Option<Arc<ChannelClient>>,
}

impl std::fmt::Debug for ClientLedger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientLedger")
            .field("address", &hex::encode(self.address))
            .field("config", &self.config)
            .field("chain", &self.chain.is_some())
            .finish()
    }
}

/// A client's channel with one worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientChannelInfo {
    /// The contract's account id.
    pub channel: [u8; 32],
    /// Its parameters.
    pub terms: ChannelTerms,
    /// Its deposit.
    pub deposit: u64,
    /// What the client has signed so far.
    pub paid: u64,
    /// The last seq.
    pub seq: u64,
}

impl ClientLedger {
    /// Opens the journal at `path` for a client signing with `key`, whose wallet is
    /// `address`.
    pub fn open(
        path: &Path,
        key: SigningKey,
        address: [u8; 32],
        config: PaymentConfig,
    ) -> Result<Self, PaymentError> {
        Ok(Self {
            journal: open_journal(path)?,
            key,
            address,
            config,
            lock: Mutex::new(()),
            in_use: Mutex::new(HashMap::new()),
            chain: None,
        })
    }

    /// Opens channels on `chain` (deploy + deposit) instead of off-chain only.
    pub fn with_chain(mut self, chain: Arc<ChannelClient>) -> Self {
        self.chain = Some(chain);
        self
    }

    /// The channel with a worker, ready for a job: [`Self::channel_with`], and with a chain
    /// also opened there (the open is sent after the channel is journalled, so a crash in
    /// between finds it again; one found closed or closing is retired for a new one).
    pub async fn channel_for(
        &self,
        worker_key: [u8; 32],
        payout: [u8; 32],
    ) -> Result<ClientChannelInfo, PaymentError> {
        let Some(chain) = &self.chain else {
            return self.channel_with(worker_key, payout);
        };
        let chain_err =
            |e: cocoon_ledger::ton::chain::ChainError| PaymentError::Chain(e.to_string());
        for _ in 0..3 {
            let info = self.channel_with(worker_key, payout)?;
            let address = basechain(info.channel);
            match chain.channel_state(&address).await.map_err(chain_err)? {
                Some(s) if s.status == ChannelStatus::Open => return Ok(info),
                None => {
                    chain
                        .open_channel(&channel_params(&info.terms), info.deposit as u128)
                        .await
                        .map_err(chain_err)?;
                    let deadline = std::time::Instant::now() + OPEN_WAIT;
                    while std::time::Instant::now() < deadline {
                        if let Some(s) = chain.channel_state(&address).await.map_err(chain_err)? {
                            if s.status == ChannelStatus::Open {
                                return Ok(info);
                            }
                        }
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                    return Err(PaymentError::NotOpen(format!(
                        "opened but not open within {OPEN_WAIT:?}"
                    )));
                }
                Some(s) => self.retire(&info.channel, &format!("{:?}", s.status))?,
            }
        }
        Err(PaymentError::NotOpen("no usable channel".into()))
    }

    /// Marks a channel spent (closing or closed on chain): no more jobs go through it.
    fn retire(&self, channel: &[u8; 32], why: &str) -> Result<(), PaymentError> {
        tracing::info!(channel = %hex::encode(channel), "channel retired: {why}");
        let _guard = self.lock.lock().expect("ledger lock");
        if let Some(mut r) = self.journal.client(channel)? {
            // A channel whose promises equal its deposit is never picked again.
            r.deposit = r.paid;
            self.journal.record_client(channel, &r)?;
        }
        Ok(())
    }

    /// Waits until no other job of this process pays through `channel`: one job at a time
    /// per channel, so each quote's view of the channel is exact.
    pub async fn lock_channel(&self, channel: [u8; 32]) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = self
            .in_use
            .lock()
            .expect("ledger lock")
            .entry(channel)
            .or_default()
            .clone();
        lock.lock_owned().await
    }

    /// The settings.
    pub fn config(&self) -> &PaymentConfig {
        &self.config
    }

    /// The journal.
    pub fn journal(&self) -> &Arc<Journal> {
        &self.journal
    }

    /// Every channel in the journal.
    pub fn channels(&self) -> Result<Vec<ClientChannelInfo>, PaymentError> {
        Ok(self
            .journal
            .client_channels()?
            .into_iter()
            .filter_map(|(channel, r)| info(channel, &r))
            .collect())
    }

    /// The channel with the worker whose voucher key is `worker_key` and payout `payout`;
    /// a new one (journalled with a fresh random `channel_id` and the configured deposit)
    /// when there is none yet.
    pub fn channel_with(
        &self,
        worker_key: [u8; 32],
        payout: [u8; 32],
    ) -> Result<ClientChannelInfo, PaymentError> {
        let _guard = self.lock.lock().expect("ledger lock");
        if let Some(found) = self.channels()?.into_iter().find(|c| {
            c.terms.worker_key == worker_key
                && c.terms.worker_payout == payout
                && c.terms.client_key == self.key.verifying_key().to_bytes()
                && c.paid < c.deposit
        }) {
            return Ok(found);
        }
        let terms = ChannelTerms {
            channel_id: random_u64(),
            client_key: self.key.verifying_key().to_bytes(),
            worker_key,
            client_address: self.address,
            worker_payout: payout,
            challenge_period: self.config.challenge_period,
            worker_timeout: self.config.worker_timeout,
        };
        let channel = channel_address(&terms)?;
        let record = ClientRecord {
            terms: Some(terms),
            deposit: self.config.deposit,
            paid: 0,
            seq: 0,
            last: None,
        };
        self.journal.record_client(&channel, &record)?;
        Ok(info(channel, &record).expect("terms set"))
    }

    /// The job's payment terms on `channel`, with price ceiling `max_price`.
    pub fn terms(&self, c: &ClientChannelInfo, max_price: JobPrice) -> PaymentTerms {
        PaymentTerms {
            channel: c.channel,
            channel_id: c.terms.channel_id,
            client_key: c.terms.client_key,
            client_address: c.terms.client_address,
            challenge_period: c.terms.challenge_period,
            worker_timeout: c.terms.worker_timeout,
            deposit: c.deposit,
            max_price,
        }
    }

    /// Signs a voucher raising `channel`'s total to `cumulative` and journals it; `None`
    /// when that much is already signed. Send it only after this returns.
    pub fn pay(
        &self,
        channel: &[u8; 32],
        cumulative: u64,
        job: u64,
    ) -> Result<Option<Payment>, PaymentError> {
        let _guard = self.lock.lock().expect("ledger lock");
        let record = self
            .journal
            .client(channel)?
            .ok_or_else(|| PaymentError::UnknownChannel(hex::encode(channel)))?;
        let mut core = ClientChannel::restore(
            *channel,
            record.deposit,
            self.key.clone(),
            record.paid,
            record.seq,
        );
        let Some(v) = core.pay_up_to(cumulative)? else {
            return Ok(None);
        };
        self.journal.record_client(
            channel,
            &ClientRecord {
                paid: core.paid(),
                seq: core.seq(),
                last: Some(v),
                ..record
            },
        )?;
        Ok(Some(wire(&v, job)))
    }

    /// The last voucher signed on `channel`, to send again when the worker missed it.
    pub fn last(&self, channel: &[u8; 32], job: u64) -> Result<Option<Payment>, PaymentError> {
        Ok(self
            .journal
            .client(channel)?
            .and_then(|r| r.last)
            .map(|v| wire(&v, job)))
    }
}

fn wire(v: &SignedVoucher, job: u64) -> Payment {
    Payment {
        id: job,
        cumulative: v.voucher.cumulative,
        seq: v.voucher.seq,
        signature: v.signature.to_vec(),
    }
}

fn info(channel: [u8; 32], r: &ClientRecord) -> Option<ClientChannelInfo> {
    Some(ClientChannelInfo {
        channel,
        terms: r.terms?,
        deposit: r.deposit,
        paid: r.paid,
        seq: r.seq,
    })
}

fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).expect("the OS random source");
    u64::from_le_bytes(b)
}
