//! Scenarios: what to simulate, read from TOML. Every field has a documented default, so a
//! scenario file names only what it changes (`simulator/scenarios/README.md` lists them).
//!
//! Times in files are seconds (or milliseconds where the name says `_ms`); the engine runs
//! in microseconds.

use cocoon_gossip::{Price, PricePolicy};
use serde::{Deserialize, Serialize};

/// Why a scenario is unusable.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ScenarioError {
    /// Not TOML, or a field of the wrong type or name.
    #[error("scenario: {0}")]
    Parse(#[from] toml::de::Error),
    /// A value out of range.
    #[error("scenario: {0}")]
    Invalid(String),
    /// A `--set key=value` that names no field.
    #[error("scenario override {0:?}: {1}")]
    Override(String, String),
}

/// A whole scenario.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Scenario {
    /// Name used in outputs. Default: "scenario".
    pub name: String,
    /// Seed of the one RNG. Default: 1.
    pub seed: u64,
    /// Simulated time, seconds. Default: 3,600.
    pub duration_secs: u64,
    /// Nodes, workers and clients together. Default: 1,000.
    pub nodes: u32,
    /// Interval of the time series, seconds. Default: 60.
    pub sample_secs: u64,
    /// Network model.
    pub network: NetworkModel,
    /// Sessions and downtime.
    pub churn: Churn,
    /// Kademlia.
    pub dht: Dht,
    /// Advert gossip.
    pub gossip: Gossip,
    /// Workers.
    pub workers: Workers,
    /// Clients and their demand.
    pub clients: Clients,
    /// Payment channels.
    pub payments: Payments,
    /// Misbehaving nodes.
    pub adversaries: Vec<Adversary>,
}

impl Default for Scenario {
    fn default() -> Self {
        Self {
            name: "scenario".into(),
            seed: 1,
            duration_secs: 3600,
            nodes: 1000,
            sample_secs: 60,
            network: NetworkModel::default(),
            churn: Churn::default(),
            dht: Dht::default(),
            gossip: Gossip::default(),
            workers: Workers::default(),
            clients: Clients::default(),
            payments: Payments::default(),
            adversaries: Vec::new(),
        }
    }
}

/// Where nodes are and how links behave.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NetworkModel {
    /// Regions and the share of nodes in each. Default: eu 0.4, na 0.35, asia 0.25.
    pub regions: Vec<Region>,
    /// One-way latency between regions, ms (row = from, column = to). Default: 10 within a
    /// region, 45 eu-na, 110 eu-asia, 85 na-asia.
    pub latency_ms: Vec<Vec<f64>>,
    /// Log-normal spread of each message's latency around the matrix value (sigma of the
    /// log). Default: 0.25.
    pub jitter: f64,
    /// Probability that a message is lost. Default: 0.005.
    pub loss: f64,
    /// Each node's uplink, Mbit/s: a message of B bytes takes B*8/bandwidth to send.
    /// Default: 100.
    pub bandwidth_mbps: f64,
    /// Time a node takes to handle a message it receives before it acts on it (transport,
    /// decoding, signature checks, task scheduling), ms, added to every message's delay.
    /// Default: 0.5 (about what the calibration bench fits on real nodes on loopback:
    /// bench/calibration.md).
    pub processing_ms: f64,
    /// Cores of one host that every node shares (a test host running the whole network on
    /// loopback): every DHT or advert message then also waits for a free core, and an
    /// advert copy occupies it for `advert_cpu_ms` (DHT messages are small and take no
    /// CPU time of their own). 0 gives every node a CPU of its own (no queueing).
    /// Default: 0.
    pub host_cores: u32,
    /// CPU time an advert copy takes on a shared host core (see `host_cores`): gossipsub's
    /// and the market's signature checks and the validation round trip, ms. Default: 0.
    pub advert_cpu_ms: f64,
    /// Share of clients behind NAT: DHT client mode, never in routing tables. Default: 0.4.
    pub nat_share: f64,
}

