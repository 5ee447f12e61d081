//! Benchmark: paid jobs per second on one worker, 1 and 16 at once, and whether the payment
//! journal serialises them.
//!
//! `cargo bench -p cocoon-tests --bench paid_jobs` (run by `bench/payments.sh`). In this
//! process: the real worker glue (`Worker::run`: admission, the worker session, its journal
//! through the journal's owner thread) serving a tiny model, and the real client shell
//! (`client::drive` over a `ClientSession`, its own journal), joined by in-memory pipes, so
//! what is measured is the job path with its payments, not a network. Every job is paid: a
//! quote, a voucher every 4 tokens and the final one, each journalled (fsync) on both sides
//! before it is acted on. Rounds alternate 1 and 16 concurrent streams (each stream its own
//! channel); the table shows medians, the journal writes and commits per job, and the jobs
//! per second a journal committing one write at a time could allow at most (writes per job
//! times the time of one fsync, measured alone): 16 streams above that bound are not
//! serialised by the journal.
//!
//! Environment: `COCOON_BENCH_ROUNDS` (default 5), `COCOON_BENCH_JOBS` (jobs per stream and
//! round, default 8). Written to `target/bench-paid-jobs.md`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use cocoon_client::payments::{ClientLedger, PaymentConfig};
use cocoon_inference::{Engine, EngineConfig, ModelSource};
use cocoon_p2p::frame::FramedStream;
use cocoon_p2p::identity::signing_key;
use cocoon_p2p::job::session::{self, ClientSession};
use cocoon_p2p::job::{JobChannel, JobConfig, JobInput, JobPrice, JobRequest, Sampling};
use cocoon_p2p::testing::pipe;
use cocoon_ton::wallet::account_of as wallet;
use cocoon_worker::attestation::{worker_attester, AttestationMode, WorkerAttestation};
use cocoon_worker::payments::WorkerLedger;
use cocoon_worker::worker::Worker;
use libp2p::identity::Keypair;

const PRICE: JobPrice = JobPrice {
    prompt_per_mtok: 1_000_000,
    completion_per_mtok: 3_000_000,
};
const TOKENS: u32 = 32;

struct Bench {
    worker: Worker,
    client: Arc<ClientLedger>,
    peer: libp2p::PeerId,
    worker_key: [u8; 32],
    payout: [u8; 32],
    next_id: std::sync::atomic::AtomicU64,
}

impl Bench {
    /// One paid job on its own pipe; returns the tokens it paid for.
    async fn job(self: &Arc<Self>) -> Result<u32> {
        let reserved = self
            .client
            .acquire(self.worker_key, self.payout, 1)
            .await
            .context("a channel")?;
        let id = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let request = JobRequest {
            id,
            model: "tiny".into(),
            input: JobInput::Prompt("a paid job".into()),
            sampling: Sampling {
                max_tokens: TOKENS,
                ..Default::default()
            },
            continuation: None,
            payment: Some(Box::new(self.client.terms(&reserved.info, PRICE))),
        };
        let (c, w) = pipe();
        let config = JobConfig::default();
        let mut server = JobChannel::new(FramedStream::new(w, config.max_frame), config.clone());
        let mut channel = JobChannel::new(FramedStream::new(c, config.max_frame), config);
        let me = self.clone();
        let served = tokio::spawn(async move {
            if let Ok(req) = server.recv_request().await {
                let _ = me.worker.run(&mut server, req, &me.peer).await;
            }
            let _ = server.close().await;
        });
        let mut session = ClientSession::new(
            session::ClientConfig {
                pay_every: 4,
                ..Default::default()
            },
            cocoon_client::clock::session_now(),
            request,
            Some(self.client.payment(&reserved.info)),
        );
        let (tx, mut rx) = tokio::sync::mpsc::channel::<String>(64);
        let reader = tokio::spawn(async move { while rx.recv().await.is_some() {} });
        let mut answer = String::new();
        let driven = cocoon_client::infer::drive(
            &mut channel,
            &mut session,
            Some((&self.client, &reserved.info)),
            &mut answer,
            &tx,
        )
        .await;
        drop(tx);
        reader.await?;
        served.await?;
        if let Some(e) = driven.journal_error {
            anyhow::bail!(e);
        }
        match session.result() {
            Some(Ok(done)) => Ok(done.usage.completion_tokens),
            other => anyhow::bail!("the job failed: {other:?}"),
        }
    }
}

/// `streams` streams running `jobs` paid jobs each: (jobs per second, jobs).
async fn round(bench: &Arc<Bench>, streams: usize, jobs: usize) -> Result<(f64, usize)> {
    let start = Instant::now();
    let tasks: Vec<_> = (0..streams)
        .map(|_| {
            let b = bench.clone();
            tokio::spawn(async move {
                for _ in 0..jobs {
                    b.job().await?;
                }
                Ok::<_, anyhow::Error>(())
            })
        })
        .collect();
    for t in tasks {
        t.await??;
    }
    let n = streams * jobs;
    Ok((n as f64 / start.elapsed().as_secs_f64(), n))
}

