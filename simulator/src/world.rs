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

use crate::scenario::ScenarioError;
use std::collections::{BTreeMap, HashMap};

use crate::session::{self as jobsession, Chan};
use cocoon_gossip::advert::peer_id_bytes;
use cocoon_gossip::{
    Advert, Hardware, Load, Market, MarketConfig, ModelOffer, Price, PriceCore, PricePolicy,
    Reputation, Schedule, Selection, SignedAdvert, Trust, Verified, Weights,
};
use ed25519_dalek::SigningKey;
use rand::Rng;

use crate::engine::{pick, sample, Engine, Micros, MS, SEC};
use crate::kad::{Lookup, Node, Purpose, Tables};
use crate::mesh::Mesh;
use crate::metrics::Metrics;
use crate::net::Links;
use crate::scenario::{Adversary, Scenario};
use crate::slab::Slab;

/// Unix time of simulated time 0 (adverts carry Unix seconds).
pub const EPOCH: u64 = 1_700_000_000;

/// Time allowed after the end for jobs in flight to finish (every timeout is far below).
pub const DRAIN: Micros = 900 * SEC;

/// Bootstrap nodes: the first relays, never churned.
pub const BOOTSTRAP: usize = 4;

#[derive(Clone, Copy, Debug)]
enum Ev {
    Up(Node),
    Down(Node),
    /// A lookup's request reaches `to`.
    Req {
        lookup: u32,
        gen: u32,
        to: Node,
    },
    /// `from`'s answer reaches the lookup's origin.
    Resp {
        lookup: u32,
        gen: u32,
        from: Node,
    },
    /// `peer` did not answer in time.
    Timeout {
        lookup: u32,
        gen: u32,
        peer: Node,
    },
    /// An advert copy reaches `to` from `from`.
    Gossip {
        msg: u32,
        from: Node,
        to: Node,
    },
    Heartbeat(Node),
    /// A probe lookup starts.
    Probe,
    /// A message parked while it waited for a host core (`network.host_cores`) is handled.
    Run(u32),
    Tick {
        worker: u32,
        epoch: u32,
    },
    Arrival {
        client: u32,
        epoch: u32,
    },
    /// The job request reaches the worker.
    AtWorker {
        job: u32,
        gen: u32,
    },
    /// The worker finished generating.
    Done {
        job: u32,
        gen: u32,
    },
    /// The attempt failed (the client knows now).
    Fail {
        job: u32,
        gen: u32,
    },
    Spam {
        spammer: u32,
    },
    Sample,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Worker(u32),
    Relay,
    Client(u32),
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Behaviour {
    Honest,
    NoServe,
    WrongOutput { detect: f64 },
    Overcharge { factor: f64 },
}

struct Worker {
    node: Node,
    class: usize,
    behaviour: Behaviour,
    key: SigningKey,
    peer: Vec<u8>,
    price: PriceCore,
    schedule: Schedule<(Price, u32)>,
    busy: u32,
    refused: u32,
    running: Vec<u32>,
    slots: u32,
    tokens_per_s: f64,
    prefill_per_s: f64,
    models: Vec<u16>,
    epoch: u32,
    earned: u64,
    jobs: u64,
}

struct Client {
    node: Node,
    reputation: Reputation,
    key: Option<SigningKey>,
    epoch: u32,
    attached: Option<Node>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cause {
    /// Could not connect (dead worker): reputation penalty.
    Unreachable,
    /// Accepted and went silent: penalty.
    Stalled,
    /// Busy or too dear: no penalty.
    Busy,
    /// The client's session refused the quote (more than the worker may ask): penalty.
    Refused,
    /// The job stopped for want of payment (the deposit ran out): no penalty.
    Unpaid,
}

struct Job {
    /// Stamps the events of the current attempt: bumped (from one counter for all jobs, so
    /// never reused) at every attempt and at a worker's death; an event whose stamp differs
    /// is stale.
    gen: u32,
    client: u32,
    model: u16,
    prompt: u32,
    /// Tokens the model will produce in all (it stops before `max_tokens`).
    target: u32,
    delivered: u32,
    created: Micros,
    first_token: Option<Micros>,
    /// Candidates: (worker, price ceiling).
    candidates: Vec<(u32, Price)>,
    attempt: usize,
    lookup_pending: bool,
    // The current attempt.
    worker: u32,
    rtt: Micros,
    started: Micros,
    price: Price,
    cause: Cause,
    wrong: bool,
    /// The attempt's payment channel (taken from the pool), its state before the attempt
    /// and the attempt's inputs: a worker dying mid-job re-runs the sessions up to then.
    paying: Option<Box<Paying>>,
}

/// A lookup in progress.
struct Running {
    /// Stamps its events (one counter for all lookups, so never reused): an answer to a
    /// lookup that ended, its key since taken by another, is dropped.
    serial: u32,
    lookup: Lookup,
}

/// A running attempt's payment.
struct Paying {
    key: (u32, u32),
    /// `None` for a free job.
    before: Option<Chan>,
    after: Option<Chan>,
    attempt: jobsession::Attempt,
    outcome: jobsession::Outcome,
}

/// What an advert message carries.
enum Payload {
    /// An advert whose signature was checked (by its author, or by the first receiver).
    Verified(std::rc::Rc<Verified>),
    /// Wire bytes nobody has checked yet: the first receiver runs the signature check.
    Wire(Vec<u8>),
}

struct Msg {
    payload: Payload,
    /// The publisher.
    origin: Node,
    created: Micros,
    seen: Vec<u64>,
    /// Mesh members a copy has reached (on a shared host, where copies queue before they
    /// are handled; empty otherwise): later copies are duplicates, dropped on arrival as
    /// gossipsub's duplicate cache does, without CPU.
    arrived: Vec<u64>,
    reached: u32,
    in_flight: u32,
    online_at_start: u32,
    forged: bool,
}

struct Spammer {
    node: Node,
    keys: Vec<SigningKey>,
    seq: u64,
    interval: Micros,
    forged: f64,
}

/// Money, counted on both sides.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Ledger {
    /// Billed by workers for tokens delivered (their meters), nanoTON.
    pub billed: u64,
    /// Signed by clients (their channel cores).
    pub paid: u64,
    /// Accepted by workers (their channel cores).
    pub earned: u64,
    /// Signed but not yet delivered (the worker was down).
    pub pending: u64,
    /// Vouchers signed.
    pub vouchers: u64,
    /// Channels opened.
    pub channels: u64,
    /// Attempts whose worker held text waiting for a voucher.
    pub credit_stalls: u64,
    /// Time workers held text waiting for vouchers, in all, ms.
    pub stall_ms: f64,
    /// Attempts ended with `PaymentRequired` (a deposit ran out).
    pub payment_required: u64,
    /// Quotes the clients' sessions refused.
    pub quotes_refused: u64,
}

/// Job outcomes.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Outcomes {
    /// Jobs created.
    pub created: u64,
    /// Finished with an answer.
    pub completed: u64,
    /// Ended without one.
    pub failed: u64,
    /// Failed for want of any candidate.
    pub no_worker: u64,
    /// Attempts that failed over to another worker.
    pub failovers: u64,
    /// Attempts refused busy or too dear.
    pub busy: u64,
    /// Attempts on dead workers.
    pub unreachable: u64,
    /// Attempts on workers that went silent.
    pub stalled: u64,
    /// Wrong answers the client's check caught.
    pub wrong_detected: u64,
    /// Wrong answers accepted.
    pub wrong_accepted: u64,
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
    /// When each shared host core comes free (empty: nodes have CPUs of their own).
    cores: Vec<Micros>,
    /// Messages waiting for a core, by `Ev::Run` key.
    parked: Slab<Ev>,
    kind: Vec<Kind>,
    region: Vec<u8>,
    online: Vec<bool>,
    server: Vec<bool>,
    node_epoch: Vec<u32>,
    always_on: Vec<bool>,
    tables: Tables,
    lookups: Slab<Running>,
    /// The serial number of the last lookup started.
    lookup_serial: u32,
    providers: HashMap<Node, Vec<(u16, u32)>>,
    model_keys: Vec<u64>,
    model_names: Vec<String>,
    /// Demand share of each model the clients ask for.
    model_shares: Vec<f64>,
    mesh: Mesh,
    markets: Vec<Market>,
    /// Online mesh members per region.
    mesh_online: Vec<Vec<Node>>,
    msgs: Slab<Msg>,
    workers: Vec<Worker>,
    worker_by_peer: HashMap<Vec<u8>, u32>,
    clients: Vec<Client>,
    /// Jobs in flight.
    jobs: Slab<Job>,
    /// The last generation given to a job.
    job_gen: u32,
    /// Free payment channels per (client, worker); a job takes one for its attempt.
    channels: BTreeMap<(u32, u32), Vec<Chan>>,
    spammers: Vec<Spammer>,
    /// Measurements.
    pub metrics: Metrics,
    /// Money.
    pub ledger: Ledger,
    /// Job outcomes.
    pub outcomes: Outcomes,
    /// Traffic.
    pub traffic: Traffic,
    lambda_max: f64,
    hop_sum: u64,
    scratch: Vec<(u64, Node)>,
}

