//! Calibration against real nodes: the measures the calibration bench
//! (`tests/benches/calibrate.rs`) takes on a loopback network of real `cocoon node`
//! processes, the same measures out of a simulator run, the fit of the simulator's two
//! message-handling costs, and the comparison with its stated tolerances.
//!
//! The recorded real figures live in `scenarios/calibration.measured.json`; the simulator's
//! test runs `scenarios/calibration.toml` (with the fitted costs) against them, so a change
//! to the models that moves the simulator away from the real network fails a test.

use serde_json::{json, Value};

use crate::report::summary;
use crate::scenario::Scenario;
use crate::world::World;

/// Measure, allowed relative difference, allowed absolute difference (either suffices).
/// Hops and shares are small numbers: absolute. Times: 30% (p99: 50%) or a few ms, since
/// the real delays are whole milliseconds and a loopback host's scheduling is noisy.
pub const TOLERANCES: &[(&str, f64, f64)] = &[
    ("hops_mean", 0.0, 0.15),
    ("hops_1_share", 0.0, 0.15),
    ("requests_per_lookup_p50", 0.2, 2.0),
    ("lookup_ms_p90", 0.3, 2.0),
    ("propagation_ms_p90", 0.3, 2.0),
    ("propagation_ms_p99", 0.5, 3.0),
    ("direct_share", 0.0, 0.1),
];

/// Every measure compared, with its label; the two medians without a tolerance are fitted.
pub const MEASURES: &[(&str, &str)] = &[
    ("hops_mean", "lookup hops, mean"),
    (
        "hops_1_share",
        "share of 1-hop lookups (closest already known)",
    ),
    ("requests_per_lookup_p50", "requests per lookup, median"),
    ("lookup_ms_p50", "lookup time p50, ms (fitted)"),
    ("lookup_ms_p90", "lookup time p90, ms"),
    ("propagation_ms_p50", "advert propagation p50, ms (fitted)"),
    ("propagation_ms_p90", "advert propagation p90, ms"),
    ("propagation_ms_p99", "advert propagation p99, ms"),
    ("direct_share", "deliveries straight from the publisher"),
];

fn get(v: &Value, path: &[&str]) -> f64 {
    path.iter()
        .fold(v, |v, k| &v[*k])
        .as_f64()
        .unwrap_or(f64::NAN)
}

/// Runs `base` with these handling costs; returns its figures (the [`MEASURES`] and counts),
/// or why the scenario cannot run with them.
pub fn simulate(
    base: &Scenario,
    processing_ms: f64,
    advert_cpu_ms: f64,
) -> Result<Value, crate::scenario::ScenarioError> {
    let mut sc = base.clone();
    sc.network.processing_ms = processing_ms;
    sc.network.advert_cpu_ms = advert_cpu_ms;
    let mut world = World::new(sc)?;
    world.run(|_, _| {});
    Ok(figures(&summary(&world)))
}

/// The [`MEASURES`] of a run's summary (its probe lookups and its adverts).
pub fn figures(s: &Value) -> Value {
    let probes = get(s, &["dht", "probes", "lookups"]);
    let one_hop = s["dht"]["probes"]["hops_histogram"]
        .get(1)
        .and_then(Value::as_f64)
        .unwrap_or(0.0);
    json!({
        "lookups": probes,
        "hops_mean": get(s, &["dht", "probes", "hops_mean"]),
        "hops_1_share": one_hop / probes.max(1.0),
        "requests_per_lookup_p50": get(s, &["dht", "probes", "requests_per_lookup", "p50"]),
        "lookup_ms_p50": get(s, &["dht", "probes", "lookup_ms", "p50"]),
        "lookup_ms_p90": get(s, &["dht", "probes", "lookup_ms", "p90"]),
        "deliveries": get(s, &["gossip", "propagation_ms", "n"]),
        "propagation_ms_p50": get(s, &["gossip", "propagation_ms", "p50"]),
        "propagation_ms_p90": get(s, &["gossip", "propagation_ms", "p90"]),
        "propagation_ms_p99": get(s, &["gossip", "propagation_ms", "p99"]),
        "direct_share": get(s, &["gossip", "direct_share"]),
    })
}

/// Fits the two handling costs, each on one median of `real`: a message's latency
/// (`processing_ms`) on the median lookup time, an advert's CPU time on the shared host
/// (`advert_cpu_ms`) on the median propagation, a burst of work on every node at once. Each
/// median grows with its cost: alternating bisections. Returns (processing, advert cpu), ms.
pub fn fit(base: &Scenario, real: &Value) -> (f64, f64) {
    let bisect = |measure: &dyn Fn(f64) -> f64, target: f64| {
        let (mut lo, mut hi) = (0.0f64, 20.0f64);
        for _ in 0..14 {
            let mid = (lo + hi) / 2.0;
            if measure(mid) < target {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        ((lo + hi) / 2.0 * 1000.0).round() / 1000.0
    };
    let (mut processing, mut cpu) = (0.5, 0.0);
    for _ in 0..3 {
        processing = bisect(
            &|x| simulate(base, x, cpu).map_or(f64::NAN, |v| get(&v, &["lookup_ms_p50"])),
            get(real, &["lookup_ms_p50"]),
        );
        cpu = bisect(
            &|x| {
                simulate(base, processing, x).map_or(f64::NAN, |v| get(&v, &["propagation_ms_p50"]))
            },
            get(real, &["propagation_ms_p50"]),
        );
    }
    (processing, cpu)
}

/// One compared measure.
#[derive(Clone, Debug)]
pub struct Row {
    /// Its key in the figures.
    pub key: &'static str,
    /// What it is.
    pub label: &'static str,
    /// Measured on real nodes.
    pub real: f64,
    /// Simulated.
    pub sim: f64,
    /// (relative, absolute) tolerance; `None` for a fitted measure.
    pub tolerance: Option<(f64, f64)>,
}

impl Row {
    /// Whether the simulator is within the tolerance (a fitted measure always is).
    pub fn within(&self) -> bool {
        self.tolerance
            .is_none_or(|(rel, abs)| (self.sim - self.real).abs() <= abs.max(rel * self.real.abs()))
    }
}

/// Every measure of `real` against `sim`.
pub fn compare(real: &Value, sim: &Value) -> Vec<Row> {
    MEASURES
        .iter()
        .map(|&(key, label)| Row {
            key,
            label,
            real: get(real, &[key]),
            sim: get(sim, &[key]),
            tolerance: TOLERANCES
                .iter()
                .find(|t| t.0 == key)
                .map(|&(_, rel, abs)| (rel, abs)),
        })
        .collect()
}

/// The comparison as a Markdown table.
pub fn table(rows: &[Row], real_nodes: u64) -> String {
    let mut out = format!(
        "| measure | real ({real_nodes} nodes on loopback) | simulator | difference | tolerance | within |\n|---|---:|---:|---:|---:|:---:|\n"
    );
    for r in rows {
        let (tol, within) = match r.tolerance {
            Some((rel, abs)) if rel > 0.0 => {
                (format!("±{:.0}% or ±{abs}", rel * 100.0), r.within())
            }
            Some((_, abs)) => (format!("±{abs}"), r.within()),
            None => ("fitted".to_string(), true),
        };
        let mark = match (r.tolerance, within) {
            (None, _) => "",
            (Some(_), true) => "yes",
            (Some(_), false) => "no",
        };
        out += &format!(
            "| {} | {:.2} | {:.2} | {:+.2} | {tol} | {mark} |\n",
            r.label,
            r.real,
            r.sim,
            r.sim - r.real
        );
    }
    out
}
