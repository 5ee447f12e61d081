//! Benchmark: the cost of trusting a worker.
//!
//! `cargo bench -p cocoon-p2p --bench attest` (or `bench/secure.sh`). Measures, on the real
//! recorded TDX quote and its collateral (p2p/tests/data/dcap-qvl):
//! - uncached verification: collateral parse + DCAP verification of the quote, per second;
//! - the verifier's path for the same evidence when its DCAP result is cached;
//! - a whole Noise NX handshake with dev evidence over an in-memory pipe, per second.
//!
//! The rows run interleaved in rounds, so machine noise hits them alike; the table shows the
//! median round. Environment: `COCOON_BENCH_ROUNDS` (default 5). The table is printed and
//! written to `target/bench-attest.md`.

use std::time::Instant;

use cocoon_p2p::attest::attester::{Attester, AttesterConfig, EvidenceSource};
use cocoon_p2p::attest::evidence::{Evidence, EvidenceBody};
use cocoon_p2p::attest::policy::Policy;
use cocoon_p2p::attest::tdx;
use cocoon_p2p::attest::verifier::{Verifier, VerifierConfig};
use cocoon_p2p::frame::FramedStream;
use cocoon_p2p::job::{confidential, JobConfig};
use cocoon_p2p::testing::pipe;
use libp2p::identity::Keypair;

const QUOTE: &[u8] = include_bytes!("../tests/data/dcap-qvl/tdx_quote");
const COLLATERAL: &[u8] = include_bytes!("../tests/data/dcap-qvl/tdx_quote_collateral.json");
const NOW: u64 = 1_750_809_600;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Runs `f` `n` times; returns operations per second.
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
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    let worker = Keypair::generate_ed25519().public().to_peer_id();
    let client = Keypair::generate_ed25519().public().to_peer_id();
    let key = [9u8; 32];
    let evidence = Evidence {
        expires_at: NOW + 3600,
        body: EvidenceBody::Tdx {
            quote: QUOTE.to_vec(),
            collateral: Some(COLLATERAL.to_vec()),
        },
    }
    .encode()
    .unwrap();
    let mrtd: String = tdx::quote_mrtd(QUOTE)
        .unwrap()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let cached = Verifier::new(VerifierConfig {
        policy: Policy {
            allowed_mrtd: vec![mrtd],
            allowed_rtmrs: vec![["*".into(), "*".into(), "*".into(), "*".into()]],
            ..Policy::default()
        },
        ..Default::default()
    });
    // Warm the cache (the verdict is a binding refusal: no TDX here to bind our key).
    let _ = rt.block_on(cached.verify(&evidence, &key, &worker, NOW));
    assert_eq!(cached.cached_appraisals(), 1);

    let attester = Attester::new(
        EvidenceSource::DevInsecure,
        worker,
        AttesterConfig::default(),
        NOW,
    )
    .unwrap();
    let dev = Verifier::new(VerifierConfig {
        policy: Policy::insecure_dev(),
        ..Default::default()
    });
    let config = JobConfig::default();

    let (mut uncached_r, mut cached_r, mut hs_r) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        uncached_r.push(rate(20, || {
            let c = tdx::parse_collateral(COLLATERAL).unwrap();
            tdx::appraise(QUOTE, &c, NOW).unwrap();
        }));
        cached_r.push(rate(2000, || {
            let r = rt.block_on(cached.verify(&evidence, &key, &worker, NOW));
            assert!(r.is_err());
        }));
        hs_r.push(rate(200, || {
            rt.block_on(async {
                let (a, b) = pipe();
                let (opened, accepted) = futures::join!(
                    confidential::open(
                        FramedStream::new(a, 1 << 20),
                        &dev,
                        &client,
                        &worker,
                        NOW,
                        &config
                    ),
                    confidential::accept(
                        FramedStream::new(b, 1 << 20),
                        &attester,
                        &client,
                        &worker,
                        &config
                    ),
                );
                opened.unwrap();
                accepted.unwrap();
            })
        }));
    }
    let (u, c, h) = (median(uncached_r), median(cached_r), median(hs_r));
    let table = format!(
        "| attestation step ({rounds} rounds, median) | per second | time each |\n\
         |---|---:|---:|\n\
         | real TDX quote, DCAP verification (uncached) | {u:.0} | {:.2} ms |\n\
         | same evidence, verifier with the DCAP result cached | {c:.0} | {:.1} µs |\n\
         | Noise NX handshake + dev evidence check, in memory | {h:.0} | {:.2} ms |\n\
         \ncached / uncached: {:.0}x\n",
        1e3 / u,
        1e6 / c,
        1e3 / h,
        c / u
    );
    println!("{table}");
    let _ = std::fs::create_dir_all("../target");
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-attest.md");
    std::fs::write(path, table).unwrap();
}
