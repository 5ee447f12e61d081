//! The network model: each node sits in a region; a message between two nodes takes the
//! regions' latency (log-normal jitter around the matrix value) plus its size over the
//! sender's uplink and the receiver's handling time, and is lost with a fixed probability.

use rand::Rng;
use rand_distr::{Distribution, LogNormal};

use crate::engine::{Micros, MS};
use crate::scenario::NetworkModel;

/// Link behaviour, precomputed from the scenario.
#[derive(Clone, Debug)]
pub struct Links {
    /// One-way base latency between regions, µs.
    base: Vec<Vec<f64>>,
    jitter: Option<LogNormal<f64>>,
    loss: f64,
    /// Microseconds per byte on an uplink.
    per_byte: f64,
    /// Receiver's handling time, µs.
    processing: f64,
}

impl Links {
    /// Links as the scenario describes them.
    pub fn new(model: &NetworkModel) -> Self {
        Self {
            base: model
                .latency_ms
                .iter()
                .map(|row| row.iter().map(|ms| ms * MS as f64).collect())
                .collect(),
            jitter: (model.jitter > 0.0)
                .then(|| LogNormal::new(0.0, model.jitter).ok())
                .flatten(),
            loss: model.loss,
            per_byte: 8.0 / model.bandwidth_mbps,
            processing: model.processing_ms * MS as f64,
        }
    }

    /// The one-way delay of a `bytes`-byte message from region `a` to region `b`, or `None`
    /// when it is lost.
    pub fn delay(&self, rng: &mut impl Rng, a: u8, b: u8, bytes: u32) -> Option<Micros> {
        if self.loss > 0.0 && rng.random::<f64>() < self.loss {
            return None;
        }
        Some(self.delay_reliable(rng, a, b, bytes))
    }

    /// The delay of a message that is not lost (retransmitted by the transport: QUIC
    /// streams carry job traffic reliably).
    pub fn delay_reliable(&self, rng: &mut impl Rng, a: u8, b: u8, bytes: u32) -> Micros {
        let base = self.base[a as usize][b as usize];
        let jitter = self.jitter.map_or(1.0, |j| j.sample(rng));
        (base * jitter + self.processing + bytes as f64 * self.per_byte).max(1.0) as Micros
    }

    /// The matrix latency (no jitter, no size), µs: for round-trip estimates.
    pub fn base(&self, a: u8, b: u8) -> Micros {
        self.base[a as usize][b as usize] as Micros
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn delay_grows_with_distance_size_and_handling_and_loss_drops_messages() {
        let model = NetworkModel {
            jitter: 0.0,
            loss: 0.0,
            processing_ms: 0.0,
            ..Default::default()
        };
        let links = Links::new(&model);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let near = links.delay(&mut rng, 0, 0, 0).unwrap();
        let far = links.delay(&mut rng, 0, 2, 0).unwrap();
        let big = links.delay(&mut rng, 0, 0, 1_000_000).unwrap();
        assert_eq!(near, 10 * MS);
        assert_eq!(far, 110 * MS);
        assert_eq!(big, 10 * MS + 80 * MS, "1 MB over 100 Mbit/s is 80 ms");
        let slow = Links::new(&NetworkModel {
            processing_ms: 2.5,
            ..model.clone()
        });
        assert_eq!(slow.delay(&mut rng, 0, 0, 0).unwrap(), 10 * MS + 2_500);
        let lossy = Links::new(&NetworkModel { loss: 0.5, ..model });
        let lost = (0..10_000)
            .filter(|_| lossy.delay(&mut rng, 0, 1, 10).is_none())
            .count();
        assert!((4_500..5_500).contains(&lost), "{lost}");
    }
}