/// A region.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Region {
    /// Its name.
    pub name: String,
    /// Share of nodes.
    pub share: f64,
}

impl Default for NetworkModel {
    fn default() -> Self {
        let region = |name: &str, share| Region {
            name: name.into(),
            share,
        };
        Self {
            regions: vec![region("eu", 0.4), region("na", 0.35), region("asia", 0.25)],
            latency_ms: vec![
                vec![10.0, 45.0, 110.0],
                vec![45.0, 10.0, 85.0],
                vec![110.0, 85.0, 10.0],
            ],
            jitter: 0.25,
            loss: 0.005,
            bandwidth_mbps: 100.0,
            processing_ms: 0.5,
            host_cores: 0,
            advert_cpu_ms: 0.0,
            nat_share: 0.4,
        }
    }
}

/// A distribution of a positive quantity.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
#[serde(tag = "dist", rename_all = "snake_case", deny_unknown_fields)]
pub enum Dist {
    /// Always this value.
    Fixed {
        /// The value.
        value: f64,
    },
    /// Exponential with this mean.
    Exponential {
        /// Mean.
        mean: f64,
    },
    /// Log-normal with this median and sigma of the log.
    LogNormal {
        /// Median.
        median: f64,
        /// Sigma of the log.
        sigma: f64,
    },
    /// Weibull with this scale and shape (shape < 1: heavy tail, as measured for P2P
    /// session lengths).
    Weibull {
        /// Scale.
        scale: f64,
        /// Shape.
        shape: f64,
    },
    /// Uniform in [low, high].
    Uniform {
        /// Low end.
        low: f64,
        /// High end.
        high: f64,
    },
}

impl Dist {
    fn check(&self, what: &str) -> Result<(), ScenarioError> {
        let ok = match *self {
            Dist::Fixed { value } => value >= 0.0,
            Dist::Exponential { mean } => mean > 0.0,
            Dist::LogNormal { median, sigma } => median > 0.0 && sigma >= 0.0,
            Dist::Weibull { scale, shape } => scale > 0.0 && shape > 0.0,
            Dist::Uniform { low, high } => 0.0 <= low && low <= high,
        };
        if ok && self.finite() {
            Ok(())
        } else {
            Err(ScenarioError::Invalid(format!(
                "{what}: bad distribution {self:?}"
            )))
        }
    }

    fn finite(&self) -> bool {
        let v = match *self {
            Dist::Fixed { value } => [value, 0.0],
            Dist::Exponential { mean } => [mean, 0.0],
            Dist::LogNormal { median, sigma } => [median, sigma],
            Dist::Weibull { scale, shape } => [scale, shape],
            Dist::Uniform { low, high } => [low, high],
        };
        v.iter().all(|x| x.is_finite())
    }
}

/// Node sessions.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Churn {
    /// Whether nodes come and go at all. Default: true.
    pub enabled: bool,
    /// Client session length, seconds. Default: Weibull scale 3,600, shape 0.6.
    pub client_session: Dist,
    /// Client time offline between sessions, seconds. Default: exponential, mean 3,600.
    pub client_offline: Dist,
    /// Worker session length, seconds. Default: Weibull scale 36,000, shape 0.8.
    pub worker_session: Dist,
    /// Worker time offline, seconds. Default: exponential, mean 1,800.
    pub worker_offline: Dist,
}

impl Default for Churn {
    fn default() -> Self {
        Self {
            enabled: true,
            client_session: Dist::Weibull {
                scale: 3600.0,
                shape: 0.6,
            },
            client_offline: Dist::Exponential { mean: 3600.0 },
            worker_session: Dist::Weibull {
                scale: 36_000.0,
                shape: 0.8,
            },
            worker_offline: Dist::Exponential { mean: 1800.0 },
        }
    }
}

