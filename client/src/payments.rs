//! Paying for jobs: the channels and journals behind the job sessions' payment rules.
//!
//! A job is paid through a payment channel between the client and the worker (a TON
//! contract, `ton/contract/`). The client names the channel in its request
//! ([`PaymentTerms`]); the rules (the channel bound to the requesting peer, quote, billing,
//! credit, vouchers) are the sessions' in `cocoon-job`. This module keeps what they act on:
//! the worker's channel cores, one slot per channel (`cocoon_worker::payments::WorkerLedger::lease`), the client's
//! channel pool ([`ClientLedger::acquire`]), the deposits read on chain, and the durable
//! journal both sides write through its owner thread before acting: the client each voucher
//! before sending it, the worker each voucher before streaming on its credit, so after a
//! `kill -9` nothing is lost and nothing is paid twice. A client that lost track
//! (it crashed mid-job) learns in the next quote what the worker delivered and pays it; a
//! worker that crashed before a voucher reached it gets the client's journalled voucher
//! again in the next job.
//!
//! Without a chain the channel is off-chain only: the worker takes the client's word for
//! the deposit and the vouchers are claims it cannot yet enforce. With a chain the worker
//! reads the deposit from the contract (`cocoon_worker::settlement`).

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cocoon_gossip::Price;
use cocoon_ledger::journal::{
    ChannelTerms, ClientRecord, Journal, JournalError, JournalWriter, Write,
};
use cocoon_ledger::voucher::SignedVoucher;
use cocoon_p2p::job::session::{ClientChannelState, ClientPayment};
use cocoon_p2p::job::{JobPrice, PaymentTerms};
use cocoon_ton::client::ChannelClient;
use cocoon_ton::contract::{ChannelStatus, TermsExt};
use ed25519_dalek::SigningKey;

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
    /// Client: the largest credit limit a worker may quote, nanoTON: what the client risks
    /// to a worker lying about its deliveries after the client crashed. Default: 10,000,000
    /// (0.01 TON, ten times the worker default).
    pub max_credit: u64,
    /// Client: the deposit of a new channel, nanoTON. Default: 1 TON.
    pub deposit: u64,
    /// Client: a new channel's challenge window, seconds. Default: 3,600.
    pub challenge_period: u32,
    /// Client: a new channel's worker timeout, seconds. Default: 30 days.
    pub worker_timeout: u32,
    /// Client: the price ceiling sent with a job, as a multiple of the advertised price
    /// (prices move between adverts). Default: 1.25.
    pub price_slack: f64,
    /// Client: most channels open with one worker at a time. A channel carries one job at a
    /// time, so this bounds the client's concurrent jobs on one worker (a gateway's); each
    /// channel holds its own deposit. Default: 4.
    pub channels_per_worker: usize,
}

impl Default for PaymentConfig {
    fn default() -> Self {
        Self {
            credit_limit: 1_000_000,
            voucher_timeout: Duration::from_secs(10),
            pay_every: 16,
            max_credit: 10_000_000,
            deposit: 1_000_000_000,
            challenge_period: 3600,
            worker_timeout: 30 * 86_400,
            price_slack: 1.25,
            channels_per_worker: 4,
        }
    }
}

/// Why a payment step failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
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
    /// The previous job on the channel did not stop in time.
    #[error("the previous job on this channel did not stop within {0:?}")]
    ChannelBusy(Duration),
    /// The wallet cannot fund a new channel.
    #[error("the wallet holds {balance} nanoTON; opening a channel needs {need}")]
    InsufficientFunds {
        /// The wallet's balance.
        balance: u128,
        /// Deposit, reserve and fees.
        need: u128,
    },
}

impl PaymentError {
    /// The client lacks the money for the job (its channel's deposit does not cover it, or
    /// its wallet cannot fund a channel), as opposed to a fault of the worker or the chain.
    pub fn out_of_funds(&self) -> bool {
        matches!(self, Self::Pay(_) | Self::InsufficientFunds { .. })
    }
}

/// How long a worker trusts a deposit it read on chain before reading it again.
pub const DEPOSIT_TTL: Duration = Duration::from_secs(30);

/// The journal's file name in a node's data dir.
pub const JOURNAL_FILE: &str = "journal.redb";

/// The wire price from the market's.
pub fn job_price(p: Price) -> JobPrice {
    JobPrice {
        prompt_per_mtok: p.prompt_per_mtok,
        completion_per_mtok: p.completion_per_mtok,
    }
}

/// How long a client waits for a channel it opened to show as open on chain.
pub const OPEN_WAIT: Duration = Duration::from_secs(90);

