//! The simulated network: nodes, their state, and what each event does to it.
//!
//! Three kinds of node. *Workers* serve jobs, run the real price core
//! ([`cocoon_gossip::PriceCore`]) and publication schedule ([`cocoon_gossip::Schedule`]),
//! and sign real adverts. *Relays* are full nodes without a GPU. Workers and relays form the
//! gossip mesh, and each holds a real market ([`cocoon_gossip::Market`]) that admits every
//! advert it receives (rate limits, signature, sequence) before forwarding it, as the node
//! does. *Clients* attach to a mesh node of their region and rank workers with that node's
//! market and their own reputation record ([`cocoon_gossip::Reputation`]); each attempt runs
//! through the real job sessions ([`crate::session`]: the worker's admission and billing,
//! the client's quote checks and vouchers, signed and checked), so credit stalls,
//! `PaymentRequired` and refused quotes come out of the cores, and a job takes a channel
//! from its client's pool with that worker (a new one when none has room).
//! Every node not behind NAT is a Kademlia server. The model of each step (latencies,
//! timeouts, what a failure costs) is documented where it is made.
//!
//! # Layout
//!
//! [`World`] owns the engine (clock, queue, the one RNG), the links, and what every part
//! reads: the node table (role, region, DHT mode, who is online), the model catalogue, the
//! workers and the clients. Each subsystem keeps its own state in a struct the world owns,
//! and its event handlers in a file of its own:
//!
//! - `build`: the world at time 0: the layout, the roles and adversaries, who is online,
//!   the first events (the order of its random draws is part of every seed's output);
//! - `churn`: nodes coming up and going down, session and offline times;
//! - `dht`: Kademlia lookups (join, provide, find providers, probes) on [`crate::kad`];
//! - `gossip`: workers' price ticks and adverts, the mesh that carries them, market
//!   admission, advert spam;
//! - `jobs`: client arrivals, attempts, failover and payments through [`crate::session`],
//!   with the [`Ledger`] and [`Outcomes`] they add up to.
//!
//! This file holds the events, the shared state, the event loop (with the shared-host CPU
//! model, which parks a message until a core is free) and the periodic sample.

mod build;
mod churn;
mod dht;
mod gossip;
mod jobs;

pub use jobs::{Ledger, Outcomes};

use cocoon_gossip::{Price, PriceCore, Reputation, Schedule};
use ed25519_dalek::SigningKey;
use rand::Rng;

use crate::engine::{Engine, Micros, MS, SEC};
use crate::kad::Node;
use crate::metrics::Metrics;
use crate::net::Links;
use crate::scenario::{Scenario, ScenarioError};
use crate::slab::Slab;

/// Unix time of simulated time 0 (adverts carry Unix seconds).
pub const EPOCH: u64 = 1_700_000_000;

/// Time allowed after the end for jobs in flight to finish (every timeout is far below).
pub const DRAIN: Micros = 900 * SEC;

/// Bootstrap nodes: the first relays, never churned.
pub const BOOTSTRAP: usize = 4;

/// What happens next; each variant names the subsystem that handles it.
#[derive(Clone, Copy, Debug)]
enum Ev {
    /// Churn: the node comes up.
    Up(Node),
    /// Churn: the node goes down.
    Down(Node),
    /// DHT: a lookup's request reaches `to`.
    Req { lookup: u32, serial: u32, to: Node },
    /// DHT: `from`'s answer reaches the lookup's origin.
    Resp {
        lookup: u32,
        serial: u32,
        from: Node,
    },
    /// DHT: `peer` did not answer in time.
    Timeout {
        lookup: u32,
        serial: u32,
        peer: Node,
    },
    /// Gossip: an advert copy reaches `to` from `from`.
    Gossip { msg: u32, from: Node, to: Node },
    /// Gossip: the node's mesh heartbeat.
    Heartbeat(Node),
    /// DHT: a probe lookup starts.
    Probe,
    /// A message parked while it waited for a host core (`network.host_cores`) is handled.
    Run(u32),
    /// Gossip: a worker's price tick (and advert, when its schedule says so).
    Tick { worker: u32, epoch: u32 },
    /// Jobs: a client asks for a job.
    Arrival { client: u32, epoch: u32 },
    /// Jobs: the job request reaches the worker.
    AtWorker { job: u32, gen: u32 },
    /// Jobs: the worker finished generating.
    Done { job: u32, gen: u32 },
    /// Jobs: the attempt failed (the client knows now).
    Fail { job: u32, gen: u32 },
    /// Gossip: a spammer publishes.
    Spam { spammer: u32 },
    /// Time to take a sample of the time series.
    Sample,
}

