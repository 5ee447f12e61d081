//! The client's own record of each worker: successes and failures that fade with time, and
//! what it measured (time to first token, speed against the advertised speed).
//!
//! Sans-IO and serde: the node persists it as JSON in the client's data dir; the simulator
//! keeps it in memory. Counts decay exponentially with [`HALF_LIFE_SECS`], so a worker that
//! failed last week is not punished forever, and one that fails now quickly loses rank.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Half-life of success and failure counts, seconds (one day).
pub const HALF_LIFE_SECS: f64 = 86_400.0;
/// Weight of a new measurement in the moving averages.
const ALPHA: f64 = 0.3;
/// Records kept at most (the least recently updated go first).
pub const MAX_RECORDS: usize = 4096;

/// What the client knows of one worker.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Decayed count of jobs that completed.
    pub successes: f64,
    /// Decayed count of jobs that failed on this worker (refused attestation, died, broke
    /// the protocol; `busy` is not a failure).
    pub failures: f64,
    /// Moving average of time to first token, ms.
    pub ttft_ms: Option<f64>,
    /// Moving average of measured over advertised decode speed.
    pub speed_ratio: Option<f64>,
    /// When the counts were last decayed (Unix seconds).
    pub updated_at: u64,
}

impl Record {
    fn decay(&mut self, now: u64) {
        let dt = now.saturating_sub(self.updated_at) as f64;
        let f = 0.5f64.powf(dt / HALF_LIFE_SECS);
        self.successes *= f;
        self.failures *= f;
        self.updated_at = now.max(self.updated_at);
    }
}

/// Records by worker peer id (hex).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Reputation {
    records: BTreeMap<String, Record>,
}

fn hex(peer: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(peer.len() * 2);
    for b in peer {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

fn ewma(old: Option<f64>, new: f64) -> Option<f64> {
    Some(match old {
        Some(o) => o + ALPHA * (new - o),
        None => new,
    })
}

impl Reputation {
    /// The record of `peer`, if any.
    pub fn get(&self, peer: &[u8]) -> Option<&Record> {
        if self.records.is_empty() {
            return None;
        }
        self.records.get(&hex(peer))
    }

    fn record(&mut self, peer: &[u8], now: u64) -> &mut Record {
        if self.records.len() >= MAX_RECORDS && !self.records.contains_key(&hex(peer)) {
            if let Some(oldest) = self
                .records
                .iter()
                .min_by_key(|(k, r)| (r.updated_at, (*k).clone()))
                .map(|(k, _)| k.clone())
            {
                self.records.remove(&oldest);
            }
        }
        let r = self.records.entry(hex(peer)).or_insert_with(|| Record {
            updated_at: now,
            ..Default::default()
        });
        r.decay(now);
        r
    }

    /// A job completed: `ttft_ms` and `tokens_per_s` as measured, against `advertised_tps`.
    pub fn success(
        &mut self,
        peer: &[u8],
        now: u64,
        ttft_ms: f64,
        tokens_per_s: f64,
        advertised_tps: f64,
    ) {
        let r = self.record(peer, now);
        r.successes += 1.0;
        if ttft_ms.is_finite() && ttft_ms >= 0.0 {
            r.ttft_ms = ewma(r.ttft_ms, ttft_ms);
        }
        if advertised_tps > 0.0 && tokens_per_s.is_finite() && tokens_per_s > 0.0 {
            r.speed_ratio = ewma(r.speed_ratio, (tokens_per_s / advertised_tps).min(10.0));
        }
    }

    /// A job failed on this worker.
    pub fn failure(&mut self, peer: &[u8], now: u64) {
        self.record(peer, now).failures += 1.0;
    }

    /// Estimated probability that a job on `peer` succeeds: (s + 1) / (s + f + 2) with the
    /// counts decayed to `now` (0.5 for an unknown worker).
    pub fn success_estimate(&self, peer: &[u8], now: u64) -> f64 {
        Self::estimate(self.get(peer), now)
    }

    /// [`Reputation::success_estimate`] of a record already looked up.
    pub fn estimate(record: Option<&Record>, now: u64) -> f64 {
        match record {
            None => 0.5,
            Some(r) => {
                let mut r = r.clone();
                r.decay(now);
                (r.successes + 1.0) / (r.successes + r.failures + 2.0)
            }
        }
    }

    /// Number of workers on record.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether there is no record.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_lower_the_estimate_and_fade() {
        let mut r = Reputation::default();
        assert_eq!(r.success_estimate(b"w", 0), 0.5);
        r.failure(b"w", 0);
        r.failure(b"w", 0);
        let bad = r.success_estimate(b"w", 0);
        assert!(bad < 0.3);
        let later = r.success_estimate(b"w", 30 * 86_400);
        assert!(later > 0.49, "{later}");
        r.success(b"v", 0, 200.0, 10.0, 20.0);
        assert!(r.success_estimate(b"v", 0) > 0.6);
        assert_eq!(r.get(b"v").unwrap().speed_ratio, Some(0.5));
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(serde_json::from_str::<Reputation>(&json).unwrap(), r);
    }
}
