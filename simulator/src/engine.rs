//! The discrete-event engine: virtual time in microseconds, one event queue, one seeded RNG.
//!
//! Events scheduled for the same microsecond run in the order they were scheduled (a
//! sequence number breaks ties), so a run depends on nothing but the scenario and the seed:
//! the same seed gives the same output, byte for byte.
//!
//! The queue has two levels so a million nodes' far-future events (session ends, next
//! jobs) do not sit in the heap: events beyond the current one-second bucket wait in a
//! per-second list and enter the heap when the clock reaches their second. Events after
//! the end of the run are dropped at once.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Exp, LogNormal, Weibull};

use crate::scenario::Dist;

/// Microseconds of simulated time.
pub type Micros = u64;

/// One second in [`Micros`].
pub const SEC: Micros = 1_000_000;
/// One millisecond in [`Micros`].
pub const MS: Micros = 1_000;

/// A scheduled event: ordered by time, then by when it was scheduled.
#[derive(Debug)]
struct Slot<E> {
    at: Micros,
    seq: u64,
    event: E,
}

impl<E> PartialEq for Slot<E> {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl<E> Eq for Slot<E> {}
impl<E> PartialOrd for Slot<E> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl<E> Ord for Slot<E> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

/// Width of a far-future bucket.
const BUCKET: Micros = SEC;

/// The clock, the queue and the RNG.
pub struct Engine<E> {
    now: Micros,
    seq: u64,
    /// Events before `loaded * BUCKET`.
    queue: BinaryHeap<Reverse<Slot<E>>>,
    /// Later events, by second.
    far: Vec<Vec<Slot<E>>>,
    /// Buckets moved into the heap so far.
    loaded: usize,
    /// Events after this never run.
    end: Micros,
    /// The one source of randomness.
    pub rng: ChaCha8Rng,
    processed: u64,
}

impl<E> Engine<E> {
    /// An engine at time 0 with the RNG seeded by `seed`, running until `end`.
    pub fn new(seed: u64, end: Micros) -> Self {
        Self {
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            far: Vec::new(),
            loaded: 1,
            end,
            rng: ChaCha8Rng::seed_from_u64(seed),
            processed: 0,
        }
    }

    /// The current time.
    pub fn now(&self) -> Micros {
        self.now
    }

    /// Schedules `event` `delay` from now.
    pub fn after(&mut self, delay: Micros, event: E) {
        self.at(self.now.saturating_add(delay), event);
    }

    /// Schedules `event` at `at` (not before now; dropped if after the end).
    pub fn at(&mut self, at: Micros, event: E) {
        let at = at.max(self.now);
        if at > self.end {
            return;
        }
        self.seq += 1;
        let slot = Slot {
            at,
            seq: self.seq,
            event,
        };
        let bucket = (at / BUCKET) as usize;
        if bucket < self.loaded {
            self.queue.push(Reverse(slot));
        } else {
            if self.far.len() <= bucket {
                self.far.resize_with(bucket + 1, Vec::new);
            }
            self.far[bucket].push(slot);
        }
    }

    /// The next event due at or before `until`, advancing the clock to it.
    pub fn next(&mut self, until: Micros) -> Option<E> {
        while self.queue.is_empty() {
            if self.loaded >= self.far.len() || (self.loaded as Micros) * BUCKET > until {
                return None;
            }
            let bucket = std::mem::take(&mut self.far[self.loaded]);
            self.loaded += 1;
            self.queue.extend(bucket.into_iter().map(Reverse));
        }
        if self.queue.peek()?.0.at > until {
            return None;
        }
        let Reverse(slot) = self.queue.pop()?;
        self.now = slot.at;
        self.processed += 1;
        Some(slot.event)
    }

    /// Events processed so far.
    pub fn processed(&self) -> u64 {
        self.processed
    }

    /// Events waiting.
    pub fn pending(&self) -> usize {
        self.queue.len()
            + self.far[self.loaded.min(self.far.len())..]
                .iter()
                .map(Vec::len)
                .sum::<usize>()
    }

    /// A draw from `dist`.
    pub fn sample(&mut self, dist: &Dist) -> f64 {
        sample(&mut self.rng, dist)
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && self.rng.random::<f64>() < p
    }
}

/// A draw from `dist` (checked by the scenario, so the parameters are valid).
pub fn sample(rng: &mut impl Rng, dist: &Dist) -> f64 {
    match *dist {
        Dist::Fixed { value } => value,
        Dist::Exponential { mean } => Exp::new(1.0 / mean).map_or(mean, |d| d.sample(rng)),
        Dist::LogNormal { median, sigma } => {
            LogNormal::new(median.ln(), sigma).map_or(median, |d| d.sample(rng))
        }
        Dist::Weibull { scale, shape } => {
            Weibull::new(scale, shape).map_or(scale, |d| d.sample(rng))
        }
        Dist::Uniform { low, high } => {
            if high > low {
                rng.random_range(low..=high)
            } else {
                low
            }
        }
    }
}

/// Picks an index with probability proportional to `weights`.
pub fn pick(rng: &mut impl Rng, weights: &[f64]) -> usize {
    let total: f64 = weights.iter().sum();
    let mut x = rng.random::<f64>() * total;
    for (i, w) in weights.iter().enumerate() {
        if x < *w {
            return i;
        }
        x -= w;
    }
    weights.len().saturating_sub(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_run_in_time_order_ties_in_schedule_order() {
        let mut e: Engine<u32> = Engine::new(7, 10 * SEC);
        e.after(5, 1);
        e.after(3, 2);
        e.after(5, 3);
        e.after(9, 4);
        // Far events (later buckets) interleave correctly with near ones.
        e.after(3 * SEC, 5);
        e.after(SEC + 1, 6);
        e.after(3 * SEC, 7);
        e.after(11 * SEC, 8);
        let mut got = Vec::new();
        while let Some(ev) = e.next(6) {
            got.push((e.now(), ev));
        }
        assert_eq!(got, vec![(3, 2), (5, 1), (5, 3)]);
        assert_eq!(e.next(100), Some(4));
        assert_eq!(e.next(SEC), None);
        assert_eq!(e.next(2 * SEC), Some(6));
        e.after(SEC, 9); // now SEC + 1: lands at 2 s + 1, in an unloaded bucket
        assert_eq!(e.pending(), 3);
        let rest: Vec<u32> = std::iter::from_fn(|| e.next(20 * SEC)).collect();
        assert_eq!(rest, vec![9, 5, 7], "the event after the end never runs");
        assert_eq!(e.processed(), 8);
    }

    #[test]
    fn samples_have_the_asked_for_centre() {
        let mut e: Engine<()> = Engine::new(1, SEC);
        let n = 20_000;
        let mean =
            |e: &mut Engine<()>, d: &Dist| (0..n).map(|_| e.sample(d)).sum::<f64>() / n as f64;
        let m = mean(&mut e, &Dist::Exponential { mean: 10.0 });
        assert!((m - 10.0).abs() < 0.5, "{m}");
        let mut v: Vec<f64> = (0..n)
            .map(|_| {
                e.sample(&Dist::LogNormal {
                    median: 50.0,
                    sigma: 1.0,
                })
            })
            .collect();
        v.sort_by(f64::total_cmp);
        assert!((v[n / 2] - 50.0).abs() < 3.0, "{}", v[n / 2]);
    }
}
