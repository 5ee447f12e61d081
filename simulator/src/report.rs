//! A run's outputs: `timeseries.csv`, `summary.json`, the distributions as CSV
//! (`latency.csv`, `hops.csv`, `earnings.csv`), and charts as PNG and SVG (price over time,
//! latency CDF, lookup hops, earnings). Everything here is a function of the simulation's
//! state, so the same seed writes the same bytes; wall time and memory go to `perf.json`.

use std::fmt::Write as _;
use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;
use serde_json::{json, Value};

use crate::metrics::{quantile, Histogram, Sample};
use crate::world::World;

/// Why outputs could not be written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReportError {
    /// The file system.
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    /// A chart.
    #[error("chart {0}: {1}")]
    Chart(String, String),
}

fn write_file(path: &Path, bytes: impl AsRef<[u8]>) -> Result<(), ReportError> {
    std::fs::write(path, bytes).map_err(|e| ReportError::Io(path.display().to_string(), e))
}

/// Gini coefficient of non-negative values (0 = equal, 1 = one takes all).
pub fn gini(values: &[u64]) -> f64 {
    let n = values.len();
    let total: u128 = values.iter().map(|&v| v as u128).sum();
    if n == 0 || total == 0 {
        return 0.0;
    }
    let mut v = values.to_vec();
    v.sort_unstable();
    let weighted: u128 = v
        .iter()
        .enumerate()
        .map(|(i, &x)| (i as u128 + 1) * x as u128)
        .sum();
    (2.0 * weighted as f64) / (n as f64 * total as f64) - (n as f64 + 1.0) / n as f64
}

fn hist_summary(h: &Histogram) -> Value {
    json!({"n": h.n, "mean": round(h.mean()), "p50": round(h.quantile(0.5)),
           "p90": round(h.quantile(0.9)), "p99": round(h.quantile(0.99))})
}

/// Lookups counted in a hop histogram, and their mean hops.
fn hops_stats(hops: &[u64]) -> (u64, f64) {
    let total: u64 = hops.iter().sum();
    let weighted: f64 = hops
        .iter()
        .enumerate()
        .map(|(h, &c)| h as f64 * c as f64)
        .sum();
    (
        total,
        if total == 0 {
            0.0
        } else {
            weighted / total as f64
        },
    )
}

/// A histogram without its empty tail.
fn trimmed(counts: &[u64]) -> Vec<u64> {
    counts
        .iter()
        .rposition(|&c| c > 0)
        .map_or(vec![], |end| counts[..=end].to_vec())
}

