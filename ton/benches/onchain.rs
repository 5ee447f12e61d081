//! Benchmark: on-chain operations and fees per 1,000 jobs at steady state.
//!
//! `cargo bench -p cocoon-ton --bench onchain` (or `bench/payments.sh`). Two real parts:
//! 1. the fees of each operation, measured by running one channel's whole life (open, worker
//!    close with a voucher, finalize) and one anchor post from Rust-built messages on the local
//!    chain (the TVM emulator with mainnet fees), counting every transaction each causes;
//! 2. how often they happen: the ledger's `SettlePolicy` (the code the worker runs) driven
//!    through a stream of jobs priced at the default floor price (a job of 40 prompt and 100
//!    completion tokens: 3,400 nanoTON), with the worker idle-free at steady state, and one
//!    anchor post per `anchor_batch` receipts.
//!
//! Written to `target/bench-onchain.md`.

use std::sync::Arc;

use cocoon_ledger::channel::job_cost;
use cocoon_ledger::settle::{ChannelFacts, SettlePolicy};
use cocoon_ledger::voucher::Voucher;
use cocoon_ton::contract::{anchor_contract, ChannelParams};
use cocoon_ton::{
    Chain, ChannelClient, LocalChain, LocalChainConfig, Wallet, WalletClient, WalletConfig,
};
use ed25519_dalek::SigningKey;

const TON: u128 = 1_000_000_000;

async fn party(chain: &Arc<LocalChain>, seed: u8) -> ChannelClient {
    let wallet = Wallet::from_seed(&[seed; 32]).unwrap();
    chain.fund(wallet.address(), 10 * TON).await.unwrap();
    let chain: Arc<dyn Chain> = chain.clone();
    ChannelClient::new(WalletClient::new(wallet, chain, WalletConfig::local()))
}

/// Fees of everything `op` caused, from the chain's counters before and after.
async fn measure<F: std::future::Future<Output = ()>>(chain: &LocalChain, op: F) -> (u64, u128) {
    let before = chain.stats().await.unwrap();
    op.await;
    let after = chain.stats().await.unwrap();
    (
        after.transactions - before.transactions,
        after.fees - before.fees,
    )
}

fn main() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("contract");
    cocoon_ton::npm::install(&dir).unwrap();
    let chain = Arc::new(
        rt.block_on(LocalChain::start(LocalChainConfig::new(dir)))
            .unwrap(),
    );
    let (client, worker) = rt.block_on(async { (party(&chain, 1).await, party(&chain, 2).await) });
    let client_key = SigningKey::from_bytes(&[1; 32]);
    let params = ChannelParams {
        channel_id: 1,
        client_key: client_key.verifying_key().to_bytes(),
        worker_key: SigningKey::from_bytes(&[2; 32]).verifying_key().to_bytes(),
        client_address: client.wallet().address().clone(),
        worker_payout: worker.wallet().address().clone(),
        challenge_period: 3600,
        worker_timeout: 30 * 86_400,
    };
    let contract = params.contract().unwrap();
    let voucher = Voucher {
        channel: contract.account_id(),
        cumulative: 500_000_000,
        seq: 147,
    }
    .sign(&client_key);
    let (open, close, finalize, anchor) = rt.block_on(async {
        let open = measure(&chain, async {
            client.open_channel(&params, TON).await.unwrap();
        })
        .await;
        let close = measure(&chain, async {
            worker
                .worker_close(&contract.address, &voucher)
                .await
                .unwrap();
        })
        .await;
        chain.advance(3601).await.unwrap();
        let finalize = measure(&chain, async {
            worker.finalize(&contract.address).await.unwrap();
        })
        .await;
        let anchor_contract = anchor_contract(Some(worker.wallet().address())).unwrap();
        worker
            .anchor(&anchor_contract, &[1; 32], 1000)
            .await
            .unwrap(); // deploys it
        let anchor = measure(&chain, async {
            worker
                .anchor(&anchor_contract, &[2; 32], 1000)
                .await
                .unwrap();
        })
        .await;
        (open, close, finalize, anchor)
    });

    // Steady state: how many of each per 1,000 jobs.
    let policy = SettlePolicy::default();
    let per_job = job_cost(10_000_000, 30_000_000, 40, 100);
    let jobs = 1_000_000u64;
    let (mut unsettled, mut settlements, mut now) = (0u64, 0u64, 1_000_000u64);
    for _ in 0..jobs {
        now += 1;
        unsettled += per_job;
        let facts = ChannelFacts {
            unsettled,
            last_activity: now,
            deadline: None,
        };
        if policy.due(&facts, now, false).is_some() {
            settlements += 1;
            unsettled = 0;
        }
    }
    let anchors = jobs / policy.anchor_batch as u64;
    // Each settlement closes a channel (worker close + finalize) and the client opens the next.
    let channel_ops = settlements * 3;
    let per_k = |n: u64| n as f64 * 1000.0 / jobs as f64;
    let fees = settlements as u128 * (open.1 + close.1 + finalize.1) + anchors as u128 * anchor.1;
    let ton = |n: u128| n as f64 / TON as f64;
    let mut table = format!(
        "| on-chain operation (local chain, mainnet fees) | transactions | fees of the whole chain (TON) |\n|---|---:|---:|\n\
         | open (deploy + deposit) | {} | {:.6} |\n| worker close with a voucher | {} | {:.6} |\n\
         | finalize (payout + refund) | {} | {:.6} |\n| anchor post (one receipt batch) | {} | {:.6} |\n\n",
        open.0, ton(open.1), close.0, ton(close.1), finalize.0, ton(finalize.1), anchor.0, ton(anchor.1)
    );
    table += &format!(
        "| steady state: {jobs} jobs of {per_job} nanoTON (40 + 100 tokens at the floor price) | per 1,000 jobs |\n|---|---:|\n\
         | settlements (threshold {:.2} TON) | {:.4} |\n| channel operations (open + close + finalize) | {:.4} |\n\
         | anchor posts (batches of {}) | {:.4} |\n| **on-chain operations** | **{:.4}** |\n| fees (TON) | {:.6} |\n| fees as a share of the value paid | {:.3}% |\n",
        ton(policy.threshold as u128),
        per_k(settlements),
        per_k(channel_ops),
        policy.anchor_batch,
        per_k(anchors),
        per_k(channel_ops + anchors),
        ton(fees) * 1000.0 / jobs as f64,
        100.0 * fees as f64 / (per_job as f64 * jobs as f64),
    );
    print!("{table}");
    std::fs::write(
        concat!(env!("CARGO_MANIFEST_DIR"), "/../target/bench-onchain.md"),
        &table,
    )
    .unwrap();
}
