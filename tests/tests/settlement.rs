//! Paid jobs settled on the local chain (the real TVM emulator behind the toncenter API,
//! `ledger/contract/localchain.mjs`), with real `cocoon` processes: the client opens a channel
//! on chain and pays as tokens stream, the worker checks the deposit on chain, settles on
//! shutdown with its best voucher, and after the challenge window the contract pays the
//! worker's payout wallet exactly what its journal holds.

use std::sync::Arc;

use cocoon_ledger::journal::Journal;
use cocoon_ledger::ton::contract::{
    anchor_contract, op, ChannelStatus, CLOSE_VALUE, DEPOSIT_RESERVE,
};
use cocoon_ledger::ton::merkle;
use cocoon_ledger::ton::{
    Chain, ChannelClient, LocalChain, LocalChainConfig, TonAddress, WalletClient, WalletConfig,
};
use cocoon_node::payments::{basechain, wallet};
use cocoon_tests::{parse_json, LoopbackNet};

const TON: u128 = 1_000_000_000;
const TOP_UP: u128 = 100_000_000;

#[test]
fn jobs_paid_through_a_channel_are_settled_on_chain_to_the_nanoton() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let contract_dir = cocoon_tests::contract::contract_dir_ready();
    let chain = Arc::new(
        rt.block_on(LocalChain::start(LocalChainConfig::new(contract_dir)))
            .expect("start the local chain"),
    );
    let url = chain.http().base_url().to_string();

    // A worker that settles anything on shutdown (the default waits for 0.05 TON).
    let scratch = cocoon_tests::scratch("settle-cfg").unwrap();
    let config = scratch.path().join("worker.toml");
    std::fs::write(&config, "[settle]\nmin_amount = 1\nanchor_batch = 2\n").unwrap();
    let mut net = LoopbackNet::start(
        "settle",
        &[vec![
            "--price".into(),
            "1000000,3000000".into(),
            "--chain".into(),
            url.clone(),
            "--config".into(),
            config.display().to_string(),
        ]],
    )
    .expect("start the network");

    // Fund both wallets (the node identity's v4r2 wallet).
    let client_dir = net.dir.path().join("payer");
    let client_key = cocoon_node::accounts::key(&client_dir).unwrap();
    let worker_key = cocoon_node::accounts::key(&net.dir.path().join("w0")).unwrap();
    let client_wallet = basechain(wallet(&client_key).unwrap());
    let payout = basechain(wallet(&worker_key).unwrap());
    rt.block_on(chain.fund(&client_wallet, 5 * TON)).unwrap();
    rt.block_on(chain.fund(&payout, TON)).unwrap();

    let cd = client_dir.to_str().unwrap();
    let flags = [
        "--json",
        "--max-tokens",
        "10",
        "--data-dir",
        cd,
        "--chain",
        &url,
        "--deposit",
        "1000000000",
    ];
    let first = parse_json(&net.infer(&flags, "Hello").unwrap()).unwrap();
    let second = parse_json(&net.infer(&flags, "Hi there").unwrap()).unwrap();
    let channel = cocoon_tests::channel_of(&first);
    assert_eq!(
        second["channel"], first["channel"],
        "one channel for both jobs"
    );
    let address: TonAddress = basechain(channel);

    // The CLI sees the same: the wallet's balance, the channel open on chain.
    let cocoon = |args: &[&str]| {
        let out = std::process::Command::new(cocoon_tests::cocoon_bin().unwrap())
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let wallet_json = cocoon(&[
        "wallet",
        "show",
        "--data-dir",
        cd,
        "--chain",
        &url,
        "--json",
    ]);
    assert_eq!(wallet_json["state"], "active");
    let balance: u128 = wallet_json["balance"].as_str().unwrap().parse().unwrap();
    assert!(
        balance < 4 * TON && balance > 3 * TON,
        "5 TON less the 1.05 TON opening"
    );
    let rows = cocoon(&[
        "channel",
        "list",
        "--data-dir",
        cd,
        "--chain",
        &url,
        "--json",
    ]);
    let row = &rows.as_array().unwrap()[0];
    assert_eq!(row["role"], "client");
    assert_eq!(row["onchain"], "open");
    assert_eq!(row["onchain_deposit"], TON.to_string());
    let channel_hex = first["channel"].as_str().unwrap();
    let topped = cocoon(&[
        "channel",
        "topup",
        "--data-dir",
        cd,
        "--chain",
        &url,
        "--channel",
        channel_hex,
        "--amount",
        "100000000",
        "--json",
    ]);
    assert_eq!(topped["topped_up"], 100_000_000);

    // The channel is open on chain with the deposit the client asked for.
    let anyone = ChannelClient::new(WalletClient::new(
        cocoon_ledger::ton::Wallet::from_seed(&client_key.to_bytes()).unwrap(),
        chain.clone() as Arc<dyn Chain>,
        WalletConfig::local(),
    ));
    let state = rt
        .block_on(anyone.channel_state(&address))
        .unwrap()
        .unwrap();
    assert_eq!(state.status, ChannelStatus::Open);
    assert_eq!(state.deposit, TON + TOP_UP, "opened with 1 TON, topped up");

    // SIGTERM: the worker settles on shutdown with its best voucher.
    net.workers[0].stop(std::time::Duration::from_secs(30));
    // (Opened in its own scope: `cocoon ledger settle` needs the journal later.)
    let best = Journal::open(&net.dir.path().join("w0/journal.redb"))
        .unwrap()
        .worker(&channel)
        .unwrap()
        .unwrap()
        .state
        .best
        .unwrap();
    let paid = first["paid_nanoton"].as_u64().unwrap() + second["paid_nanoton"].as_u64().unwrap();
    assert_eq!(
        best.voucher.cumulative, paid,
        "the worker holds what the client paid"
    );
    let state = rt
        .block_on(anyone.channel_state(&address))
        .unwrap()
        .unwrap();
    assert_eq!(state.status, ChannelStatus::Closing, "closed on shutdown");
    assert_eq!(state.settled_amount, paid as u128);
    assert_eq!(state.settled_seq, best.voucher.seq);

    // After the challenge window `cocoon ledger settle` finalizes: the payout gets exactly
    // the voucher.
    rt.block_on(chain.advance(state.challenge_period + 1))
        .unwrap();
    let w0 = net.dir.path().join("w0");
    let settled = cocoon(&[
        "ledger",
        "settle",
        "--data-dir",
        w0.to_str().unwrap(),
        "--chain",
        &url,
        "--json",
    ]);
    assert_eq!(settled[0]["action"], "finalize", "{settled}");
    assert_eq!(settled[0]["amount"], paid);
    let state = rt
        .block_on(anyone.channel_state(&address))
        .unwrap()
        .unwrap();
    assert_eq!(state.status, ChannelStatus::Closed);
    let txs = rt.block_on(chain.transactions(&payout, 20)).unwrap();
    let payout_tx = txs
        .iter()
        .find(|t| t.in_op == Some(op::PAYOUT))
        .expect("the payout reached the worker's wallet");
    assert_eq!(payout_tx.in_value, paid as u128, "paid to the nanoTON");
    let refund = rt.block_on(chain.transactions(&client_wallet, 20)).unwrap();
    let refund = refund
        .iter()
        .find(|t| t.in_op == Some(op::REFUND))
        .expect("the client got the rest back");
    // The rest of the deposit and the 0.05 TON reserve of each funding message, plus the
    // finalize message's value (sent by the worker's wallet), minus the contract's gas (well
    // under 0.01 TON).
    let expected = TON + TOP_UP - paid as u128 + 2 * DEPOSIT_RESERVE + CLOSE_VALUE;
    assert!(
        refund.in_value <= expected && refund.in_value > expected - TON / 100,
        "refund {} for {expected} before gas",
        refund.in_value
    );

    // The two jobs' receipts were anchored as one batch in the worker's anchor contract; a
    // receipt from the worker's journal proves against the root on chain.
    let journal = Journal::open(&w0.join("journal.redb")).unwrap();
    let batch = journal.anchors().unwrap();
    assert_eq!(batch.len(), 1, "{batch:?}");
    let receipts = journal.receipts(batch[0].first, batch[0].last).unwrap();
    assert_eq!(receipts.len(), 2);
    assert_eq!(
        receipts.iter().map(|r| r.cost).sum::<u64>(),
        paid,
        "the receipts account for every nanoTON"
    );
    let anchor = anchor_contract(Some(&payout)).unwrap();
    let entry = rt
        .block_on(anyone.anchor_root(&anchor.address, 0))
        .unwrap()
        .expect("the batch is on chain");
    assert_eq!(entry.root, batch[0].root);
    assert_eq!(entry.batch_size, 2);
    let leaves: Vec<Vec<u8>> = receipts.iter().map(|r| r.bytes()).collect();
    let proof = merkle::proof(&leaves, 1).unwrap();
    assert!(merkle::verify(&leaves[1], &proof, &entry.root));
    drop(journal);

    let stats = rt.block_on(chain.stats()).unwrap();
    eprintln!(
        "on chain for 2 jobs: {} transactions, {} nanoTON of fees",
        stats.transactions, stats.fees
    );
}

/// The README's first command: a network on loopback, one paid job, settled on the local
/// chain.
#[test]
fn the_demo_pays_its_job_and_settles_it_on_the_local_chain() {
    cocoon_tests::contract::contract_dir_ready();
    let _ = cocoon_tests::model_path().unwrap();
    let out = std::process::Command::new(cocoon_tests::cocoon_bin().unwrap())
        .args(["demo", "--json", "--workers", "1", "--max-tokens", "8"])
        .output()
        .unwrap();
    let json = parse_json(&out).unwrap();
    assert!(!json["text"].as_str().unwrap().is_empty());
    let paid = json["paid_nanoton"].as_u64().unwrap();
    assert!(paid > 0);
    assert_eq!(json["settled_nanoton"].as_u64(), Some(paid), "{json}");
    assert!(json["onchain_txs"].as_u64().unwrap() >= 5, "{json}");
    assert_eq!(json["channel"].as_str().map(str::len), Some(64));
}
