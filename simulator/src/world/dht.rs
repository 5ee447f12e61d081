//! The DHT: Kademlia lookups on the routing tables of [`crate::kad`], and provider records.
//!
//! A lookup is [`crate::kad::Lookup`]'s iterative walk; this file sends its requests over
//! the links (`Ev::Req`), answers them at the queried node (`Ev::Resp`, after which the
//! node learns of the origin), and times out requests that are lost or reach dead nodes
//! (`Ev::Timeout`, the peer dropped from the origin's table). Four purposes: a restarted
//! node's join, a worker providing its models, a client finding providers when its market
//! has no candidate (the result goes to `jobs`), and probes that only measure. Lookups in
//! progress live in a [`Slab`]; an event carries the lookup's key and serial number, so an
//! answer to a lookup that ended is dropped even when its key was reused.

use std::collections::HashMap;

use rand::Rng;

use super::{Ev, Kind, World, BOOTSTRAP};
use crate::engine::{Micros, MS, SEC};
use crate::kad::{Lookup, Node, Purpose, Tables};
use crate::slab::Slab;

/// The DHT's state.
pub(super) struct Dht {
    /// Every node's routing table.
    pub(super) tables: Tables,
    /// Lookups in progress.
    pub(super) lookups: Slab<Running>,
    /// The serial number of the last lookup started.
    serial: u32,
    /// Provider records each node holds: (model, worker).
    pub(super) providers: HashMap<Node, Vec<(u16, u32)>>,
    /// Hops of the lookups finished since the last sample, in all.
    pub(super) hop_sum: u64,
    /// Reused buffer for the contacts in an answer.
    scratch: Vec<(u64, Node)>,
}

/// A lookup in progress.
pub(super) struct Running {
    /// Stamps its events (one counter for all lookups, so never reused): an answer to a
    /// lookup that ended, its key since taken by another, is dropped.
    serial: u32,
    lookup: Lookup,
}

impl Dht {
    /// No lookups yet, no provider records, on `tables`.
    pub(super) fn new(tables: Tables) -> Self {
        Self {
            tables,
            lookups: Slab::new(),
            serial: 0,
            providers: HashMap::new(),
            hop_sum: 0,
            scratch: Vec::new(),
        }
    }
}

impl World {
    /// A (re)started node looks itself up: its table fills from the answers.
    pub(super) fn start_join(&mut self, node: Node) {
        let target = self.dht.tables.id(node);
        self.start_lookup(node, target, Purpose::Join);
    }

    /// A lookup of `target` from `origin`, seeded from its table (or the bootstrap nodes).
    pub(super) fn start_lookup(&mut self, origin: Node, target: u64, purpose: Purpose) {
        let k = self.sc.dht.k;
        let mut seeds: Vec<(Node, u64)> = self
            .dht
            .tables
            .closest(origin, target, k)
            .into_iter()
            .map(|n| (n, self.dht.tables.id(n)))
            .collect();
        if seeds.is_empty() {
            seeds = (0..BOOTSTRAP as Node)
                .filter(|&b| b != origin)
                .map(|b| (b, self.dht.tables.id(b)))
                .collect();
        }
        let lookup = Lookup::new(origin, target, purpose, self.eng.now(), seeds);
        self.dht.serial = self.dht.serial.wrapping_add(1);
        let idx = self.dht.lookups.insert(Running {
            serial: self.dht.serial,
            lookup,
        });
        self.traffic.lookups += 1;
        self.advance_lookup(idx);
    }