/// Kademlia settings (libp2p's defaults).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Dht {
    /// Bucket size and lookup width. Default: 20.
    pub k: usize,
    /// Requests in flight per lookup. Default: 3.
    pub alpha: usize,
    /// A request unanswered this long fails (and the peer leaves the table). Default: 10,000.
    pub rpc_timeout_ms: u64,
    /// Bytes of a FIND_NODE request / of a response (k contacts). Default: 64 / 1,200.
    pub request_bytes: u32,
    /// See `request_bytes`.
    pub response_bytes: u32,
    /// Start with routing tables as a long-running network has them (`true`), or empty,
    /// every node joining by lookups (`false`). Default: true.
    pub warm_start: bool,
    /// Lookups of random keys per second, each from a random online DHT server: what a
    /// measurement probe does (the calibration bench runs the same on real nodes); reported
    /// apart from the protocol's own lookups. Default: 0.
    pub probe_lookups_per_sec: f64,
}

impl Default for Dht {
    fn default() -> Self {
        Self {
            k: 20,
            alpha: 3,
            rpc_timeout_ms: 10_000,
            request_bytes: 64,
            response_bytes: 1200,
            warm_start: true,
            probe_lookups_per_sec: 0.0,
        }
    }
}

/// Advert gossip along a gossipsub-like mesh of full nodes (workers and relays).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Gossip {
    /// Mesh degree D. Default: 6 (gossipsub's).
    pub mesh_degree: usize,
    /// Fewer mesh peers than this: graft at the next heartbeat. Default: 4.
    pub mesh_low: usize,
    /// More than this: prune. Default: 12.
    pub mesh_high: usize,
    /// Heartbeat, ms. Default: 1,000.
    pub heartbeat_ms: u64,
    /// Full nodes that relay adverts besides the workers (public clients running
    /// `cocoon node`). Default: 50.
    pub relays: u32,
    /// Market views: full nodes whose market clients read (light clients and gateways
    /// attach to one in their region). Default: 16.
    pub gateways: u32,
    /// Advert size on the wire, bytes. Default: 600.
    pub advert_bytes: u32,
    /// A worker re-advertises this often, seconds (the node's advertiser: 30). Default: 30.
    pub advert_interval_secs: u64,
    /// Advert lifetime, seconds (the node's: 75). Default: 75.
    pub advert_ttl_secs: u64,
    /// Least time between adverts caused by a change, seconds (the node's: 2). Default: 2.
    pub advert_min_gap_secs: u64,
    /// The market's admission limits (per delivering peer). Default: the node's
    /// `MarketConfig` (100 per second, burst 500, 2,500 held per source, 10,000 held).
    pub market_rate_per_sec: u32,
    /// See `market_rate_per_sec`.
    pub market_burst: u32,
    /// See `market_rate_per_sec`.
    pub market_max_per_source: usize,
    /// See `market_rate_per_sec`.
    pub market_max_adverts: usize,
}

impl Default for Gossip {
    fn default() -> Self {
        let market = cocoon_gossip::MarketConfig::default();
        Self {
            mesh_degree: 6,
            mesh_low: 4,
            mesh_high: 12,
            heartbeat_ms: 1000,
            relays: 50,
            gateways: 16,
            advert_bytes: 600,
            advert_interval_secs: 30,
            advert_ttl_secs: 75,
            advert_min_gap_secs: 2,
            market_rate_per_sec: market.rate_per_sec,
            market_burst: market.burst,
            market_max_per_source: market.max_per_source,
            market_max_adverts: market.max_adverts,
        }
    }
}

/// Workers: how many, on what hardware, at what price.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Workers {
    /// Share of nodes that are workers. Default: 0.05.
    pub share: f64,
    /// Hardware classes. Default: H100 (share 0.2, 8 slots, 150 tok/s), A100 (0.3, 6,
    /// 90), RTX 4090 (0.5, 4, 60), each serving both default models, default price policy.
    pub classes: Vec<WorkerClass>,
    /// Seconds between two price observations (the node's advertiser: 1). Default: 5.
    pub price_tick_secs: u64,
}