/// A node's role, with its index among the workers or clients.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Worker(u32),
    Relay,
    Client(u32),
}

/// How a worker treats the jobs it takes.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Behaviour {
    Honest,
    /// Accepts and never answers (a sybil, or `no_serve`).
    NoServe,
    /// Answers wrongly; the client's check catches a share `detect`.
    WrongOutput {
        detect: f64,
    },
    /// Quotes `factor` times its price.
    Overcharge {
        factor: f64,
    },
}

/// A worker: its price and advert schedule (gossip), its slots and running jobs (jobs).
struct Worker {
    node: Node,
    /// Index of its class in `workers.classes`.
    class: usize,
    behaviour: Behaviour,
    key: SigningKey,
    peer: Vec<u8>,
    price: PriceCore,
    schedule: Schedule<(Price, u32)>,
    /// Slots taken.
    busy: u32,
    /// Requests refused busy since the last price tick.
    refused: u32,
    /// Jobs running on it.
    running: Vec<u32>,
    slots: u32,
    tokens_per_s: f64,
    prefill_per_s: f64,
    /// Models served, by catalogue index.
    models: Vec<u16>,
    /// Its session count: a tick from an earlier session is stale.
    epoch: u32,
    /// Billed, nanoTON.
    earned: u64,
    /// Jobs served.
    jobs: u64,
}

/// A client: its reputation record, payment key and gateway.
struct Client {
    node: Node,
    reputation: Reputation,
    /// Made when it opens its first channel.
    key: Option<SigningKey>,
    /// Its session count: an arrival from an earlier session is stale.
    epoch: u32,
    /// The mesh node it asks for workers.
    attached: Option<Node>,
}

/// What every subsystem knows of each node, by [`Node`] index.
struct Nodes {
    kind: Vec<Kind>,
    /// Index into `network.regions`.
    region: Vec<u8>,
    /// A Kademlia server (not behind NAT).
    server: Vec<bool>,
    /// Up now (churn flips it).
    online: Vec<bool>,
    /// Never churned (the bootstrap nodes).
    always_on: Vec<bool>,
}

/// The models the network serves, by `u16` index: those clients ask for, then any other a
/// worker class lists.
struct Models {
    /// DHT key of each: its provider records live at the nodes closest to it.
    keys: Vec<u64>,
    /// Name, as adverts and selections carry it.
    names: Vec<String>,
    /// Demand share of each model the clients ask for.
    shares: Vec<f64>,
}

/// Shared hosts (`network.host_cores`): messages queue for the host's cores.
struct Host {
    /// When each core comes free (empty: nodes have CPUs of their own).
    cores: Vec<Micros>,
    /// Messages waiting for a core, by `Ev::Run` key.
    parked: Slab<Ev>,
}

/// Gossip and DHT counters.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Traffic {
    /// Adverts published (workers and spammers).
    pub adverts: u64,
    /// Advert copies sent.
    pub advert_messages: u64,
    /// Adverts admitted by markets.
    pub admitted: u64,
    /// Refused by markets: rate limit.
    pub rate_limited: u64,
    /// Refused: bad signature.
    pub forged: u64,
    /// Refused: stale or expired.
    pub stale: u64,
    /// Lookups started.
    pub lookups: u64,
    /// DHT requests sent.
    pub dht_requests: u64,
    /// DHT requests that timed out.
    pub dht_timeouts: u64,
}

