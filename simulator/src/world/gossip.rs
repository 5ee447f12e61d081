//! Gossip: workers' price ticks and adverts, the mesh that carries them, and each mesh
//! node's market admitting them.
//!
//! On each tick a worker's real price core ([`cocoon_gossip::PriceCore`]) observes its load
//! and its publication schedule ([`cocoon_gossip::Schedule`]) decides whether to sign and
//! publish an advert. An advert travels the [`Mesh`] hop by hop (`Ev::Gossip`); each mesh
//! member that receives a copy first has it checked (the first receiver runs the signature
//! check for all), then its real market ([`cocoon_gossip::Market`]) admits it (rate limits,
//! sequence, expiry) before it is forwarded, as the node does. Copies to a member that
//! already has the advert are counted as duplicates. Spammers (`advert_spam`) publish
//! adverts under many keys, some forged. Adverts in flight live in a [`Slab`] until their
//! last copy lands; then their coverage is recorded. This subsystem also keeps who of the
//! mesh is online per region, where clients find their gateway (see `jobs`).

use cocoon_gossip::{
    Advert, Hardware, Load, Market, MarketConfig, ModelOffer, Price, SignedAdvert, Trust, Verified,
};
use ed25519_dalek::SigningKey;

use super::{key_from, Ev, World, BOOTSTRAP, EPOCH};
use crate::engine::{Engine, Micros, MS, SEC};
use crate::kad::Node;
use crate::mesh::Mesh;
use crate::scenario::{Adversary, Scenario};
use crate::slab::Slab;

/// Gossip's state.
pub(super) struct Gossip {
    /// Who of the relays and workers (the members) peers with whom.
    pub(super) mesh: Mesh,
    /// Each member's market, by mesh slot.
    pub(super) markets: Vec<Market>,
    /// Online mesh members per region.
    pub(super) mesh_online: Vec<Vec<Node>>,
    /// Adverts with copies in flight.
    pub(super) msgs: Slab<Msg>,
    /// Relays flooding adverts.
    pub(super) spammers: Vec<Spammer>,
}

/// What an advert message carries.
enum Payload {
    /// An advert whose signature was checked (by its author, or by the first receiver).
    Verified(std::rc::Rc<Verified>),
    /// Wire bytes nobody has checked yet: the first receiver runs the signature check.
    Wire(Vec<u8>),
}

/// An advert on its way through the mesh.
pub(super) struct Msg {
    payload: Payload,
    /// The publisher.
    origin: Node,
    created: Micros,
    /// Mesh members that have it, one bit per mesh slot.
    seen: Vec<u64>,
    /// Mesh members a copy has reached (on a shared host, where copies queue before they
    /// are handled; empty otherwise): later copies are duplicates, dropped on arrival as
    /// gossipsub's duplicate cache does, without CPU.
    arrived: Vec<u64>,
    /// Mesh members it reached, other than its publisher.
    reached: u32,
    /// Copies on their way.
    in_flight: u32,
    /// Mesh members online when it was published.
    online_at_start: u32,
    /// Its signature failed (it counts for no coverage).
    forged: bool,
}

/// A relay that floods adverts (`advert_spam`).
pub(super) struct Spammer {
    node: Node,
    /// The identities it signs under, in turn.
    keys: Vec<SigningKey>,
    seq: u64,
    /// Time between two adverts.
    pub(super) interval: Micros,
    /// Share of adverts with a broken signature.
    forged: f64,
}