    /// Sends the lookup's next requests, or ends it.
    fn advance_lookup(&mut self, idx: u32) {
        let (k, alpha) = (self.sc.dht.k, self.sc.dht.alpha);
        let Some(Running { serial, lookup: l }) = self.dht.lookups.get_mut(idx) else {
            return;
        };
        let serial = *serial;
        let early = matches!(l.purpose, Purpose::FindProviders(_)) && l.found.is_some();
        if early || l.finished(k) {
            self.finish_lookup(idx);
            return;
        }
        let origin = l.origin;
        let sends = l.next_requests(k, alpha);
        for (to, _) in sends {
            self.traffic.dht_requests += 1;
            let (a, b) = (
                self.nodes.region[origin as usize],
                self.nodes.region[to as usize],
            );
            let bytes = self.sc.dht.request_bytes;
            // A request that is lost, or sent to a dead node, ends in the timeout (the only
            // case that needs a timeout event: an answer always comes well within it).
            match self.links.delay(&mut self.eng.rng, a, b, bytes) {
                Some(d) if self.nodes.online[to as usize] => {
                    self.eng.after(
                        d,
                        Ev::Req {
                            lookup: idx,
                            serial,
                            to,
                        },
                    );
                }
                _ => {
                    let timeout = self.sc.dht.rpc_timeout_ms * MS;
                    self.eng.after(
                        timeout,
                        Ev::Timeout {
                            lookup: idx,
                            serial,
                            peer: to,
                        },
                    );
                }
            }
        }
    }

    /// The lookup under `idx`, if `serial` is still its serial number.
    fn lookup_mut(&mut self, idx: u32, serial: u32) -> Option<&mut Lookup> {
        let r = self.dht.lookups.get_mut(idx)?;
        (r.serial == serial).then_some(&mut r.lookup)
    }

    /// A request reaches `to`: it answers with its closest contacts, or times out.
    pub(super) fn on_request(&mut self, idx: u32, serial: u32, to: Node) {
        let Some(l) = self.lookup_mut(idx, serial) else {
            return;
        };
        let origin = l.origin;
        let (a, b) = (
            self.nodes.region[to as usize],
            self.nodes.region[origin as usize],
        );
        // The origin gives up `rpc_timeout` after sending (about one latency ago).
        let timeout = (self.sc.dht.rpc_timeout_ms * MS).saturating_sub(self.links.base(b, a));
        let fail = Ev::Timeout {
            lookup: idx,
            serial,
            peer: to,
        };
        if !self.nodes.online[to as usize] || !self.nodes.server[to as usize] {
            self.eng.after(timeout, fail);
            return;
        }
        // The queried node learns about the origin (when it is a server).
        if self.nodes.server[origin as usize] && self.nodes.online[origin as usize] {
            let online = &self.nodes.online;
            self.dht.tables.seen(to, origin, |p| online[p as usize]);
        }
        let bytes = self.sc.dht.response_bytes;
        match self.links.delay(&mut self.eng.rng, a, b, bytes) {
            Some(d) => self.eng.after(
                d,
                Ev::Resp {
                    lookup: idx,
                    serial,
                    from: to,
                },
            ),
            None => self.eng.after(timeout, fail),
        }
    }

    /// `from`'s answer reaches the origin.
    pub(super) fn on_response(&mut self, idx: u32, serial: u32, from: Node) {
        let k = self.sc.dht.k;
        let Some(Running { lookup: l, .. }) =
            self.dht.lookups.get(idx).filter(|r| r.serial == serial)
        else {
            return;
        };
        let (origin, target, purpose) = (l.origin, l.target, l.purpose);
        if !self.nodes.online[origin as usize] {
            self.finish_lookup(idx);
            return;
        }
        let online = &self.nodes.online;
        self.dht.tables.seen(origin, from, |p| online[p as usize]);
        let mut contacts = std::mem::take(&mut self.dht.scratch);
        self.dht.tables.closest_into(from, target, k, &mut contacts);
        let found = match purpose {
            Purpose::FindProviders(m) => self
                .dht
                .providers
                .get(&from)
                .is_some_and(|v| v.iter().any(|&(x, _)| x == m)),
            _ => false,
        };
        let now = self.eng.now();
        let from_id = self.dht.tables.id(from);
        let l = &mut self.dht.lookups[idx].lookup;
        if found && l.found.is_none() {
            l.found = Some((l.hop_of(from, from_id), now));
        }
        l.answered(
            from,
            from_id,
            contacts.iter().map(|&(d, n)| (n, d ^ target)),
        );
        self.dht.scratch = contacts;
        self.advance_lookup(idx);
    }