/// One hardware class.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkerClass {
    /// Name (advertised as the GPU).
    pub name: String,
    /// Share of workers.
    pub share: f64,
    /// GPU memory, MiB.
    pub vram_mib: u64,
    /// Jobs at once.
    pub slots: u32,
    /// Decode speed per stream, tokens/s.
    pub tokens_per_s: f64,
    /// Prompt processing speed, tokens/s.
    pub prefill_tokens_per_s: f64,
    /// Models served (ids).
    pub models: Vec<String>,
    /// Price policy (`mode = "fixed"` or `"dynamic"`, as in the node's config).
    pub price: PricePolicy,
}

impl Default for WorkerClass {
    fn default() -> Self {
        Self {
            name: "RTX 4090".into(),
            share: 1.0,
            vram_mib: 24_576,
            slots: 4,
            tokens_per_s: 60.0,
            prefill_tokens_per_s: 4000.0,
            models: vec!["llama-3.1-8b".into(), "smollm2-135m".into()],
            price: PricePolicy::default(),
        }
    }
}

impl Default for Workers {
    fn default() -> Self {
        let class = |name: &str, share, vram_mib, slots, tokens_per_s, prefill| WorkerClass {
            name: name.into(),
            share,
            vram_mib,
            slots,
            tokens_per_s,
            prefill_tokens_per_s: prefill,
            ..Default::default()
        };
        Self {
            share: 0.05,
            classes: vec![
                class("NVIDIA H100", 0.2, 81_920, 8, 150.0, 12_000.0),
                class("NVIDIA A100", 0.3, 81_920, 6, 90.0, 8_000.0),
                class("RTX 4090", 0.5, 24_576, 4, 60.0, 4_000.0),
            ],
            price_tick_secs: 5,
        }
    }
}

/// Clients: demand and behaviour.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Clients {
    /// Jobs per online client per hour, on average over a day. Default: 6.
    pub jobs_per_hour: f64,
    /// Diurnal swing of demand: rate x (1 + amplitude x sin(2 pi (t - peak + 6 h) / 24 h)).
    /// Default: 0.5.
    pub diurnal_amplitude: f64,
    /// Hour of peak demand (simulated time starts at hour 0). Default: 14.
    pub peak_hour: f64,
    /// Prompt tokens. Default: log-normal, median 300, sigma 0.8.
    pub prompt_tokens: Dist,
    /// Completion tokens asked for (`max_tokens`). Default: log-normal, median 200, sigma
    /// 0.6.
    pub max_tokens: Dist,
    /// Share of `max_tokens` actually generated before the model stops. Default: uniform
    /// 0.3 to 1.
    pub completion_share: Dist,
    /// Models asked for and their shares. Default: llama-3.1-8b 0.7, smollm2-135m 0.3.
    pub models: Vec<ModelShare>,
    /// Workers tried per job (the client's `max_attempts`). Default: 3.
    pub max_attempts: usize,
    /// Connecting to a dead worker fails after this long, ms (the client's open timeout).
    /// Default: 15,000.
    pub open_timeout_ms: u64,
    /// A worker that sends nothing for this long has failed, ms. Default: 30,000.
    pub stall_timeout_ms: u64,
    /// Price ceiling sent with a job, as a multiple of the advertised price. Default: 1.25.
    pub price_slack: f64,
}

/// A model's share of demand.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelShare {
    /// Model id.
    pub id: String,
    /// Share.
    pub share: f64,
}

impl Default for Clients {
    fn default() -> Self {
        Self {
            jobs_per_hour: 6.0,
            diurnal_amplitude: 0.5,
            peak_hour: 14.0,
            prompt_tokens: Dist::LogNormal {
                median: 300.0,
                sigma: 0.8,
            },
            max_tokens: Dist::LogNormal {
                median: 200.0,
                sigma: 0.6,
            },
            completion_share: Dist::Uniform {
                low: 0.3,
                high: 1.0,
            },
            models: vec![
                ModelShare {
                    id: "llama-3.1-8b".into(),
                    share: 0.7,
                },
                ModelShare {
                    id: "smollm2-135m".into(),
                    share: 0.3,
                },
            ],
            max_attempts: 3,
            open_timeout_ms: 15_000,
            stall_timeout_ms: 30_000,
            price_slack: 1.25,
        }
    }
}

