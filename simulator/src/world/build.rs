//! The world at time 0: the layout of nodes, the workers with their classes, prices and
//! behaviours, the clients, each subsystem's state; then who is online and the first events.
//!
//! Every random draw here comes from the run's one RNG, so the *order* of the draws is part
//! of each seed's output: regions, NAT, Kademlia ids, each worker's class and key, the
//! adversaries among the workers, the spammers' keys; then, in [`World::start`], the mean
//! session times, who is up, the warm routing tables, and each node's first session. Change
//! the order and every run changes.

use cocoon_gossip::advert::peer_id_bytes;
use cocoon_gossip::{Price, PriceCore, PricePolicy, Reputation, Schedule};
use rand::Rng;

use super::dht::Dht;
use super::gossip::Gossip;
use super::jobs::Jobs;
use super::{
    key_from, Behaviour, Client, Ev, Host, Kind, Models, Nodes, Traffic, Worker, World, BOOTSTRAP,
    DRAIN,
};
use crate::engine::{pick, sample, Engine, Micros, SEC};
use crate::kad::{Node, Tables};
use crate::metrics::Metrics;
use crate::net::Links;
use crate::scenario::{Adversary, Dist, Scenario};
use crate::slab::Slab;

impl World {
    /// Everything at time 0 but who is online (see [`World::start`]); `sc` is checked.
    pub(super) fn build(sc: Scenario) -> Self {
        let mut eng: Engine<Ev> = Engine::new(sc.seed, sc.duration_secs * SEC + DRAIN);
        let (n, worker_count, relays) = sc.layout();
        let nodes = Nodes::build(&sc, &mut eng, n, relays, worker_count);
        let ids: Vec<u64> = (0..n).map(|_| eng.rng.random()).collect();
        let dht = Dht::new(Tables::new(ids, sc.dht.k));
        let models = Models::build(&sc);
        let workers = workers(&sc, &mut eng, &models, relays, worker_count);
        let jobs = Jobs::new(&sc, &workers);
        let first_client = relays + worker_count;
        let clients = (first_client..n)
            .map(|node| Client {
                node: node as Node,
                reputation: Reputation::default(),
                key: None,
                epoch: 0,
                attached: None,
            })
            .collect();
        let gossip = Gossip::new(&sc, &mut eng, n, relays, relays + worker_count);
        Self {
            links: Links::new(&sc.network),
            host: Host {
                cores: vec![0; sc.network.host_cores as usize],
                parked: Slab::new(),
            },
            nodes,
            models,
            workers,
            clients,
            dht,
            gossip,
            jobs,
            metrics: Metrics::default(),
            ledger: Default::default(),
            outcomes: Default::default(),
            traffic: Traffic::default(),
            eng,
            sc,
        }
    }

    /// Who is online at time 0, warm routing tables, first events.
    pub(super) fn start(&mut self) {
        let n = self.nodes.kind.len();
        let churn = self.sc.churn.clone();
        let (cs, co, ws, wo) = (
            mean_of(&mut self.eng.rng, &churn.client_session),
            mean_of(&mut self.eng.rng, &churn.client_offline),
            mean_of(&mut self.eng.rng, &churn.worker_session),
            mean_of(&mut self.eng.rng, &churn.worker_offline),
        );
        let mut up = Vec::new();
        for i in 0..n {
            let p_on = if !churn.enabled || self.nodes.always_on[i] {
                1.0
            } else if matches!(self.nodes.kind[i], Kind::Client(_)) {
                cs / (cs + co)
            } else {
                ws / (ws + wo)
            };
            if self.eng.chance(p_on) {
                up.push(i as Node);
            } else {
                // Offline now: comes up within its offline time.
                let d = self.offline_time(i as Node);
                let at = (self.eng.rng.random::<f64>() * d) as Micros;
                self.eng.at(at, Ev::Up(i as Node));
            }
        }
        if self.sc.dht.warm_start {
            let servers: Vec<Node> = up
                .iter()
                .copied()
                .filter(|&i| self.nodes.server[i as usize])
                .collect();
            self.dht.tables.warm_start(&servers, &mut self.eng.rng);
        }
        for &i in &up {
            self.bring_up(i, !self.sc.dht.warm_start);
        }
        if self.sc.dht.warm_start {
            self.warm_providers();
        }
        for s in 0..self.gossip.spammers.len() {
            let d = self.gossip.spammers[s].interval;
            self.eng.at(d, Ev::Spam { spammer: s as u32 });
        }
        self.eng.at(self.sc.sample_secs * SEC, Ev::Sample);
        if let Some(gap) = self.probe_gap() {
            self.eng.at(gap, Ev::Probe);
        }
    }
}

