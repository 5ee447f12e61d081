//! The node's hands on chain: [`WalletClient`] sends internal messages from a wallet v4r2
//! and waits until the wallet has processed them; [`ChannelClient`] turns channel and anchor
//! operations into such messages with the values README "Value policy" asks for, and reads
//! the contracts' getters.
//!
//! "Sent" means the wallet's seqno moved: the wallet executed the external message and
//! emitted the internal one. On a real chain the contract's own transaction follows a few
//! seconds later (poll [`ChannelClient::channel_state`]); the local chain executes the whole
//! message tree before `sendBoc` answers.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cocoon_ledger::voucher::{CloseStatement, SignedVoucher};
use tokio::sync::Mutex;
use tonlib_core::cell::Cell;
use tonlib_core::TonAddress;

use crate::chain::{AccountState, AccountStatus, Chain, ChainError, StackEntry, StackReader};
use crate::contract::{
    anchor_body, exit, AnchorEntry, ChannelMsg, ChannelParams, ChannelState, Contract,
    ANCHOR_MIN_VALUE, CLOSE_VALUE, DEPOSIT_RESERVE,
};
use crate::wallet::{OutMsg, Wallet};

/// How a [`WalletClient`] waits for its messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WalletConfig {
    /// How long to wait for the seqno to move before [`ChainError::Timeout`]: 60 s.
    pub timeout: Duration,
    /// Pause between seqno polls: 1 s (toncenter without a key allows 1 request/s).
    pub poll_interval: Duration,
    /// How long an external message stays valid (`valid_until = chain time + this`): 60 s.
    pub valid_for: Duration,
}

impl Default for WalletConfig {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(60),
            poll_interval: Duration::from_secs(1),
            valid_for: Duration::from_secs(60),
        }
    }
}

impl WalletConfig {
    /// For the local chain, which executes messages at once: polls every 50 ms.
    pub fn local() -> Self {
        Self {
            poll_interval: Duration::from_millis(50),
            ..Self::default()
        }
    }
}

/// A message the wallet executed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SentTx {
    /// The seqno the external message used.
    pub seqno: u32,
}

/// A wallet on a chain. Sends are serialised (one seqno at a time).
pub struct WalletClient {
    wallet: Wallet,
    chain: Arc<dyn Chain>,
    config: WalletConfig,
    sending: Mutex<()>,
}

impl WalletClient {
    /// The `wallet` on `chain`.
    pub fn new(wallet: Wallet, chain: Arc<dyn Chain>, config: WalletConfig) -> Self {
        Self {
            wallet,
            chain,
            config,
            sending: Mutex::new(()),
        }
    }

    /// The wallet's address.
    pub fn address(&self) -> &TonAddress {
        self.wallet.address()
    }

    /// The chain.
    pub fn chain(&self) -> &Arc<dyn Chain> {
        &self.chain
    }

    /// The wallet's seqno; 0 while it is not deployed.
    pub async fn seqno(&self) -> Result<u32, ChainError> {
        Ok(self.state().await?.1)
    }

    /// The wallet's account and seqno.
    async fn state(&self) -> Result<(AccountState, u32), ChainError> {
        let account = self.chain.account(self.address()).await?;
        if account.status != AccountStatus::Active {
            return Ok((account, 0));
        }
        let stack = self
            .chain
            .run_get_method(self.address(), "seqno", vec![])
            .await?
            .ok("seqno")?;
        Ok((account, StackReader::new(&stack).uint("seqno")?))
    }

    /// Sends `msgs` (at most [`MAX_MESSAGES`](crate::wallet::MAX_MESSAGES)) in one external
    /// message, deploying the wallet if needed, and waits until the wallet executed it.
    pub async fn send(&self, msgs: &[OutMsg]) -> Result<SentTx, ChainError> {
        let _one_at_a_time = self.sending.lock().await;
        let (account, seqno) = self.state().await?;
        let deployed = account.status == AccountStatus::Active;
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let now = wall.max(account.chain_time.unwrap_or(0).into());
        let valid_until = u32::try_from(now + self.config.valid_for.as_secs()).unwrap_or(u32::MAX);
        let boc = self
            .wallet
            .external_transfer(seqno, valid_until, msgs, !deployed)?;
        self.chain.send_boc(&boc).await?;
        self.wait_past(seqno).await?;
        Ok(SentTx { seqno })
    }