impl Gossip {
    /// The mesh of the relays and workers (nodes `0..members`), an empty market each, and
    /// the spammers: relays past the bootstrap ones, each with 16 keys.
    pub(super) fn new(
        sc: &Scenario,
        eng: &mut Engine<Ev>,
        n: usize,
        relays: usize,
        members: usize,
    ) -> Self {
        let members: Vec<Node> = (0..members as Node).collect();
        let g = &sc.gossip;
        let mesh = Mesh::new(n, members.clone(), g.mesh_degree, g.mesh_low, g.mesh_high);
        let market_config = MarketConfig {
            max_adverts: g.market_max_adverts,
            rate_per_sec: g.market_rate_per_sec,
            burst: g.market_burst,
            max_per_source: g.market_max_per_source,
        };
        let markets = members
            .iter()
            .map(|_| Market::new(market_config.clone()))
            .collect();
        let mut spammers = Vec::new();
        for a in &sc.adversaries {
            if let Adversary::AdvertSpam {
                count,
                per_sec,
                forged,
            } = *a
            {
                for _ in 0..count {
                    // Spammers are relays beyond the bootstrap ones.
                    let node = (BOOTSTRAP + spammers.len()) as Node;
                    if node as usize >= relays {
                        break;
                    }
                    spammers.push(Spammer {
                        node,
                        keys: (0..16).map(|_| key_from(&mut eng.rng)).collect(),
                        seq: 0,
                        interval: if per_sec > 0.0 {
                            (SEC as f64 / per_sec) as Micros
                        } else {
                            Micros::MAX / 4
                        },
                        forged,
                    });
                }
            }
        }
        Self {
            mesh,
            markets,
            mesh_online: vec![Vec::new(); sc.network.regions.len()],
            msgs: Slab::new(),
            spammers,
        }
    }
}

impl World {
    /// `node` came up: if a mesh member, it rejoins the mesh (the peers it pushed above
    /// `D_high` prune at a heartbeat soon).
    pub(super) fn join_mesh(&mut self, node: Node) {
        if self.gossip.mesh.slot(node).is_some() {
            let over = self.gossip.mesh.join(node, &mut self.eng.rng);
            for p in over {
                self.heartbeat_soon(p);
            }
            let r = self.nodes.region[node as usize] as usize;
            self.gossip.mesh_online[r].push(node);
        }
    }

    /// `node` went down: if a mesh member, it leaves the mesh (its peers left below `D_low`
    /// graft at a heartbeat soon).
    pub(super) fn leave_mesh(&mut self, node: Node) {
        if self.gossip.mesh.slot(node).is_some() {
            for p in self.gossip.mesh.leave(node) {
                self.heartbeat_soon(p);
            }
            let r = self.nodes.region[node as usize] as usize;
            self.gossip.mesh_online[r].retain(|&x| x != node);
        }
    }

    /// `node`'s next heartbeat, on the heartbeat grid.
    fn heartbeat_soon(&mut self, node: Node) {
        let hb = self.sc.gossip.heartbeat_ms * MS;
        let phase = hb - self.eng.now() % hb;
        self.eng.after(phase, Ev::Heartbeat(node));
    }

    /// Whether this is the first copy of advert `msg` to reach `to` (marks it).
    pub(super) fn first_arrival(&mut self, msg: u32, to: Node) -> bool {
        let Some(s) = self.gossip.mesh.slot(to) else {
            return true;
        };
        let Some(m) = self.gossip.msgs.get_mut(msg) else {
            return true;
        };
        let bit = 1 << (s % 64);
        let first = m.arrived[s / 64] & bit == 0;
        m.arrived[s / 64] |= bit;
        first
    }

    /// A later copy of advert `msg` reached a shared host: dropped without CPU.
    pub(super) fn drop_duplicate(&mut self, msg: u32) {
        self.gossip.msgs[msg].in_flight -= 1;
        self.metrics.duplicates += 1;
        self.finish_msg_if_done(msg);
    }

    /// An advert of `key` offering `models` on `gpu` with `slots` (`free` of them free),
    /// at `price`: what the node's advertiser builds, with a TDX claim.
    #[allow(clippy::too_many_arguments)]
    fn advert(
        &self,
        key: &SigningKey,
        models: &[u16],
        gpu: (&str, u64),
        (slots, free): (u32, u32),
        tokens_per_s: f64,
        price: Price,
        seq: u64,
    ) -> Advert {
        let now = self.now_secs();
        Advert {
            public_key: key.verifying_key().to_bytes(),
            enclave_key: key.verifying_key().to_bytes(),
            trust: Trust::Tdx,
            measurement: vec![0; 48],
            models: models
                .iter()
                .map(|&m| ModelOffer {
                    id: self.models.names[m as usize].clone(),
                    quantization: "Q4_K_M".into(),
                    context_length: 8192,
                })
                .collect(),
            hardware: Hardware::Gpu {
                name: gpu.0.into(),
                vram_mib: gpu.1,
            },
            max_concurrent: slots,
            free_slots: free,
            queued: 0,
            tokens_per_s: tokens_per_s as f32,
            price,
            min_deposit: 0,
            payout: Some([1; 32]),
            expected_uptime_secs: 86_400,
            addrs: Vec::new(),
            seq,
            issued_at: now,
            expires_at: now + self.sc.gossip.advert_ttl_secs,
        }
    }

