//! `cocoon-sim`: runs a scenario (`run`) or a grid of them (`sweep`); see the crate docs and
//! `simulator/scenarios/README.md`.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::{Parser, Subcommand};
use cocoon_simulator::{report, sweep, Scenario, World};
use indicatif::{ProgressBar, ProgressStyle};

#[derive(Parser)]
#[command(
    name = "cocoon-sim",
    version,
    about = "Simulate the cocoon network with its real protocol cores"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run one scenario; writes CSV time series, summary.json and charts into --out.
    Run {
        /// Scenario file (TOML).
        scenario: PathBuf,
        /// Output directory.
        #[arg(long, default_value = "sim-out")]
        out: PathBuf,
        /// Override a field: --set nodes=100000 --set dht.alpha=5 (TOML values).
        #[arg(long = "set")]
        sets: Vec<String>,
        /// Skip the PNG/SVG charts.
        #[arg(long)]
        no_charts: bool,
        /// No progress bar.
        #[arg(long)]
        quiet: bool,
    },
    /// Run a scenario over a grid: --set key=v1,v2 (one per key); runs in parallel.
    Sweep {
        /// Scenario file (TOML).
        scenario: PathBuf,
        /// Output directory (one run-NNN per grid point, and sweep.csv).
        #[arg(long, default_value = "sweep-out")]
        out: PathBuf,
        /// A swept field and its values.
        #[arg(long = "set", required = true)]
        sets: Vec<String>,
        /// Runs at once [default: the number of cores].
        #[arg(long)]
        threads: Option<usize>,
        /// Also draw each run's charts.
        #[arg(long)]
        charts: bool,
    },
}

fn load(path: &PathBuf) -> anyhow::Result<Scenario> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Scenario::from_toml(&text).with_context(|| path.display().to_string())
}

fn overrides(sets: &[String]) -> anyhow::Result<Vec<(String, String)>> {
    sets.iter()
        .map(|s| {
            s.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .with_context(|| format!("--set {s}: expected key=value"))
        })
        .collect()
}

/// Peak resident memory of this process, bytes (Linux), if known.
fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::Run {
            scenario,
            out,
            sets,
            no_charts,
            quiet,
        } => {
            let sc = load(&scenario)?.with_overrides(&overrides(&sets)?)?;
            let duration = sc.duration_secs;
            let started = Instant::now();
            // A bar over simulated time on stderr, drawn only on a terminal.
            let bar = if quiet {
                ProgressBar::hidden()
            } else {
                ProgressBar::new(duration)
            };
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} simulated s  {msg}",
                )
                .expect("template"),
            );
            bar.set_message(format!("building {} nodes", sc.nodes));
            let mut world = World::new(sc)?;
            let built = started.elapsed().as_secs_f64();
            world.run(|now, events| {
                bar.set_position(now / 1_000_000);
                let secs = started.elapsed().as_secs_f64().max(1e-9);
                bar.set_message(format!("{events} events, {:.0}/s", events as f64 / secs));
            });
            world.finish();
            bar.finish_and_clear();
            let wall = started.elapsed().as_secs_f64();
            let summary = report::write(&world, &out, !no_charts)?;
            let perf = serde_json::json!({
                "wall_secs": wall, "build_secs": built, "events": world.events(),
                "events_per_sec": world.events() as f64 / (wall - built).max(1e-9),
                "peak_rss_bytes": peak_rss(),
            });
            std::fs::write(
                out.join("perf.json"),
                serde_json::to_string_pretty(&perf)? + "\n",
            )?;
            let j = &summary["jobs"];
            println!(
                "{}: {} nodes, {} s simulated in {:.1} s ({} events); jobs {} completed, {} failed; latency p50 {} ms; outputs in {}",
                summary["scenario"].as_str().unwrap_or(""),
                summary["nodes"],
                duration,
                wall,
                world.events(),
                j["completed"],
                j["failed"],
                summary["latency_ms"]["p50"],
                out.display()
            );
            Ok(())
        }
        Cmd::Sweep {
            scenario,
            out,
            sets,
            threads,
            charts,
        } => {
            let sc = load(&scenario)?;
            let threads = threads
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
            let points = sweep::grid(&sets)?.len();
            // On stderr, drawn only on a terminal (indicatif's default target).
            let bar = ProgressBar::new(points as u64);
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} runs  (eta {eta})",
                )
                .expect("template"),
            );
            let results = sweep::run(&sc, &sets, &out, threads, charts, |done, _| {
                bar.set_position(done as u64)
            })?;
            bar.finish_and_clear();
            println!(
                "{} runs on {threads} threads; table in {}",
                results.len(),
                out.join("sweep.csv").display()
            );
            Ok(())
        }
    }
}
