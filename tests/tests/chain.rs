//! The ledger's TON client end to end against the local chain (`ton/contract/localchain.mjs`,
//! the real TVM emulator behind the toncenter API): wallets v4r2 built and signed in Rust,
//! the compiled channel and anchor contracts, every channel operation, balances checked to
//! the nanoTON where the contract promises exactness.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{ensure, Context, Result};
use cocoon_ledger::voucher::{CloseStatement, SignedVoucher, Voucher};
use cocoon_ton::contract::{
    anchor_contract, exit, op, ChannelParams, ChannelState, ChannelStatus, CLOSE_VALUE,
};
use cocoon_ton::{
    merkle, AccountStatus, Chain, ChannelClient, LocalChain, LocalChainConfig, TonAddress, Wallet,
    WalletClient, WalletConfig,
};
use ed25519_dalek::SigningKey;

const TON: u128 = 1_000_000_000;
const CLIENT_SEED: [u8; 32] = [0xc1; 32];
const WORKER_SEED: [u8; 32] = [0x3a; 32];
/// Whole-operation fees stay well below this (README gas table: < 0.015 TON).
const FEE_BOUND: u128 = TON / 50;

/// A fresh local chain with a funded client and worker.
struct Fixture {
    chain: Arc<LocalChain>,
    client: ChannelClient,
    worker: ChannelClient,
    client_key: SigningKey,
    worker_key: SigningKey,
    /// Never deployed, so its balance moves exactly by what it receives.
    payout: TonAddress,
    started: Instant,
}

impl Fixture {
    async fn new() -> Result<Self> {
        let started = Instant::now();
        let dir = cocoon_tests::contract::contract_dir_ready();
        let chain = Arc::new(LocalChain::start(LocalChainConfig::new(dir)).await?);
        let client = Self::party(&chain, &CLIENT_SEED, 20 * TON).await?;
        let worker = Self::party(&chain, &WORKER_SEED, 2 * TON).await?;
        Ok(Self {
            client,
            worker,
            client_key: SigningKey::from_bytes(&CLIENT_SEED),
            worker_key: SigningKey::from_bytes(&WORKER_SEED),
            payout: Wallet::from_seed(&[0x77; 32])?.address().clone(),
            chain,
            started,
        })
    }

    async fn party(chain: &Arc<LocalChain>, seed: &[u8; 32], funds: u128) -> Result<ChannelClient> {
        let wallet = Wallet::from_seed(seed)?;
        chain.fund(wallet.address(), funds).await?;
        let chain: Arc<dyn Chain> = chain.clone();
        Ok(ChannelClient::new(WalletClient::new(
            wallet,
            chain,
            WalletConfig::local(),
        )))
    }

    fn params(&self, channel_id: u64, worker_timeout: u32) -> ChannelParams {
        ChannelParams {
            channel_id,
            client_key: self.client_key.verifying_key().to_bytes(),
            worker_key: self.worker_key.verifying_key().to_bytes(),
            client_address: self.client.wallet().address().clone(),
            worker_payout: self.payout.clone(),
            challenge_period: 3600,
            worker_timeout,
        }
    }

    fn voucher(&self, channel: [u8; 32], cumulative: u128, seq: u64) -> SignedVoucher {
        let cumulative = u64::try_from(cumulative).expect("test amounts fit u64");
        Voucher {
            channel,
            cumulative,
            seq,
        }
        .sign(&self.client_key)
    }

    async fn balance(&self, address: &TonAddress) -> Result<u128> {
        Ok(self.chain.account(address).await?.balance)
    }

    async fn state(&self, channel: &TonAddress) -> Result<ChannelState> {
        self.client
            .channel_state(channel)
            .await?
            .context("channel not deployed")
    }

    /// The exit code and op of the channel's latest transaction.
    async fn last_tx(&self, channel: &TonAddress) -> Result<(Option<i32>, Option<u32>)> {
        let txs = self.chain.transactions(channel, 1).await?;
        let tx = txs.first().context("no transaction")?;
        Ok((tx.compute_exit_code, tx.in_op))
    }

