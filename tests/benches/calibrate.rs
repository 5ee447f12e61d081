//! Calibration: the simulator against real nodes on loopback.
//!
//! `cargo bench -p cocoon-tests --bench calibrate` (or `bench/calibrate.sh`). It starts a
//! real network of `cocoon node` processes on 127.0.0.1 (a bootstrap node, plain DHT nodes
//! and workers serving the real model), plus a probe node in this process that runs a full
//! node's market and measures Kademlia lookups of random keys ([`Network::probe_lookup`]:
//! requests, duration, hops). Every node logs each advert it admits with its delay since
//! publication (an advert's seq is its publication time in ms). After the run it feeds the
//! same network to the simulator (`simulator/scenarios/calibration.toml`, every node on this
//! machine's cores), fits two costs of handling a message, each on one median (its latency
//! `network.processing_ms` on the median lookup time, an advert's CPU time
//! `network.advert_cpu_ms` on the median advert propagation), and compares everything else against the tolerances in
//! `cocoon_simulator::calibration::TOLERANCES`: hops, requests per lookup, lookup time p90, propagation p90/p99 and the
//! share of deliveries straight from the publisher.
//!
//! Environment: `COCOON_CAL_NODES` (default 40, the probe not counted), `COCOON_CAL_WORKERS`
//! (10), `COCOON_CAL_SECS` (observation window, 150), `COCOON_CAL_LOOKUPS` (200). Writes
//! `target/bench-calibration.md` (the table) and `target/calibration-measured.json` (the
//! real figures, which `bench/calibrate.sh` keeps beside the scenario for the simulator's
//! calibration test). `COCOON_CAL_REUSE=1` skips the real run and fits the simulator to the
//! figures of the last one; `COCOON_CAL_KEEP=1` keeps the nodes' logs and stops after the
//! real run.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use cocoon_client::clock::unix_now_ms;
use cocoon_client::market::MarketService;
use cocoon_p2p::{DhtMode, Network, NetworkConfig};
use cocoon_simulator::calibration;
use cocoon_simulator::scenario::Scenario;
use cocoon_tests::{model_path, scratch, spawn_node};
use serde_json::{json, Value};

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn quantile(v: &mut [f64], q: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() - 1) as f64 * q).round() as usize]
}

/// `line` without ANSI escape sequences (the node colours its log when it may).
fn plain(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ parameters final-byte (a letter).
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The field `key=value` of a log line.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let at = line.find(&format!(" {key}="))? + key.len() + 2;
    line[at..].split_whitespace().next()
}

/// (delays ms, direct deliveries) of adverts published at or after `since_ms`, from every
/// node log in `dir`.
fn propagation(dir: &Path, since_ms: u64) -> Result<(Vec<f64>, usize)> {
    let mut delays = Vec::new();
    let mut direct = 0;
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().is_none_or(|e| e != "log") {
            continue;
        }
        for line in std::fs::read_to_string(&path)?.lines() {
            if !line.contains("advert admitted") {
                continue;
            }
            let line = plain(line);
            let line = line.as_str();
            let (Some(delay), Some(seq)) = (field(line, "delay_ms"), field(line, "seq")) else {
                continue;
            };
            if seq.parse::<u64>()? < since_ms {
                continue;
            }
            delays.push(delay.parse::<f64>()?);
            direct += usize::from(field(line, "direct") == Some("true"));
        }
    }
    Ok((delays, direct))
}

struct Real {
    hops: Vec<f64>,
    requests: Vec<f64>,
    lookup_ms: Vec<f64>,
    known: Vec<f64>,
    failures: u64,
    delays: Vec<f64>,
    direct: usize,
}

fn measure(nodes: usize, workers: usize, window: Duration, lookups: usize) -> Result<Real> {
    // Every node logs the adverts it admits (the child processes inherit this).
    std::env::set_var(
        "RUST_LOG",
        "info,libp2p_mdns=warn,cocoon::propagation=debug",
    );
    let model = model_path()?;
    let dir = scratch("calibrate")?;
    let quic = "/ip4/127.0.0.1/udp/0/quic-v1";
    let boot = spawn_node(dir.path(), "boot", quic, &["--no-mdns".to_string()])?;
    let boot_addr = boot.quic_addr().context("bootstrap address")?.to_string();
    let mut procs = vec![boot];
    let started = Instant::now();
    for i in 1..nodes {
        let mut args: Vec<String> = ["--no-mdns", "--dht", "server", "--bootstrap", &boot_addr]
            .map(String::from)
            .to_vec();
        let name = if i + workers >= nodes {
            args.extend(
                [
                    "--model",
                    &model.display().to_string(),
                    "--keep-quantized",
                    "--attestation",
                    "dev-insecure",
                ]
                .map(String::from),
            );
            format!("w{i}")
        } else {
            format!("n{i}")
        };
        procs.push(spawn_node(dir.path(), &name, quic, &args)?);
    }
    eprintln!(
        "{} nodes up in {:.1} s",
        procs.len(),
        started.elapsed().as_secs_f64()
    );

    let runtime = tokio::runtime::Runtime::new()?;
    let real = runtime.block_on(async {
        let config = NetworkConfig {
            listen: vec![quic.parse()?],
            bootstrap: vec![boot_addr.parse()?],
            mdns: false,
            dht_mode: DhtMode::Server,
            ..Default::default()
        };
        let network = Network::start(libp2p::identity::Keypair::generate_ed25519(), config)?;
        // A full node: it validates and forwards adverts like the others.
        let _market = MarketService::start(&network, Default::default())?;
        // Let the network settle: joins, the first adverts, mesh grafts.
        tokio::time::sleep(Duration::from_secs(30)).await;
        let since_ms = unix_now_ms();
        let window_end = Instant::now() + window;
        let gap = window / (lookups as u32 + 1);
        let mut real = Real {
            hops: Vec::new(),
            requests: Vec::new(),
            lookup_ms: Vec::new(),
            known: Vec::new(),
            failures: 0,
            delays: Vec::new(),
            direct: 0,
        };
        for _ in 0..lookups {
            let mut key = [0u8; 32];
            getrandom::fill(&mut key)?;
            let p = network.probe_lookup(key.to_vec()).await?;
            real.hops.push(p.hops as f64);
            real.requests.push(p.requests as f64);
            real.lookup_ms.push(p.duration.as_secs_f64() * 1e3);
            real.known.push(p.known as f64);
            real.failures += p.failures as u64;
            tokio::time::sleep(gap).await;
        }
        tokio::time::sleep_until(window_end.into()).await;
        network.shutdown().await;
        anyhow::Ok((real, since_ms))
    })?;
    let (mut real, since_ms) = real;
    for p in &mut procs {
        p.stop(Duration::from_secs(5));
    }
    if std::env::var_os("COCOON_CAL_KEEP").is_some() {
        eprintln!("logs kept in {}", dir.keep().display());
        anyhow::bail!("COCOON_CAL_KEEP: stopping after the real run");
    }
    let (delays, direct) = propagation(dir.path(), since_ms)?;
    ensure!(!delays.is_empty(), "no advert was admitted in the window");
    real.delays = delays;
    real.direct = direct;
    Ok(real)
}

