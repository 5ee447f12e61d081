//! `cocoon wallet`, `cocoon channel` and `cocoon ledger`: a node's money, from its data dir.
//!
//! The node's identity key is also its TON wallet's key (wallet v4r2, basechain) and the key
//! of its payment channels, so a data dir is an account: `wallet` shows its address and
//! balance, `channel` lists, opens, tops up and closes the client's channels (journal and
//! chain), `ledger settle` settles a stopped worker's channels now. Everything returns
//! plain serialisable rows; the binary prints them.

use std::path::Path;
use std::sync::Arc;

use cocoon_ledger::journal::{Journal, JournalError};
use cocoon_ton::client::ChannelClient;
use cocoon_ton::contract::{ChannelState, ChannelStatus};
use ed25519_dalek::SigningKey;
use serde::Serialize;

use cocoon_client::payments::{ClientLedger, PaymentConfig, PaymentError, JOURNAL_FILE};
use cocoon_ton::wallet::{account_of, basechain};

use crate::payments::WorkerLedger;

/// Why an account command failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AccountError {
    /// The identity key could not be read or made.
    #[error(transparent)]
    Identity(#[from] cocoon_p2p::identity::IdentityError),
    /// The identity is not an ed25519 key.
    #[error("the identity in {0} is not an ed25519 key")]
    NotEd25519(String),
    /// A payment step failed.
    #[error(transparent)]
    Payment(#[from] PaymentError),
    /// The journal failed.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// The command needs `--chain`.
    #[error("this needs a chain: give --chain URL")]
    NoChain,
    /// The channel is not in this data dir's journal.
    #[error("no channel {0} in the journal")]
    UnknownChannel(String),
    /// Bad input.
    #[error("{0}")]
    Invalid(String),
}

fn chain_err(e: impl std::fmt::Display) -> AccountError {
    AccountError::Payment(PaymentError::Chain(e.to_string()))
}

/// The signing key of the identity in `data_dir` (made when missing).
pub fn key(data_dir: &Path) -> Result<SigningKey, AccountError> {
    let keypair = cocoon_p2p::identity::load_or_create(data_dir)?;
    cocoon_p2p::identity::signing_key(&keypair)
        .ok_or_else(|| AccountError::NotEd25519(data_dir.display().to_string()))
}

/// A wallet as `cocoon wallet show` prints it.
#[derive(Clone, Debug, Serialize)]
pub struct WalletInfo {
    /// Raw address, `0:<hex>`.
    pub address: String,
    /// The ed25519 public key (hex): the channels' client or worker key.
    pub public_key: String,
    /// Balance, nanoTON (with a chain).
    pub balance: Option<String>,
    /// `active`, `uninitialized` (no transaction sent yet) or `frozen` (with a chain).
    pub state: Option<String>,
}

/// The wallet of `key`, with its balance when `chain` is given.
pub async fn wallet_info(
    key: &SigningKey,
    chain: Option<&ChannelClient>,
) -> Result<WalletInfo, AccountError> {
    let account = account_of(key).map_err(|e| PaymentError::Terms(e.to_string()))?;
    let mut info = WalletInfo {
        address: format!("0:{}", hex::encode(account)),
        public_key: hex::encode(key.verifying_key().to_bytes()),
        balance: None,
        state: None,
    };
    if let Some(chain) = chain {
        let state = chain
            .wallet()
            .chain()
            .account(&basechain(account))
            .await
            .map_err(chain_err)?;
        info.balance = Some(state.balance.to_string());
        info.state = Some(format!("{:?}", state.status).to_lowercase());
    }
    Ok(info)
}

/// One channel as `cocoon channel list` prints it.
#[derive(Clone, Debug, Serialize)]
pub struct ChannelRow {
    /// The contract's account id (hex).
    pub channel: String,
    /// `client` (we pay) or `worker` (we are paid).
    pub role: &'static str,
    /// The other party's key (hex).
    pub counterparty: String,
    /// Deposit as journalled, nanoTON.
    pub deposit: u64,
    /// The best voucher's amount (paid by the client / held by the worker), nanoTON.
    pub paid: u64,
    /// Its seq.
    pub seq: u64,
    /// Value delivered (worker side).
    pub delivered: Option<u64>,
    /// On-chain status (`open`, `closing`, `closed`, `unfunded`, `not deployed`), with a
    /// chain.
    pub onchain: Option<String>,
    /// On-chain deposit, nanoTON.
    pub onchain_deposit: Option<String>,
    /// On-chain settled amount, nanoTON.
    pub onchain_settled: Option<String>,
}

fn status(state: &Option<ChannelState>) -> String {
    match state {
        None => "not deployed".into(),
        Some(s) => format!("{:?}", s.status).to_lowercase(),
    }
}

/// Every channel in the journal at `data_dir`, both roles, with their on-chain state when
/// `chain` is given.
pub async fn channels(
    data_dir: &Path,
    chain: Option<&ChannelClient>,
) -> Result<Vec<ChannelRow>, AccountError> {
    let journal = Journal::open(&data_dir.join(JOURNAL_FILE))?;
    let mut rows = Vec::new();
    for (channel, r) in journal.client_channels()? {
        rows.push(ChannelRow {
            channel: hex::encode(channel),
            role: "client",
            counterparty: r
                .terms
                .map(|t| hex::encode(t.worker_key))
                .unwrap_or_default(),
            deposit: r.deposit,
            paid: r.paid,
            seq: r.seq,
            delivered: None,
            onchain: None,
            onchain_deposit: None,
            onchain_settled: None,
        });
    }
    for (channel, r) in journal.worker_channels()? {
        let best = r.state.best.map(|b| b.voucher);
        rows.push(ChannelRow {
            channel: hex::encode(channel),
            role: "worker",
            counterparty: hex::encode(r.client_key),
            deposit: r.deposit,
            paid: best.map_or(0, |b| b.cumulative),
            seq: best.map_or(0, |b| b.seq),
            delivered: Some(r.state.delivered),
            onchain: None,
            onchain_deposit: None,
            onchain_settled: None,
        });
    }
    if let Some(chain) = chain {
        for row in &mut rows {
            let id = parse_channel(&row.channel)?;
            let state = chain
                .channel_state(&basechain(id))
                .await
                .map_err(chain_err)?;
            row.onchain = Some(status(&state));
            row.onchain_deposit = state.as_ref().map(|s| s.deposit.to_string());
            row.onchain_settled = state.as_ref().map(|s| s.settled_amount.to_string());
        }
    }
    Ok(rows)
}

/// A channel id from hex.
pub fn parse_channel(hex_id: &str) -> Result<[u8; 32], AccountError> {
    hex::decode(hex_id.trim_start_matches("0:"))
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| AccountError::Invalid(format!("{hex_id:?} is not a 32-byte hex channel id")))
}

