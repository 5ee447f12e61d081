//! What a run measures: a time series sampled every `sample_secs`, and distributions
//! (job latency, lookup hops and latency, advert propagation, earnings) kept whole or as
//! histograms so a million-node run stays small.

use serde::Serialize;

/// One row of the time series.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Sample {
    /// Simulated seconds.
    pub t: u64,
    /// Nodes online.
    pub online: u64,
    /// Workers online (adversaries included).
    pub workers_online: u64,
    /// Busy slots over slots of online honest workers.
    pub utilisation: f64,
    /// Median completion price of online workers, nanoTON per million tokens.
    pub price_median: u64,
    /// Mean completion price of online workers.
    pub price_mean: f64,
    /// Jobs started in the interval.
    pub jobs_started: u64,
    /// Jobs completed in the interval.
    pub jobs_completed: u64,
    /// Jobs failed in the interval.
    pub jobs_failed: u64,
    /// Jobs in flight at the sample (connecting, running or failing over).
    pub jobs_in_flight: u64,
    /// Attempts refused as busy in the interval.
    pub busy_refusals: u64,
    /// Earned by workers in the interval (billed by the channel cores), nanoTON.
    pub earned: u64,
    /// Adverts published in the interval.
    pub adverts: u64,
    /// Adverts dropped by market admission (rate limits) in the interval.
    pub adverts_dropped: u64,
    /// Lookups finished in the interval.
    pub lookups: u64,
    /// Mean hops of those lookups.
    pub lookup_hops_mean: f64,
}

/// A histogram of non-negative values with fixed-width bins (the last bin is open).
#[derive(Clone, Debug, Serialize)]
pub struct Histogram {
    /// Bin width.
    pub width: f64,
    /// Counts.
    pub counts: Vec<u64>,
    /// Values added.
    pub n: u64,
    /// Their sum.
    pub sum: f64,
}

impl Histogram {
    /// `bins` bins of `width`.
    pub fn new(width: f64, bins: usize) -> Self {
        Self {
            width,
            counts: vec![0; bins.max(1)],
            n: 0,
            sum: 0.0,
        }
    }

    /// Adds one value.
    pub fn add(&mut self, v: f64) {
        let last = self.counts.len() - 1;
        let i = ((v.max(0.0) / self.width) as usize).min(last);
        self.counts[i] += 1;
        self.n += 1;
        self.sum += v;
    }

    /// The mean.
    pub fn mean(&self) -> f64 {
        if self.n == 0 {
            0.0
        } else {
            self.sum / self.n as f64
        }
    }

    /// The value below which a share `q` of the values lie (bin upper edge).
    pub fn quantile(&self, q: f64) -> f64 {
        let want = (q * self.n as f64).ceil() as u64;
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= want.max(1) {
                return (i + 1) as f64 * self.width;
            }
        }
        self.counts.len() as f64 * self.width
    }
}

/// Everything measured in one run.
#[derive(Clone, Debug, Serialize)]
pub struct Metrics {
    /// The time series.
    pub series: Vec<Sample>,
    /// The interval being filled.
    #[serde(skip)]
    pub current: Sample,
    /// Total time of each completed job, ms.
    pub job_latency_ms: Vec<f32>,
    /// Time to first token of each completed job, ms.
    pub ttft_ms: Vec<f32>,
    /// Hops of every finished lookup (index = hops).
    pub lookup_hops: Vec<u64>,
    /// Duration of every finished lookup, ms.
    pub lookup_ms: Histogram,
    /// Requests per lookup.
    pub lookup_requests: Histogram,
    /// Probe lookups (`dht.probe_lookups_per_sec`): hops, duration (ms) and requests.
    pub probe_hops: Vec<u64>,
    /// See `probe_hops`.
    pub probe_ms: Histogram,
    /// See `probe_hops`.
    pub probe_requests: Histogram,
    /// Time for an advert to reach a mesh member, ms (every delivery).
    pub propagation_ms: Histogram,
    /// Deliveries straight from the publisher (the rest were relayed).
    pub direct: u64,
    /// Share of the online mesh each advert reached.
    pub coverage: Histogram,
    /// Duplicate deliveries of adverts.
    pub duplicates: u64,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            series: Vec::new(),
            current: Sample::default(),
            job_latency_ms: Vec::new(),
            ttft_ms: Vec::new(),
            lookup_hops: vec![0; 32],
            // 0.1 ms bins: fine enough for a loopback network's few-ms figures.
            lookup_ms: Histogram::new(0.1, 600_000),
            lookup_requests: Histogram::new(1.0, 400),
            probe_hops: vec![0; 32],
            probe_ms: Histogram::new(0.1, 600_000),
            probe_requests: Histogram::new(1.0, 400),
            propagation_ms: Histogram::new(0.1, 300_000),
            direct: 0,
            coverage: Histogram::new(0.01, 101),
            duplicates: 0,
        }
    }
}

/// The `q` quantile of `values` (sorted in place); 0 when empty.
pub fn quantile(values: &mut [f32], q: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f32::total_cmp);
    let i = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len()) - 1;
    values[i] as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_quantiles_and_means() {
        let mut h = Histogram::new(1.0, 10);
        for v in 0..100 {
            h.add(v as f64 / 10.0);
        }
        assert_eq!(h.n, 100);
        assert!((h.mean() - 4.95).abs() < 1e-9);
        assert_eq!(h.quantile(0.5), 5.0);
        h.add(1e9);
        assert_eq!(h.counts[9], 11, "the last bin is open");
        let mut v = vec![3.0, 1.0, 2.0, 4.0];
        assert_eq!(quantile(&mut v, 0.5), 2.0);
        assert_eq!(quantile(&mut [], 0.5), 0.0);
    }
}