fn main() -> Result<()> {
    let nodes = env("COCOON_CAL_NODES", 40) as usize;
    let workers = env("COCOON_CAL_WORKERS", 10) as usize;
    let window = Duration::from_secs(env("COCOON_CAL_SECS", 150));
    let lookups = env("COCOON_CAL_LOOKUPS", 200) as usize;
    ensure!(workers < nodes, "more workers than nodes");

    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let target_dir = root.join("target");
    let real_figures = if std::env::var_os("COCOON_CAL_REUSE").is_some() {
        let text = std::fs::read_to_string(target_dir.join("calibration-measured.json"))?;
        serde_json::from_str::<Value>(&text)?["real"].clone()
    } else {
        real_figures(measure(nodes, workers, window, lookups)?, nodes, workers)
    };
    eprintln!("real: {real_figures:#}");
    compare(&root, real_figures)
}

fn real_figures(mut real: Real, nodes: usize, workers: usize) -> Value {
    json!({
        "nodes": nodes + 1, "workers": workers, "lookups": real.hops.len(),
        "hops_mean": real.hops.iter().sum::<f64>() / real.hops.len() as f64,
        "hops_1_share": real.hops.iter().filter(|&&h| h == 1.0).count() as f64 / real.hops.len() as f64,
        "requests_per_lookup_p50": quantile(&mut real.requests, 0.5),
        "lookup_ms_p50": quantile(&mut real.lookup_ms, 0.5),
        "lookup_ms_p90": quantile(&mut real.lookup_ms, 0.9),
        "routing_table_p50": quantile(&mut real.known, 0.5),
        "lookup_failures": real.failures,
        "deliveries": real.delays.len(),
        "direct_share": real.direct as f64 / real.delays.len() as f64,
        "propagation_ms_p50": quantile(&mut real.delays, 0.5),
        "propagation_ms_p90": quantile(&mut real.delays, 0.9),
        "propagation_ms_p99": quantile(&mut real.delays, 0.99),
    })
}

fn compare(root: &Path, real_figures: Value) -> Result<()> {
    // The same network in the simulator: the probe is a 41st full node, so the scenario has
    // one more relay; no client demand; probe lookups at the same rate.
    let text = std::fs::read_to_string(root.join("simulator/scenarios/calibration.toml"))?;
    let mut base = Scenario::from_toml(&text)?;
    // Every node of the real network shares this machine's cores.
    base.network.host_cores = std::thread::available_parallelism()?.get() as u32;
    let (processing, cpu) = calibration::fit(&base, &real_figures);
    let fitted = format!(
        "`processing_ms = {processing}`, `advert_cpu_ms = {cpu}` with `host_cores = {}`",
        base.network.host_cores
    );
    let sim = calibration::simulate(&base, processing, cpu)?;
    eprintln!("simulated ({fitted}): {sim:#}");
    let rows = calibration::compare(&real_figures, &sim);
    let report = format!(
        "{}\nFitted ([network] of simulator/scenarios/calibration.toml): {fitted}. Real: {} \
         lookups ({} failed requests), routing table median {} peers; {} advert deliveries. \
         Simulated: {} lookups, {} deliveries.\n",
        calibration::table(&rows, real_figures["nodes"].as_u64().unwrap_or(0)),
        real_figures["lookups"],
        real_figures["lookup_failures"],
        real_figures["routing_table_p50"],
        real_figures["deliveries"],
        sim["lookups"],
        sim["deliveries"],
    );
    println!("{report}");
    let target_dir = root.join("target");
    std::fs::write(target_dir.join("bench-calibration.md"), &report)?;
    let measured = json!({
        "real": real_figures,
        "fitted": { "processing_ms": processing, "advert_cpu_ms": cpu,
                    "host_cores": base.network.host_cores },
    });
    std::fs::write(
        target_dir.join("calibration-measured.json"),
        serde_json::to_string_pretty(&measured)?,
    )?;
    ensure!(
        rows.iter().all(calibration::Row::within),
        "the simulator is outside the stated tolerance"
    );
    Ok(())
}