/// What a wallet must hold beyond the deposit and the contract's reserve to open a channel:
/// the deploy's fees (measured 0.014 TON on mainnet settings, see bench/payments.md) with
/// room to spare.
pub const OPEN_FEES: u128 = 50_000_000;

/// A channel reserved for one job: its state when reserved, and the guard that keeps this
/// process's other jobs off it until dropped.
#[derive(Debug)]
pub struct Reserved {
    /// The channel.
    pub info: ClientChannelInfo,
    /// Held for the job.
    pub guard: tokio::sync::OwnedMutexGuard<()>,
}

/// How long to wait for a journal another process has open (another `cocoon infer` on the
/// same data dir) before giving up.
pub const JOURNAL_WAIT: Duration = Duration::from_secs(60);

/// Opens the journal at `path`, waiting up to [`JOURNAL_WAIT`] for another process to
/// let go of it.
pub fn open_journal(path: &Path) -> Result<Arc<Journal>, PaymentError> {
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

/// The client's side: its channels, by worker, journalled.
pub struct ClientLedger {
    writer: JournalWriter,
    key: SigningKey,
    address: [u8; 32],
    config: PaymentConfig,
    /// Serialises picking a channel (reads) and opening one (a journal write).
    lock: tokio::sync::Mutex<()>,
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
    /// The last voucher signed.
    pub last: Option<SignedVoucher>,
    /// A job on it has not ended cleanly.
    pub job_open: bool,
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
            writer: JournalWriter::start(open_journal(path)?)?,
            key,
            address,
            config,
            lock: tokio::sync::Mutex::new(()),
            in_use: Mutex::new(HashMap::new()),
            chain: None,
        })
    }

    /// Opens channels on `chain` (deploy + deposit) instead of off-chain only.
    pub fn with_chain(mut self, chain: Arc<ChannelClient>) -> Self {
        self.chain = Some(chain);
        self
    }

    /// A channel with a worker reserved for one job, with a chain also opened there (the
    /// open is sent after the channel is journalled, so a crash in between finds it again;
    /// one found closed or closing is retired for a new one). See `reserve`.
    pub async fn acquire(
        &self,
        worker_key: [u8; 32],
        payout: [u8; 32],
        need: u64,
    ) -> Result<Reserved, PaymentError> {
        for _ in 0..3 {
            let reserved = self.reserve(worker_key, payout, need).await?;
            let Some(chain) = &self.chain else {
                return Ok(reserved);
            };
            if self.ensure_open(chain, &reserved.info).await? {
                return Ok(reserved);
            }
        }
        Err(PaymentError::NotOpen("no usable channel".into()))
    }

    /// The channel a job with this worker would use now ([`Self::acquire`], released at
    /// once).
    pub async fn channel_for(
        &self,
        worker_key: [u8; 32],
        payout: [u8; 32],
    ) -> Result<ClientChannelInfo, PaymentError> {
        Ok(self.acquire(worker_key, payout, 1).await?.info)
    }

    /// Opens `info`'s channel on chain unless it is open; `false` when it was found closing
    /// or closed (and is now retired).
    async fn ensure_open(
        &self,
        chain: &ChannelClient,
        info: &ClientChannelInfo,
    ) -> Result<bool, PaymentError> {
        let chain_err = |e: cocoon_ton::chain::ChainError| PaymentError::Chain(e.to_string());
        let address = cocoon_ton::wallet::basechain(info.channel);
        match chain.channel_state(&address).await.map_err(chain_err)? {
            Some(s) if s.status == ChannelStatus::Open => Ok(true),
            None => {
                let need =
                    u128::from(info.deposit) + cocoon_ton::contract::DEPOSIT_RESERVE + OPEN_FEES;
                let balance = chain
                    .wallet()
                    .chain()
                    .account(chain.wallet().address())
                    .await
                    .map_err(chain_err)?
                    .balance;
                if balance < need {
                    return Err(PaymentError::InsufficientFunds { balance, need });
                }
                chain
                    .open_channel(&info.terms.params(), info.deposit as u128)
                    .await
                    .map_err(chain_err)?;
                let deadline = std::time::Instant::now() + OPEN_WAIT;
                while std::time::Instant::now() < deadline {
                    if let Some(s) = chain.channel_state(&address).await.map_err(chain_err)? {
                        if s.status == ChannelStatus::Open {
                            return Ok(true);
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(PaymentError::NotOpen(format!(
                    "opened but not open within {OPEN_WAIT:?}"
                )))
            }
            Some(s) => {
                self.retire(&info.channel, &format!("{:?}", s.status))
                    .await?;
                Ok(false)
            }
        }
    }

    /// Marks a channel spent (closing or closed on chain): no more jobs go through it.
    async fn retire(&self, channel: &[u8; 32], why: &str) -> Result<(), PaymentError> {
        tracing::info!(channel = %hex::encode(channel), "channel retired: {why}");
        let _guard = self.lock.lock().await;
        if let Some(mut r) = self.writer.journal().client(channel)? {
            // A channel whose promises equal its deposit is never picked again.
            r.deposit = r.paid;
            self.writer.write(Write::Client(*channel, r)).await?;
        }
        Ok(())
    }

    /// Reserves a channel with the worker whose voucher key is `worker_key` and payout
    /// `payout` for one job of up to `need` nanoTON (one job at a time per channel, so each
    /// quote's view of the channel is exact): a free one with `need` left; else a new one
    /// (journalled with a fresh random `channel_id` and the configured deposit) while fewer
    /// than `channels_per_worker` are usable; else it waits for the first to come free. A
    /// channel with less than `need` left is not used again (what is left comes back at
    /// settlement). Fails at once when the configured deposit is below `need`.
    async fn reserve(
        &self,
        worker_key: [u8; 32],
        payout: [u8; 32],
        need: u64,
    ) -> Result<Reserved, PaymentError> {
        let need = need.max(1);
        if need > self.config.deposit {
            return Err(PaymentError::Pay(
                cocoon_ledger::channel::PayError::InsufficientDeposit {
                    deposit: self.config.deposit,
                    wanted: need,
                },
            ));
        }
        let enough = |c: &ClientChannelInfo| c.deposit.saturating_sub(c.paid) >= need;
        loop {
            let busy: Vec<([u8; 32], Arc<tokio::sync::Mutex<()>>)> = {
                // Reading and locking under the ledger lock: the state read is the state
                // the job starts from (only the job holding a channel writes it).
                let _guard = self.lock.lock().await;
                let usable: Vec<ClientChannelInfo> = self
                    .channels()?
                    .into_iter()
                    .filter(|c| {
                        c.terms.worker_key == worker_key
                            && c.terms.worker_payout == payout
                            && c.terms.client_key == self.key.verifying_key().to_bytes()
                            && enough(c)
                    })
                    .collect();
                for c in &usable {
                    if let Ok(guard) = self.mutex_of(c.channel).try_lock_owned() {
                        return Ok(Reserved { info: *c, guard });
                    }
                }
                if usable.len() < self.config.channels_per_worker.max(1) {
                    let info = self.new_channel(worker_key, payout).await?;
                    let guard = self
                        .mutex_of(info.channel)
                        .try_lock_owned()
                        .expect("nobody holds a channel made just now");
                    return Ok(Reserved { info, guard });
                }
                usable
                    .iter()
                    .map(|c| (c.channel, self.mutex_of(c.channel)))
                    .collect()
            };
            let (guard, i, _) = futures::future::select_all(
                busy.iter().map(|(_, m)| Box::pin(m.clone().lock_owned())),
            )
            .await;
            let _guard = self.lock.lock().await;
            if let Some(info) = self
                .writer
                .journal()
                .client(&busy[i].0)?
                .and_then(|r| info(busy[i].0, &r))
                .filter(enough)
            {
                return Ok(Reserved { info, guard });
            }
        }
    }

    fn mutex_of(&self, channel: [u8; 32]) -> Arc<tokio::sync::Mutex<()>> {
        self.in_use
            .lock()
            .expect("ledger lock")
            .entry(channel)
            .or_default()
            .clone()
    }
    /// The settings.
    pub fn config(&self) -> &PaymentConfig {
        &self.config
    }

    /// The journal.
    pub fn journal(&self) -> &Arc<Journal> {
        self.writer.journal()
    }

    /// Every channel in the journal.
    pub fn channels(&self) -> Result<Vec<ClientChannelInfo>, PaymentError> {
        Ok(self
            .writer
            .journal()
            .client_channels()?
            .into_iter()
            .filter_map(|(channel, r)| info(channel, &r))
            .collect())
    }

    /// A new channel with the worker (caller holds `self.lock`).
    async fn new_channel(
        &self,
        worker_key: [u8; 32],
        payout: [u8; 32],
    ) -> Result<ClientChannelInfo, PaymentError> {
        let terms = ChannelTerms {
            channel_id: random_u64(),
            client_key: self.key.verifying_key().to_bytes(),
            worker_key,
            client_address: self.address,
            worker_payout: payout,
            challenge_period: self.config.challenge_period,
            worker_timeout: self.config.worker_timeout,
        };
        let channel = terms
            .address()
            .map_err(|e| PaymentError::Terms(e.to_string()))?;
        let record = ClientRecord {
            terms: Some(terms),
            deposit: self.config.deposit,
            paid: 0,
            seq: 0,
            last: None,
            job_open: false,
        };
        self.writer
            .write(Write::Client(channel, record.clone()))
            .await?;
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

    /// What a job's session needs of a reserved channel.
    pub fn payment(&self, c: &ClientChannelInfo) -> ClientPayment {
        ClientPayment {
            channel: c.channel,
            key: self.key.clone(),
            state: ClientChannelState {
                deposit: c.deposit,
                paid: c.paid,
                seq: c.seq,
                last: c.last,
                job_open: c.job_open,
            },
        }
    }

    /// Durably records what a job's session signed on `c` (before its voucher is sent).
    pub async fn record(
        &self,
        c: &ClientChannelInfo,
        state: &ClientChannelState,
    ) -> Result<(), PaymentError> {
        let record = ClientRecord {
            terms: Some(c.terms),
            deposit: state.deposit,
            paid: state.paid,
            seq: state.seq,
            last: state.last,
            job_open: state.job_open,
        };
        Ok(self.writer.write(Write::Client(c.channel, record)).await?)
    }
}

fn info(channel: [u8; 32], r: &ClientRecord) -> Option<ClientChannelInfo> {
    Some(ClientChannelInfo {
        channel,
        terms: r.terms?,
        deposit: r.deposit,
        paid: r.paid,
        seq: r.seq,
        last: r.last,
        job_open: r.job_open,
    })
}

fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).expect("the OS random source");
    u64::from_le_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    const WORKER: [u8; 32] = [9; 32];
    const PAYOUT: [u8; 32] = [8; 32];

    fn ledger(dir: &Path, pool: usize) -> Arc<ClientLedger> {
        let config = PaymentConfig {
            channels_per_worker: pool,
            deposit: 1_000_000,
            ..Default::default()
        };
        let key = SigningKey::from_bytes(&[7; 32]);
        Arc::new(ClientLedger::open(&dir.join("journal.redb"), key, [1; 32], config).unwrap())
    }

    /// What a job's session does when it pays: sign up to `total`, journal.
    async fn sign(l: &ClientLedger, info: &ClientChannelInfo, total: u64) {
        let mut core = cocoon_ledger::channel::ClientChannel::restore(
            info.channel,
            info.deposit,
            l.key.clone(),
            info.paid,
            info.seq,
        );
        let v = core.pay_up_to(total).unwrap().unwrap();
        let state = ClientChannelState {
            deposit: info.deposit,
            paid: core.paid(),
            seq: core.seq(),
            last: Some(v),
            job_open: false,
        };
        l.record(info, &state).await.unwrap();
    }

    #[tokio::test]
    async fn concurrent_jobs_get_a_channel_each_up_to_the_pool_then_wait_for_one() {
        let dir = tempfile::tempdir().unwrap();
        let l = ledger(dir.path(), 2);
        let a = l.acquire(WORKER, PAYOUT, 100).await.unwrap();
        let b = l.acquire(WORKER, PAYOUT, 100).await.unwrap();
        assert_ne!(a.info.channel, b.info.channel);

        // The pool is full: a third job waits until one is released, and gets its state.
        let l2 = l.clone();
        let third = tokio::spawn(async move { l2.acquire(WORKER, PAYOUT, 100).await.unwrap() });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!third.is_finished(), "waits while both channels are busy");
        let (b_channel, a_channel) = (b.info.channel, a.info.channel);
        sign(&l, &b.info, 500).await;
        drop(b);
        let c = third.await.unwrap();
        assert_eq!(c.info.channel, b_channel);
        assert_eq!(
            (c.info.paid, c.info.seq),
            (500, 1),
            "the state after the last job"
        );
        drop(c);
        assert_eq!(l.channels().unwrap().len(), 2);

        // A channel without room for the job is passed over, and one is opened beside it.
        sign(&l, &a.info, 999_990).await;
        drop(a);
        let roomy = l.acquire(WORKER, PAYOUT, 100).await.unwrap();
        assert_eq!(roomy.info.channel, b_channel);
        let fresh = l.acquire(WORKER, PAYOUT, 100).await.unwrap();
        assert!(fresh.info.channel != a_channel && fresh.info.channel != b_channel);
        assert_eq!(fresh.info.paid, 0);

        // Another worker has a pool of its own.
        let other = l.acquire([3; 32], PAYOUT, 100).await.unwrap();
        assert_eq!(other.info.terms.worker_key, [3; 32]);

        // A job dearer than any deposit is out of funds at once.
        let e = l.acquire(WORKER, PAYOUT, 2_000_000).await.unwrap_err();
        assert!(e.out_of_funds(), "{e}");
    }
}