/// Payment channels (the ledger's core).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Payments {
    /// Deposit of a channel, nanoTON. Default: 1 TON.
    pub deposit: u64,
    /// The client pays every this many completion tokens (the node's `--pay-every`).
    /// Default: 16.
    pub pay_every: u32,
    /// The worker's credit limit, nanoTON. Default: 1,000,000.
    pub credit_limit: u64,
}

impl Default for Payments {
    fn default() -> Self {
        Self {
            deposit: 1_000_000_000,
            pay_every: 16,
            credit_limit: 1_000_000,
        }
    }
}

/// A kind of misbehaving node.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Adversary {
    /// Workers that advertise and accept jobs but never answer.
    NoServe {
        /// Share of workers.
        share: f64,
    },
    /// Workers that answer with wrong output (and are paid for it unless caught).
    WrongOutput {
        /// Share of workers.
        share: f64,
        /// Chance that a client's spot check catches a wrong answer.
        detect: f64,
    },
    /// Workers that quote more than their advertised price (past the client's ceiling):
    /// the client's session refuses the quote.
    Overcharge {
        /// Share of workers.
        share: f64,
        /// Their quote as a multiple of their price.
        factor: f64,
    },
    /// Relays flooding the mesh with adverts of throwaway identities.
    AdvertSpam {
        /// Spamming relays.
        count: u32,
        /// Adverts each sends per second.
        per_sec: f64,
        /// Share of them with a broken signature.
        forged: f64,
    },
    /// One operator's many identities: cheap adverts, no service.
    Sybil {
        /// Identities (extra workers).
        identities: u32,
        /// Their price as a share of the floor of the default policy.
        price_factor: f64,
    },
}

/// The nanoTON prices of a policy's starting point (for reporting).
pub fn start_price(policy: &PricePolicy) -> Price {
    match policy {
        PricePolicy::Fixed { price } => *price,
        PricePolicy::Dynamic { floor, .. } => *floor,
    }
}

/// The most jobs a client may start per hour (ten a second).
pub const MAX_JOBS_PER_HOUR: f64 = 36_000.0;
/// The most probe lookups per second.
pub const MAX_PROBES_PER_SEC: f64 = 1_000.0;
/// The longest a message may take to handle, milliseconds (a minute).
pub const MAX_HANDLING_MS: f64 = 60_000.0;

impl Scenario {
    /// Parses and checks a scenario.
    pub fn from_toml(text: &str) -> Result<Self, ScenarioError> {
        let s: Scenario = toml::from_str(text)?;
        s.check()?;
        Ok(s)
    }

    /// Applies `key=value` overrides (dotted paths into the scenario, TOML values), then
    /// checks the result.
    pub fn with_overrides(&self, sets: &[(String, String)]) -> Result<Self, ScenarioError> {
        let mut value = toml::Value::try_from(self)
            .map_err(|e| ScenarioError::Invalid(format!("cannot re-encode: {e}")))?;
        for (key, raw) in sets {
            let bad = |m: &str| ScenarioError::Override(key.clone(), m.to_string());
            let parsed: toml::Value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
                .ok()
                .and_then(|mut t| t.remove("v"))
                .unwrap_or_else(|| toml::Value::String(raw.clone()));
            let mut at = &mut value;
            let parts: Vec<&str> = key.split('.').collect();
            for (i, part) in parts.iter().enumerate() {
                let table = at.as_table_mut().ok_or_else(|| bad("not a table"))?;
                if i + 1 == parts.len() {
                    if !table.contains_key(*part) {
                        return Err(bad("no such field"));
                    }
                    table.insert(part.to_string(), parsed.clone());
                    break;
                }
                at = table.get_mut(*part).ok_or_else(|| bad("no such field"))?;
            }
        }
        let s: Scenario = value.try_into()?;
        s.check()?;
        Ok(s)
    }