fn round(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// The summary of a run (also written as `summary.json`).
pub fn summary(world: &World) -> Value {
    let m = &world.metrics;
    let mut latency = m.job_latency_ms.clone();
    let mut ttft = m.ttft_ms.clone();
    let (hops_total, hops_mean) = hops_stats(&m.lookup_hops);
    let earnings = world.earnings();
    let honest: Vec<u64> = earnings
        .iter()
        .filter(|e| e.1 == "honest")
        .map(|e| e.2)
        .collect();
    let adversarial: u64 = earnings
        .iter()
        .filter(|e| e.1 != "honest")
        .map(|e| e.2)
        .sum();
    let last = m.series.last().cloned().unwrap_or_default();
    let o = &world.outcomes;
    let l = &world.ledger;
    let ended = o.completed + o.failed;
    json!({
        "scenario": world.sc.name,
        "seed": world.sc.seed,
        "nodes": world.node_count(),
        "simulated_secs": world.sc.duration_secs,
        "events": world.events(),
        "jobs": {
            "created": o.created, "completed": o.completed, "failed": o.failed,
            "in_flight_at_end": world.in_flight(),
            "success_rate": if ended == 0 { 0.0 } else { round(o.completed as f64 / ended as f64) },
            "no_worker": o.no_worker, "failovers": o.failovers, "busy_refusals": o.busy,
            "unreachable": o.unreachable, "stalled": o.stalled,
            "wrong_detected": o.wrong_detected, "wrong_accepted": o.wrong_accepted,
        },
        "latency_ms": {
            "p50": round(quantile(&mut latency, 0.5)), "p90": round(quantile(&mut latency, 0.9)),
            "p99": round(quantile(&mut latency, 0.99)),
        },
        "ttft_ms": {
            "p50": round(quantile(&mut ttft, 0.5)), "p90": round(quantile(&mut ttft, 0.9)),
            "p99": round(quantile(&mut ttft, 0.99)),
        },
        "money_nanoton": {
            "billed": l.billed, "paid": l.paid, "earned": l.earned, "pending": l.pending,
            "vouchers": l.vouchers, "channels": l.channels,
            "credit_stalls": l.credit_stalls, "stall_ms": round(l.stall_ms),
            "payment_required": l.payment_required, "quotes_refused": l.quotes_refused,
            "paid_equals_billed": l.paid == l.billed,
            "paid_equals_earned_plus_pending": l.paid == l.earned + l.pending,
            "earned_by_adversaries": adversarial,
        },
        "earnings": {
            "honest_workers": honest.len(),
            "gini": round(gini(&honest)),
            "mean": if honest.is_empty() { 0 } else { honest.iter().sum::<u64>() / honest.len() as u64 },
            "max": honest.iter().max().copied().unwrap_or(0),
        },
        "price_completion_per_mtok": {"median_at_end": last.price_median, "mean_at_end": round(last.price_mean)},
        "utilisation_at_end": round(last.utilisation),
        "dht": {
            "lookups": hops_total, "hops_mean": round(hops_mean),
            "hops_histogram": trimmed(&m.lookup_hops),
            "lookup_ms": hist_summary(&m.lookup_ms),
            "requests_per_lookup": hist_summary(&m.lookup_requests),
            "probes": {
                "lookups": hops_stats(&m.probe_hops).0, "hops_mean": round(hops_stats(&m.probe_hops).1),
                "hops_histogram": trimmed(&m.probe_hops),
                "lookup_ms": hist_summary(&m.probe_ms),
                "requests_per_lookup": hist_summary(&m.probe_requests),
            },
            "requests": world.traffic.dht_requests, "timeouts": world.traffic.dht_timeouts,
        },
        "gossip": {
            "adverts": world.traffic.adverts, "messages": world.traffic.advert_messages,
            "admitted": world.traffic.admitted, "rate_limited": world.traffic.rate_limited,
            "forged_rejected": world.traffic.forged, "stale": world.traffic.stale,
            "duplicates": m.duplicates,
            "propagation_ms": hist_summary(&m.propagation_ms),
            "direct_share": round(m.direct as f64 / m.propagation_ms.n.max(1) as f64),
            "coverage_mean": round(m.coverage.mean()),
        },
    })
}

/// Writes every output of `world` into `dir`; returns the summary.
pub fn write(world: &World, dir: &Path, charts: bool) -> Result<Value, ReportError> {
    std::fs::create_dir_all(dir).map_err(|e| ReportError::Io(dir.display().to_string(), e))?;
    let s = summary(world);
    let pretty = serde_json::to_string_pretty(&s).expect("JSON");
    write_file(&dir.join("summary.json"), pretty + "\n")?;
    write_file(
        &dir.join("timeseries.csv"),
        timeseries_csv(&world.metrics.series),
    )?;
    let mut latency: Vec<f32> = world.metrics.job_latency_ms.clone();
    latency.sort_by(f32::total_cmp);
    let mut ttft: Vec<f32> = world.metrics.ttft_ms.clone();
    ttft.sort_by(f32::total_cmp);
    let mut csv = String::from("quantile,latency_ms,ttft_ms\n");
    for q in 1..=100 {
        let pick = |v: &[f32]| {
            if v.is_empty() {
                0.0
            } else {
                v[((q as f64 / 100.0 * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1]
            }
        };
        let _ = writeln!(
            csv,
            "{:.2},{:.1},{:.1}",
            q as f64 / 100.0,
            pick(&latency),
            pick(&ttft)
        );
    }
    write_file(&dir.join("latency.csv"), csv)?;
    let mut csv = String::from("hops,lookups\n");
    for (h, c) in world.metrics.lookup_hops.iter().enumerate() {
        let _ = writeln!(csv, "{h},{c}");
    }
    write_file(&dir.join("hops.csv"), csv)?;
    let mut csv = String::from("worker,class,behaviour,earned_nanoton,jobs\n");
    for (i, (class, behaviour, earned, jobs)) in world.earnings().iter().enumerate() {
        let _ = writeln!(csv, "{i},{class},{behaviour},{earned},{jobs}");
    }
    write_file(&dir.join("earnings.csv"), csv)?;
    if charts {
        draw_all(world, &latency, &ttft, dir)?;
    }
    Ok(s)
}

/// The time series as CSV.
pub fn timeseries_csv(series: &[Sample]) -> String {
    let mut csv = String::from(
        "t,online,workers_online,utilisation,price_median,price_mean,jobs_started,jobs_completed,jobs_failed,jobs_in_flight,busy_refusals,earned,adverts,adverts_dropped,lookups,lookup_hops_mean\n",
    );
    for s in series {
        let _ = writeln!(
            csv,
            "{},{},{},{:.4},{},{:.1},{},{},{},{},{},{},{},{},{},{:.3}",
            s.t,
            s.online,
            s.workers_online,
            s.utilisation,
            s.price_median,
            s.price_mean,
            s.jobs_started,
            s.jobs_completed,
            s.jobs_failed,
            s.jobs_in_flight,
            s.busy_refusals,
            s.earned,
            s.adverts,
            s.adverts_dropped,
            s.lookups,
            s.lookup_hops_mean
        );
    }
    csv
}

/// Registers the embedded font once (plotters draws text with it, no system fonts).
fn font() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = plotters::style::register_font(
            "sans-serif",
            FontStyle::Normal,
            dejavu::sans::regular(),
        );
    });
}