    /// `peer` did not answer: the origin drops it from its table.
    pub(super) fn on_timeout(&mut self, idx: u32, serial: u32, peer: Node) {
        let id = self.dht.tables.id(peer);
        let Some(l) = self.lookup_mut(idx, serial) else {
            return;
        };
        let before = l.failures;
        l.failed(peer, id);
        if l.failures == before {
            return;
        }
        let origin = l.origin;
        self.traffic.dht_timeouts += 1;
        self.dht.tables.remove(origin, peer);
        self.advance_lookup(idx);
    }

    /// Records the lookup's hops and time, then acts on its result: a provider stores its
    /// records, a client's waiting jobs try the providers found.
    fn finish_lookup(&mut self, idx: u32) {
        let k = self.sc.dht.k;
        let Some(Running { lookup: l, .. }) = self.dht.lookups.remove(idx) else {
            return;
        };
        let now = self.eng.now();
        let (hops, at) = match l.found {
            Some((h, t)) => (h, t),
            None => (l.hops(), now),
        };
        let m = &mut self.metrics;
        if l.purpose == Purpose::Probe {
            m.probe_hops[(hops as usize).min(31)] += 1;
            m.probe_ms.add((at - l.started) as f64 / MS as f64);
            m.probe_requests.add(l.requests as f64);
            return;
        }
        m.lookup_hops[(hops as usize).min(31)] += 1;
        m.lookup_ms.add((at - l.started) as f64 / MS as f64);
        m.lookup_requests.add(l.requests as f64);
        m.current.lookups += 1;
        self.dht.hop_sum += hops as u64;
        match l.purpose {
            Purpose::Join | Purpose::Probe => {}
            Purpose::Provide(model) => {
                let Kind::Worker(w) = self.nodes.kind[l.origin as usize] else {
                    return;
                };
                for holder in l.result(k) {
                    let records = self.dht.providers.entry(holder).or_default();
                    if !records.contains(&(model, w)) {
                        records.push((model, w));
                    }
                }
            }
            Purpose::FindProviders(model) => {
                let Kind::Client(c) = self.nodes.kind[l.origin as usize] else {
                    return;
                };
                self.providers_found(c, model, l.result(k));
            }
        }
    }

    /// Time between two probe lookups, if there are any.
    pub(super) fn probe_gap(&self) -> Option<Micros> {
        let rate = self.sc.dht.probe_lookups_per_sec;
        (rate > 0.0).then(|| ((SEC as f64 / rate) as Micros).max(1))
    }

    /// A probe lookup of a random key from a random online DHT server.
    pub(super) fn on_probe(&mut self) {
        let n = self.nodes.online.len();
        // Rejection sampling; a network with no online server skips this probe.
        for _ in 0..64 {
            let node = self.eng.rng.random_range(0..n);
            if self.nodes.online[node] && self.nodes.server[node] {
                let target = self.eng.rng.random::<u64>();
                self.start_lookup(node as Node, target, Purpose::Probe);
                break;
            }
        }
        if let Some(gap) = self.probe_gap() {
            self.eng.after(gap, Ev::Probe);
        }
    }

    /// Online workers' provider records, as a warm network has them.
    pub(super) fn warm_providers(&mut self) {
        for w in 0..self.workers.len() {
            let node = self.workers[w].node;
            if !self.nodes.online[node as usize] {
                continue;
            }
            for m in self.workers[w].models.clone() {
                let key = self.models.keys[m as usize];
                for holder in self.dht.tables.closest(node, key, self.sc.dht.k) {
                    self.dht
                        .providers
                        .entry(holder)
                        .or_default()
                        .push((m, w as u32));
                }
            }
        }
    }
}