    /// Polls until the seqno is above `seqno`; errors while polling (rate limits) are retried.
    async fn wait_past(&self, seqno: u32) -> Result<(), ChainError> {
        let deadline = tokio::time::Instant::now() + self.config.timeout;
        let mut last_error = None;
        loop {
            match self.seqno().await {
                Ok(now) if now > seqno => return Ok(()),
                Ok(_) => {}
                Err(e) => last_error = Some(e),
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ChainError::Timeout(format!(
                    "seqno of {} still {seqno} after {:?} (last error: {last_error:?})",
                    self.address(),
                    self.config.timeout
                )));
            }
            tokio::time::sleep(self.config.poll_interval).await;
        }
    }
}

/// Channel and anchor operations from one wallet (the client's or the worker's).
pub struct ChannelClient {
    wallet: WalletClient,
}

impl ChannelClient {
    /// Operations sent from `wallet`.
    pub fn new(wallet: WalletClient) -> Self {
        Self { wallet }
    }

    /// The wallet.
    pub fn wallet(&self) -> &WalletClient {
        &self.wallet
    }

    /// Sends `msg` to `channel` with `value` nanoTON, bounceable.
    pub async fn send_channel(
        &self,
        channel: &TonAddress,
        msg: ChannelMsg,
        value: u128,
    ) -> Result<SentTx, ChainError> {
        self.send_body(channel, value, msg.body(0)?, None).await
    }

    async fn send_body(
        &self,
        dest: &TonAddress,
        value: u128,
        body: Cell,
        state_init: Option<&Contract>,
    ) -> Result<SentTx, ChainError> {
        let mut msg = OutMsg::new(dest.clone(), value, true).with_body(body);
        msg.state_init = state_init.map(|c| c.state_init.clone());
        self.wallet.send(&[msg]).await
    }

    /// Deploys and opens the channel of `params` (sent by the client's wallet, which must be
    /// `params.client_address`) with `deposit` credited: attaches `deposit +
    /// DEPOSIT_RESERVE`. Returns the channel contract.
    pub async fn open_channel(
        &self,
        params: &ChannelParams,
        deposit: u128,
    ) -> Result<(Contract, SentTx), ChainError> {
        let contract = params.contract()?;
        let body = ChannelMsg::Open.body(0)?;
        let value = deposit + DEPOSIT_RESERVE;
        let sent = self
            .send_body(&contract.address, value, body, Some(&contract))
            .await?;
        Ok((contract, sent))
    }

    /// Adds `amount` to the deposit (attaches `amount + DEPOSIT_RESERVE`).
    pub async fn top_up(&self, channel: &TonAddress, amount: u128) -> Result<SentTx, ChainError> {
        let value = amount + DEPOSIT_RESERVE;
        self.send_channel(channel, ChannelMsg::TopUp, value).await
    }

    /// Starts the unilateral close with the worker's best voucher.
    pub async fn worker_close(
        &self,
        channel: &TonAddress,
        voucher: &SignedVoucher,
    ) -> Result<SentTx, ChainError> {
        let msg = ChannelMsg::WorkerClose(*voucher);
        self.send_channel(channel, msg, CLOSE_VALUE).await
    }

    /// Answers a close with a newer voucher.
    pub async fn challenge(
        &self,
        channel: &TonAddress,
        voucher: &SignedVoucher,
    ) -> Result<SentTx, ChainError> {
        let msg = ChannelMsg::Challenge(*voucher);
        self.send_channel(channel, msg, CLOSE_VALUE).await
    }