    /// A worker's price tick: its price core sees the load since the last tick, and its
    /// schedule says whether to publish an advert now (on change, or its interval passed).
    pub(super) fn on_tick(&mut self, w: u32, epoch: u32) {
        let wk = &mut self.workers[w as usize];
        if wk.epoch != epoch || !self.nodes.online[wk.node as usize] {
            return;
        }
        let now = self.eng.now();
        let now_s = EPOCH + now / SEC;
        let load = Load {
            busy: wk.busy,
            slots: wk.slots,
            refused: std::mem::take(&mut wk.refused),
        };
        wk.price.observe(load, now_s);
        let state = (wk.price.price(), wk.slots.saturating_sub(wk.busy));
        let now_ms = EPOCH * 1000 + now / MS;
        if wk.schedule.due(&state, now_ms) {
            let seq = wk.schedule.next_seq(now_ms);
            wk.schedule.sent(state, now_ms);
            let wk = &self.workers[w as usize];
            let class = &self.sc.workers.classes[wk.class];
            let advert = self.advert(
                &wk.key,
                &wk.models,
                (&class.name, class.vram_mib),
                (wk.slots, wk.slots.saturating_sub(wk.busy)),
                wk.tokens_per_s,
                wk.price.price(),
                seq,
            );
            let bytes = advert
                .sign(&wk.key)
                .and_then(|s| s.encode())
                .expect("our adverts are within bounds");
            // The author's own advert: its signature is checked once, here.
            let verified = SignedAdvert::verified(&bytes).expect("signed just now");
            let node = wk.node;
            self.publish(node, Payload::Verified(std::rc::Rc::new(verified)));
        }
        let tick = self.sc.workers.price_tick_secs * SEC;
        self.eng.after(tick, Ev::Tick { worker: w, epoch });
    }

    /// `origin` publishes an advert: it admits it to its own market, then sends it to its
    /// mesh peers.
    fn publish(&mut self, origin: Node, payload: Payload) {
        self.traffic.adverts += 1;
        self.metrics.current.adverts += 1;
        let words = self.gossip.mesh.members().len().div_ceil(64);
        let msg = Msg {
            payload,
            origin,
            created: self.eng.now(),
            seen: vec![0; words],
            arrived: if self.host.cores.is_empty() {
                Vec::new()
            } else {
                vec![0; words]
            },
            reached: 0,
            in_flight: 0,
            online_at_start: self.gossip.mesh.online() as u32,
            forged: false,
        };
        let idx = self.gossip.msgs.insert(msg);
        if let Some(s) = self.gossip.mesh.slot(origin) {
            self.gossip.msgs[idx].seen[s / 64] |= 1 << (s % 64);
            // A worker admits its own advert (as the node's advertiser does).
            let now = self.now_secs();
            if let Payload::Verified(v) = &self.gossip.msgs[idx].payload {
                let _ = self.gossip.markets[s].insert_verified(v, &origin.to_le_bytes(), now);
            }
        }
        self.forward(idx, origin, None);
        self.finish_msg_if_done(idx);
    }

    /// Sends advert `idx` from `at` to its mesh peers but `from`.
    fn forward(&mut self, idx: u32, at: Node, from: Option<Node>) {
        let bytes = self.sc.gossip.advert_bytes;
        for i in 0..self.gossip.mesh.peers(at).len() {
            let p = self.gossip.mesh.peers(at)[i];
            if Some(p) == from {
                continue;
            }
            self.traffic.advert_messages += 1;
            // A copy to a peer that has the advert already is a duplicate whenever it
            // lands: counted now, no event needed.
            if let Some(s) = self.gossip.mesh.slot(p) {
                let m = &self.gossip.msgs[idx];
                if m.seen[s / 64] & (1 << (s % 64)) != 0 {
                    self.metrics.duplicates += 1;
                    continue;
                }
            }
            let (a, b) = (
                self.nodes.region[at as usize],
                self.nodes.region[p as usize],
            );
            if let Some(d) = self.links.delay(&mut self.eng.rng, a, b, bytes) {
                self.gossip.msgs[idx].in_flight += 1;
                self.eng.after(
                    d,
                    Ev::Gossip {
                        msg: idx,
                        from: at,
                        to: p,
                    },
                );
            }
        }
    }

