//! Benchmark: what paying per token costs the CPU and the disk.
//!
//! `cargo bench -p cocoon-ledger --bench payments` (or `bench/payments.sh`). One core,
//! interleaved rounds (the table shows the median round), rows:
//! - a client signing a cumulative voucher (cell hash + ed25519 signature);
//! - a worker checking one (signature, seq, amount, deposit);
//! - a journal write of a client record (one redb transaction with fsync), and of a worker
//!   record (read the old total, refuse a regression, write, fsync).
//!
//! Environment: `COCOON_BENCH_ROUNDS` (default 5). Written to `target/bench-payments.md`.

use std::time::Instant;

use cocoon_ledger::channel::{ClientChannel, WorkerChannel};
use cocoon_ledger::journal::{ClientRecord, Journal, WorkerRecord};
use ed25519_dalek::SigningKey;

const CH: [u8; 32] = [7; 32];

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn rate(n: usize, mut f: impl FnMut()) -> f64 {
    let t = Instant::now();
    for _ in 0..n {
        f();
    }
    n as f64 / t.elapsed().as_secs_f64()
}

fn main() {
    let rounds: usize = std::env::var("COCOON_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let key = SigningKey::from_bytes(&[5; 32]);
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(&dir.path().join("journal.redb")).unwrap();
    let mut client = ClientChannel::new(CH, u64::MAX / 2, key.clone());
    let mut worker = WorkerChannel::new(CH, u64::MAX / 2, key.verifying_key(), u64::MAX);
    let mut rows: [Vec<f64>; 4] = Default::default();
    for _ in 0..rounds {
        let mut signed = Vec::new();
        rows[0].push(rate(2000, || {
            signed.push(client.pay_up_to(client.paid() + 1).unwrap().unwrap())
        }));
        let mut next = signed.iter();
        rows[1].push(rate(signed.len(), || {
            worker.accept(next.next().unwrap()).unwrap();
        }));
        let last = *signed.last().unwrap();
        rows[2].push(rate(100, || {
            journal
                .record_client(
                    &CH,
                    &ClientRecord {
                        terms: None,
                        deposit: u64::MAX / 2,
                        paid: client.paid(),
                        seq: client.seq(),
                        last: Some(last),
                        job_open: false,
                    },
                )
                .unwrap()
        }));
        rows[3].push(rate(100, || {
            journal
                .record_worker(
                    &CH,
                    &WorkerRecord {
                        terms: None,
                        deposit: u64::MAX / 2,
                        client_key: key.verifying_key().to_bytes(),
                        state: worker.state(),
                        last_activity: 0,
                    },
                )
                .unwrap()
        }));
    }
    let names = [
        "client signs a voucher (cell hash + ed25519)",
        "worker checks a voucher",
        "client journals a voucher (redb commit, fsync)",
        "worker journals a voucher (read, compare, commit, fsync)",
    ];
    let mut table = format!(
        "| payment step, one core ({rounds} rounds, median) | per second | time each |\n|---|---:|---:|\n"
    );
    for (name, row) in names.iter().zip(rows) {
        let r = median(row);
        table += &format!("| {name} | {r:.0} | {:.1} µs |\n", 1e6 / r);
    }
    print!("{table}");
    std::fs::write(
        concat!(env!("CARGO_MANIFEST_DIR"), "/../target/bench-payments.md"),
        &table,
    )
    .unwrap();
}
