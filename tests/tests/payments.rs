//! Paid jobs end to end with real processes: a worker with a price, clients that pay through
//! a payment channel, and `kill -9` of the client in the middle of a stream. Afterwards the
//! journals of both sides agree to the nanoTON: the worker holds a voucher for exactly what
//! it delivered, and the client signed exactly that.

use cocoon_ledger::journal::Journal;
use cocoon_tests::{channel_of, parse_json, streaming, LoopbackNet};

/// 1 TON per million prompt tokens, 3 per million completion tokens: 1 and 3 nanoTON each.
const PRICE: &str = "1000000,3000000";

#[test]
fn a_killed_client_loses_nothing_and_pays_nothing_twice() {
    let mut net = LoopbackNet::start("pay", &[vec!["--price".into(), PRICE.into()]])
        .expect("start the network");
    let client_dir = net.dir.path().join("payer");
    let cd = client_dir.to_str().unwrap();
    let paid_flags = ["--data-dir", cd, "--pay-every", "4"];

    // A whole job: billed at the quoted price for exactly the tokens counted.
    let mut flags = vec!["--json", "--max-tokens", "12"];
    flags.extend(paid_flags);
    let first = parse_json(&net.infer(&flags, "Hello").unwrap()).unwrap();
    let (prompt, completion) = (
        first["prompt_tokens"].as_u64().unwrap(),
        first["completion_tokens"].as_u64().unwrap(),
    );
    assert_eq!(
        first["paid_nanoton"].as_u64(),
        Some(prompt + 3 * completion)
    );
    assert_eq!(first["price_completion_per_mtok"], 3_000_000);
    let channel = channel_of(&first);

    // kill -9 of the client in the middle of a long answer.
    let mut flags = vec!["--max-tokens", "200"];
    flags.extend(paid_flags);
    let cmd = net
        .infer_command(&flags, "Write a long story about a lighthouse keeper.")
        .unwrap();
    let (mut child, _out, _) = streaming(cmd, 80);
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();

    // The next job on the same channel pays what the killed one received unpaid.
    let mut flags = vec!["--json", "--max-tokens", "8"];
    flags.extend(paid_flags);
    let third = parse_json(&net.infer(&flags, "Hi").unwrap()).unwrap();
    assert_eq!(channel_of(&third), channel, "one channel per worker");

    // kill -9 of the worker, then both journals.
    net.workers[0].kill();
    let worker = Journal::open(&net.dir.path().join("w0/journal.redb")).unwrap();
    let w = worker
        .worker(&channel)
        .unwrap()
        .expect("the worker journalled the channel");
    let best = w.state.best.expect("the worker holds a voucher");
    assert_eq!(
        best.voucher.cumulative, w.state.delivered,
        "the worker was paid exactly what it delivered"
    );
    let client = Journal::open(&client_dir.join("journal.redb")).unwrap();
    let c = client.client(&channel).unwrap().unwrap();
    assert_eq!(
        c.paid, best.voucher.cumulative,
        "the client signed exactly that"
    );
    assert_eq!(
        c.seq, best.voucher.seq,
        "its last voucher reached the worker"
    );
    assert!(
        c.paid > first["paid_nanoton"].as_u64().unwrap() + third["paid_nanoton"].as_u64().unwrap(),
        "the killed job's tokens were paid too"
    );
}

#[test]
fn a_killed_worker_keeps_every_voucher_it_acknowledged() {
    let mut net = LoopbackNet::start("pay-w", &[vec!["--price".into(), PRICE.into()]])
        .expect("start the network");
    let client_dir = net.dir.path().join("payer");
    let cd = client_dir.to_str().unwrap();

    // kill -9 of the worker in the middle of a long, paid answer.
    let cmd = net
        .infer_command(
            &["--max-tokens", "200", "--data-dir", cd, "--pay-every", "4"],
            "Write a long story about a lighthouse keeper.",
        )
        .unwrap();
    let (mut child, _out, _) = streaming(cmd, 80);
    net.workers[0].kill(); // SIGKILL
    assert!(!child.wait().unwrap().success(), "the only worker died");

    // What the dead worker journalled: every voucher it acted on.
    let journal_path = net.dir.path().join("w0/journal.redb");
    let (channel, before) = {
        let j = Journal::open(&journal_path).unwrap();
        let mut channels = j.worker_channels().unwrap();
        assert_eq!(channels.len(), 1);
        channels.pop().unwrap()
    };
    let client = || Journal::open(&client_dir.join("journal.redb")).unwrap();
    let signed = client().client(&channel).unwrap().unwrap();
    let held = before.state.best.unwrap().voucher;
    assert!(held.cumulative > 0 && held.cumulative <= signed.paid);

    // The same worker again (same identity, same journal), and one more job.
    net.restart_worker(0, &["--price".into(), PRICE.into()])
        .unwrap();
    let next = parse_json(
        &net.infer(
            &[
                "--json",
                "--max-tokens",
                "8",
                "--data-dir",
                cd,
                "--pay-every",
                "4",
            ],
            "Hi",
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(
        channel_of(&next),
        channel,
        "the same channel after the restart"
    );
    net.workers[0].kill();
    let after = Journal::open(&journal_path)
        .unwrap()
        .worker(&channel)
        .unwrap()
        .unwrap();
    let best = after.state.best.unwrap().voucher;
    let c = client().client(&channel).unwrap().unwrap();
    // Settled = everything the client received, in both jobs, to the nanoTON: the voucher
    // the worker missed while dead was superseded by the next job's.
    assert_eq!(best.cumulative, c.paid);
    assert_eq!(best.seq, c.seq);
    assert_eq!(
        c.paid,
        signed.paid + next["paid_nanoton"].as_u64().unwrap(),
        "the restarted worker was paid for the killed job's tokens and the new job's, nothing twice"
    );
}
