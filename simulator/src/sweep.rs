//! Parameter sweeps: a scenario run over the cartesian product of `--set key=v1,v2,...`
//! values, runs spread over threads (each run stays single-threaded and deterministic),
//! one row per run in `sweep.csv`.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use serde_json::Value;

use crate::report::{self, ReportError};
use crate::scenario::{Scenario, ScenarioError};
use crate::world::World;

/// Why a sweep failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SweepError {
    /// A grid point is not a valid scenario.
    #[error(transparent)]
    Scenario(#[from] ScenarioError),
    /// Outputs.
    #[error(transparent)]
    Report(#[from] ReportError),
    /// A `--set` without values.
    #[error("--set {0}: give key=value[,value...]")]
    Grid(String),
}

/// The grid: every combination of the values given per key, in order.
pub fn grid(sets: &[String]) -> Result<Vec<Vec<(String, String)>>, SweepError> {
    let mut points: Vec<Vec<(String, String)>> = vec![Vec::new()];
    for set in sets {
        let (key, values) = set
            .split_once('=')
            .ok_or_else(|| SweepError::Grid(set.clone()))?;
        let values: Vec<&str> = values.split(',').filter(|v| !v.is_empty()).collect();
        if values.is_empty() {
            return Err(SweepError::Grid(set.clone()));
        }
        points = points
            .into_iter()
            .flat_map(|p| {
                values.iter().map(move |v| {
                    let mut q = p.clone();
                    q.push((key.to_string(), v.to_string()));
                    q
                })
            })
            .collect();
    }
    Ok(points)
}

/// The summary fields `sweep.csv` reports per run.
const COLUMNS: &[(&str, &[&str])] = &[
    ("success_rate", &["jobs", "success_rate"]),
    ("completed", &["jobs", "completed"]),
    ("failed", &["jobs", "failed"]),
    ("latency_p50_ms", &["latency_ms", "p50"]),
    ("latency_p90_ms", &["latency_ms", "p90"]),
    ("ttft_p50_ms", &["ttft_ms", "p50"]),
    (
        "price_median_end",
        &["price_completion_per_mtok", "median_at_end"],
    ),
    ("utilisation_end", &["utilisation_at_end"]),
    ("earned_nanoton", &["money_nanoton", "earned"]),
    ("earnings_gini", &["earnings", "gini"]),
    ("hops_mean", &["dht", "hops_mean"]),
    ("lookup_p50_ms", &["dht", "lookup_ms", "p50"]),
    ("propagation_p90_ms", &["gossip", "propagation_ms", "p90"]),
    ("adverts_rate_limited", &["gossip", "rate_limited"]),
    ("events", &["events"]),
];

/// Runs `base` at every point of the grid on `threads` threads; each run writes its
/// outputs (charts if `charts`) to `out/run-NNN`, and `out/sweep.csv` gets one row each.
pub fn run(
    base: &Scenario,
    sets: &[String],
    out: &Path,
    threads: usize,
    charts: bool,
    on_done: impl Fn(usize, usize) + Sync,
) -> Result<Vec<Value>, SweepError> {
    let points = grid(sets)?;
    let scenarios: Vec<Scenario> = points
        .iter()
        .map(|p| base.with_overrides(p))
        .collect::<Result<_, _>>()?;
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<Result<Value, SweepError>>>> =
        Mutex::new((0..scenarios.len()).map(|_| None).collect());
    let finished = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for _ in 0..threads.max(1).min(scenarios.len().max(1)) {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(sc) = scenarios.get(i) else {
                    break;
                };
                let r = World::new(sc.clone())
                    .map_err(SweepError::from)
                    .and_then(|mut world| {
                        world.run(|_, _| {});
                        world.finish();
                        Ok(report::write(
                            &world,
                            &out.join(format!("run-{i:03}")),
                            charts,
                        )?)
                    });
                results.lock().expect("results")[i] = Some(r);
                on_done(
                    finished.fetch_add(1, Ordering::Relaxed) + 1,
                    scenarios.len(),
                );
            });
        }
    });
    let results: Vec<Value> = results
        .into_inner()
        .expect("results")
        .into_iter()
        .map(|r| r.expect("every run ran"))
        .collect::<Result<_, _>>()?;
    let keys: Vec<&str> = points
        .first()
        .map(|p| p.iter().map(|(k, _)| k.as_str()).collect())
        .unwrap_or_default();
    let mut csv = String::from("run");
    for k in &keys {
        csv.push(',');
        csv.push_str(k);
    }
    for (name, _) in COLUMNS {
        csv.push(',');
        csv.push_str(name);
    }
    csv.push('\n');
    for (i, (point, summary)) in points.iter().zip(&results).enumerate() {
        csv.push_str(&format!("{i:03}"));
        for (_, v) in point {
            csv.push(',');
            csv.push_str(v);
        }
        for (_, path) in COLUMNS {
            let v = path.iter().fold(summary, |v, k| &v[*k]);
            csv.push(',');
            csv.push_str(&v.to_string());
        }
        csv.push('\n');
    }
    std::fs::create_dir_all(out)
        .and_then(|_| std::fs::write(out.join("sweep.csv"), csv))
        .map_err(|e| ReportError::Io(out.display().to_string(), e))?;
    Ok(results)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_grid_is_the_cartesian_product_in_order() {
        let g = grid(&["a=1,2".into(), "b=x,y,z".into()]).unwrap();
        assert_eq!(g.len(), 6);
        assert_eq!(
            g[0],
            vec![("a".into(), "1".into()), ("b".into(), "x".into())]
        );
        assert_eq!(
            g[5],
            vec![("a".into(), "2".into()), ("b".into(), "z".into())]
        );
        assert!(grid(&["a".into()]).is_err());
        assert_eq!(grid(&[]).unwrap(), vec![Vec::<(String, String)>::new()]);
    }
}