    /// The world's layout: (all nodes with sybil identities, workers with sybils, relays).
    pub fn layout(&self) -> (usize, usize, usize) {
        let sybils: u64 = self
            .adversaries
            .iter()
            .map(|a| match a {
                Adversary::Sybil { identities, .. } => u64::from(*identities),
                _ => 0,
            })
            .sum();
        let n = u64::from(self.nodes).saturating_add(sybils) as usize;
        let honest_workers = ((f64::from(self.nodes) * self.workers.share).round() as usize).max(1);
        let relays = (self.gossip.relays as usize).max(crate::world::BOOTSTRAP);
        (n, honest_workers.saturating_add(sybils as usize), relays)
    }

    /// Range checks: a scenario that passes them builds and runs.
    pub fn check(&self) -> Result<(), ScenarioError> {
        let bad = |m: String| Err(ScenarioError::Invalid(m));
        if self.nodes < 2 {
            return bad("nodes must be at least 2".into());
        }
        let (n, workers, relays) = self.layout();
        if workers.saturating_add(relays) >= n {
            return bad(format!(
                "the scenario leaves no clients: {workers} workers and {relays} relays \
                 (gossip.relays, at least {}) of {n} nodes; raise nodes or lower \
                 gossip.relays / workers.share",
                crate::world::BOOTSTRAP
            ));
        }
        if self.duration_secs == 0 || self.sample_secs == 0 {
            return bad("duration_secs and sample_secs must be positive".into());
        }
        let n = &self.network;
        if n.regions.is_empty()
            || n.latency_ms.len() != n.regions.len()
            || n.latency_ms.iter().any(|r| r.len() != n.regions.len())
        {
            return bad("network.latency_ms must be a square matrix, one row per region".into());
        }
        if n.latency_ms
            .iter()
            .flatten()
            .any(|l| !(l.is_finite() && *l >= 0.0))
        {
            return bad("network.latency_ms: latencies must be non-negative".into());
        }
        for (what, v) in [
            ("network.loss", n.loss),
            ("network.nat_share", n.nat_share),
            ("workers.share", self.workers.share),
            ("clients.diurnal_amplitude", self.clients.diurnal_amplitude),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return bad(format!("{what} must be in [0, 1]"));
            }
        }
        if !(n.bandwidth_mbps > 0.0 && n.jitter >= 0.0) {
            return bad("network.bandwidth_mbps must be positive, jitter non-negative".into());
        }
        if self.dht.k == 0 || self.dht.alpha == 0 {
            return bad("dht.k and dht.alpha must be positive".into());
        }
        let g = &self.gossip;
        if !(1 <= g.mesh_low && g.mesh_low <= g.mesh_degree && g.mesh_degree <= g.mesh_high) {
            return bad("need 1 <= gossip.mesh_low <= mesh_degree <= mesh_high".into());
        }
        if g.heartbeat_ms == 0 || g.advert_interval_secs == 0 || g.advert_ttl_secs == 0 {
            return bad("gossip intervals must be positive".into());
        }
        if self.workers.classes.is_empty() || self.clients.models.is_empty() {
            return bad("need at least one worker class and one model".into());
        }
        for c in &self.workers.classes {
            if c.slots == 0 || c.tokens_per_s <= 0.0 || c.prefill_tokens_per_s <= 0.0 {
                return bad(format!(
                    "worker class {}: slots and speeds must be positive",
                    c.name
                ));
            }
            cocoon_gossip::PriceCore::new(c.price.clone())
                .map_err(|e| ScenarioError::Invalid(format!("worker class {}: {e}", c.name)))?;
        }
        for (what, d) in [
            ("churn.client_session", &self.churn.client_session),
            ("churn.client_offline", &self.churn.client_offline),
            ("churn.worker_session", &self.churn.worker_session),
            ("churn.worker_offline", &self.churn.worker_offline),
            ("clients.prompt_tokens", &self.clients.prompt_tokens),
            ("clients.max_tokens", &self.clients.max_tokens),
            ("clients.completion_share", &self.clients.completion_share),
        ] {
            d.check(what)?;
        }
        if self.clients.max_attempts == 0 {
            return bad("clients.max_attempts must be positive".into());
        }
        for (what, v, max) in [
            (
                "clients.jobs_per_hour",
                self.clients.jobs_per_hour,
                MAX_JOBS_PER_HOUR,
            ),
            (
                "dht.probe_lookups_per_sec",
                self.dht.probe_lookups_per_sec,
                MAX_PROBES_PER_SEC,
            ),
            ("network.processing_ms", n.processing_ms, MAX_HANDLING_MS),
            ("network.advert_cpu_ms", n.advert_cpu_ms, MAX_HANDLING_MS),
        ] {
            if !(v.is_finite() && (0.0..=max).contains(&v)) {
                return bad(format!("{what} must be a number in [0, {max}]"));
            }
        }
        if !(self.clients.peak_hour.is_finite() && (0.0..24.0).contains(&self.clients.peak_hour)) {
            return bad("clients.peak_hour must be in [0, 24)".into());
        }
        if !(self.clients.price_slack.is_finite() && self.clients.price_slack >= 1.0) {
            return bad("clients.price_slack must be a number of at least 1".into());
        }
        if !(n.jitter.is_finite() && n.bandwidth_mbps.is_finite()) {
            return bad("network.jitter and network.bandwidth_mbps must be finite".into());
        }
        if self.workers.price_tick_secs == 0 {
            return bad("workers.price_tick_secs must be positive".into());
        }
        for r in &n.regions {
            if !(r.share.is_finite() && r.share >= 0.0) {
                return bad(format!(
                    "region {}: share must be a non-negative number",
                    r.name
                ));
            }
        }
        if self.payments.deposit == 0 || self.payments.pay_every == 0 {
            return bad("payments.deposit and pay_every must be positive".into());
        }
        for a in &self.adversaries {
            let share_ok = match *a {
                Adversary::NoServe { share } => (0.0..=1.0).contains(&share),
                Adversary::WrongOutput { share, detect } => {
                    (0.0..=1.0).contains(&share) && (0.0..=1.0).contains(&detect)
                }
                Adversary::Overcharge { share, factor } => {
                    (0.0..=1.0).contains(&share) && factor.is_finite() && factor >= 1.0
                }
                Adversary::AdvertSpam {
                    per_sec, forged, ..
                } => per_sec >= 0.0 && (0.0..=1.0).contains(&forged),
                Adversary::Sybil { price_factor, .. } => price_factor > 0.0,
            };
            if !share_ok {
                return bad(format!("adversary {a:?}: shares must be in [0, 1]"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_parse_from_an_empty_file_and_overrides_apply() {
        let s = Scenario::from_toml("").unwrap();
        assert_eq!(s.nodes, 1000);
        let t = s
            .with_overrides(&[
                ("nodes".into(), "5000".into()),
                ("dht.alpha".into(), "5".into()),
                ("name".into(), "x".into()),
            ])
            .unwrap();
        assert_eq!((t.nodes, t.dht.alpha, t.name.as_str()), (5000, 5, "x"));
        assert!(s
            .with_overrides(&[("dht.beta".into(), "1".into())])
            .is_err());
        assert!(s.with_overrides(&[("nodes".into(), "1".into())]).is_err());
    }

    #[test]
    fn unknown_fields_and_bad_ranges_are_refused() {
        assert!(Scenario::from_toml("nodez = 5").is_err());
        assert!(Scenario::from_toml("[network]\nloss = 2.0").is_err());
        assert!(Scenario::from_toml("[gossip]\nmesh_low = 9").is_err());
        let adv = "[[adversaries]]\nkind = \"no_serve\"\nshare = 0.1\n";
        assert_eq!(Scenario::from_toml(adv).unwrap().adversaries.len(), 1);
    }
}
