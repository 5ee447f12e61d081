//! Benchmark: what confidentiality costs a job. The attested Noise handshake plus the first
//! token, against the unencrypted job path of the foundation issue, on loopback QUIC between
//! two in-process nodes that are already connected.
//!
//! `cargo bench -p cocoon-tests --bench secure` (or `bench/secure.sh`). Both paths use the
//! same worker glue and engine; the plain path skips the handshake and runs the job on bare
//! frames, as before issue 3. Runs alternate (plain, secure, plain, ...) so noise hits both;
//! the table shows medians. Two models: a tiny random GGUF, whose first token takes about a
//! millisecond so the handshake's cost is visible, and the real SmolLM2, where it is hidden
//! by prompt processing. Environment: `COCOON_BENCH_RUNS` (default 15). The table is printed
//! and written to `target/bench-secure.md`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use cocoon_inference::{Engine, EngineConfig, ModelSource};
use cocoon_p2p::attest::policy::Policy;
use cocoon_p2p::attest::verifier::{Verifier, VerifierConfig};
use cocoon_p2p::frame::FramedStream;
use cocoon_p2p::job::session::ClientSession;
use cocoon_p2p::job::{
    confidential, ChatMessage, JobChannel, JobConfig, JobInput, JobRequest, Sampling,
};
use cocoon_p2p::{DhtMode, Network, NetworkConfig};
use cocoon_worker::attestation::{worker_attester, AttestationMode, WorkerAttestation};
use cocoon_worker::worker::Worker;
use futures::StreamExt;
use libp2p::identity::Keypair;

const T: Duration = Duration::from_secs(20);

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn request(id: u64) -> JobRequest {
    JobRequest {
        id,
        model: "m".into(),
        input: JobInput::Chat(vec![ChatMessage {
            role: "user".into(),
            content: "What is the capital of France?".into(),
        }]),
        sampling: Sampling {
            max_tokens: 8,
            ..Default::default()
        },
        continuation: None,
        payment: None,
    }
}

/// Runs one free job on `channel` through the client's session and shell; returns when
/// the first text arrived.
async fn run_job<T: cocoon_p2p::frame::FrameTransport>(
    mut channel: JobChannel<T>,
    id: u64,
) -> Result<Option<Instant>> {
    let mut session = ClientSession::new(
        Default::default(),
        cocoon_client::clock::session_now(),
        request(id),
        None,
    );
    let (tx, mut rx) = tokio::sync::mpsc::channel::<String>(64);
    let job = async move {
        let mut answer = String::new();
        let driven =
            cocoon_client::infer::drive(&mut channel, &mut session, None, &mut answer, &tx).await;
        drop(tx);
        if let Some(e) = driven.journal_error {
            anyhow::bail!(e);
        }
        match session.result() {
            Some(Ok(_)) => Ok(()),
            other => Err(anyhow::anyhow!("the job failed: {other:?}")),
        }
    };
    let reader = async {
        let mut first = None;
        while rx.recv().await.is_some() {
            first.get_or_insert_with(Instant::now);
        }
        first
    };
    let (done, first) = tokio::join!(job, reader);
    done?;
    Ok(first)
}

/// One job from opening the stream: (ms to the first token, ms to `Done`).
async fn job(client: &Network, worker: &Network, secure: bool, id: u64) -> Result<(f64, f64)> {
    let config = JobConfig::default();
    let verifier = Verifier::new(VerifierConfig {
        policy: Policy::insecure_dev(),
        ..Default::default()
    });
    let start = Instant::now();
    let stream = client.open_job_stream(worker.peer_id(), T).await?;
    let framed = FramedStream::new(stream, config.max_frame);
    macro_rules! drive {
        ($channel:expr) => {
            run_job($channel, id).await?
        };
    }
    let first = if secure {
        let now = cocoon_client::clock::unix_now();
        let (transport, _) = confidential::open(
            framed,
            &verifier,
            &client.peer_id(),
            &worker.peer_id(),
            now,
            &config,
        )
        .await?;
        drive!(JobChannel::new(transport, config))
    } else {
        drive!(JobChannel::new(framed, config))
    };
    let end = Instant::now();
    let first = first.context("no token")?;
    Ok((
        first.duration_since(start).as_secs_f64() * 1e3,
        end.duration_since(start).as_secs_f64() * 1e3,
    ))
}