impl Nodes {
    /// Relays (bootstrap first), workers (sybils last), clients; regions drawn by share, and
    /// a share of clients behind NAT (DHT clients).
    fn build(sc: &Scenario, eng: &mut Engine<Ev>, n: usize, relays: usize, workers: usize) -> Self {
        let shares: Vec<f64> = sc.network.regions.iter().map(|r| r.share).collect();
        let region: Vec<u8> = (0..n).map(|_| pick(&mut eng.rng, &shares) as u8).collect();
        let mut kind = Vec::with_capacity(n);
        kind.extend((0..relays).map(|_| Kind::Relay));
        kind.extend((0..workers as u32).map(Kind::Worker));
        let first_client = kind.len();
        kind.extend((0..(n - first_client) as u32).map(Kind::Client));
        let server: Vec<bool> = (0..n)
            .map(|i| match kind[i] {
                Kind::Client(_) => !eng.chance(sc.network.nat_share),
                _ => true,
            })
            .collect();
        let mut always_on = vec![false; n];
        always_on[..BOOTSTRAP].fill(true);
        Self {
            kind,
            region,
            server,
            online: vec![false; n],
            always_on,
        }
    }
}

impl Models {
    /// The clients' models, then any other a worker class serves.
    fn build(sc: &Scenario) -> Self {
        let mut names: Vec<String> = sc.clients.models.iter().map(|m| m.id.clone()).collect();
        for c in &sc.workers.classes {
            for id in &c.models {
                if !names.contains(id) {
                    names.push(id.clone());
                }
            }
        }
        Self {
            keys: names.iter().map(|m| fnv(m)).collect(),
            names,
            shares: sc.clients.models.iter().map(|m| m.share).collect(),
        }
    }
}

/// The workers: honest ones of a class drawn by share with its price policy, then the
/// sybils (the first class, a fixed price, never serving); then the adversaries' shares of
/// the honest ones turn bad.
fn workers(
    sc: &Scenario,
    eng: &mut Engine<Ev>,
    models: &Models,
    relays: usize,
    count: usize,
) -> Vec<Worker> {
    let honest_workers = ((sc.nodes as f64 * sc.workers.share).round() as usize).max(1);
    let class_shares: Vec<f64> = sc.workers.classes.iter().map(|c| c.share).collect();
    let mut workers = Vec::with_capacity(count);
    for w in 0..count {
        let sybil = w >= honest_workers;
        let class = if sybil {
            0
        } else {
            pick(&mut eng.rng, &class_shares)
        };
        let c = &sc.workers.classes[class];
        let policy = if sybil {
            let factor = sc
                .adversaries
                .iter()
                .find_map(|a| match a {
                    Adversary::Sybil { price_factor, .. } => Some(*price_factor),
                    _ => None,
                })
                .unwrap_or(1.0);
            let floor = crate::scenario::start_price(&PricePolicy::default());
            PricePolicy::Fixed {
                price: Price {
                    prompt_per_mtok: (floor.prompt_per_mtok as f64 * factor) as u64,
                    completion_per_mtok: (floor.completion_per_mtok as f64 * factor) as u64,
                },
            }
        } else {
            c.price.clone()
        };
        let key = key_from(&mut eng.rng);
        let peer = peer_id_bytes(&key.verifying_key().to_bytes());
        workers.push(Worker {
            node: (relays + w) as Node,
            class,
            behaviour: if sybil {
                Behaviour::NoServe
            } else {
                Behaviour::Honest
            },
            key,
            peer,
            price: PriceCore::new(policy).expect("checked by the scenario"),
            schedule: Schedule::new(
                sc.gossip.advert_interval_secs * 1000,
                sc.gossip.advert_min_gap_secs * 1000,
            ),
            busy: 0,
            refused: 0,
            running: Vec::new(),
            slots: c.slots,
            tokens_per_s: c.tokens_per_s,
            prefill_per_s: c.prefill_tokens_per_s,
            models: c
                .models
                .iter()
                .map(|m| models.names.iter().position(|x| x == m).expect("listed") as u16)
                .collect(),
            epoch: 0,
            earned: 0,
            jobs: 0,
        });
    }
    // Adversarial behaviour among honest workers.
    for a in &sc.adversaries {
        let (share, behaviour) = match *a {
            Adversary::NoServe { share } => (share, Behaviour::NoServe),
            Adversary::WrongOutput { share, detect } => (share, Behaviour::WrongOutput { detect }),
            Adversary::Overcharge { share, factor } => (share, Behaviour::Overcharge { factor }),
            _ => continue,
        };
        let count = (honest_workers as f64 * share).round() as usize;
        let honest: Vec<usize> = (0..honest_workers)
            .filter(|&w| workers[w].behaviour == Behaviour::Honest)
            .collect();
        for i in rand::seq::index::sample(&mut eng.rng, honest.len(), count.min(honest.len())) {
            workers[honest[i]].behaviour = behaviour;
        }
    }
    workers
}

/// FNV-1a of a model name: its DHT key.
fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100000001b3)
    })
}

/// Mean of a distribution, estimated from draws (Weibull and friends have no closed form
/// here worth the code).
fn mean_of(rng: &mut impl Rng, d: &Dist) -> f64 {
    (0..4000).map(|_| sample(rng, d)).sum::<f64>() / 4000.0
}