    /// A copy of advert `idx` reaches `to` from `from`: a new one is checked (the first
    /// receiver checks the signature), admitted by `to`'s market and forwarded if admitted.
    pub(super) fn on_gossip(&mut self, idx: u32, from: Node, to: Node) {
        let now = self.eng.now();
        let now_s = self.now_secs();
        let Some(m) = self.gossip.msgs.get_mut(idx) else {
            return;
        };
        m.in_flight -= 1;
        let slot = self.gossip.mesh.slot(to);
        let accepted = match slot {
            Some(s) if self.nodes.online[to as usize] => {
                if m.seen[s / 64] & (1 << (s % 64)) != 0 {
                    self.metrics.duplicates += 1;
                    false
                } else {
                    m.seen[s / 64] |= 1 << (s % 64);
                    if let Payload::Wire(bytes) = &m.payload {
                        // The first receiver checks the signature; later copies of a good
                        // advert need not repeat it, and a forged one goes no further.
                        match SignedAdvert::verified(bytes) {
                            Ok(v) => m.payload = Payload::Verified(std::rc::Rc::new(v)),
                            Err(_) => m.forged = true,
                        }
                    }
                    match &m.payload {
                        Payload::Wire(_) => {
                            // Its signature failed: rejected (gossipsub then penalises the
                            // sender).
                            self.traffic.forged += 1;
                            false
                        }
                        Payload::Verified(advert) => {
                            m.reached += 1;
                            self.metrics
                                .propagation_ms
                                .add((now - m.created) as f64 / MS as f64);
                            self.metrics.direct += u64::from(from == m.origin);
                            match self.gossip.markets[s].insert_verified(
                                advert,
                                &from.to_le_bytes(),
                                now_s,
                            ) {
                                Ok(()) => {
                                    self.traffic.admitted += 1;
                                    true
                                }
                                Err(cocoon_gossip::AdvertError::RateLimited) => {
                                    self.traffic.rate_limited += 1;
                                    self.metrics.current.adverts_dropped += 1;
                                    false
                                }
                                Err(_) => {
                                    self.traffic.stale += 1;
                                    false
                                }
                            }
                        }
                    }
                }
            }
            _ => false,
        };
        if accepted {
            self.forward(idx, to, Some(from));
        }
        self.finish_msg_if_done(idx);
    }

    /// Once no copy of advert `idx` is in flight, records its coverage and frees it.
    fn finish_msg_if_done(&mut self, idx: u32) {
        let done = self.gossip.msgs.get(idx).is_some_and(|m| m.in_flight == 0);
        if !done {
            return;
        }
        let m = self.gossip.msgs.remove(idx).expect("checked");
        if !m.forged {
            let others = m.online_at_start.saturating_sub(1).max(1);
            self.metrics
                .coverage
                .add((m.reached as f64 / others as f64).min(1.0));
        }
    }

    /// A spammer publishes the cheapest, fastest advert there is, under one of its keys
    /// in turn, a share of them with a broken signature.
    pub(super) fn on_spam(&mut self, s: u32) {
        let sp = &mut self.gossip.spammers[s as usize];
        let node = sp.node;
        let interval = sp.interval;
        if self.nodes.online[node as usize] {
            sp.seq += 1;
            let seq = sp.seq;
            let key = sp.keys[(seq % sp.keys.len() as u64) as usize].clone();
            let forged_share = sp.forged;
            // The cheapest, fastest worker there is, on the first model.
            let cheap = Price {
                prompt_per_mtok: 1,
                completion_per_mtok: 1,
            };
            let advert = self.advert(
                &key,
                &[0],
                ("NVIDIA H100", 81_920),
                (8, 8),
                500.0,
                cheap,
                seq,
            );
            let mut signed = advert.sign(&key).expect("within bounds");
            if self.eng.chance(forged_share) {
                signed.signature[0] ^= 1;
            }
            let bytes = signed.encode().expect("encodes");
            self.publish(node, Payload::Wire(bytes));
        }
        self.eng.after(interval, Ev::Spam { spammer: s });
    }
}