    /// Client and channel balances, before a closing message.
    async fn before_close(&self, channel: &TonAddress) -> Result<(u128, u128)> {
        let client = self.balance(self.client.wallet().address()).await?;
        Ok((client, self.balance(channel).await?))
    }

    /// After a closing message: the worker's payout got exactly `paid`, the channel is empty
    /// and the client got the rest of the channel's balance, plus the value attached to the
    /// closing message when the worker sent it, less fees.
    async fn check_close(
        &self,
        channel: &TonAddress,
        (client_before, channel_before): (u128, u128),
        paid: u128,
        worker_sent: bool,
    ) -> Result<()> {
        assert_eq!(self.state(channel).await?.status, ChannelStatus::Closed);
        assert_eq!(
            self.balance(&self.payout).await?,
            paid,
            "the payout gets exactly it"
        );
        assert_eq!(self.balance(channel).await?, 0);
        let attached = if worker_sent { CLOSE_VALUE } else { 0 };
        let expected = (channel_before - paid + attached) as i128;
        let gained =
            self.balance(self.client.wallet().address()).await? as i128 - client_before as i128;
        ensure!(
            gained <= expected && gained > expected - FEE_BOUND as i128,
            "client gained {gained}, expected {expected} less fees"
        );
        Ok(())
    }

    fn done(&self, name: &str) {
        println!("{name}: {:.2?}", self.started.elapsed());
    }
}

#[tokio::test]
async fn unilateral_close_with_challenge_pays_the_worker_exactly_the_voucher() -> Result<()> {
    let f = Fixture::new().await?;
    let params = f.params(1, 30 * 86400);
    assert_eq!(
        f.client.channel_state(&params.contract()?.address).await?,
        None
    );

    // The client's wallet deploys itself and the channel with Rust-built BoCs.
    let (channel, sent) = f.client.open_channel(&params, 5 * TON).await?;
    assert_eq!(sent.seqno, 0);
    let s = f.state(&channel.address).await?;
    assert_eq!(
        (s.status, s.deposit, s.channel_id),
        (ChannelStatus::Open, 5 * TON, 1)
    );
    assert_eq!(s.client_key, params.client_key);
    assert_eq!(f.client.wallet().seqno().await?, 1);

    f.client.top_up(&channel.address, TON).await?;
    assert_eq!(f.state(&channel.address).await?.deposit, 6 * TON);

    // The worker posts an older voucher (say, its latest was lost) and then must challenge.
    let id = channel.account_id();
    f.worker
        .worker_close(&channel.address, &f.voucher(id, 2 * TON, 2))
        .await?;
    let closing = f.state(&channel.address).await?;
    assert_eq!(closing.status, ChannelStatus::Closing);
    assert_eq!((closing.settled_amount, closing.settled_seq), (2 * TON, 2));

    // A stale voucher is refused and changes nothing.
    f.worker
        .challenge(&channel.address, &f.voucher(id, TON, 1))
        .await?;
    assert_eq!(f.state(&channel.address).await?, closing);
    assert_eq!(
        f.last_tx(&channel.address).await?,
        (Some(exit::STALE_VOUCHER), Some(op::CHALLENGE))
    );

    // The newer one wins.
    let best = 2 * TON + TON / 2;
    f.worker
        .challenge(&channel.address, &f.voucher(id, best, 3))
        .await?;
    let s = f.state(&channel.address).await?;
    assert_eq!((s.settled_amount, s.settled_seq), (best, 3));

    // Too early to finalize; after the window anyone may.
    f.worker.finalize(&channel.address).await?;
    assert_eq!(
        f.last_tx(&channel.address).await?.0,
        Some(exit::WINDOW_NOT_OVER)
    );
    f.chain.advance(3601).await?;
    let before = f.before_close(&channel.address).await?;
    f.worker.finalize(&channel.address).await?;
    assert_eq!(
        f.last_tx(&channel.address).await?,
        (Some(0), Some(op::FINALIZE))
    );
    f.check_close(&channel.address, before, best, true).await?;

    let stats = f.chain.stats().await?;
    assert!(stats.fees > 0 && stats.external_messages >= 7, "{stats:?}");
    assert_eq!(stats.by_op.get("0x6368616c").map(|e| e.0), Some(2));
    f.done("unilateral close");
    Ok(())
}

