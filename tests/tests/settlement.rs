//! Paid jobs settled on the local chain (the real TVM emulator behind the toncenter API,
//! `ton/contract/localchain.mjs`), with real `cocoon` processes: the client opens a channel
//! on chain and pays as tokens stream, the worker checks the deposit on chain, settles on
//! shutdown with its best voucher, and after the challenge window the contract pays the
//! worker's payout wallet exactly what its journal holds.

use std::sync::Arc;

use cocoon_ledger::journal::Journal;
use cocoon_tests::{parse_json, LoopbackNet};
use cocoon_ton::contract::{
    anchor_contract, op, ChannelStatus, TermsExt, CLOSE_VALUE, DEPOSIT_RESERVE,
};
use cocoon_ton::merkle;
use cocoon_ton::wallet::{account_of as wallet, basechain};
use cocoon_ton::{
    Chain, ChannelClient, LocalChain, LocalChainConfig, TonAddress, WalletClient, WalletConfig,
};

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
    let client_key = cocoon_worker::accounts::key(&client_dir).unwrap();
    let worker_key = cocoon_worker::accounts::key(&net.dir.path().join("w0")).unwrap();
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
        cocoon_ton::Wallet::from_seed(&client_key.to_bytes()).unwrap(),
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

/// One demo at a time: each runs a network of processes and a chain on a few cores.
static DEMO: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The README's first command: a network on loopback, one paid job, settled on the local
/// chain.
#[test]
fn the_demo_pays_its_job_and_settles_it_on_the_local_chain() {
    let _one = DEMO.lock().unwrap_or_else(|e| e.into_inner());
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

/// Without `--json` the demo is a transcript a person reads: the answer on lines of its own
/// (the settlement sentence used to follow it on its line), and no log lines (a WARN about
/// the dev attestation used to land in the middle; the demo says it in its own words).
#[test]
fn the_demo_transcript_has_the_answer_on_its_own_line_and_no_log_lines() {
    let _one = DEMO.lock().unwrap_or_else(|e| e.into_inner());
    cocoon_tests::contract::contract_dir_ready();
    let _ = cocoon_tests::model_path().unwrap();
    let out = std::process::Command::new(cocoon_tests::cocoon_bin().unwrap())
        .args(["demo", "--workers", "1", "--max-tokens", "8"])
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    let asked = lines
        .iter()
        .position(|l| *l == "> What is the capital of France?")
        .unwrap_or_else(|| panic!("no question in\n{stdout}"));
    assert_eq!(
        lines[asked - 1],
        "",
        "a blank line before the question:\n{stdout}"
    );
    let answer: Vec<&str> = lines[asked + 1..]
        .iter()
        .copied()
        .take_while(|l| !l.is_empty())
        .collect();
    assert!(!answer.is_empty(), "no answer in\n{stdout}");
    for line in &answer {
        assert!(
            !line.contains("settled") && !line.starts_with("  "),
            "the answer shares its line: {line:?}\n{stdout}"
        );
    }
    assert!(
        lines.iter().any(|l| l.starts_with("  settled on chain: ")),
        "the settlement is a line of its own:\n{stdout}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("INSECURE development attestation")),
        "the demo says its workers cannot prove what they run:\n{stdout}"
    );
    for line in stdout.lines().chain(stderr.lines()) {
        assert!(
            !line.contains(" WARN ") && !line.contains("\u{1b}["),
            "a log line in the transcript: {line:?}"
        );
    }
    assert!(stderr.trim().is_empty(), "stderr: {stderr}");
}

/// How many transactions of `op` the chain ran.
async fn count_op(chain: &LocalChain, op: u32) -> u64 {
    let stats = chain.stats().await.unwrap();
    stats
        .by_op
        .get(&format!("0x{op:08x}"))
        .map_or(0, |(count, _)| *count)
}

/// Opens a channel from `client` to the worker of `worker_key` and journals a voucher of
/// `amount` on the worker's side, as a paid job leaves it.
async fn paid_channel(
    chain: &LocalChain,
    client: &ChannelClient,
    client_key: &ed25519_dalek::SigningKey,
    worker_key: &ed25519_dalek::SigningKey,
    ledger: &cocoon_worker::payments::WorkerLedger,
    channel_id: u64,
    amount: u64,
) -> [u8; 32] {
    use cocoon_ledger::channel::WorkerState;
    use cocoon_ledger::journal::{ChannelTerms, Write};
    let terms = ChannelTerms {
        channel_id,
        client_key: client_key.verifying_key().to_bytes(),
        worker_key: worker_key.verifying_key().to_bytes(),
        client_address: wallet(client_key).unwrap(),
        worker_payout: wallet(worker_key).unwrap(),
        challenge_period: 60,
        worker_timeout: 30 * 86_400,
    };
    let channel = terms.address().unwrap();
    client.open_channel(&terms.params(), TON).await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let state = client.channel_state(&basechain(channel)).await.unwrap();
        if state.is_some_and(|s| s.status == ChannelStatus::Open) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the channel never opened"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let voucher = cocoon_ledger::voucher::Voucher {
        channel,
        cumulative: amount,
        seq: 1,
    }
    .sign(client_key);
    let state = WorkerState {
        best: Some(voucher),
        delivered: amount,
    };
    let record = ledger.record(&terms, TON as u64, state);
    ledger.write(Write::Worker(channel, record)).await.unwrap();
    let _ = chain;
    channel
}

