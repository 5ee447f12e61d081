//! Bounds on inbound streams: a [`StreamGate`] counts the streams being served per peer and
//! in total, and admits a new one only within both limits. Every inbound protocol handler
//! (job streams, market syncs) takes a [`Ticket`] before it spawns a task, so neither one
//! peer nor everyone together can make a node run unbounded tasks.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use libp2p::PeerId;

/// Limits of a [`StreamGate`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GateLimits {
    /// Streams served at once, in total.
    pub total: usize,
    /// Streams served at once per peer.
    pub per_peer: usize,
}

/// Counts streams per peer and in total (see the module docs).
#[derive(Debug)]
pub struct StreamGate {
    limits: GateLimits,
    per_peer: Mutex<HashMap<PeerId, usize>>,
}

/// One admitted stream; dropping it frees its place.
#[derive(Debug)]
pub struct Ticket {
    gate: Arc<StreamGate>,
    peer: PeerId,
}

impl StreamGate {
    /// A gate with `limits`.
    pub fn new(limits: GateLimits) -> Arc<Self> {
        Arc::new(Self {
            limits,
            per_peer: Mutex::new(HashMap::new()),
        })
    }

    /// A place for a stream from `peer`, if both limits allow one.
    pub fn enter(self: &Arc<Self>, peer: PeerId) -> Option<Ticket> {
        let mut map = self.per_peer.lock().expect("gate lock");
        let total: usize = map.values().sum();
        let mine = map.get(&peer).copied().unwrap_or(0);
        if total >= self.limits.total || mine >= self.limits.per_peer {
            return None;
        }
        *map.entry(peer).or_default() += 1;
        Some(Ticket {
            gate: self.clone(),
            peer,
        })
    }

    /// Streams admitted now.
    pub fn open(&self) -> usize {
        self.per_peer.lock().expect("gate lock").values().sum()
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut map = self.gate.per_peer.lock().expect("gate lock");
        if let Some(n) = map.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.peer);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_are_bounded_per_peer_and_in_total_and_come_back() {
        let gate = StreamGate::new(GateLimits {
            total: 3,
            per_peer: 2,
        });
        let (a, b) = (PeerId::random(), PeerId::random());
        let a1 = gate.enter(a).unwrap();
        let _a2 = gate.enter(a).unwrap();
        assert!(gate.enter(a).is_none(), "per peer");
        let _b1 = gate.enter(b).unwrap();
        assert!(gate.enter(PeerId::random()).is_none(), "in total");
        drop(a1);
        let _a3 = gate.enter(a).expect("a freed place");
        assert_eq!(gate.open(), 3);
    }
}