async fn bench(name: &str, source: ModelSource, runs: usize) -> Result<String> {
    let engine = Engine::load(
        &source,
        EngineConfig {
            max_concurrent: 1,
            ..Default::default()
        },
    )?;
    let listen = |bootstrap| NetworkConfig {
        listen: vec!["/ip4/127.0.0.1/udp/0/quic-v1".parse().unwrap()],
        bootstrap,
        mdns: false,
        ..Default::default()
    };
    let worker_net = Network::start(Keypair::generate_ed25519(), listen(vec![]))?;
    worker_net
        .wait_for("listening", T, |s| !s.listen_addrs.is_empty())
        .await?;
    let addr = worker_net.state().listen_addrs[0].clone();
    let client = Network::start(
        Keypair::generate_ed25519(),
        NetworkConfig {
            dht_mode: DhtMode::Client,
            ..listen(vec![addr])
        },
    )?;
    let (attester, _) = worker_attester(
        &WorkerAttestation {
            mode: AttestationMode::DevInsecure,
            ..Default::default()
        },
        worker_net.peer_id(),
    )?;
    let worker = Worker::new(
        HashMap::from([("m".to_string(), engine)]),
        JobConfig::default(),
        attester,
        worker_net.peer_id(),
    );
    let secure_mode = Arc::new(AtomicBool::new(false));
    let mut incoming = worker_net.accept_jobs()?;
    let mode = secure_mode.clone();
    tokio::spawn(async move {
        while let Some((peer, stream)) = incoming.next().await {
            if mode.load(Ordering::SeqCst) {
                worker.serve_stream(peer, stream).await;
            } else {
                // The foundation issue's path: the job on bare frames.
                let config = JobConfig::default();
                let mut ch = JobChannel::new(FramedStream::new(stream, config.max_frame), config);
                if let Ok(req) = ch.recv_request().await {
                    let _ = worker.run(&mut ch, req, &peer).await;
                    let _ = ch.close().await;
                }
            }
        }
    });
    // Warm up both paths (connection, caches).
    for secure in [false, true] {
        secure_mode.store(secure, Ordering::SeqCst);
        job(&client, &worker_net, secure, 0).await?;
    }
    let (mut plain, mut secure) = (Vec::new(), Vec::new());
    for i in 0..runs {
        for (on, out) in [(false, &mut plain), (true, &mut secure)] {
            secure_mode.store(on, Ordering::SeqCst);
            out.push(job(&client, &worker_net, on, i as u64 + 1).await?);
        }
    }
    client.shutdown().await;
    worker_net.shutdown().await;
    let ft = |v: &Vec<(f64, f64)>| median(v.iter().map(|x| x.0).collect());
    let done = |v: &Vec<(f64, f64)>| median(v.iter().map(|x| x.1).collect());
    let (p1, s1, pd, sd) = (ft(&plain), ft(&secure), done(&plain), done(&secure));
    Ok(format!(
        "| {name} | stream open → first token | {p1:.2} | {s1:.2} | {:+.2} ms ({:+.0}%) |\n\
         | {name} | stream open → done (8 tokens) | {pd:.2} | {sd:.2} | {:+.2} ms ({:+.0}%) |\n",
        s1 - p1,
        (s1 / p1 - 1.0) * 100.0,
        sd - pd,
        (sd / pd - 1.0) * 100.0,
    ))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let runs: usize = std::env::var("COCOON_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(15);
    let dir = tempfile::tempdir()?;
    let tiny = dir.path().join("tiny.gguf");
    cocoon_inference::testing::write_tiny_gguf(&tiny, &Default::default())
        .map_err(|e| anyhow::anyhow!("writing the tiny model: {e}"))?;
    let mut table = format!(
        "| model | ms, median of {runs} (loopback QUIC, connected) | plain frames | attested Noise | cost of confidentiality |\n\
         |---|---|---:|---:|---:|\n"
    );
    table += &bench("tiny random GGUF", ModelSource::from_path(&tiny)?, runs).await?;
    let real = cocoon_tests::model_path()?;
    table += &bench("SmolLM2-135M (f32)", ModelSource::from_path(&real)?, runs).await?;
    println!("{table}");
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-secure.md");
    std::fs::write(path, &table)?;
    Ok(())
}