/// A chart: a title, axes, and series of points.
struct Chart {
    title: String,
    x: String,
    y: String,
    series: Vec<(String, Vec<(f64, f64)>)>,
    /// Draw as bars (histogram) instead of lines.
    bars: bool,
}

fn draw<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, c: &Chart) -> Result<(), String> {
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let points = c.series.iter().flat_map(|s| s.1.iter());
    let (mut x0, mut x1, mut y1) = (f64::INFINITY, f64::NEG_INFINITY, 0.0f64);
    for &(x, y) in points {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y1 = y1.max(y);
    }
    if !x0.is_finite() {
        (x0, x1) = (0.0, 1.0);
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    if y1 <= 0.0 {
        y1 = 1.0;
    }
    let pad = if c.bars { 0.5 } else { 0.0 };
    let mut chart = ChartBuilder::on(&root)
        .caption(&c.title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d((x0 - pad)..(x1 + pad), 0.0..y1 * 1.08)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc(&c.x)
        .y_desc(&c.y)
        .label_style(("sans-serif", 13))
        .draw()
        .map_err(|e| e.to_string())?;
    let colours = [BLUE, RED, GREEN, MAGENTA, CYAN];
    for (i, (name, pts)) in c.series.iter().enumerate() {
        let colour = colours[i % colours.len()];
        if c.bars {
            chart
                .draw_series(
                    pts.iter().map(|&(x, y)| {
                        Rectangle::new([(x - 0.4, 0.0), (x + 0.4, y)], colour.filled())
                    }),
                )
                .map_err(|e| e.to_string())?
                .label(name)
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 10, y + 5)], colour.filled())
                });
        } else {
            chart
                .draw_series(LineSeries::new(pts.iter().copied(), colour.stroke_width(2)))
                .map_err(|e| e.to_string())?
                .label(name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour));
        }
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(("sans-serif", 13))
        .draw()
        .map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())
}