/// The client ledger of `data_dir` on `chain`.
pub fn client_ledger(
    data_dir: &Path,
    key: &SigningKey,
    chain: Arc<ChannelClient>,
    config: PaymentConfig,
) -> Result<ClientLedger, AccountError> {
    Ok(ClientLedger::open(
        &data_dir.join(JOURNAL_FILE),
        key.clone(),
        account_of(key).map_err(|e| PaymentError::Terms(e.to_string()))?,
        config,
    )?
    .with_chain(chain))
}

/// Opens (or finds) the channel with the worker whose key is `worker_key`, paid to
/// `payout`, with `deposit`.
pub async fn open(
    ledger: &ClientLedger,
    worker_key: [u8; 32],
    payout: [u8; 32],
) -> Result<String, AccountError> {
    let info = ledger.channel_for(worker_key, payout).await?;
    Ok(hex::encode(info.channel))
}

/// Adds `amount` nanoTON to a channel's deposit, on chain and then in the journal.
pub async fn top_up(
    data_dir: &Path,
    chain: &ChannelClient,
    channel: [u8; 32],
    amount: u64,
) -> Result<(), AccountError> {
    let journal = Journal::open(&data_dir.join(JOURNAL_FILE))?;
    let mut record = journal
        .client(&channel)?
        .ok_or_else(|| AccountError::UnknownChannel(hex::encode(channel)))?;
    chain
        .top_up(&basechain(channel), amount as u128)
        .await
        .map_err(chain_err)?;
    record.deposit = record.deposit.saturating_add(amount);
    journal.record_client(&channel, &record)?;
    Ok(())
}

/// The client's close: starts the unilateral close of an open channel (the worker has the
/// challenge window to post its best voucher), or finalizes one whose window is over.
/// Returns what it did.
pub async fn close(chain: &ChannelClient, channel: [u8; 32]) -> Result<&'static str, AccountError> {
    let address = basechain(channel);
    let state = chain
        .channel_state(&address)
        .await
        .map_err(chain_err)?
        .ok_or_else(|| AccountError::Invalid("the channel is not deployed".into()))?;
    let now = crate::settlement::chain_now(chain).await;
    match state.status {
        ChannelStatus::Open => {
            chain.client_close(&address).await.map_err(chain_err)?;
            Ok("client_close")
        }
        ChannelStatus::Closing if now >= state.window_ends() => {
            chain.finalize(&address).await.map_err(chain_err)?;
            Ok("finalize")
        }
        ChannelStatus::Closing => Err(AccountError::Invalid(format!(
            "closing; the challenge window ends at {}",
            state.window_ends()
        ))),
        other => Err(AccountError::Invalid(format!("the channel is {other:?}"))),
    }
}

/// `cocoon ledger settle`: settles every channel of the (stopped) worker at `data_dir` now.
pub async fn settle(
    data_dir: &Path,
    key: &SigningKey,
    chain: Arc<ChannelClient>,
) -> Result<Vec<crate::settlement::Settled>, AccountError> {
    let ledger = WorkerLedger::open(
        &data_dir.join(JOURNAL_FILE),
        key.verifying_key().to_bytes(),
        account_of(key).map_err(|e| PaymentError::Terms(e.to_string()))?,
        0,
    )?
    .with_chain(chain);
    let mut done = crate::settlement::settle_all(&ledger, &Default::default(), false, true).await?;
    if let Some(a) =
        crate::settlement::anchor_receipts(&ledger, &Default::default(), false, true).await?
    {
        done.push(crate::settlement::Settled {
            channel: hex::encode(a.root),
            action: "anchor",
            reason: None,
            amount: a.last + 1 - a.first,
        });
    }
    Ok(done)
}