#[tokio::test]
async fn cooperative_close_pays_both_at_once() -> Result<()> {
    let f = Fixture::new().await?;
    let (channel, _) = f
        .client
        .open_channel(&f.params(2, 30 * 86400), 3 * TON)
        .await?;
    let close = CloseStatement {
        channel: channel.account_id(),
        amount: 1_234_567_890,
        seq: 5,
    };
    let (client_sig, worker_sig) = (close.sign(&f.client_key), close.sign(&f.worker_key));
    // Signed the other way round, the contract refuses it.
    f.worker
        .coop_close(&channel.address, &close, worker_sig, client_sig)
        .await?;
    assert_eq!(
        f.last_tx(&channel.address).await?.0,
        Some(exit::BAD_SIGNATURE)
    );
    let before = f.before_close(&channel.address).await?;
    f.worker
        .coop_close(&channel.address, &close, client_sig, worker_sig)
        .await?;
    let s = f.state(&channel.address).await?;
    assert_eq!((s.settled_amount, s.settled_seq), (1_234_567_890, 5));
    f.check_close(&channel.address, before, 1_234_567_890, true)
        .await?;
    f.done("cooperative close");
    Ok(())
}

#[tokio::test]
async fn timeout_refund_returns_the_deposit_after_the_worker_timeout() -> Result<()> {
    let f = Fixture::new().await?;
    let (channel, _) = f.client.open_channel(&f.params(3, 600), 4 * TON).await?;
    f.client.timeout_refund(&channel.address).await?;
    assert_eq!(
        f.last_tx(&channel.address).await?.0,
        Some(exit::TIMEOUT_NOT_REACHED)
    );
    assert_eq!(f.state(&channel.address).await?.status, ChannelStatus::Open);
    f.chain.advance(601).await?;
    let before = f.before_close(&channel.address).await?;
    assert!(before.1 > 4 * TON);
    f.client.timeout_refund(&channel.address).await?;
    assert_eq!(f.state(&channel.address).await?.settled_amount, 0);
    f.check_close(&channel.address, before, 0, false).await?;
    f.done("timeout refund");
    Ok(())
}

#[tokio::test]
async fn anchored_merkle_roots_are_read_back_and_prove_receipts() -> Result<()> {
    let f = Fixture::new().await?;
    let anchor = anchor_contract(None)?;
    assert_eq!(f.worker.anchor_count(&anchor.address).await?, 0);
    let batches: Vec<Vec<Vec<u8>>> = [5, 1]
        .iter()
        .map(|&n| {
            (0..n)
                .map(|i| format!("receipt-{i}").into_bytes())
                .collect()
        })
        .collect();
    for batch in &batches {
        let root = merkle::root(batch).context("non-empty")?;
        f.worker.anchor(&anchor, &root, batch.len() as u32).await?;
    }
    assert_eq!(
        f.chain.account(&anchor.address).await?.status,
        AccountStatus::Active
    );
    assert_eq!(f.worker.anchor_count(&anchor.address).await?, 2);
    let first = f
        .worker
        .anchor_root(&anchor.address, 0)
        .await?
        .context("entry 0")?;
    assert_eq!(first.batch_size, 5);
    assert!(first.posted_at > 0);
    let proof = merkle::proof(&batches[0], 3).context("proof")?;
    assert!(merkle::verify(b"receipt-3", &proof, &first.root));
    assert!(!merkle::verify(b"receipt-9", &proof, &first.root));
    let second = f
        .worker
        .anchor_root(&anchor.address, 1)
        .await?
        .context("1")?;
    assert_eq!(
        (second.root, second.batch_size),
        (merkle::root(&batches[1]).unwrap(), 1)
    );
    assert_eq!(f.worker.anchor_root(&anchor.address, 2).await?, None);
    f.done("anchor");
    Ok(())
}