fn save(dir: &Path, name: &str, chart: &Chart) -> Result<(), ReportError> {
    font();
    let err = |e: String| ReportError::Chart(name.to_string(), e);
    let png = dir.join(format!("{name}.png"));
    draw(
        BitMapBackend::new(&png, (900, 520)).into_drawing_area(),
        chart,
    )
    .map_err(err)?;
    let svg = dir.join(format!("{name}.svg"));
    draw(SVGBackend::new(&svg, (900, 520)).into_drawing_area(), chart).map_err(err)
}

fn cdf(sorted: &[f32]) -> Vec<(f64, f64)> {
    let n = sorted.len();
    if n == 0 {
        return Vec::new();
    }
    (0..=200)
        .map(|i| {
            let q = i as f64 / 200.0;
            let idx = ((q * n as f64) as usize).min(n - 1);
            (sorted[idx] as f64 / 1000.0, q)
        })
        .collect()
}

fn draw_all(world: &World, latency: &[f32], ttft: &[f32], dir: &Path) -> Result<(), ReportError> {
    let series = &world.metrics.series;
    let minutes = |s: &Sample| s.t as f64 / 60.0;
    save(
        dir,
        "price",
        &Chart {
            title: "Completion price of online workers".into(),
            x: "time (min)".into(),
            y: "TON per million tokens".into(),
            series: vec![
                (
                    "median".into(),
                    series
                        .iter()
                        .map(|s| (minutes(s), s.price_median as f64 / 1e9))
                        .collect(),
                ),
                (
                    "mean".into(),
                    series
                        .iter()
                        .map(|s| (minutes(s), s.price_mean / 1e9))
                        .collect(),
                ),
            ],
            bars: false,
        },
    )?;
    save(
        dir,
        "latency_cdf",
        &Chart {
            title: "Job latency (CDF)".into(),
            x: "seconds".into(),
            y: "share of completed jobs".into(),
            series: vec![
                ("whole job".into(), cdf(latency)),
                ("first token".into(), cdf(ttft)),
            ],
            bars: false,
        },
    )?;
    let hops = &world.metrics.lookup_hops;
    let end = hops.iter().rposition(|&c| c > 0).unwrap_or(0);
    save(
        dir,
        "hops",
        &Chart {
            title: "DHT lookup hops".into(),
            x: "hops to the closest node".into(),
            y: "lookups".into(),
            series: vec![(
                "lookups".into(),
                hops[..=end]
                    .iter()
                    .enumerate()
                    .map(|(h, &c)| (h as f64, c as f64))
                    .collect(),
            )],
            bars: true,
        },
    )?;
    let mut earned: Vec<u64> = world
        .earnings()
        .iter()
        .filter(|e| e.1 == "honest")
        .map(|e| e.2)
        .collect();
    earned.sort_unstable_by(|a, b| b.cmp(a));
    save(
        dir,
        "earnings",
        &Chart {
            title: "Earnings per honest worker, highest first".into(),
            x: "worker rank".into(),
            y: "earned (µTON)".into(),
            series: vec![(
                "earned".into(),
                earned
                    .iter()
                    .enumerate()
                    .map(|(i, &e)| (i as f64, e as f64 / 1000.0))
                    .collect(),
            )],
            bars: false,
        },
    )?;
    save(
        dir,
        "jobs",
        &Chart {
            title: "Jobs per interval".into(),
            x: "time (min)".into(),
            y: "jobs".into(),
            series: vec![
                (
                    "completed".into(),
                    series
                        .iter()
                        .map(|s| (minutes(s), s.jobs_completed as f64))
                        .collect(),
                ),
                (
                    "failed".into(),
                    series
                        .iter()
                        .map(|s| (minutes(s), s.jobs_failed as f64))
                        .collect(),
                ),
                (
                    "in flight".into(),
                    series
                        .iter()
                        .map(|s| (minutes(s), s.jobs_in_flight as f64))
                        .collect(),
                ),
            ],
            bars: false,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gini_is_zero_for_equal_and_near_one_for_one_taker() {
        assert_eq!(gini(&[5, 5, 5, 5]), 0.0);
        let g = gini(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 100]);
        assert!((g - 0.9).abs() < 1e-9, "{g}");
        assert_eq!(gini(&[]), 0.0);
    }
}