    /// Starts the unilateral close as the client.
    pub async fn client_close(&self, channel: &TonAddress) -> Result<SentTx, ChainError> {
        self.send_channel(channel, ChannelMsg::ClientClose, CLOSE_VALUE)
            .await
    }

    /// Pays out after the challenge window.
    pub async fn finalize(&self, channel: &TonAddress) -> Result<SentTx, ChainError> {
        self.send_channel(channel, ChannelMsg::Finalize, CLOSE_VALUE)
            .await
    }

    /// Closes at once with a statement both parties signed.
    pub async fn coop_close(
        &self,
        channel: &TonAddress,
        close: &CloseStatement,
        client_sig: [u8; 64],
        worker_sig: [u8; 64],
    ) -> Result<SentTx, ChainError> {
        let msg = ChannelMsg::CoopClose {
            close: *close,
            client_sig,
            worker_sig,
        };
        self.send_channel(channel, msg, CLOSE_VALUE).await
    }

    /// Takes the whole deposit back after the worker timeout.
    pub async fn timeout_refund(&self, channel: &TonAddress) -> Result<SentTx, ChainError> {
        self.send_channel(channel, ChannelMsg::TimeoutRefund, CLOSE_VALUE)
            .await
    }

    /// `get_channel()`; `None` while the contract is not deployed.
    pub async fn channel_state(
        &self,
        channel: &TonAddress,
    ) -> Result<Option<ChannelState>, ChainError> {
        self.getter(channel, "get_channel", vec![])
            .await?
            .map(|stack| ChannelState::from_stack(&stack))
            .transpose()
    }

    /// Posts a receipt batch's Merkle root to `anchor` (deploying it on its first post) with
    /// [`ANCHOR_MIN_VALUE`].
    pub async fn anchor(
        &self,
        anchor: &Contract,
        root: &[u8; 32],
        batch_size: u32,
    ) -> Result<SentTx, ChainError> {
        let account = self.wallet.chain.account(&anchor.address).await?;
        let deploy = (account.status != AccountStatus::Active).then_some(anchor);
        let body = anchor_body(root, batch_size, 0)?;
        self.send_body(&anchor.address, ANCHOR_MIN_VALUE, body, deploy)
            .await
    }

    /// Number of batches anchored (0 while the anchor is not deployed).
    pub async fn anchor_count(&self, anchor: &TonAddress) -> Result<u32, ChainError> {
        match self.getter(anchor, "get_count", vec![]).await? {
            Some(stack) => StackReader::new(&stack).uint("count"),
            None => Ok(0),
        }
    }

    /// Batch `index` of `anchor`; `None` if there is no such batch.
    pub async fn anchor_root(
        &self,
        anchor: &TonAddress,
        index: u32,
    ) -> Result<Option<AnchorEntry>, ChainError> {
        let args = vec![StackEntry::from(u64::from(index))];
        match self.getter(anchor, "get_root", args).await {
            Err(ChainError::GetMethod {
                exit_code: exit::NO_SUCH_ANCHOR,
                ..
            }) => Ok(None),
            other => other?.map(|s| AnchorEntry::from_stack(&s)).transpose(),
        }
    }

    /// Runs a getter; `None` when the account is not deployed.
    async fn getter(
        &self,
        address: &TonAddress,
        method: &str,
        args: Vec<StackEntry>,
    ) -> Result<Option<Vec<StackEntry>>, ChainError> {
        let chain = &self.wallet.chain;
        let error = match chain.run_get_method(address, method, args).await {
            Ok(result) => match result.ok(method) {
                Ok(stack) => return Ok(Some(stack)),
                Err(e) => e,
            },
            Err(e) => e,
        };
        // toncenter and the local chain refuse getters on undeployed accounts differently
        // (an exit code, an API error): ask the account.
        match chain.account(address).await?.status {
            AccountStatus::Active => Err(error),
            _ => Ok(None),
        }
    }
}