/// The wire price of a market price, times `factor`.
fn job_price(p: Price, factor: f64) -> cocoon_job::JobPrice {
    let scale = |x: u64| (x as f64 * factor).round().min(u64::MAX as f64) as u64;
    cocoon_job::JobPrice {
        prompt_per_mtok: scale(p.prompt_per_mtok),
        completion_per_mtok: scale(p.completion_per_mtok),
    }
}

fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100000001b3)
    })
}

fn key_from(rng: &mut impl Rng) -> SigningKey {
    let mut b = [0u8; 32];
    rng.fill(&mut b);
    SigningKey::from_bytes(&b)
}

/// Mean of a distribution, estimated from draws (Weibull and friends have no closed form
/// here worth the code).
fn mean_of(rng: &mut impl Rng, d: &crate::scenario::Dist) -> f64 {
    (0..4000).map(|_| sample(rng, d)).sum::<f64>() / 4000.0
}

impl World {
    /// Builds the network of `sc` at time 0.
    pub fn new(sc: Scenario) -> Result<Self, ScenarioError> {
        sc.check()?;
        let mut eng: Engine<Ev> = Engine::new(sc.seed, sc.duration_secs * SEC + DRAIN);
        let (n, worker_count, relays) = sc.layout();
        let honest_workers = ((sc.nodes as f64 * sc.workers.share).round() as usize).max(1);
        let shares: Vec<f64> = sc.network.regions.iter().map(|r| r.share).collect();
        let region: Vec<u8> = (0..n).map(|_| pick(&mut eng.rng, &shares) as u8).collect();
        // Layout: relays (bootstrap first), workers (sybils last), clients.
        let mut kind = Vec::with_capacity(n);
        kind.extend((0..relays).map(|_| Kind::Relay));
        kind.extend((0..worker_count as u32).map(Kind::Worker));
        let first_client = kind.len();
        kind.extend((0..(n - first_client) as u32).map(Kind::Client));
        let server: Vec<bool> = (0..n)
            .map(|i| match kind[i] {
                Kind::Client(_) => !eng.chance(sc.network.nat_share),
                _ => true,
            })
            .collect();
        let ids: Vec<u64> = (0..n).map(|_| eng.rng.random()).collect();
        let tables = Tables::new(ids, sc.dht.k);
        let model_ids: Vec<String> = {
            let mut m: Vec<String> = sc.clients.models.iter().map(|m| m.id.clone()).collect();
            for c in &sc.workers.classes {
                for id in &c.models {
                    if !m.contains(id) {
                        m.push(id.clone());
                    }
                }
            }
            m
        };
        let model_keys = model_ids.iter().map(|m| fnv(m)).collect();
        let model_names = model_ids.clone();
        // Workers.
        let class_shares: Vec<f64> = sc.workers.classes.iter().map(|c| c.share).collect();
        let mut workers = Vec::with_capacity(worker_count);
        for w in 0..worker_count {
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
                    .map(|m| model_ids.iter().position(|x| x == m).expect("listed") as u16)
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
                Adversary::WrongOutput { share, detect } => {
                    (share, Behaviour::WrongOutput { detect })
                }
                Adversary::Overcharge { share, factor } => {
                    (share, Behaviour::Overcharge { factor })
                }
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
        let worker_by_peer = workers
            .iter()
            .enumerate()
            .map(|(i, w)| (w.peer.clone(), i as u32))
            .collect();
        let clients = (first_client..n)
            .map(|node| Client {
                node: node as Node,
                reputation: Reputation::default(),
                key: None,
                epoch: 0,
                attached: None,
            })
            .collect();
        let members: Vec<Node> = (0..(relays + worker_count) as Node).collect();
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
        let day_rate = sc.clients.jobs_per_hour / 3600.0;
        let lambda_max = day_rate * (1.0 + sc.clients.diurnal_amplitude);
        let links = Links::new(&sc.network);
        let regions = sc.network.regions.len();
        let mut always_on = vec![false; n];
        always_on[..BOOTSTRAP].fill(true);
        let mut world = Self {
            links,
            cores: vec![0; sc.network.host_cores as usize],
            parked: Slab::new(),
            kind,
            region,
            online: vec![false; n],
            server,
            node_epoch: vec![0; n],
            always_on,
            tables,
            lookups: Slab::new(),
            lookup_serial: 0,
            providers: HashMap::new(),
            model_keys,
            model_names,
            model_shares: sc.clients.models.iter().map(|m| m.share).collect(),
            mesh,
            markets,
            mesh_online: vec![Vec::new(); regions],
            msgs: Slab::new(),
            workers,
            worker_by_peer,
            clients,
            jobs: Slab::new(),
            job_gen: 0,
            channels: BTreeMap::new(),
            spammers,
            metrics: Metrics::default(),
            ledger: Ledger::default(),
            outcomes: Outcomes::default(),
            traffic: Traffic::default(),
            lambda_max,
            hop_sum: 0,
            scratch: Vec::new(),
            eng,
            sc,
        };
        world.start();
        Ok(world)
    }

    /// Who is online at time 0, warm routing tables, first events.
    fn start(&mut self) {
        let n = self.kind.len();
        let churn = self.sc.churn.clone();
        let (cs, co, ws, wo) = (
            mean_of(&mut self.eng.rng, &churn.client_session),
            mean_of(&mut self.eng.rng, &churn.client_offline),
            mean_of(&mut self.eng.rng, &churn.worker_session),
            mean_of(&mut self.eng.rng, &churn.worker_offline),
        );
        let mut up = Vec::new();
        for i in 0..n {
            let p_on = if !churn.enabled || self.always_on[i] {
                1.0
            } else if matches!(self.kind[i], Kind::Client(_)) {
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
                .filter(|&i| self.server[i as usize])
                .collect();
            self.tables.warm_start(&servers, &mut self.eng.rng);
        }
        for &i in &up {
            self.bring_up(i, !self.sc.dht.warm_start);
        }
        // Workers' provider records, as a warm network has them.
        if self.sc.dht.warm_start {
            for w in 0..self.workers.len() {
                let node = self.workers[w].node;
                if !self.online[node as usize] {
                    continue;
                }
                for m in self.workers[w].models.clone() {
                    let key = self.model_keys[m as usize];
                    for holder in self.tables.closest(node, key, self.sc.dht.k) {
                        self.providers
                            .entry(holder)
                            .or_default()
                            .push((m, w as u32));
                    }
                }
            }
        }
        for s in 0..self.spammers.len() {
            let d = self.spammers[s].interval;
            self.eng.at(d, Ev::Spam { spammer: s as u32 });
        }
        self.eng.at(self.sc.sample_secs * SEC, Ev::Sample);
        if let Some(gap) = self.probe_gap() {
            self.eng.at(gap, Ev::Probe);
        }
    }

    /// Time between two probe lookups, if there are any.
    fn probe_gap(&self) -> Option<Micros> {
        let rate = self.sc.dht.probe_lookups_per_sec;
        (rate > 0.0).then(|| ((SEC as f64 / rate) as Micros).max(1))
    }

    /// A probe lookup of a random key from a random online DHT server.
    fn on_probe(&mut self) {
        let n = self.online.len();
        // Rejection sampling; a network with no online server skips this probe.
        for _ in 0..64 {
            let node = self.eng.rng.random_range(0..n);
            if self.online[node] && self.server[node] {
                let target = self.eng.rng.random::<u64>();
                self.start_lookup(node as Node, target, Purpose::Probe);
                break;
            }
        }
        if let Some(gap) = self.probe_gap() {
            self.eng.after(gap, Ev::Probe);
        }
    }

    fn session_time(&mut self, node: Node) -> Micros {
        let d = match self.kind[node as usize] {
            Kind::Client(_) => self.sc.churn.client_session,
            _ => self.sc.churn.worker_session,
        };
        (self.eng.sample(&d) * SEC as f64) as Micros
    }

    fn offline_time(&mut self, node: Node) -> f64 {
        let d = match self.kind[node as usize] {
            Kind::Client(_) => self.sc.churn.client_offline,
            _ => self.sc.churn.worker_offline,
        };
        self.eng.sample(&d) * SEC as f64
    }

    fn now_secs(&self) -> u64 {
        EPOCH + self.eng.now() / SEC
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
        while !self.jobs.is_empty() {
            let Some(ev) = self.eng.next(end) else {
                break;
            };
            match ev {
                Ev::Arrival { .. } | Ev::Sample | Ev::Spam { .. } | Ev::Probe => {}
                ev => self.handle(ev),
            }
        }
    }

    /// Events processed.
    pub fn events(&self) -> u64 {
        self.eng.processed()
    }

    fn handle(&mut self, ev: Ev) {
        match ev {
            Ev::Gossip { msg, to, .. } if !self.cores.is_empty() => {
                if self.first_arrival(msg, to) {
                    let cpu = (self.sc.network.advert_cpu_ms * MS as f64) as Micros;
                    self.park(ev, cpu);
                } else {
                    self.msgs[msg].in_flight -= 1;
                    self.metrics.duplicates += 1;
                    self.finish_msg_if_done(msg);
                }
            }
            Ev::Req { .. } | Ev::Resp { .. } if !self.cores.is_empty() => self.park(ev, 0),
            Ev::Run(i) => {
                let ev = self.parked.remove(i).expect("parked");
                self.dispatch(ev);
            }
            ev => self.dispatch(ev),
        }
    }

    /// Whether this is the first copy of advert `msg` to reach `to` (marks it).
    fn first_arrival(&mut self, msg: u32, to: Node) -> bool {
        let Some(s) = self.mesh.slot(to) else {
            return true;
        };
        let Some(m) = self.msgs.get_mut(msg) else {
            return true;
        };
        let bit = 1 << (s % 64);
        let first = m.arrived[s / 64] & bit == 0;
        m.arrived[s / 64] |= bit;
        first
    }

    /// A message arrived on a shared host: it takes the first free core for `cpu` µs, then
    /// is handled.
    fn park(&mut self, ev: Ev, cpu: Micros) {
        let now = self.eng.now();
        let core = (0..self.cores.len())
            .min_by_key(|&c| self.cores[c])
            .expect("cores");
        let done = self.cores[core].max(now) + cpu;
        self.cores[core] = done;
        let i = self.parked.insert(ev);
        self.eng.at(done, Ev::Run(i));
    }

    fn dispatch(&mut self, ev: Ev) {
        match ev {
            Ev::Up(node) => self.bring_up(node, true),
            Ev::Down(node) => self.bring_down(node),
            Ev::Req { lookup, gen, to } => self.on_request(lookup, gen, to),
            Ev::Resp { lookup, gen, from } => self.on_response(lookup, gen, from),
            Ev::Timeout { lookup, gen, peer } => self.on_timeout(lookup, gen, peer),
            Ev::Gossip { msg, from, to } => self.on_gossip(msg, from, to),
            Ev::Heartbeat(node) => self.mesh.heartbeat(node, &mut self.eng.rng),
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

    // ---- sessions ----------------------------------------------------------------------

    fn bring_up(&mut self, node: Node, join: bool) {
        let i = node as usize;
        if self.online[i] {
            return;
        }
        self.online[i] = true;
        self.node_epoch[i] += 1;
        if self.sc.churn.enabled && !self.always_on[i] {
            let d = self.session_time(node);
            self.eng.after(d.max(SEC), Ev::Down(node));
        }
        if join {
            // A restarted node has an empty table: it joins through the bootstrap nodes.
            self.start_join(node);
        }
        if self.mesh.slot(node).is_some() {
            let over = self.mesh.join(node, &mut self.eng.rng);
            for p in over {
                self.heartbeat_soon(p);
            }
            let r = self.region[i] as usize;
            self.mesh_online[r].push(node);
        }
        match self.kind[i] {
            Kind::Worker(w) => {
                let wk = &mut self.workers[w as usize];
                wk.epoch += 1;
                let epoch = wk.epoch;
                // A random phase, so workers do not tick in lockstep.
                let phase = self
                    .eng
                    .rng
                    .random_range(0..self.sc.workers.price_tick_secs * SEC);
                self.eng.after(phase, Ev::Tick { worker: w, epoch });
                if join {
                    for m in self.workers[w as usize].models.clone() {
                        let key = self.model_keys[m as usize];
                        self.start_lookup(node, key, Purpose::Provide(m));
                    }
                }
            }
            Kind::Client(c) => {
                let cl = &mut self.clients[c as usize];
                cl.epoch += 1;
                cl.attached = None;
                let epoch = cl.epoch;
                self.schedule_arrival(c, epoch);
            }
            Kind::Relay => {}
        }
    }

    fn bring_down(&mut self, node: Node) {
        let i = node as usize;
        if !self.online[i] {
            return;
        }
        self.online[i] = false;
        self.node_epoch[i] += 1;
        let d = self.offline_time(node) as Micros;
        self.eng.after(d.max(SEC), Ev::Up(node));
        if self.mesh.slot(node).is_some() {
            for p in self.mesh.leave(node) {
                self.heartbeat_soon(p);
            }
            let r = self.region[i] as usize;
            self.mesh_online[r].retain(|&x| x != node);
        }
        if let Kind::Worker(w) = self.kind[i] {
            // Its running jobs stall: clients notice after their stall timeout.
            let running = std::mem::take(&mut self.workers[w as usize].running);
            self.workers[w as usize].busy = 0;
            let stall = self.sc.clients.stall_timeout_ms * MS;
            for job in running {
                let gen = self.next_job_gen();
                let j = &mut self.jobs[job];
                let ran = self.eng.now().saturating_sub(j.started);
                j.gen = gen;
                j.cause = Cause::Stalled;
                // The sessions again from the attempt's start, the worker dying at `ran`:
                // what each side journalled by then is what stays.
                let received = match j.paying.take() {
                    Some(mut p) => {
                        let mut chan = p.before.clone();
                        p.attempt.cut = Some(ran);
                        p.outcome = jobsession::run(chan.as_mut(), &p.attempt);
                        p.after = chan;
                        self.settle_attempt(w, *p)
                    }
                    None => 0,
                };
                self.jobs[job].delivered += received;
                self.eng.after(stall, Ev::Fail { job, gen });
            }
        }
    }

    fn heartbeat_soon(&mut self, node: Node) {
        let hb = self.sc.gossip.heartbeat_ms * MS;
        let phase = hb - self.eng.now() % hb;
        self.eng.after(phase, Ev::Heartbeat(node));
    }

    // ---- DHT ---------------------------------------------------------------------------

    fn start_join(&mut self, node: Node) {
        let target = self.tables.id(node);
        self.start_lookup(node, target, Purpose::Join);
    }

    fn start_lookup(&mut self, origin: Node, target: u64, purpose: Purpose) {
        let k = self.sc.dht.k;
        let mut seeds: Vec<(Node, u64)> = self
            .tables
            .closest(origin, target, k)
            .into_iter()
            .map(|n| (n, self.tables.id(n)))
            .collect();
        if seeds.is_empty() {
            seeds = (0..BOOTSTRAP as Node)
                .filter(|&b| b != origin)
                .map(|b| (b, self.tables.id(b)))
                .collect();
        }
        let lookup = Lookup::new(origin, target, purpose, self.eng.now(), seeds);
        self.lookup_serial = self.lookup_serial.wrapping_add(1);
        let idx = self.lookups.insert(Running {
            serial: self.lookup_serial,
            lookup,
        });
        self.traffic.lookups += 1;
        self.advance_lookup(idx);
    }

    fn advance_lookup(&mut self, idx: u32) {
        let (k, alpha) = (self.sc.dht.k, self.sc.dht.alpha);
        let Some(Running {
            serial: gen,
            lookup: l,
        }) = self.lookups.get_mut(idx)
        else {
            return;
        };
        let gen = *gen;
        let early = matches!(l.purpose, Purpose::FindProviders(_)) && l.found.is_some();
        if early || l.finished(k) {
            self.finish_lookup(idx);
            return;
        }
        let origin = l.origin;
        let sends = l.next_requests(k, alpha);
        for (to, _) in sends {
            self.traffic.dht_requests += 1;
            let (a, b) = (self.region[origin as usize], self.region[to as usize]);
            let bytes = self.sc.dht.request_bytes;
            // A request that is lost, or sent to a dead node, ends in the timeout (the only
            // case that needs a timeout event: an answer always comes well within it).
            match self.links.delay(&mut self.eng.rng, a, b, bytes) {
                Some(d) if self.online[to as usize] => {
                    self.eng.after(
                        d,
                        Ev::Req {
                            lookup: idx,
                            gen,
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
                            gen,
                            peer: to,
                        },
                    );
                }
            }
        }
    }

    fn lookup_mut(&mut self, idx: u32, gen: u32) -> Option<&mut Lookup> {
        let r = self.lookups.get_mut(idx)?;
        (r.serial == gen).then_some(&mut r.lookup)
    }

    fn on_request(&mut self, idx: u32, gen: u32, to: Node) {
        let Some(l) = self.lookup_mut(idx, gen) else {
            return;
        };
        let origin = l.origin;
        let (a, b) = (self.region[to as usize], self.region[origin as usize]);
        // The origin gives up `rpc_timeout` after sending (about one latency ago).
        let timeout = (self.sc.dht.rpc_timeout_ms * MS).saturating_sub(self.links.base(b, a));
        let fail = Ev::Timeout {
            lookup: idx,
            gen,
            peer: to,
        };
        if !self.online[to as usize] || !self.server[to as usize] {
            self.eng.after(timeout, fail);
            return;
        }
        // The queried node learns about the origin (when it is a server).
        if self.server[origin as usize] && self.online[origin as usize] {
            let online = &self.online;
            self.tables.seen(to, origin, |p| online[p as usize]);
        }
        let bytes = self.sc.dht.response_bytes;
        match self.links.delay(&mut self.eng.rng, a, b, bytes) {
            Some(d) => self.eng.after(
                d,
                Ev::Resp {
                    lookup: idx,
                    gen,
                    from: to,
                },
            ),
            None => self.eng.after(timeout, fail),
        }
    }

    fn on_response(&mut self, idx: u32, gen: u32, from: Node) {
        let k = self.sc.dht.k;
        let Some(Running { lookup: l, .. }) = self.lookups.get(idx).filter(|r| r.serial == gen)
        else {
            return;
        };
        let (origin, target, purpose) = (l.origin, l.target, l.purpose);
        if !self.online[origin as usize] {
            self.finish_lookup(idx);
            return;
        }
        let online = &self.online;
        self.tables.seen(origin, from, |p| online[p as usize]);
        let mut contacts = std::mem::take(&mut self.scratch);
        self.tables.closest_into(from, target, k, &mut contacts);
        let found = match purpose {
            Purpose::FindProviders(m) => self
                .providers
                .get(&from)
                .is_some_and(|v| v.iter().any(|&(x, _)| x == m)),
            _ => false,
        };
        let now = self.eng.now();
        let from_id = self.tables.id(from);
        let l = &mut self.lookups[idx].lookup;
        if found && l.found.is_none() {
            l.found = Some((l.hop_of(from, from_id), now));
        }
        l.answered(
            from,
            from_id,
            contacts.iter().map(|&(d, n)| (n, d ^ target)),
        );
        self.scratch = contacts;
        self.advance_lookup(idx);
    }

    fn on_timeout(&mut self, idx: u32, gen: u32, peer: Node) {
        let id = self.tables.id(peer);
        let Some(l) = self.lookup_mut(idx, gen) else {
            return;
        };
        let before = l.failures;
        l.failed(peer, id);
        if l.failures == before {
            return;
        }
        let origin = l.origin;
        self.traffic.dht_timeouts += 1;
        self.tables.remove(origin, peer);
        self.advance_lookup(idx);
    }

    fn finish_lookup(&mut self, idx: u32) {
        let k = self.sc.dht.k;
        let Some(Running { lookup: l, .. }) = self.lookups.remove(idx) else {
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
        self.hop_sum += hops as u64;
        match l.purpose {
            Purpose::Join | Purpose::Probe => {}
            Purpose::Provide(model) => {
                let Kind::Worker(w) = self.kind[l.origin as usize] else {
                    return;
                };
                for holder in l.result(k) {
                    let records = self.providers.entry(holder).or_default();
                    if !records.contains(&(model, w)) {
                        records.push((model, w));
                    }
                }
            }
            Purpose::FindProviders(model) => {
                let Kind::Client(c) = self.kind[l.origin as usize] else {
                    return;
                };
                self.providers_found(c, model, l.result(k));
            }
        }
    }

    // ---- gossip ------------------------------------------------------------------------

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
                    id: self.model_names[m as usize].clone(),
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

    fn model_name(&self, m: u16) -> String {
        self.model_names[m as usize].clone()
    }

    fn on_tick(&mut self, w: u32, epoch: u32) {
        let wk = &mut self.workers[w as usize];
        if wk.epoch != epoch || !self.online[wk.node as usize] {
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

    fn publish(&mut self, origin: Node, payload: Payload) {
        self.traffic.adverts += 1;
        self.metrics.current.adverts += 1;
        let words = self.mesh.members().len().div_ceil(64);
        let msg = Msg {
            payload,
            origin,
            created: self.eng.now(),
            seen: vec![0; words],
            arrived: if self.cores.is_empty() {
                Vec::new()
            } else {
                vec![0; words]
            },
            reached: 0,
            in_flight: 0,
            online_at_start: self.mesh.online() as u32,
            forged: false,
        };
        let idx = self.msgs.insert(msg);
        if let Some(s) = self.mesh.slot(origin) {
            self.msgs[idx].seen[s / 64] |= 1 << (s % 64);
            // A worker admits its own advert (as the node's advertiser does).
            let now = self.now_secs();
            if let Payload::Verified(v) = &self.msgs[idx].payload {
                let _ = self.markets[s].insert_verified(v, &origin.to_le_bytes(), now);
            }
        }
        self.forward(idx, origin, None);
        self.finish_msg_if_done(idx);
    }

    fn forward(&mut self, idx: u32, at: Node, from: Option<Node>) {
        let bytes = self.sc.gossip.advert_bytes;
        for i in 0..self.mesh.peers(at).len() {
            let p = self.mesh.peers(at)[i];
            if Some(p) == from {
                continue;
            }
            self.traffic.advert_messages += 1;
            // A copy to a peer that has the advert already is a duplicate whenever it
            // lands: counted now, no event needed.
            if let Some(s) = self.mesh.slot(p) {
                let m = &self.msgs[idx];
                if m.seen[s / 64] & (1 << (s % 64)) != 0 {
                    self.metrics.duplicates += 1;
                    continue;
                }
            }
            let (a, b) = (self.region[at as usize], self.region[p as usize]);
            if let Some(d) = self.links.delay(&mut self.eng.rng, a, b, bytes) {
                self.msgs[idx].in_flight += 1;
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

    fn on_gossip(&mut self, idx: u32, from: Node, to: Node) {
        let now = self.eng.now();
        let now_s = self.now_secs();
        let Some(m) = self.msgs.get_mut(idx) else {
            return;
        };
        m.in_flight -= 1;
        let slot = self.mesh.slot(to);
        let accepted = match slot {
            Some(s) if self.online[to as usize] => {
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
                            match self.markets[s].insert_verified(
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

    fn finish_msg_if_done(&mut self, idx: u32) {
        let done = self.msgs.get(idx).is_some_and(|m| m.in_flight == 0);
        if !done {
            return;
        }
        let m = self.msgs.remove(idx).expect("checked");
        if !m.forged {
            let others = m.online_at_start.saturating_sub(1).max(1);
            self.metrics
                .coverage
                .add((m.reached as f64 / others as f64).min(1.0));
        }
    }

    fn on_spam(&mut self, s: u32) {
        let sp = &mut self.spammers[s as usize];
        let node = sp.node;
        let interval = sp.interval;
        if self.online[node as usize] {
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

    // ---- jobs --------------------------------------------------------------------------

    fn rate(&self, at: Micros) -> f64 {
        let c = &self.sc.clients;
        let hours = at as f64 / 3600e6;
        let phase = 2.0 * std::f64::consts::PI * (hours - c.peak_hour + 6.0) / 24.0;
        c.jobs_per_hour / 3600.0 * (1.0 + c.diurnal_amplitude * phase.sin())
    }

    fn schedule_arrival(&mut self, c: u32, epoch: u32) {
        if self.lambda_max <= 0.0 {
            return;
        }
        // Thinning: candidate arrivals at the peak rate, kept with rate(t) / peak.
        let mut t = self.eng.now();
        loop {
            let gap = -self.eng.rng.random::<f64>().max(1e-12).ln() / self.lambda_max;
            t += (gap * SEC as f64) as Micros;
            if t > self.sc.duration_secs * SEC {
                return;
            }
            if self.eng.rng.random::<f64>() * self.lambda_max <= self.rate(t) {
                break;
            }
        }
        self.eng.at(t, Ev::Arrival { client: c, epoch });
    }

    fn attach(&mut self, c: u32) -> Option<Node> {
        let node = self.clients[c as usize].node;
        if let Some(a) = self.clients[c as usize].attached {
            if self.online[a as usize] {
                return Some(a);
            }
        }
        let r = self.region[node as usize] as usize;
        let pool = if self.mesh_online[r].is_empty() {
            self.mesh_online.iter().find(|v| !v.is_empty())?
        } else {
            &self.mesh_online[r]
        };
        let a = pool[self.eng.rng.random_range(0..pool.len())];
        self.clients[c as usize].attached = Some(a);
        Some(a)
    }

    fn on_arrival(&mut self, c: u32, epoch: u32) {
        let cl = &self.clients[c as usize];
        if cl.epoch != epoch || !self.online[cl.node as usize] {
            return;
        }
        self.schedule_arrival(c, epoch);
        let model = pick(&mut self.eng.rng, &self.model_shares) as u16;
        let cfg = &self.sc.clients;
        let (prompts, outputs, shares) = (cfg.prompt_tokens, cfg.max_tokens, cfg.completion_share);
        let prompt = self.eng.sample(&prompts).round().clamp(1.0, 1e6) as u32;
        let max_tokens = self.eng.sample(&outputs).round().clamp(1.0, 1e5) as u32;
        let share = self.eng.sample(&shares).clamp(0.0, 1.0);
        let target = ((max_tokens as f64 * share).round() as u32).clamp(1, max_tokens);
        let gen = self.next_job_gen();
        let job = Job {
            gen,
            client: c,
            model,
            prompt,
            target,
            delivered: 0,
            created: self.eng.now(),
            first_token: None,
            candidates: Vec::new(),
            attempt: 0,
            lookup_pending: false,
            worker: 0,
            rtt: 0,
            started: 0,
            price: Price::default(),
            cause: Cause::Busy,
            wrong: false,
            paying: None,
        };
        let idx = self.jobs.insert(job);
        self.outcomes.created += 1;
        self.metrics.current.jobs_started += 1;
        let Some(gateway) = self.attach(c) else {
            self.outcomes.no_worker += 1;
            self.finish_job(idx, false);
            return;
        };
        let slot = self.mesh.slot(gateway).expect("a mesh member");
        let selection = Selection {
            model: self.model_name(model),
            prompt_tokens: prompt as u64,
            max_tokens: max_tokens as u64,
            max_price_per_mtok: None,
            accept_dev: false,
            exclude: Vec::new(),
            limit: Some(self.sc.clients.max_attempts),
        };
        let now_s = self.now_secs();
        let ranked = self.markets[slot].select(
            &selection,
            &self.clients[c as usize].reputation,
            &Weights::default(),
            now_s,
        );
        let slack = self.sc.clients.price_slack;
        let candidates: Vec<(u32, Price)> = ranked
            .iter()
            .filter_map(|cand| {
                let w = *self.worker_by_peer.get(&cand.peer_id)?;
                Some((w, cand.advert.price.with_slack(slack)))
            })
            .collect();
        if candidates.is_empty() {
            // Nothing in the market: the DHT's provider records are the fallback.
            let node = self.clients[c as usize].node;
            self.jobs[idx].lookup_pending = true;
            let key = self.model_keys[model as usize];
            self.start_lookup(node, key, Purpose::FindProviders(model));
            return;
        }
        self.jobs[idx].candidates = candidates;
        self.start_attempt(idx);
    }

    /// A provider lookup for client `c` ended: its waiting jobs for `model` try the
    /// providers found, at their current advertised price (the node syncs their adverts).
    fn providers_found(&mut self, c: u32, model: u16, holders: Vec<Node>) {
        let mut found: Vec<u32> = Vec::new();
        for h in holders {
            if let Some(records) = self.providers.get(&h) {
                for &(m, w) in records {
                    if m == model && !found.contains(&w) {
                        found.push(w);
                    }
                }
            }
        }
        found.truncate(self.sc.clients.max_attempts);
        let slack = self.sc.clients.price_slack;
        let waiting: Vec<u32> = self
            .jobs
            .iter()
            .filter(|(_, job)| job.lookup_pending && job.client == c && job.model == model)
            .map(|(j, _)| j)
            .collect();
        for j in waiting {
            self.jobs[j].lookup_pending = false;
            if found.is_empty() {
                self.outcomes.no_worker += 1;
                self.finish_job(j, false);
                continue;
            }
            self.jobs[j].candidates = found
                .iter()
                .map(|&w| (w, self.workers[w as usize].price.price().with_slack(slack)))
                .collect();
            self.start_attempt(j);
        }
    }

    fn start_attempt(&mut self, job: u32) {
        let j = &self.jobs[job];
        let Some(&(w, _)) = j.candidates.get(j.attempt) else {
            self.finish_job(job, false);
            return;
        };
        let client_node = self.clients[j.client as usize].node;
        let worker_node = self.workers[w as usize].node;
        let (a, b) = (
            self.region[client_node as usize],
            self.region[worker_node as usize],
        );
        let rtt = self.links.delay_reliable(&mut self.eng.rng, a, b, 0)
            + self.links.delay_reliable(&mut self.eng.rng, b, a, 0);
        let gen = self.next_job_gen();
        let j = &mut self.jobs[job];
        j.gen = gen;
        j.worker = w;
        j.rtt = rtt;
        if !self.online[worker_node as usize] {
            // Connecting to a dead worker: the client gives up after its open timeout.
            j.cause = Cause::Unreachable;
            let t = self.sc.clients.open_timeout_ms * MS;
            self.eng.after(t, Ev::Fail { job, gen });
            return;
        }
        // QUIC + attested Noise handshake, then the request: about 1.5 round trips.
        self.eng.after(rtt * 3 / 2, Ev::AtWorker { job, gen });
    }

    fn on_at_worker(&mut self, job: u32, gen: u32) {
        let Some(j) = self.jobs.get(job).filter(|j| j.gen == gen) else {
            return;
        };
        let w = j.worker as usize;
        let wk = &self.workers[w];
        let rtt = j.rtt;
        if !self.online[wk.node as usize] {
            let t = (self.sc.clients.open_timeout_ms * MS).saturating_sub(rtt * 3 / 2);
            self.jobs[job].cause = Cause::Unreachable;
            self.eng.after(t, Ev::Fail { job, gen });
            return;
        }
        let ceiling = j.candidates[j.attempt].1;
        let price = wk.price.price();
        if wk.behaviour == Behaviour::NoServe {
            self.jobs[job].cause = Cause::Stalled;
            let t = self.sc.clients.stall_timeout_ms * MS;
            self.eng.after(t, Ev::Fail { job, gen });
            return;
        }
        if wk.busy >= wk.slots {
            self.workers[w].refused += 1;
            self.refuse_busy(job, gen, rtt);
            return;
        }
        let wrong = matches!(wk.behaviour, Behaviour::WrongOutput { .. });
        let factor = match wk.behaviour {
            Behaviour::Overcharge { factor } => factor,
            _ => 1.0,
        };
        let remaining = j.target.saturating_sub(j.delivered).max(1);
        // A continuation re-reads the prompt plus what was generated.
        let prompt = j.prompt.saturating_add(j.delivered);
        let attempt = jobsession::Attempt {
            price: job_price(price, 1.0),
            quoted: job_price(price, factor),
            ceiling: job_price(ceiling, 1.0),
            prompt,
            tokens: remaining,
            max_tokens: remaining,
            one_way: rtt / 2,
            prefill: (prompt as f64 / wk.prefill_per_s * SEC as f64) as Micros,
            per_token: ((SEC as f64 / wk.tokens_per_s) as Micros).max(1),
            pay_every: self.sc.payments.pay_every,
            cut: None,
        };
        let key = (j.client, w as u32);
        let mut chan = (price != Price::default()).then(|| {
            let need = cocoon_ledger::channel::job_cost(
                ceiling.prompt_per_mtok,
                ceiling.completion_per_mtok,
                u64::from(prompt),
                u64::from(remaining),
            );
            self.take_chan(key, need)
        });
        let before = chan.clone();
        // The attempt through the real client and worker sessions.
        let outcome = jobsession::run(chan.as_mut(), &attempt);
        if outcome.end == jobsession::End::TooDear {
            if let Some(c) = before {
                self.put_chan(key, c);
            }
            self.refuse_busy(job, gen, rtt);
            return;
        }
        let wk = &mut self.workers[w];
        wk.busy += 1;
        wk.running.push(job);
        let now = self.eng.now();
        let j = &mut self.jobs[job];
        j.started = now;
        j.price = price;
        j.wrong = wrong;
        if j.first_token.is_none() {
            j.first_token = outcome.first_text.map(|t| now + t);
        }
        let at = outcome.at;
        j.cause = match outcome.end {
            jobsession::End::Done => Cause::Busy,
            jobsession::End::QuoteRefused => Cause::Refused,
            jobsession::End::PaymentRequired => Cause::Unpaid,
            _ => Cause::Stalled,
        };
        let done = outcome.end == jobsession::End::Done;
        j.paying = Some(Box::new(Paying {
            key,
            before,
            after: chan,
            attempt,
            outcome,
        }));
        if done {
            self.eng.after(at, Ev::Done { job, gen });
        } else {
            self.eng.after(at, Ev::Fail { job, gen });
        }
    }

    /// The worker answers `Busy` (or its admission finds the price above the ceiling).
    fn refuse_busy(&mut self, job: u32, gen: u32, rtt: Micros) {
        self.outcomes.busy += 1;
        self.metrics.current.busy_refusals += 1;
        self.jobs[job].cause = Cause::Busy;
        self.eng.after(rtt / 2, Ev::Fail { job, gen });
    }

    /// A free channel with `need` left between a client and a worker, or a new one.
    fn take_chan(&mut self, key: (u32, u32), need: u64) -> Chan {
        let pool = self.channels.entry(key).or_default();
        if let Some(i) = pool.iter().position(|c| c.remaining() >= need) {
            return pool.swap_remove(i);
        }
        self.ledger.channels += 1;
        let c = key.0 as usize;
        if self.clients[c].key.is_none() {
            let k = key_from(&mut self.eng.rng);
            self.clients[c].key = Some(k);
        }
        let client_key = self.clients[c].key.clone().expect("set");
        let mut id = [0u8; 32];
        id[..4].copy_from_slice(&key.0.to_le_bytes());
        id[4..8].copy_from_slice(&key.1.to_le_bytes());
        id[8..16].copy_from_slice(&self.ledger.channels.to_le_bytes());
        let p = &self.sc.payments;
        Chan::new(id, client_key, p.deposit, p.credit_limit)
    }

    fn put_chan(&mut self, key: (u32, u32), chan: Chan) {
        self.channels.entry(key).or_default().push(chan);
    }

    /// Books an attempt's payment: its channel back to the pool, its counts; returns the
    /// completion tokens the client received.
    fn settle_attempt(&mut self, w: u32, p: Paying) -> u32 {
        let o = p.outcome;
        self.ledger.vouchers += u64::from(o.vouchers);
        if o.stalled > 0 {
            self.ledger.credit_stalls += 1;
            self.ledger.stall_ms += o.stalled as f64 / MS as f64;
        }
        match o.end {
            jobsession::End::PaymentRequired => self.ledger.payment_required += 1,
            jobsession::End::QuoteRefused => self.ledger.quotes_refused += 1,
            _ => {}
        }
        self.ledger.billed += o.cost;
        self.workers[w as usize].earned += o.cost;
        self.metrics.current.earned += o.cost;
        if let Some(c) = p.after {
            self.put_chan(p.key, c);
        }
        o.tokens
    }

    fn on_done(&mut self, job: u32, gen: u32) {
        let Some(j) = self.jobs.get(job).filter(|j| j.gen == gen) else {
            return;
        };
        let w = j.worker as usize;
        let remaining = j.target.saturating_sub(j.delivered);
        let wk = &mut self.workers[w];
        wk.busy = wk.busy.saturating_sub(1);
        wk.running.retain(|&x| x != job);
        wk.jobs += 1;
        let paying = self.jobs[job].paying.take();
        if let Some(p) = paying {
            self.settle_attempt(w as u32, *p);
        }
        let j = &mut self.jobs[job];
        j.delivered += remaining;
        // The event is the client's receipt of `Done`.
        let done_at = self.eng.now();
        let (created, first) = (j.created, j.first_token.unwrap_or(done_at));
        let c = j.client as usize;
        let wrong = j.wrong;
        let peer = self.workers[w].peer.clone();
        let now_s = self.now_secs();
        let total_ms = (done_at - created) as f64 / MS as f64;
        let ttft_ms = (first - created) as f64 / MS as f64;
        let tps = self.workers[w].tokens_per_s;
        let detected = match self.workers[w].behaviour {
            Behaviour::WrongOutput { detect } if wrong => self.eng.chance(detect),
            _ => false,
        };
        if wrong {
            if detected {
                self.outcomes.wrong_detected += 1;
                self.clients[c].reputation.failure(&peer, now_s);
            } else {
                self.outcomes.wrong_accepted += 1;
            }
        }
        if !detected {
            self.clients[c]
                .reputation
                .success(&peer, now_s, ttft_ms, tps, tps);
        }
        self.metrics.job_latency_ms.push(total_ms as f32);
        self.metrics.ttft_ms.push(ttft_ms as f32);
        self.finish_job(job, true);
    }

    fn on_fail(&mut self, job: u32, gen: u32) {
        let Some(j) = self.jobs.get(job).filter(|j| j.gen == gen) else {
            return;
        };
        let (w, cause, c) = (j.worker, j.cause, j.client as usize);
        let peer = self.workers[w as usize].peer.clone();
        let now_s = self.now_secs();
        // An attempt the sessions ended (a refused quote, no payment): the worker is free
        // again and the client keeps what it received.
        if let Some(p) = self.jobs[job].paying.take() {
            let wk = &mut self.workers[w as usize];
            if let Some(i) = wk.running.iter().position(|&x| x == job) {
                wk.running.swap_remove(i);
                wk.busy = wk.busy.saturating_sub(1);
            }
            let received = self.settle_attempt(w, *p);
            let j = &mut self.jobs[job];
            j.delivered = j.delivered.saturating_add(received);
        }
        match cause {
            Cause::Busy | Cause::Unpaid => {}
            Cause::Refused => self.clients[c].reputation.failure(&peer, now_s),
            Cause::Unreachable => {
                self.outcomes.unreachable += 1;
                self.clients[c].reputation.failure(&peer, now_s);
            }
            Cause::Stalled => {
                self.outcomes.stalled += 1;
                self.clients[c].reputation.failure(&peer, now_s);
            }
        }
        let j = &mut self.jobs[job];
        j.attempt += 1;
        if j.attempt < j.candidates.len() && j.delivered < j.target {
            self.outcomes.failovers += 1;
            self.start_attempt(job);
        } else if j.delivered >= j.target {
            self.finish_job(job, true);
        } else {
            self.finish_job(job, false);
        }
    }

    fn finish_job(&mut self, job: u32, ok: bool) {
        if self.jobs.remove(job).is_none() {
            return;
        }
        if ok {
            self.outcomes.completed += 1;
            self.metrics.current.jobs_completed += 1;
        } else {
            self.outcomes.failed += 1;
            self.metrics.current.jobs_failed += 1;
        }
    }

    /// A generation no job has had.
    fn next_job_gen(&mut self) -> u32 {
        self.job_gen = self.job_gen.wrapping_add(1);
        self.job_gen
    }

    // ---- sampling ----------------------------------------------------------------------

    fn on_sample(&mut self) {
        let now = self.eng.now();
        let mut busy = 0u64;
        let mut slots = 0u64;
        let mut prices: Vec<u64> = Vec::new();
        let mut workers_online = 0;
        for wk in &self.workers {
            if !self.online[wk.node as usize] {
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
        s.online = self.online.iter().filter(|&&o| o).count() as u64;
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
        s.jobs_in_flight = self.jobs.len() as u64;
        s.lookup_hops_mean = if s.lookups == 0 {
            0.0
        } else {
            self.hop_sum as f64 / s.lookups as f64
        };
        self.hop_sum = 0;
        self.metrics.series.push(s);
        // Markets drop expired adverts once per sample.
        let now_s = self.now_secs();
        for m in &mut self.markets {
            m.prune(now_s);
        }
        self.eng.after(self.sc.sample_secs * SEC, Ev::Sample);
    }

    /// Closes the books: signed vouchers still pending, totals.
    pub fn finish(&mut self) {
        let (mut paid, mut earned, mut pending) = (0, 0, 0);
        for chan in self.channels.values().flatten() {
            paid += chan.client.paid;
            earned += chan.worker.paid();
            pending += chan.client.paid.saturating_sub(chan.worker.paid());
        }
        self.ledger.paid = paid;
        self.ledger.earned = earned;
        self.ledger.pending = pending;
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
        self.jobs.len() as u64
    }

    /// Nodes in the simulation (sybil identities included).
    pub fn node_count(&self) -> usize {
        self.kind.len()
    }
}