/// Hole 8: the final settlement pass at shutdown could run beside a periodic one, and both
/// sent `worker_close` for the same channel. One owner runs every pass, one after another;
/// a worker killed in the middle of its settlement and restarted closes nothing twice and
/// still finalizes every channel for exactly its voucher.
#[test]
fn one_settlement_owner_closes_each_channel_once_even_across_a_kill() {
    use cocoon_client::chain::connect;
    use cocoon_ledger::settle::SettlePolicy;
    use cocoon_worker::settlement::Settler;
    use std::time::Duration;
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let chain = LocalChain::start(LocalChainConfig::new(
            cocoon_tests::contract::contract_dir_ready(),
        ))
        .await
        .expect("start the local chain");
        let url = chain.http().base_url().to_string();
        let client_key = ed25519_dalek::SigningKey::from_bytes(&[31; 32]);
        let worker_key = ed25519_dalek::SigningKey::from_bytes(&[32; 32]);
        chain
            .fund(&basechain(wallet(&client_key).unwrap()), 10 * TON)
            .await
            .unwrap();
        chain
            .fund(&basechain(wallet(&worker_key).unwrap()), TON)
            .await
            .unwrap();
        let client = connect(&url, None, &client_key).unwrap();
        let dir = cocoon_tests::scratch("settle-owner").unwrap();
        let journal = dir.path().join("journal.redb");
        let open = || {
            Arc::new(
                cocoon_worker::payments::WorkerLedger::open(
                    &journal,
                    worker_key.verifying_key().to_bytes(),
                    wallet(&worker_key).unwrap(),
                    1_000_000,
                )
                .unwrap()
                .with_chain(connect(&url, None, &worker_key).unwrap()),
            )
        };
        let due_now = SettlePolicy {
            threshold: 1,
            min_amount: 1,
            ..Default::default()
        };

        // Periodic passes back to back, and the shutdown at once: both would close.
        let ledger = open();
        let a = paid_channel(
            &chain,
            &client,
            &client_key,
            &worker_key,
            &ledger,
            1,
            7_000_000,
        )
        .await;
        let b = paid_channel(
            &chain,
            &client,
            &client_key,
            &worker_key,
            &ledger,
            2,
            9_000_000,
        )
        .await;
        let settler = Settler::spawn(ledger.clone(), due_now.clone(), Duration::from_millis(1));
        let report = settler.shutdown().await;
        assert!(report.settled.len() <= 2, "{:?}", report.settled);
        let closes = count_op(&chain, op::WORKER_CLOSE).await;
        assert_eq!(closes, 2, "one worker_close per channel");
        for ch in [a, b] {
            let s = client.channel_state(&basechain(ch)).await.unwrap().unwrap();
            assert_eq!(s.status, ChannelStatus::Closing);
        }

        // A third channel; the worker is killed while it settles, then restarted.
        let c = paid_channel(
            &chain,
            &client,
            &client_key,
            &worker_key,
            &ledger,
            3,
            5_000_000,
        )
        .await;
        let settler = Settler::spawn(ledger.clone(), due_now.clone(), Duration::from_millis(1));
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let s = client.channel_state(&basechain(c)).await.unwrap().unwrap();
            if s.status == ChannelStatus::Closing {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "never closed");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        settler.abort();
        drop(ledger);
        let ledger = open();
        let settler = Settler::spawn(ledger.clone(), due_now.clone(), Duration::from_millis(50));
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(
            count_op(&chain, op::WORKER_CLOSE).await,
            3,
            "nothing closed twice"
        );
        // After the challenge window the restarted owner finalizes every channel.
        chain.advance(120).await.unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        for (ch, amount) in [(a, 7_000_000u128), (b, 9_000_000), (c, 5_000_000)] {
            loop {
                let s = client.channel_state(&basechain(ch)).await.unwrap();
                if let Some(s) = s.filter(|s| s.status == ChannelStatus::Closed) {
                    assert_eq!(s.settled_amount, amount);
                    break;
                }
                assert!(std::time::Instant::now() < deadline, "never finalized");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        settler.shutdown().await;
        assert_eq!(count_op(&chain, op::WORKER_CLOSE).await, 3);
        assert_eq!(count_op(&chain, op::FINALIZE).await, 3);
    });
}