fn main() -> Result<()> {
    let rounds = cocoon_tests::env_or("COCOON_BENCH_ROUNDS", 5);
    let jobs = cocoon_tests::env_or("COCOON_BENCH_JOBS", 8);
    let dir = tempfile::tempdir()?;
    let model = dir.path().join("tiny.gguf");
    cocoon_inference::testing::write_tiny_gguf(&model, &Default::default())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let engine = Engine::load(
        &ModelSource::from_path(&model)?,
        EngineConfig {
            max_concurrent: 32,
            ..Default::default()
        },
    )?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let worker_pair = Keypair::ed25519_from_bytes([41; 32])?;
    let worker_peer = worker_pair.public().to_peer_id();
    let wkey = signing_key(&worker_pair).context("ed25519")?;
    let client_pair = Keypair::ed25519_from_bytes([42; 32])?;
    let ckey = signing_key(&client_pair).context("ed25519")?;
    let (attester, _) = worker_attester(
        &WorkerAttestation {
            mode: AttestationMode::DevInsecure,
            ..Default::default()
        },
        worker_peer,
    )?;
    let client_peer = client_pair.public().to_peer_id();
    // Two workers alike but for their journal: group commit (the node's) and one commit per
    // write (a journal without the owner thread's batching), each with its own client.
    let make = |name: &str, max_batch: usize| -> Result<Arc<Bench>> {
        let ledger = WorkerLedger::open_batched(
            &dir.path().join(format!("{name}-worker.redb")),
            wkey.verifying_key().to_bytes(),
            wallet(&wkey)?,
            1_000_000,
            max_batch,
        )?;
        let worker = Worker::new(
            HashMap::from([("tiny".to_string(), engine.clone())]),
            JobConfig::default(),
            attester.clone(),
            worker_peer,
        )
        .with_payments(Arc::new(ledger), Duration::from_secs(10));
        worker.set_price(PRICE);
        let client = ClientLedger::open(
            &dir.path().join(format!("{name}-client.redb")),
            ckey.clone(),
            wallet(&ckey)?,
            PaymentConfig {
                channels_per_worker: 16,
                ..Default::default()
            },
        )?;
        Ok(Arc::new(Bench {
            worker,
            client: Arc::new(client),
            peer: client_peer,
            worker_key: wkey.verifying_key().to_bytes(),
            payout: wallet(&wkey)?,
            next_id: Default::default(),
        }))
    };
    let modes = [
        (
            "group commit",
            make("group", cocoon_ledger::journal::MAX_BATCH)?,
        ),
        ("one commit per write", make("single", 1)?),
    ];
    // One fsync alone: what a journal committing writes one at a time pays per write.
    let fsync_ms = {
        let j = cocoon_ledger::journal::Journal::open(&dir.path().join("fsync.redb"))?;
        let receipt = cocoon_ledger::settle::Receipt {
            channel: [0; 32],
            job: 0,
            prompt_tokens: 1,
            completion_tokens: 1,
            cost: 1,
            finished_at: 0,
        };
        let mut t = Vec::new();
        for _ in 0..50 {
            let s = Instant::now();
            j.add_receipt(&receipt)?;
            t.push(s.elapsed().as_secs_f64() * 1e3);
        }
        cocoon_tests::median(t)
    };
    let commits = |b: &Bench| b.worker.payments().expect("paid").journal().commits();
    runtime.block_on(async {
        // Warm up: channels opened, caches filled.
        for (_, bench) in &modes {
            round(bench, 16, 1).await?;
        }
        // (mode, streams) -> rates, and (worker commits, jobs).
        let mut rates: HashMap<(usize, usize), Vec<f64>> = HashMap::new();
        let mut counts: HashMap<(usize, usize), (u64, usize)> = HashMap::new();
        for _ in 0..rounds {
            for (m, (_, bench)) in modes.iter().enumerate() {
                for streams in [1usize, 16] {
                    let before = commits(bench);
                    let (rate, n) = round(bench, streams, jobs).await?;
                    rates.entry((m, streams)).or_default().push(rate);
                    let e = counts.entry((m, streams)).or_default();
                    *e = (e.0 + (commits(bench) - before), e.1 + n);
                }
            }
        }
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("model name"))
                    .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
            })
            .unwrap_or_default();
        let avx512 = std::fs::read_to_string("/proc/cpuinfo")
            .map(|s| s.contains("avx512f"))
            .unwrap_or(false);
        let mut md = format!(
            "| paid jobs on one worker ({rounds} interleaved rounds of {jobs} jobs per stream, \
             median; tiny model, {TOKENS} tokens, a voucher every 4; {cpu}, {}) | jobs/s | \
             worker commits per job | worker journal busy |\n|---|---:|---:|---:|\n",
            if avx512 { "AVX-512" } else { "AVX2" }
        );
        let mut at16 = [0.0; 2];
        for (m, (name, _)) in modes.iter().enumerate() {
            for streams in [1usize, 16] {
                let rate = cocoon_tests::median(rates[&(m, streams)].clone());
                let (w, n) = counts[&(m, streams)];
                let per_job = w as f64 / n as f64;
                if streams == 16 {
                    at16[m] = rate;
                }
                md += &format!(
                    "| {name}, {streams} stream{} | {rate:.1} | {per_job:.2} | {:.0}% |\n",
                    if streams == 1 { "" } else { "s" },
                    rate * per_job * fsync_ms / 10.0,
                );
            }
        }
        md += &format!(
            "| 16 streams: group commit over one commit per write | {:.2}x | | |\n",
            at16[0] / at16[1]
        );
        md += &format!(
            "\n\"Worker journal busy\": the share of each second the journal's owner thread \
             spends in fsync (jobs/s x commits per job x {fsync_ms:.3} ms, one fsync measured \
             alone here).\n"
        );
        println!("{md}");
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target");
        std::fs::create_dir_all(&root)?;
        std::fs::write(root.join("bench-paid-jobs.md"), md)?;
        Ok::<_, anyhow::Error>(())
    })
}