/// The whole simulated network.
pub struct World {
    /// The scenario.
    pub sc: Scenario,
    eng: Engine<Ev>,
    links: Links,
    host: Host,
    nodes: Nodes,
    models: Models,
    workers: Vec<Worker>,
    clients: Vec<Client>,
    dht: dht::Dht,
    gossip: gossip::Gossip,
    jobs: jobs::Jobs,
    /// Measurements.
    pub metrics: Metrics,
    /// Money.
    pub ledger: Ledger,
    /// Job outcomes.
    pub outcomes: Outcomes,
    /// Traffic.
    pub traffic: Traffic,
}

impl World {
    /// Builds the network of `sc` at time 0.
    pub fn new(sc: Scenario) -> Result<Self, ScenarioError> {
        sc.check()?;
        let mut world = Self::build(sc);
        world.start();
        Ok(world)
    }

    /// Runs until the scenario's end; `progress` sees the simulated time now and then.
    pub fn run(&mut self, mut progress: impl FnMut(Micros, u64)) {
        let end = self.sc.duration_secs * SEC;
        let mut next_report = 0u64;
        while let Some(ev) = self.eng.next(end) {
            self.handle(ev);
            if self.eng.processed() >= next_report {
                progress(self.eng.now(), self.eng.processed());
                next_report = self.eng.processed() + 200_000;
            }
        }
        progress(end, self.eng.processed());
        self.drain();
    }

    /// After the end no job starts; the jobs in flight run to their end (completed or
    /// failed), so every job is accounted for. Bounded by [`DRAIN`].
    fn drain(&mut self) {
        let end = self.sc.duration_secs * SEC + DRAIN;
        while !self.jobs.in_flight.is_empty() {
            let Some(ev) = self.eng.next(end) else {
                break;
            };
            match ev {
                Ev::Arrival { .. } | Ev::Sample | Ev::Spam { .. } | Ev::Probe => {}
                ev => self.handle(ev),
            }
        }
    }

    /// Closes the books: signed vouchers still pending, totals.
    pub fn finish(&mut self) {
        let (mut paid, mut earned, mut pending) = (0, 0, 0);
        for chan in self.jobs.channels.values().flatten() {
            paid += chan.client.paid;
            earned += chan.worker.paid();
            pending += chan.client.paid.saturating_sub(chan.worker.paid());
        }
        self.ledger.paid = paid;
        self.ledger.earned = earned;
        self.ledger.pending = pending;
    }

    /// Events processed.
    pub fn events(&self) -> u64 {
        self.eng.processed()
    }

    /// Per worker: (class name, behaviour, earned nanoTON, jobs served).
    pub fn earnings(&self) -> Vec<(String, &'static str, u64, u64)> {
        self.workers
            .iter()
            .map(|w| {
                (
                    self.sc.workers.classes[w.class].name.clone(),
                    match w.behaviour {
                        Behaviour::Honest => "honest",
                        Behaviour::NoServe => "no_serve",
                        Behaviour::WrongOutput { .. } => "wrong_output",
                        Behaviour::Overcharge { .. } => "overcharge",
                    },
                    w.earned,
                    w.jobs,
                )
            })
            .collect()
    }

    /// Jobs still in flight.
    pub fn in_flight(&self) -> u64 {
        self.jobs.in_flight.len() as u64
    }

    /// Nodes in the simulation (sybil identities included).
    pub fn node_count(&self) -> usize {
        self.nodes.kind.len()
    }

    /// Simulated time now, in Unix seconds.
    fn now_secs(&self) -> u64 {
        EPOCH + self.eng.now() / SEC
    }

    /// On shared hosts, advert copies (but for duplicates, dropped at once) and DHT
    /// messages first wait for a core; everything else is handled at once.
    fn handle(&mut self, ev: Ev) {
        match ev {
            Ev::Gossip { msg, to, .. } if !self.host.cores.is_empty() => {
                if self.first_arrival(msg, to) {
                    let cpu = (self.sc.network.advert_cpu_ms * MS as f64) as Micros;
                    self.park(ev, cpu);
                } else {
                    self.drop_duplicate(msg);
                }
            }
            Ev::Req { .. } | Ev::Resp { .. } if !self.host.cores.is_empty() => self.park(ev, 0),
            Ev::Run(i) => {
                let ev = self.host.parked.remove(i).expect("parked");
                self.dispatch(ev);
            }
            ev => self.dispatch(ev),
        }
    }

