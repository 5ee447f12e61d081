//! Benchmark: does scraping `/metrics` hard change a job's latency? A worker serving
//! `--metrics` runs paid jobs one after another; every other job runs while a thread scrapes
//! the endpoint back to back (`COCOON_BENCH_SCRAPES` scrapes in all, default 1,000, spread
//! over the scraped jobs). Interleaved (quiet, scraped, quiet, ...) so machine noise hits both
//! alike; the table shows medians of the client's TTFT and whole-job time and the scrape rate.
//!
//! `cargo bench -p cocoon-tests --bench metrics_load` (or `bench/metrics.sh`). Environment:
//! `COCOON_BENCH_RUNS` jobs per side (default 10), `COCOON_BENCH_SCRAPES`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use cocoon_tests::{env_or, median, parse_json, LoopbackNet};

fn scrape(addr: &str) -> Result<usize> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut body = Vec::new();
    s.read_to_end(&mut body)?;
    ensure!(body.starts_with(b"HTTP/1.1 200"), "scrape refused");
    Ok(body.len())
}

fn main() -> Result<()> {
    let runs = env_or("COCOON_BENCH_RUNS", 10);
    let scrapes = env_or("COCOON_BENCH_SCRAPES", 1000);
    let flags: Vec<String> = ["--metrics", "127.0.0.1:0"].map(String::from).to_vec();
    let net = LoopbackNet::start("metrics-load", &[flags])?;
    let url = net.workers[0].metrics.clone().context("metrics URL")?;
    let addr = url
        .strip_prefix("http://")
        .and_then(|r| r.strip_suffix("/metrics"))
        .context("http://ADDR/metrics")?
        .to_string();
    let per_job = scrapes.div_ceil(runs.max(1));
    let (mut quiet, mut loud) = (Vec::new(), Vec::new());
    let (mut quiet_total, mut loud_total) = (Vec::new(), Vec::new());
    let (mut done_scrapes, mut scrape_secs, mut bytes) = (0usize, 0.0f64, 0usize);
    // One warm-up job (model pages, the channel).
    net.infer(&["--json", "--max-tokens", "32"], "Warm up.")?;
    for i in 0..2 * runs {
        let scraped = i % 2 == 1;
        let stop = Arc::new(AtomicBool::new(false));
        let count = Arc::new(AtomicUsize::new(0));
        let scraper = scraped.then(|| {
            let (stop, count, addr) = (stop.clone(), count.clone(), addr.clone());
            std::thread::spawn(move || -> Result<(usize, f64)> {
                let started = Instant::now();
                let mut bytes = 0;
                while !stop.load(Ordering::Relaxed) && count.load(Ordering::Relaxed) < per_job {
                    bytes += scrape(&addr)?;
                    count.fetch_add(1, Ordering::Relaxed);
                }
                Ok((bytes, started.elapsed().as_secs_f64()))
            })
        });
        let out = net.infer(
            &["--json", "--max-tokens", "32"],
            "Write a short poem about the sea.",
        )?;
        stop.store(true, Ordering::Relaxed);
        let json = parse_json(&out)?;
        let ttft = json["ttft_ms"].as_f64().context("ttft_ms")?;
        let total = json["total_ms"].as_f64().context("total_ms")?;
        if let Some(s) = scraper {
            let (b, secs) = s.join().expect("scraper thread")?;
            bytes += b;
            scrape_secs += secs;
            done_scrapes += count.load(Ordering::Relaxed);
            loud.push(ttft);
            loud_total.push(total);
        } else {
            quiet.push(ttft);
            quiet_total.push(total);
        }
    }
    let cpu = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpu
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("unknown CPU")
        .trim()
        .to_string();
    let simd = if cpu.contains("avx512f") {
        "AVX-512"
    } else {
        "AVX2"
    };
    let table = format!(
        "| {runs} paid jobs per side, 32 tokens, interleaved ({model}, {simd}) | TTFT ms (median) | job ms (median) |\n\
         |---|---:|---:|\n\
         | quiet | {:.1} | {:.1} |\n\
         | while scraping /metrics back to back | {:.1} | {:.1} |\n\
         | scraped over quiet | {:.2}x | {:.2}x |\n\n\
         {done_scrapes} scrapes during the scraped jobs, {:.0} per second, {:.1} KiB each.\n",
        median(quiet.clone()),
        median(quiet_total.clone()),
        median(loud.clone()),
        median(loud_total.clone()),
        median(loud) / median(quiet),
        median(loud_total) / median(quiet_total),
        done_scrapes as f64 / scrape_secs.max(1e-9),
        bytes as f64 / done_scrapes.max(1) as f64 / 1024.0,
    );
    print!("{table}");
    std::fs::write(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-metrics.md"),
        table,
    )?;
    Ok(())
}