    /// A message arrived on a shared host: it takes the first free core for `cpu` µs, then
    /// is handled.
    fn park(&mut self, ev: Ev, cpu: Micros) {
        let now = self.eng.now();
        let core = (0..self.host.cores.len())
            .min_by_key(|&c| self.host.cores[c])
            .expect("cores");
        let done = self.host.cores[core].max(now) + cpu;
        self.host.cores[core] = done;
        let i = self.host.parked.insert(ev);
        self.eng.at(done, Ev::Run(i));
    }

    fn dispatch(&mut self, ev: Ev) {
        match ev {
            Ev::Up(node) => self.bring_up(node, true),
            Ev::Down(node) => self.bring_down(node),
            Ev::Req { lookup, serial, to } => self.on_request(lookup, serial, to),
            Ev::Resp {
                lookup,
                serial,
                from,
            } => self.on_response(lookup, serial, from),
            Ev::Timeout {
                lookup,
                serial,
                peer,
            } => self.on_timeout(lookup, serial, peer),
            Ev::Gossip { msg, from, to } => self.on_gossip(msg, from, to),
            Ev::Heartbeat(node) => self.gossip.mesh.heartbeat(node, &mut self.eng.rng),
            Ev::Tick { worker, epoch } => self.on_tick(worker, epoch),
            Ev::Arrival { client, epoch } => self.on_arrival(client, epoch),
            Ev::AtWorker { job, gen } => self.on_at_worker(job, gen),
            Ev::Done { job, gen } => self.on_done(job, gen),
            Ev::Fail { job, gen } => self.on_fail(job, gen),
            Ev::Spam { spammer } => self.on_spam(spammer),
            Ev::Sample => self.on_sample(),
            Ev::Probe => self.on_probe(),
            Ev::Run(_) => unreachable!("handled by handle()"),
        }
    }

    /// One row of the time series; markets drop expired adverts.
    fn on_sample(&mut self) {
        let now = self.eng.now();
        let mut busy = 0u64;
        let mut slots = 0u64;
        let mut prices: Vec<u64> = Vec::new();
        let mut workers_online = 0;
        for wk in &self.workers {
            if !self.nodes.online[wk.node as usize] {
                continue;
            }
            workers_online += 1;
            if wk.behaviour == Behaviour::Honest {
                busy += wk.busy as u64;
                slots += wk.slots as u64;
                prices.push(wk.price.price().completion_per_mtok);
            }
        }
        prices.sort_unstable();
        let mut s = std::mem::take(&mut self.metrics.current);
        s.t = now / SEC;
        s.online = self.nodes.online.iter().filter(|&&o| o).count() as u64;
        s.workers_online = workers_online;
        s.utilisation = if slots == 0 {
            0.0
        } else {
            busy as f64 / slots as f64
        };
        s.price_median = prices.get(prices.len() / 2).copied().unwrap_or(0);
        s.price_mean = if prices.is_empty() {
            0.0
        } else {
            prices.iter().sum::<u64>() as f64 / prices.len() as f64
        };
        s.jobs_in_flight = self.jobs.in_flight.len() as u64;
        s.lookup_hops_mean = if s.lookups == 0 {
            0.0
        } else {
            self.dht.hop_sum as f64 / s.lookups as f64
        };
        self.dht.hop_sum = 0;
        self.metrics.series.push(s);
        // Markets drop expired adverts once per sample.
        let now_s = self.now_secs();
        for m in &mut self.gossip.markets {
            m.prune(now_s);
        }
        self.eng.after(self.sc.sample_secs * SEC, Ev::Sample);
    }
}

/// A signing key from the run's RNG.
fn key_from(rng: &mut impl Rng) -> SigningKey {
    let mut b = [0u8; 32];
    rng.fill(&mut b);
    SigningKey::from_bytes(&b)
}
