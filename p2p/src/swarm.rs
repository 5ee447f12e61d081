//! The libp2p shell: one swarm per node, driven by a task, controlled through [`Network`].
//!
//! Transports: QUIC (preferred) and TCP + Noise + yamux as a fallback. Behaviours: identify,
//! ping, Kademlia under our own protocol name [`KAD_PROTOCOL`], optional mDNS, and
//! `libp2p-stream` for the `/cocoon/job/1` and `/cocoon/market/1` streams, and gossipsub for
//! worker adverts on [`ADVERT_TOPIC`]. Kademlia, identify and gossipsub read the clock and
//! RNG themselves, so no market or payment logic lives here: this is a shell, the protocol
//! cores live in their own crates.
//!
//! NAT traversal is libp2p's own: AutoNAT v2 probes, circuit relay v2 (reservations and
//! service), DCUtR hole punching and UPnP mappings. What to make of their results (the DHT
//! mode, relay service, reservations, the addresses to publish) is [`crate::reach`]'s; the
//! driver only feeds it events and carries out its answers. Job streams wait for a direct
//! connection ([`Network::open_job_stream_at`]).
//!
//! Gossip validation is the application's: every advert is handed out through
//! [`Network::take_gossip`] and only forwarded once the node reports it acceptable
//! ([`Network::report_gossip`]); a rejected advert counts against its sender in gossipsub's
//! peer score, so peers that forge or flood are pruned from the mesh and then ignored.
//!
//! Discovery: a worker announces each model it serves as a provider record under
//! [`model_key`]; a client runs `get_providers` for the key, dials each provider while the
//! query still holds its addresses, and falls back to a `get_closest_peers` lookup of the
//! peer id when it needs addresses later.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::Duration;

use futures::StreamExt;
use libp2p::core::transport::ListenerId;
use libp2p::kad::{self, store::MemoryStore, Mode, QueryId, QueryResult, RecordKey};
use libp2p::multiaddr::Protocol;
use libp2p::swarm::dial_opts::DialOpts;
use libp2p::swarm::{
    behaviour::toggle::Toggle, ConnectionId, DialError, NetworkBehaviour, SwarmEvent,
};
use libp2p::{
    autonat, dcutr, gossipsub, identify, identity::Keypair, mdns, noise, ping, relay, tcp, upnp,
    yamux, Multiaddr, PeerId, StreamProtocol, Swarm,
};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot, watch};

use crate::job::JOB_PROTOCOL;
use crate::reach::{self, Reach, Reachability, RelayServe, Source};

/// Kademlia protocol name of the cocoon network (not the IPFS default).
pub const KAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/cocoon/kad/1.0.0");
/// Identify protocol version string.
pub const IDENTIFY_PROTOCOL: &str = "/cocoon/id/1.0.0";
/// The gossipsub topic of worker adverts.
pub const ADVERT_TOPIC: &str = "/cocoon/adverts/1";
/// The stream protocol on which a node hands a newcomer the adverts it knows.
pub const MARKET_PROTOCOL: StreamProtocol = StreamProtocol::new("/cocoon/market/1");
/// Largest gossip message accepted (an advert is at most 8 KiB).
pub const MAX_GOSSIP_BYTES: usize = 16 * 1024;

/// A gossiped message waiting for the application's verdict.
#[derive(Clone, Debug)]
pub struct GossipMessage {
    /// The peer that delivered it (not necessarily its author).
    pub source: PeerId,
    /// Gossipsub's id for it, to report the verdict.
    pub id: gossipsub::MessageId,
    /// The payload.
    pub data: Vec<u8>,
}

/// The application's verdict on a gossiped message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GossipVerdict {
    /// Valid: forward it.
    Accept,
    /// Invalid: drop it and penalise the sender.
    Reject,
    /// Not useful (stale, rate limited): drop it without penalty.
    Ignore,
}

/// The DHT key under which workers announce a model: `sha256("cocoon/model/v1/" || id)`.
pub fn model_key(model_id: &str) -> RecordKey {
    let digest = Sha256::new()
        .chain_update(b"cocoon/model/v1/")
        .chain_update(model_id.as_bytes())
        .finalize();
    RecordKey::new(&digest)
}

/// Whether this node answers DHT queries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DhtMode {
    /// Always stores records and answers queries (a network's first node, a node whose
    /// operator knows it is reachable).
    Server,
    /// A server once a peer confirms it can be dialled directly (AutoNAT v2, a UPnP mapping or
    /// `--external-addr`), a client until then and whenever it is reachable only through a
    /// relay ([`crate::reach`]). The default for `cocoon node`.
    Auto,
    /// Only asks (light clients, which may be short-lived or unreachable).
    Client,
}

/// The limits of the relay this node runs for others ([`NetworkConfig::relay_server`]).
/// The defaults are libp2p's, a relay for strangers that carries hole-punching handshakes but
/// no jobs; an operator relaying its own workers raises the circuit limits, and clients then
/// run jobs over it when hole punching fails ([`NetworkConfig::relayed_job_min_bytes`]).
#[derive(Clone, Debug)]
pub struct RelayLimits {
    /// Reservations held at once. Default: 128.
    pub max_reservations: usize,
    /// Reservations per peer. Default: 4.
    pub max_reservations_per_peer: usize,
    /// How long a reservation lasts before renewal. Default: 1 h.
    pub reservation_duration: Duration,
    /// Circuits open at once. Default: 16.
    pub max_circuits: usize,
    /// Circuits per peer. Default: 4.
    pub max_circuits_per_peer: usize,
    /// Lifetime of one circuit. Default: 2 min.
    pub max_circuit_duration: Duration,
    /// Bytes one circuit may carry (each way). Default: 128 KiB.
    pub max_circuit_bytes: u64,
}

impl Default for RelayLimits {
    fn default() -> Self {
        Self {
            max_reservations: 128,
            max_reservations_per_peer: 4,
            reservation_duration: Duration::from_secs(60 * 60),
            max_circuits: 16,
            max_circuits_per_peer: 4,
            max_circuit_duration: Duration::from_secs(2 * 60),
            max_circuit_bytes: 1 << 17,
        }
    }
}

impl RelayLimits {
    fn config(&self) -> relay::Config {
        relay::Config {
            max_reservations: self.max_reservations,
            max_reservations_per_peer: self.max_reservations_per_peer,
            reservation_duration: self.reservation_duration,
            max_circuits: self.max_circuits,
            max_circuits_per_peer: self.max_circuits_per_peer,
            max_circuit_duration: self.max_circuit_duration,
            max_circuit_bytes: self.max_circuit_bytes,
            ..Default::default()
        }
    }
}

/// Network configuration.
#[derive(Clone, Debug)]
pub struct NetworkConfig {
    /// Addresses to listen on. Default: QUIC and TCP on all IPv4 interfaces, ports chosen by
    /// the OS. A light client may listen on nothing.
    pub listen: Vec<Multiaddr>,
    /// Peers to join the network through; empty = start a new network.
    pub bootstrap: Vec<Multiaddr>,
    /// Addresses this node tells others to reach it at (e.g. a public address behind a
    /// port forward). Default: none; peers then use the addresses identify reports.
    pub external_addresses: Vec<Multiaddr>,
    /// Find peers on the local network with mDNS. Default: true.
    pub mdns: bool,
    /// DHT mode. Default: server.
    pub dht_mode: DhtMode,
    /// Gossiped adverts queued for validation before new ones are ignored. Default: 256.
    pub gossip_queue: usize,
    /// Gossipsub heartbeat (mesh maintenance, gossip emission). Default: 1 s.
    pub gossip_heartbeat: Duration,
    /// Timeout of one DHT query. Default: 30 s.
    pub query_timeout: Duration,
    /// How long others keep our provider records. Default: 30 min.
    pub provider_ttl: Duration,
    /// How often provider records are re-published. Default: 10 min (a third of the TTL).
    pub reprovide_interval: Duration,
    /// Idle connections are closed after this. Default: 120 s.
    pub idle_connection_timeout: Duration,
    /// Capacity of the command queue into the swarm task. Default: 64.
    pub command_queue: usize,
    /// Connections to one peer at most (libp2p's connection limits). Default: 4 (QUIC and
    /// TCP both ways).
    pub max_connections_per_peer: u32,
    /// Established connections at most, in total. Default: 1,024.
    pub max_connections: u32,
    /// Incoming connections still handshaking at most. Default: 128.
    pub max_pending_incoming: u32,
    /// Peers the node keeps connections to: with fewer, it dials peers from its routing
    /// table (and, with none, its bootstrap peers again), so losing the bootstrap node or any
    /// other peer leaves it in the network and in the advert mesh. Default: 4.
    pub min_peers: usize,
    /// How often the node checks [`Self::min_peers`]. Default: 10 s.
    pub maintain_interval: Duration,
    /// Whether this node offers relay reservations: [`RelayServe::Auto`] (the default) once a
    /// peer confirms a public address; never for a light client.
    pub relay_server: RelayServe,
    /// The limits of that relay. Default: [`RelayLimits::default`].
    pub relay_limits: RelayLimits,
    /// Relay reservations a full node keeps while strangers cannot dial it directly. Its
    /// relayed addresses go into its adverts and provider records. Default: 2.
    pub relays: usize,
    /// Ask the home router for a port mapping (UPnP IGD). Default: true (full nodes only).
    pub upnp: bool,
    /// How long a job stream waits for hole punching (DCUtR) to turn a relayed connection into
    /// a direct one. Default: 10 s.
    pub hole_punch_timeout: Duration,
    /// A job runs over a relayed connection (when hole punching fails) only if the relay's
    /// circuit may carry at least this many bytes. Default: 4 MiB (a relay with libp2p's
    /// default 128 KiB carries no jobs).
    pub relayed_job_min_bytes: u64,
    /// ... and stay open at least this long. Default: 10 min.
    pub relayed_job_min_duration: Duration,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        Self {
            listen: vec![
                "/ip4/0.0.0.0/udp/0/quic-v1"
                    .parse()
                    .expect("valid multiaddr"),
                "/ip4/0.0.0.0/tcp/0".parse().expect("valid multiaddr"),
            ],
            bootstrap: Vec::new(),
            external_addresses: Vec::new(),
            mdns: true,
            dht_mode: DhtMode::Server,
            gossip_queue: 256,
            gossip_heartbeat: Duration::from_secs(1),
            query_timeout: Duration::from_secs(30),
            provider_ttl: Duration::from_secs(30 * 60),
            reprovide_interval: Duration::from_secs(10 * 60),
            idle_connection_timeout: Duration::from_secs(120),
            command_queue: 64,
            max_connections_per_peer: 4,
            max_connections: 1024,
            max_pending_incoming: 128,
            min_peers: 4,
            maintain_interval: Duration::from_secs(10),
            relay_server: RelayServe::Auto,
            relay_limits: RelayLimits::default(),
            relays: 2,
            upnp: true,
            hole_punch_timeout: Duration::from_secs(10),
            relayed_job_min_bytes: 4 << 20,
            relayed_job_min_duration: Duration::from_secs(10 * 60),
        }
    }
}

impl NetworkConfig {
    /// Checks the settings that would make the node misbehave rather than fail.
    pub fn validate(&self) -> Result<(), NetworkError> {
        let bad = |what: &str| {
            Err(NetworkError::Setup(format!(
                "invalid network config: {what}"
            )))
        };
        if self.command_queue == 0 || self.gossip_queue == 0 {
            return bad("queues must hold at least one entry");
        }
        if self.maintain_interval.is_zero() || self.reprovide_interval.is_zero() {
            return bad("intervals must be positive");
        }
        if self.hole_punch_timeout.is_zero() {
            return bad("hole_punch_timeout must be positive");
        }
        if self.relay_limits.max_circuit_duration.as_secs() > u64::from(u32::MAX)
            || self.relay_limits.reservation_duration.as_secs() > u64::from(u32::MAX)
        {
            return bad("relay durations must fit 32-bit seconds");
        }
        Ok(())
    }
}

/// Network errors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetworkError {
    /// The swarm could not be built (transport or mDNS setup).
    #[error("cannot start the network: {0}")]
    Setup(String),
    /// A listen address was refused.
    #[error("cannot listen on {addr}: {reason}")]
    Listen {
        /// The address.
        addr: Multiaddr,
        /// Why.
        reason: String,
    },
    /// The swarm task has stopped.
    #[error("the network task has stopped")]
    Stopped,
    /// The DHT query failed.
    #[error("DHT query failed: {0}")]
    Query(String),
    /// No address is known for the peer, even after a DHT lookup.
    #[error("no address known for peer {0}")]
    NoAddresses(PeerId),
    /// Dialling the peer failed.
    #[error("cannot connect to {peer}: {reason}")]
    Dial {
        /// The peer.
        peer: PeerId,
        /// Why.
        reason: String,
    },
    /// Opening a job stream failed.
    #[error("cannot open a job stream to {peer}: {reason}")]
    OpenStream {
        /// The peer.
        peer: PeerId,
        /// Why.
        reason: String,
    },
    /// The peer is reachable only through a relay, hole punching failed, and the relay's
    /// circuit limits leave no room for a job.
    #[error("cannot reach {peer} directly: {reason}")]
    Unreachable {
        /// The peer.
        peer: PeerId,
        /// Why, naming the relay and the hole-punching failure.
        reason: String,
    },
    /// An operation took too long.
    #[error("{0} timed out after {1:?}")]
    Timeout(&'static str, Duration),
    /// Incoming streams (or gossip) are already being taken by another task.
    #[error("already accepted by another task")]
    AlreadyAccepting,
    /// Publishing failed (typically: no peer subscribes to the topic yet).
    #[error("cannot publish: {0}")]
    Publish(String),
}

/// Whether `addr` may be dialled for `peer`: it names no other peer as its destination (a
/// relayed address names its relay before `/p2p-circuit`, and may name `peer` after it).
fn names_peer(addr: &Multiaddr, peer: &PeerId) -> bool {
    let mut after_circuit = !reach::is_relayed(addr);
    addr.iter().all(|p| match p {
        Protocol::P2pCircuit => {
            after_circuit = true;
            true
        }
        Protocol::P2p(id) => !after_circuit || id == *peer,
        _ => true,
    })
}

/// Whether a node that identified itself on connection `id` restarted: `id` is one of its
/// inbound connections (oldest first, with their remote addresses), not the oldest, and comes
/// from an address it lists as its own (`listen`: a node dials from its listening socket),
/// so an older one is left from before ([`Driver::on_node_identified`]). A live node's AutoNAT
/// dial-back comes from a fresh port, and an identify push on its first connection is on the
/// oldest: neither is a restart.
fn restarted(
    inbound: &[(ConnectionId, Multiaddr)],
    id: ConnectionId,
    listen: &[Multiaddr],
) -> bool {
    let bare = |a: &Multiaddr| -> Multiaddr {
        a.iter()
            .filter(|p| !matches!(p, Protocol::P2p(_)))
            .collect()
    };
    let listen: HashSet<Multiaddr> = listen.iter().map(bare).collect();
    match inbound.iter().position(|(c, _)| *c == id) {
        Some(at) if at > 0 => listen.contains(&bare(&inbound[at].1)),
        _ => false,
    }
}

/// What one measured DHT lookup did ([`Network::probe_lookup`]): the figures the
/// simulator's Kademlia model is calibrated against.
#[derive(Clone, Debug)]
pub struct LookupProbe {
    /// The closest peers found, closest first.
    pub closest: Vec<PeerId>,
    /// Requests sent (libp2p's query statistics).
    pub requests: u32,
    /// Requests answered.
    pub successes: u32,
    /// Requests that failed.
    pub failures: u32,
    /// Start to result.
    pub duration: Duration,
    /// Peers in our routing table when the lookup started.
    pub known: usize,
    /// Hops to the closest peer found: 1 when it was in our routing table when the lookup
    /// started, else 2. libp2p does not report the path, so 2 stands for "at least 2" (in a
    /// network of a few dozen nodes, where every answer carries k = 20 contacts, it is 2).
    pub hops: u8,
}

/// What the node currently sees of the network.
#[derive(Clone, Debug, Default)]
pub struct NetworkState {
    /// Addresses we listen on (with the `/p2p/<id>` suffix).
    pub listen_addrs: Vec<Multiaddr>,
    /// Peers with an open connection.
    pub connected_peers: usize,
    /// Peers in the Kademlia routing table.
    pub routing_peers: usize,
    /// How others can reach this node.
    pub reachability: Reachability,
    /// The addresses to publish in adverts ([`Reach::shareable`]), with `/p2p/<id>`.
    pub shareable: Vec<Multiaddr>,
    /// Whether Kademlia answers queries now.
    pub dht_server: bool,
}

#[derive(NetworkBehaviour)]
struct Behaviour {
    limits: libp2p::connection_limits::Behaviour,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    kad: kad::Behaviour<MemoryStore>,
    mdns: Toggle<mdns::tokio::Behaviour>,
    stream: libp2p_stream::Behaviour,
    gossipsub: gossipsub::Behaviour,
    relay_client: relay::client::Behaviour,
    relay: Toggle<relay::Behaviour>,
    autonat_client: Toggle<autonat::v2::client::Behaviour>,
    autonat_server: Toggle<autonat::v2::server::Behaviour>,
    dcutr: dcutr::Behaviour,
    upnp: Toggle<upnp::tokio::Behaviour>,
}

enum Command {
    Publish(Vec<u8>, oneshot::Sender<Result<(), NetworkError>>),
    Verdict(GossipMessage, GossipVerdict),
    Provide(String, oneshot::Sender<()>),
    FindProviders(String, oneshot::Sender<Result<Vec<PeerId>, NetworkError>>),
    /// Connect to a peer, trying these addresses (its advert's) besides the known ones.
    Connect(
        PeerId,
        Vec<Multiaddr>,
        oneshot::Sender<Result<(), NetworkError>>,
    ),
    /// Close every connection to a peer (one found dead: the next use dials afresh).
    Disconnect(PeerId),
    /// The remote addresses of our connections to a peer.
    Paths(PeerId, oneshot::Sender<Vec<Multiaddr>>),
    /// Answer once a direct (not relayed) connection to the peer exists, or hole punching
    /// failed (with why).
    Direct(PeerId, oneshot::Sender<Result<(), String>>),
    /// Whether a job may run over the peer's relayed connection, given why it is not direct.
    RelayVerdict(PeerId, String, oneshot::Sender<Result<(), NetworkError>>),
    Lookup(Vec<u8>, oneshot::Sender<Result<LookupProbe, NetworkError>>),
    Shutdown(oneshot::Sender<()>),
}

/// Handle to a running node's network; cheap to clone.
#[derive(Clone)]
pub struct Network {
    peer_id: PeerId,
    hole_punch_timeout: Duration,
    commands: mpsc::Sender<Command>,
    control: libp2p_stream::Control,
    state: watch::Receiver<NetworkState>,
    gossip: std::sync::Arc<std::sync::Mutex<Option<mpsc::Receiver<GossipMessage>>>>,
}

/// An error's text with its causes, `outer: inner: ...`. libp2p's transport errors print
/// nothing of their own for an I/O failure (`TransportError::Other`), so the cause (e.g.
/// "Address already in use") is only in the source chain.
pub(crate) fn causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(e);
    while let Some(e) = next {
        let text = e.to_string();
        // Some errors repeat their source in their own text.
        if !text.is_empty() && !parts.last().is_some_and(|last| last.contains(&text)) {
            parts.push(text);
        }
        next = e.source();
    }
    if parts.is_empty() {
        "unknown error".into()
    } else {
        parts.join(": ")
    }
}

impl Network {
    /// Builds the swarm, starts listening and bootstrapping, and spawns the driver task on the
    /// current tokio runtime.
    pub fn start(keypair: Keypair, config: NetworkConfig) -> Result<Network, NetworkError> {
        Self::start_with_metrics(keypair, config, None)
    }

    /// [`Self::start`], recording the swarm's and its protocols' events into rust-libp2p's
    /// own metric families (`libp2p_*`).
    pub fn start_with_metrics(
        keypair: Keypair,
        config: NetworkConfig,
        metrics: Option<libp2p::metrics::Metrics>,
    ) -> Result<Network, NetworkError> {
        config.validate()?;
        let peer_id = keypair.public().to_peer_id();
        let mut swarm = build_swarm(keypair, &config)?;
        for addr in &config.listen {
            swarm
                .listen_on(addr.clone())
                .map_err(|e| NetworkError::Listen {
                    addr: addr.clone(),
                    reason: causes(&e),
                })?;
        }
        let mut reach = Reach::new(config.dht_mode, config.relay_server, config.relays);
        for addr in &config.external_addresses {
            reach.confirmed(addr.clone(), Source::Configured);
            swarm.add_external_address(addr.clone());
        }
        for addr in &config.bootstrap {
            match addr.iter().last() {
                Some(Protocol::P2p(peer)) => {
                    swarm.behaviour_mut().kad.add_address(&peer, addr.clone());
                    let opts = DialOpts::peer_id(peer)
                        .addresses(vec![addr.clone()])
                        .build();
                    if let Err(e) = swarm.dial(opts) {
                        tracing::warn!(%addr, "cannot dial bootstrap peer: {e}");
                    }
                }
                _ => {
                    // Without a peer id we learn who answers through identify.
                    if let Err(e) = swarm.dial(addr.clone()) {
                        tracing::warn!(%addr, "cannot dial bootstrap address: {e}");
                    }
                }
            }
        }
        let control = swarm.behaviour().stream.new_control();
        let (commands, rx) = mpsc::channel(config.command_queue);
        let (gossip_tx, gossip_rx) = mpsc::channel(config.gossip_queue);
        let (state_tx, state) = watch::channel(NetworkState::default());
        let driver = Driver {
            swarm,
            config,
            provided: BTreeSet::new(),
            providers: HashMap::new(),
            lookups: HashMap::new(),
            probes: HashMap::new(),
            connect_waiters: HashMap::new(),
            connect_dials: HashMap::new(),
            connect_hints: HashMap::new(),
            inbound: HashMap::new(),
            reach,
            remotes: HashMap::new(),
            relay_candidates: HashMap::new(),
            reservations: HashMap::new(),
            direct_waiters: HashMap::new(),
            circuit_limits: HashMap::new(),
            dht_server: None,
            relay_serving: None,
            reported: None,
            metrics,
            state: state_tx,
            announced_with_peers: false,
            gossip: gossip_tx,
        };
        let hole_punch_timeout = driver.config.hole_punch_timeout;
        tokio::spawn(driver.run(rx));
        Ok(Network {
            peer_id,
            hole_punch_timeout,
            commands,
            control,
            state,
            gossip: std::sync::Arc::new(std::sync::Mutex::new(Some(gossip_rx))),
        })
    }

    /// Our peer id.
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// The current view of the network.
    pub fn state(&self) -> NetworkState {
        self.state.borrow().clone()
    }

    /// A receiver of the network state, marked changed on every update.
    pub fn subscribe(&self) -> watch::Receiver<NetworkState> {
        self.state.clone()
    }

    /// Waits until `pred` holds for the network state, or `timeout` passes.
    pub async fn wait_for(
        &self,
        what: &'static str,
        timeout: Duration,
        pred: impl Fn(&NetworkState) -> bool,
    ) -> Result<NetworkState, NetworkError> {
        let mut state = self.state.clone();
        let fut = async {
            loop {
                if pred(&state.borrow()) {
                    return Ok(state.borrow().clone());
                }
                state.changed().await.map_err(|_| NetworkError::Stopped)?;
            }
        };
        tokio::time::timeout(timeout, fut)
            .await
            .map_err(|_| NetworkError::Timeout(what, timeout))?
    }

    async fn command<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, NetworkError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(make(tx))
            .await
            .map_err(|_| NetworkError::Stopped)?;
        rx.await.map_err(|_| NetworkError::Stopped)
    }

    /// Announces (and keeps re-announcing) that this node serves `model_id`.
    pub async fn provide(&self, model_id: &str) -> Result<(), NetworkError> {
        self.command(|tx| Command::Provide(model_id.to_string(), tx))
            .await
    }

    /// Finds the peers that announced `model_id` in the DHT.
    pub async fn find_providers(&self, model_id: &str) -> Result<Vec<PeerId>, NetworkError> {
        self.command(|tx| Command::FindProviders(model_id.to_string(), tx))
            .await?
    }

    /// Connects to `peer`, looking up its addresses in the DHT if needed.
    pub async fn connect(&self, peer: PeerId) -> Result<(), NetworkError> {
        self.connect_at(peer, Vec::new()).await
    }

    /// Connects to `peer`, dialling `addrs` (the addresses its newest advert names) together
    /// with the ones we know and, in parallel, looking it up in the DHT: a peer that moved is
    /// reached at its new address at once.
    pub async fn connect_at(
        &self,
        peer: PeerId,
        addrs: Vec<Multiaddr>,
    ) -> Result<(), NetworkError> {
        self.command(|tx| Command::Connect(peer, addrs, tx)).await?
    }

    /// Closes every connection to `peer`: one that failed us is dead or stuck, and the next
    /// use dials afresh (at the peer's current addresses) instead of waiting for it to time
    /// out.
    pub async fn disconnect(&self, peer: PeerId) -> Result<(), NetworkError> {
        self.commands
            .send(Command::Disconnect(peer))
            .await
            .map_err(|_| NetworkError::Stopped)
    }

    /// Opens a `/cocoon/job/1` stream to `peer` (connecting first if needed).
    pub async fn open_job_stream(
        &self,
        peer: PeerId,
        timeout: Duration,
    ) -> Result<libp2p::Stream, NetworkError> {
        self.open_stream(peer, JOB_PROTOCOL, timeout).await
    }

    /// [`Self::open_job_stream`], connecting through `addrs` too ([`Self::connect_at`]).
    ///
    /// A job runs on a direct connection: when the peer is reachable only through a relay,
    /// this waits (up to [`NetworkConfig::hole_punch_timeout`]) for hole punching to open a
    /// direct one, and closes the relayed one. When that fails, the job runs over the relay
    /// only if the relay's circuit limits allow a job; otherwise the error
    /// ([`NetworkError::Unreachable`]) names the relay and the hole-punching failure.
    pub async fn open_job_stream_at(
        &self,
        peer: PeerId,
        addrs: Vec<Multiaddr>,
        timeout: Duration,
    ) -> Result<libp2p::Stream, NetworkError> {
        let fut = async {
            self.connect_at(peer, addrs).await?;
            self.direct(peer).await?;
            self.control
                .clone()
                .open_stream(peer, JOB_PROTOCOL)
                .await
                .map_err(|e| NetworkError::OpenStream {
                    peer,
                    reason: e.to_string(),
                })
        };
        tokio::time::timeout(timeout, fut)
            .await
            .map_err(|_| NetworkError::Timeout("opening a job stream", timeout))?
    }

    /// The remote addresses of our open connections to `peer` (a relayed one contains
    /// `/p2p-circuit`): how its streams travel.
    pub async fn paths(&self, peer: PeerId) -> Result<Vec<Multiaddr>, NetworkError> {
        self.command(|tx| Command::Paths(peer, tx)).await
    }

    /// Waits for a direct connection to a connected `peer` (see [`Self::open_job_stream_at`]);
    /// `Ok` also when the job may run over the relay.
    async fn direct(&self, peer: PeerId) -> Result<(), NetworkError> {
        let wait = self.hole_punch_timeout;
        let why =
            match tokio::time::timeout(wait, self.command(|tx| Command::Direct(peer, tx))).await {
                Ok(Ok(Ok(()))) => return Ok(()),
                Ok(Ok(Err(why))) => why,
                Ok(Err(e)) => return Err(e),
                Err(_) => format!("hole punching did not succeed within {wait:?}"),
            };
        self.command(|tx| Command::RelayVerdict(peer, why, tx))
            .await?
    }

    /// Starts accepting inbound job streams; only one task may do so.
    pub fn accept_jobs(&self) -> Result<libp2p_stream::IncomingStreams, NetworkError> {
        self.accept(JOB_PROTOCOL)
    }

    /// Starts accepting inbound streams of `protocol`; only one task may do so per protocol.
    pub fn accept(
        &self,
        protocol: StreamProtocol,
    ) -> Result<libp2p_stream::IncomingStreams, NetworkError> {
        self.control
            .clone()
            .accept(protocol)
            .map_err(|_| NetworkError::AlreadyAccepting)
    }

    /// Opens a `protocol` stream to a connected (or dialable) peer.
    pub async fn open_stream(
        &self,
        peer: PeerId,
        protocol: StreamProtocol,
        timeout: Duration,
    ) -> Result<libp2p::Stream, NetworkError> {
        self.open_stream_at(peer, protocol, Vec::new(), timeout)
            .await
    }

    /// [`Self::open_stream`], connecting through `addrs` too ([`Self::connect_at`]).
    pub async fn open_stream_at(
        &self,
        peer: PeerId,
        protocol: StreamProtocol,
        addrs: Vec<Multiaddr>,
        timeout: Duration,
    ) -> Result<libp2p::Stream, NetworkError> {
        let fut = async {
            self.connect_at(peer, addrs).await?;
            self.control
                .clone()
                .open_stream(peer, protocol)
                .await
                .map_err(|e| NetworkError::OpenStream {
                    peer,
                    reason: e.to_string(),
                })
        };
        tokio::time::timeout(timeout, fut)
            .await
            .map_err(|_| NetworkError::Timeout("opening a stream", timeout))?
    }

    /// Publishes `data` on the advert topic. Fails with [`NetworkError::Publish`] when no
    /// peer subscribes yet; adverts are re-published periodically, so callers may ignore it.
    pub async fn publish(&self, data: Vec<u8>) -> Result<(), NetworkError> {
        self.command(|tx| Command::Publish(data, tx)).await?
    }

    /// Takes the stream of gossiped adverts awaiting validation; only one task may. Each must
    /// be answered with [`Network::report_gossip`] (unanswered ones are dropped by gossipsub
    /// after a while). When nobody takes it, or it is full, messages are ignored.
    pub fn take_gossip(&self) -> Result<mpsc::Receiver<GossipMessage>, NetworkError> {
        self.gossip
            .lock()
            .expect("gossip receiver lock")
            .take()
            .ok_or(NetworkError::AlreadyAccepting)
    }

    /// Reports the verdict on a gossiped message: forward, reject (penalise) or ignore.
    pub async fn report_gossip(
        &self,
        message: GossipMessage,
        verdict: GossipVerdict,
    ) -> Result<(), NetworkError> {
        self.commands
            .send(Command::Verdict(message, verdict))
            .await
            .map_err(|_| NetworkError::Stopped)
    }

    /// Runs one Kademlia lookup of the `key`'s closest peers and reports what it cost: a
    /// measurement probe (`cocoon`'s calibration bench), not needed to run a node.
    pub async fn probe_lookup(&self, key: Vec<u8>) -> Result<LookupProbe, NetworkError> {
        self.command(|tx| Command::Lookup(key, tx)).await?
    }

    /// Stops the swarm task and closes all connections.
    pub async fn shutdown(&self) {
        let _ = self.command(Command::Shutdown).await;
    }
}

fn build_swarm(keypair: Keypair, config: &NetworkConfig) -> Result<Swarm<Behaviour>, NetworkError> {
    let setup = |e: &dyn std::fmt::Display| NetworkError::Setup(e.to_string());
    let mdns_enabled = config.mdns;
    let mut kad_config = kad::Config::new(KAD_PROTOCOL);
    kad_config
        .set_query_timeout(config.query_timeout)
        .set_provider_record_ttl(Some(config.provider_ttl))
        .set_provider_publication_interval(Some(config.reprovide_interval));
    let mode = config.dht_mode;
    let gossip_config = gossipsub::ConfigBuilder::default()
        .heartbeat_interval(config.gossip_heartbeat)
        .validation_mode(gossipsub::ValidationMode::Strict)
        .validate_messages()
        .max_transmit_size(MAX_GOSSIP_BYTES)
        // Content-addressed ids: the same advert relayed twice is one message.
        .message_id_fn(|m: &gossipsub::Message| {
            gossipsub::MessageId::from(&Sha256::digest(&m.data)[..20])
        })
        .build()
        .map_err(|e| setup(&e))?;
    let full_node = mode != DhtMode::Client;
    let swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .map_err(|e| setup(&e))?
        .with_quic()
        .with_relay_client(noise::Config::new, yamux::Config::default)
        .map_err(|e| setup(&e))?
        .with_behaviour(|key, relay_client| {
            let peer_id = key.public().to_peer_id();
            let mut gossipsub = gossipsub::Behaviour::new(
                gossipsub::MessageAuthenticity::Signed(key.clone()),
                gossip_config,
            )?;
            gossipsub.with_peer_score(advert_score_params(), gossip_thresholds())?;
            gossipsub.subscribe(&gossipsub::IdentTopic::new(ADVERT_TOPIC))?;
            let mut kad =
                kad::Behaviour::with_config(peer_id, MemoryStore::new(peer_id), kad_config);
            // Never libp2p's automatic mode: it counts relayed addresses (see crate::reach).
            kad.set_mode(Some(match mode {
                DhtMode::Server => Mode::Server,
                DhtMode::Auto if !config.external_addresses.is_empty() => Mode::Server,
                DhtMode::Auto | DhtMode::Client => Mode::Client,
            }));
            let mdns = if mdns_enabled {
                Some(mdns::tokio::Behaviour::new(
                    mdns::Config::default(),
                    peer_id,
                )?)
            } else {
                None
            };
            // Full nodes relay (while public, see Driver::apply_reach) and answer AutoNAT
            // probes; light clients only use others'.
            let relay = (full_node && config.relay_server != RelayServe::Off).then(|| {
                let mut relay = relay::Behaviour::new(peer_id, config.relay_limits.config());
                relay.set_status(Some(relay::Status::Disable));
                relay
            });
            Ok(Behaviour {
                limits: libp2p::connection_limits::Behaviour::new(
                    libp2p::connection_limits::ConnectionLimits::default()
                        .with_max_established_per_peer(Some(config.max_connections_per_peer))
                        .with_max_established(Some(config.max_connections))
                        .with_max_pending_incoming(Some(config.max_pending_incoming)),
                ),
                identify: identify::Behaviour::new(identify::Config::new(
                    IDENTIFY_PROTOCOL.into(),
                    key.public(),
                )),
                ping: ping::Behaviour::new(ping::Config::new()),
                kad,
                mdns: Toggle::from(mdns),
                stream: libp2p_stream::Behaviour::new(),
                gossipsub,
                relay_client,
                relay: Toggle::from(relay),
                // Full nodes only: a light client's reachability decides nothing, and a
                // dial-back would be one more connection its job streams may land on just
                // as it closes.
                autonat_client: Toggle::from(
                    full_node.then(autonat::v2::client::Behaviour::default),
                ),
                autonat_server: Toggle::from(
                    full_node.then(autonat::v2::server::Behaviour::default),
                ),
                dcutr: dcutr::Behaviour::new(peer_id),
                upnp: Toggle::from(
                    (full_node && config.upnp).then(upnp::tokio::Behaviour::default),
                ),
            })
        })
        .map_err(|e| setup(&e))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(config.idle_connection_timeout))
        .build();
    Ok(swarm)
}

/// Peer scoring for the advert topic: each invalid advert costs its sender heavily, so a
/// forger drops below the gossip threshold after a couple and below graylist soon after.
fn advert_score_params() -> gossipsub::PeerScoreParams {
    let mut params = gossipsub::PeerScoreParams::default();
    let topic = gossipsub::TopicScoreParams {
        topic_weight: 1.0,
        invalid_message_deliveries_weight: -20.0,
        invalid_message_deliveries_decay: 0.9,
        // No delivery quotas: a quiet mesh is normal for adverts.
        mesh_message_deliveries_weight: 0.0,
        mesh_failure_penalty_weight: 0.0,
        first_message_deliveries_weight: 1.0,
        ..Default::default()
    };
    params
        .topics
        .insert(gossipsub::IdentTopic::new(ADVERT_TOPIC).hash(), topic);
    // Loopback networks put every peer on one IP: do not punish that.
    params.ip_colocation_factor_weight = 0.0;
    params
}

fn gossip_thresholds() -> gossipsub::PeerScoreThresholds {
    gossipsub::PeerScoreThresholds {
        gossip_threshold: -10.0,
        publish_threshold: -50.0,
        graylist_threshold: -80.0,
        ..Default::default()
    }
}

struct ProviderQuery {
    found: HashSet<PeerId>,
    reply: oneshot::Sender<Result<Vec<PeerId>, NetworkError>>,
}

/// A measured lookup in flight.
struct Probe {
    key: Vec<u8>,
    known: HashSet<PeerId>,
    reply: oneshot::Sender<Result<LookupProbe, NetworkError>>,
}

fn probe_report(
    key: Vec<u8>,
    known: &HashSet<PeerId>,
    peers: Vec<kad::PeerInfo>,
    stats: &kad::QueryStats,
) -> LookupProbe {
    let target = kad::KBucketKey::new(key);
    let mut closest: Vec<PeerId> = peers.into_iter().map(|p| p.peer_id).collect();
    closest.sort_by_key(|p| kad::KBucketKey::from(*p).distance(&target));
    let hops = match closest.first() {
        Some(p) if known.contains(p) => 1,
        Some(_) => 2,
        None => 0,
    };
    LookupProbe {
        closest,
        requests: stats.num_requests(),
        successes: stats.num_successes(),
        failures: stats.num_failures(),
        duration: stats.duration().unwrap_or_default(),
        known: known.len(),
        hops,
    }
}

struct Driver {
    swarm: Swarm<Behaviour>,
    config: NetworkConfig,
    provided: BTreeSet<String>,
    providers: HashMap<QueryId, ProviderQuery>,
    /// Peer-address lookups started for `Connect`, by query.
    lookups: HashMap<QueryId, PeerId>,
    /// Measured lookups: the key, who was in the routing table at the start, the reply.
    probes: HashMap<QueryId, Probe>,
    connect_waiters: HashMap<PeerId, Vec<oneshot::Sender<Result<(), NetworkError>>>>,
    /// Dials started for a `Connect` and not yet settled: a lookup that finds no address
    /// leaves the answer to them.
    connect_dials: HashMap<ConnectionId, PeerId>,
    /// Addresses given with a `Connect` not yet dialled (another dial was under way).
    connect_hints: HashMap<PeerId, Vec<Multiaddr>>,
    /// Inbound connections per peer, oldest first: a node's second one means it restarted
    /// or lost its path ([`Driver::on_node_identified`]).
    inbound: HashMap<PeerId, Vec<ConnectionId>>,
    /// What is confirmed about our addresses, and what follows from it.
    reach: Reach,
    /// Every open connection: its peer and remote address.
    remotes: HashMap<ConnectionId, (PeerId, Multiaddr)>,
    /// Peers that offer relay reservations, with their public addresses.
    relay_candidates: HashMap<PeerId, Vec<Multiaddr>>,
    /// Our reservations (made or under way): the relay and its listener.
    reservations: HashMap<PeerId, ListenerId>,
    /// Job streams waiting for a direct connection to a peer.
    direct_waiters: HashMap<PeerId, Vec<oneshot::Sender<Result<(), String>>>>,
    /// The circuit limits each relay gave our last circuit through it: (duration, bytes).
    circuit_limits: HashMap<PeerId, (Option<Duration>, Option<u64>)>,
    /// The Kademlia mode and relay status last set, and the reachability last reported.
    dht_server: Option<bool>,
    relay_serving: Option<bool>,
    reported: Option<Reachability>,
    /// rust-libp2p's metric families, when the node exports metrics.
    metrics: Option<libp2p::metrics::Metrics>,
    state: watch::Sender<NetworkState>,
    /// Whether an announcement went out while we knew at least one peer.
    announced_with_peers: bool,
    gossip: mpsc::Sender<GossipMessage>,
}

impl Driver {
    async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        self.apply_reach();
        let mut reprovide = tokio::time::interval(self.config.reprovide_interval);
        reprovide.tick().await;
        let mut maintain = tokio::time::interval(self.config.maintain_interval);
        maintain.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        maintain.tick().await;
        loop {
            tokio::select! {
                command = commands.recv() => match command {
                    Some(Command::Shutdown(reply)) => {
                        let _ = reply.send(());
                        break;
                    }
                    None => break,
                    Some(command) => self.on_command(command),
                },
                event = self.swarm.select_next_some() => self.on_event(event),
                _ = reprovide.tick() => self.announce_all(),
                _ = maintain.tick() => self.maintain(),
            }
        }
        tracing::debug!("network task stopped");
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Provide(model, reply) => {
                self.provided.insert(model.clone());
                self.announce(&model);
                let _ = reply.send(());
            }
            Command::FindProviders(model, reply) => {
                let id = self
                    .swarm
                    .behaviour_mut()
                    .kad
                    .get_providers(model_key(&model));
                self.providers.insert(
                    id,
                    ProviderQuery {
                        found: HashSet::new(),
                        reply,
                    },
                );
            }
            Command::Connect(peer, hints, reply) => {
                if self.swarm.is_connected(&peer) {
                    let _ = reply.send(Ok(()));
                    return;
                }
                self.connect_waiters.entry(peer).or_default().push(reply);
                // Try the addresses the caller has (the peer's newest advert) and the ones we
                // know (routing table, live queries), and look the peer up in the DHT in case
                // all are stale. With a dial to the peer already under way (an old address),
                // the caller's addresses wait for it to fail.
                let hints: Vec<Multiaddr> =
                    hints.into_iter().filter(|a| names_peer(a, &peer)).collect();
                if !hints.is_empty() {
                    self.connect_hints.insert(peer, hints);
                }
                self.dial_hints(peer);
                let id = self.swarm.behaviour_mut().kad.get_closest_peers(peer);
                self.lookups.insert(id, peer);
            }
            Command::Disconnect(peer) => {
                let _ = self.swarm.disconnect_peer_id(peer);
            }
            Command::Paths(peer, reply) => {
                let mut paths: Vec<Multiaddr> = self
                    .remotes
                    .values()
                    .filter(|(p, _)| *p == peer)
                    .map(|(_, a)| a.clone())
                    .collect();
                paths.sort();
                let _ = reply.send(paths);
            }
            Command::Direct(peer, reply) => {
                let direct_only = self.has_direct(&peer) && !self.has_relayed(&peer);
                if direct_only || !self.swarm.is_connected(&peer) {
                    let _ = reply.send(Ok(()));
                } else if self.has_direct(&peer) {
                    // The relayed connection is closing (or just opened): wait for it to go.
                    self.direct_waiters.entry(peer).or_default().push(reply);
                    self.on_direct(peer);
                } else {
                    // Relayed only: DCUtR (started by the peer that took the relayed
                    // connection) answers, or the caller's timeout does.
                    self.direct_waiters.entry(peer).or_default().push(reply);
                }
            }
            Command::RelayVerdict(peer, why, reply) => {
                let _ = reply.send(self.relay_verdict(peer, why));
            }
            Command::Lookup(key, reply) => {
                let known: HashSet<PeerId> = self
                    .swarm
                    .behaviour_mut()
                    .kad
                    .kbuckets()
                    .flat_map(|b| b.iter().map(|e| *e.node.key.preimage()).collect::<Vec<_>>())
                    .collect();
                let id = self
                    .swarm
                    .behaviour_mut()
                    .kad
                    .get_closest_peers(key.clone());
                self.probes.insert(id, Probe { key, known, reply });
            }
            Command::Publish(data, reply) => {
                let topic = gossipsub::IdentTopic::new(ADVERT_TOPIC);
                let result = self
                    .swarm
                    .behaviour_mut()
                    .gossipsub
                    .publish(topic, data)
                    .map(|_| ())
                    .map_err(|e| NetworkError::Publish(e.to_string()));
                let _ = reply.send(result);
            }
            Command::Verdict(message, verdict) => {
                let acceptance = match verdict {
                    GossipVerdict::Accept => gossipsub::MessageAcceptance::Accept,
                    GossipVerdict::Reject => gossipsub::MessageAcceptance::Reject,
                    GossipVerdict::Ignore => gossipsub::MessageAcceptance::Ignore,
                };
                let _ = self
                    .swarm
                    .behaviour_mut()
                    .gossipsub
                    .report_message_validation_result(&message.id, &message.source, acceptance);
            }
            Command::Shutdown(_) => unreachable!("handled by the loop"),
        }
    }

    /// Dials for a waiting `Connect`, remembering the dial until it settles.
    fn dial_for_connect(&mut self, opts: DialOpts, peer: PeerId) -> Result<(), DialError> {
        let id = opts.connection_id();
        self.swarm.dial(opts)?;
        self.connect_dials.insert(id, peer);
        Ok(())
    }

    /// Dials `peer` for a waiting `Connect` at its untried caller-given addresses and the
    /// ones we know. They stay untried while another dial to the peer is under way.
    fn dial_hints(&mut self, peer: PeerId) {
        let hints = self.connect_hints.get(&peer).cloned().unwrap_or_default();
        let opts = DialOpts::peer_id(peer)
            .addresses(hints)
            .extend_addresses_through_behaviour()
            .build();
        match self.dial_for_connect(opts, peer) {
            Ok(()) => {
                self.connect_hints.remove(&peer);
            }
            Err(DialError::DialPeerConditionFalse(_)) => {}
            // No address at all: the lookup has the answer.
            Err(_) => {
                self.connect_hints.remove(&peer);
            }
        }
    }

    /// Whether a `Connect` to `peer` may still succeed without a new lookup result: our
    /// dial is under way, or the caller's addresses wait for another dial to end.
    fn connect_dialling(&self, peer: &PeerId) -> bool {
        self.connect_dials.values().any(|p| p == peer) || self.connect_hints.contains_key(peer)
    }

    /// Keeps [`NetworkConfig::min_peers`] connections: dials routing-table peers we are not
    /// connected to (the DHT's own address book, pruned of dead addresses), and the bootstrap
    /// peers again when nobody is left. No peer is special: any live one is as good as the
    /// bootstrap node.
    fn maintain(&mut self) {
        // Reservations lost since the last check are made again here (not at once, so a
        // relay that refuses is not asked in a loop).
        self.apply_reach();
        let connected: HashSet<PeerId> = self.swarm.connected_peers().copied().collect();
        let want = self.config.min_peers.saturating_sub(connected.len());
        if want == 0 {
            return;
        }
        let known: Vec<PeerId> = self
            .swarm
            .behaviour_mut()
            .kad
            .kbuckets()
            .flat_map(|b| b.iter().map(|e| *e.node.key.preimage()).collect::<Vec<_>>())
            .filter(|p| !connected.contains(p))
            .collect();
        for peer in known.into_iter().take(want) {
            tracing::debug!(%peer, "dialling a known peer to keep {} connections", self.config.min_peers);
            let _ = self.swarm.dial(DialOpts::peer_id(peer).build());
        }
        if connected.is_empty() {
            for addr in self.config.bootstrap.clone() {
                if let Some(Protocol::P2p(peer)) = addr.iter().last() {
                    self.swarm
                        .behaviour_mut()
                        .kad
                        .add_address(&peer, addr.clone());
                    let _ = self
                        .swarm
                        .dial(DialOpts::peer_id(peer).addresses(vec![addr]).build());
                }
            }
        }
    }

    fn announce(&mut self, model: &str) {
        if let Err(e) = self
            .swarm
            .behaviour_mut()
            .kad
            .start_providing(model_key(model))
        {
            tracing::warn!(model, "cannot store provider record: {e}");
        }
        if self.state.borrow().routing_peers > 0 {
            self.announced_with_peers = true;
        }
    }

    fn announce_all(&mut self) {
        for model in self.provided.clone() {
            self.announce(&model);
        }
    }

    fn update_state(&mut self) {
        let listen_addrs = self
            .swarm
            .listeners()
            .map(|a| a.clone().with(Protocol::P2p(*self.swarm.local_peer_id())))
            .collect();
        let connected_peers = self.swarm.connected_peers().count();
        let routing_peers = self
            .swarm
            .behaviour_mut()
            .kad
            .kbuckets()
            .map(|b| b.num_entries())
            .sum();
        let me = *self.swarm.local_peer_id();
        let shareable = self
            .reach
            .shareable()
            .into_iter()
            .map(|a| match a.iter().last() {
                Some(Protocol::P2p(_)) => a,
                _ => a.with(Protocol::P2p(me)),
            })
            .collect();
        self.state.send_replace(NetworkState {
            listen_addrs,
            connected_peers,
            routing_peers,
            reachability: self.reach.reachability(),
            shareable,
            dht_server: self.dht_server.unwrap_or(false),
        });
    }

    /// A DHT server (a node, not a light client) identified itself on `id`: when it holds a
    /// second inbound connection to us from its own listening socket, it restarted or lost
    /// its path and the older one is dead. libp2p's gossipsub greets a peer (sends our
    /// subscriptions) only on its first connection, so a restarted node reached over the
    /// second would never learn we take adverts, and could never publish to us. Both are
    /// dropped: the node dials again (its `min_peers` upkeep) and is greeted afresh. Light
    /// clients (`cocoon infer`, a gateway) are left alone: a restarted one only runs jobs, and
    /// its job must not be cut. Only connections from one of the addresses the peer lists
    /// (`listen`) count: a node dials from its listening port, while an AutoNAT dial-back
    /// comes from a fresh one and is a second connection of a live node, not a restart.
    fn on_node_identified(&mut self, peer: PeerId, id: ConnectionId, listen: &[Multiaddr]) {
        let Some(ids) = self.inbound.get(&peer) else {
            return;
        };
        let inbound: Vec<(ConnectionId, Multiaddr)> = ids
            .iter()
            .filter_map(|c| Some((*c, self.remotes.get(c)?.1.clone())))
            .collect();
        if !restarted(&inbound, id, listen) {
            return;
        }
        tracing::debug!(%peer, "a node's second inbound connection: it restarted; dropping both");
        self.inbound.remove(&peer);
        let _ = self.swarm.disconnect_peer_id(peer);
    }

    /// Whether we hold a direct (not relayed) connection to `peer`.
    fn has_direct(&self, peer: &PeerId) -> bool {
        self.remotes
            .values()
            .any(|(p, a)| p == peer && !reach::is_relayed(a))
    }

    /// Whether we hold a relayed connection to `peer`.
    fn has_relayed(&self, peer: &PeerId) -> bool {
        self.remotes
            .values()
            .any(|(p, a)| p == peer && reach::is_relayed(a))
    }

    /// A direct connection to `peer` exists: its relayed connections are closed
    /// (libp2p-stream picks any connection, and relays are for handshakes, not traffic), and
    /// once they are gone, waiting job streams go ahead.
    fn on_direct(&mut self, peer: PeerId) {
        let relayed: Vec<ConnectionId> = self
            .remotes
            .iter()
            .filter(|(_, (p, a))| *p == peer && reach::is_relayed(a))
            .map(|(id, _)| *id)
            .collect();
        for id in relayed {
            tracing::debug!(%peer, "direct connection up; closing the relayed one");
            self.swarm.close_connection(id);
        }
        self.release_direct_waiters(peer);
    }

    /// Answers the job streams waiting for `peer` once only direct connections are left.
    fn release_direct_waiters(&mut self, peer: PeerId) {
        if self.has_direct(&peer) && !self.has_relayed(&peer) {
            for w in self.direct_waiters.remove(&peer).unwrap_or_default() {
                let _ = w.send(Ok(()));
            }
        }
    }

    /// Whether a job may run over the relayed connection to `peer`, hole punching having
    /// failed (`why`): only when the relay's circuits may carry one.
    fn relay_verdict(&self, peer: PeerId, why: String) -> Result<(), NetworkError> {
        if self.has_direct(&peer) || !self.swarm.is_connected(&peer) {
            return Ok(());
        }
        let relay = self
            .remotes
            .values()
            .filter(|(p, _)| *p == peer)
            .find_map(|(_, a)| reach::relay_of(a));
        let limits = relay.and_then(|r| self.circuit_limits.get(&r));
        let allowed = limits.is_some_and(|(duration, bytes)| {
            bytes.is_none_or(|b| b >= self.config.relayed_job_min_bytes)
                && duration.is_none_or(|d| d >= self.config.relayed_job_min_duration)
        });
        let relay_name = relay.map_or_else(|| "an unknown relay".to_string(), |r| r.to_string());
        if allowed {
            tracing::info!(%peer, relay = %relay_name, "{why}; the job runs over the relay, whose circuits allow it");
            return Ok(());
        }
        let limits = match limits {
            Some((d, b)) => format!(
                "at most {} and {}",
                b.map_or("unlimited bytes".into(), |b| format!("{b} bytes")),
                d.map_or("no time limit".into(), |d| format!("{} s", d.as_secs()))
            ),
            None => "unknown".into(),
        };
        Err(NetworkError::Unreachable {
            peer,
            reason: format!(
                "{why}; it is reachable only through relay {relay_name}, whose circuits ({limits}) \
                 leave no room for a job"
            ),
        })
    }

    /// Acts on what [`Reach`] concludes: Kademlia mode, relay service, our reservations,
    /// the swarm's external addresses, and a log line when reachability changes.
    fn apply_reach(&mut self) {
        for addr in self.reach.narrower_than_widest() {
            self.reach.expired(&addr);
            self.swarm.remove_external_address(&addr);
        }
        let server = self.reach.dht_server();
        if self.dht_server != Some(server) {
            self.dht_server = Some(server);
            let mode = if server { Mode::Server } else { Mode::Client };
            self.swarm.behaviour_mut().kad.set_mode(Some(mode));
        }
        let relaying = self.reach.relay_server();
        if self.relay_serving != Some(relaying) {
            self.relay_serving = Some(relaying);
            if let Some(relay) = self.swarm.behaviour_mut().relay.as_mut() {
                let status = if relaying {
                    relay::Status::Enable
                } else {
                    relay::Status::Disable
                };
                relay.set_status(Some(status));
                tracing::info!(relaying, "relay service");
            }
        }
        if self.reach.relays_unneeded() {
            for (relay, id) in std::mem::take(&mut self.reservations) {
                tracing::info!(%relay, "reachable directly: dropping the relay reservation");
                self.swarm.remove_listener(id);
            }
        } else {
            let want = self.reach.relays_wanted(self.reservations.len());
            let mut candidates: Vec<(PeerId, Multiaddr)> = self
                .relay_candidates
                .iter()
                .filter(|(p, _)| !self.reservations.contains_key(p))
                .filter_map(|(p, addrs)| Some((*p, addrs.first()?.clone())))
                .collect();
            candidates.sort();
            for (relay, addr) in candidates.into_iter().take(want) {
                let circuit = addr.with(Protocol::P2p(relay)).with(Protocol::P2pCircuit);
                match self.swarm.listen_on(circuit.clone()) {
                    Ok(id) => {
                        tracing::info!(%relay, "asking for a relay reservation");
                        self.reservations.insert(relay, id);
                    }
                    Err(e) => tracing::warn!(%circuit, "cannot reserve on the relay: {e}"),
                }
            }
        }
        let now = self.reach.reachability();
        if self.reported.as_ref() != Some(&now) {
            tracing::info!("reachability: {now}");
            self.reported = Some(now);
            // Provider records carry our external addresses: give them the new ones.
            self.announce_all();
        }
        self.update_state();
    }

    /// A peer identified itself (or pushed a change) on `connection`.
    fn on_identify(&mut self, peer: PeerId, connection: ConnectionId, info: identify::Info) {
        let via = self.remotes.get(&connection).map(|(_, a)| a.clone());
        if info.protocols.contains(&relay::HOP_PROTOCOL_NAME) {
            // Its direct addresses that lead somewhere from here, public ones first.
            let mut addrs: Vec<Multiaddr> = match &via {
                Some(via) => Reach::usable_from(via, info.listen_addrs.clone()),
                None => Vec::new(),
            };
            addrs.retain(|a| !reach::is_relayed(a));
            addrs.sort_by_key(|a| std::cmp::Reverse(reach::scope(a)));
            addrs.dedup();
            if addrs.is_empty() {
                self.relay_candidates.remove(&peer);
            } else {
                self.relay_candidates.insert(peer, addrs);
            }
        } else {
            self.relay_candidates.remove(&peer);
        }
        if info.protocols.contains(&KAD_PROTOCOL) {
            let addrs = match &via {
                Some(via) => Reach::usable_from(via, info.listen_addrs.clone()),
                None => Vec::new(),
            };
            for addr in addrs {
                self.swarm.behaviour_mut().kad.add_address(&peer, addr);
            }
            self.update_state();
            self.on_node_identified(peer, connection, &info.listen_addrs);
        }
        self.apply_reach();
    }

    fn finish_connect(&mut self, peer: PeerId, result: Result<(), NetworkError>) {
        self.connect_hints.remove(&peer);
        if let Some(waiters) = self.connect_waiters.remove(&peer) {
            let reason = result.as_ref().err().map(ToString::to_string);
            let mut result = Some(result);
            for w in waiters {
                // The first waiter gets the error itself, any others its description.
                let r = result.take().unwrap_or_else(|| match &reason {
                    None => Ok(()),
                    Some(reason) => Err(NetworkError::Dial {
                        peer,
                        reason: reason.clone(),
                    }),
                });
                let _ = w.send(r);
            }
        }
    }

    fn on_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        if let Some(m) = &self.metrics {
            use libp2p::metrics::Recorder;
            m.record(&event);
            match &event {
                SwarmEvent::Behaviour(BehaviourEvent::Kad(e)) => m.record(e),
                SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(e)) => m.record(e),
                SwarmEvent::Behaviour(BehaviourEvent::Identify(e)) => m.record(e),
                SwarmEvent::Behaviour(BehaviourEvent::Ping(e)) => m.record(e),
                SwarmEvent::Behaviour(BehaviourEvent::Relay(e)) => m.record(e),
                SwarmEvent::Behaviour(BehaviourEvent::Dcutr(e)) => m.record(e),
                _ => {}
            }
        }
        match event {
            SwarmEvent::NewListenAddr { address, .. } => {
                tracing::info!(%address, "listening");
                if self.config.relay_server == RelayServe::On
                    && self.config.dht_mode != DhtMode::Client
                    && !reach::is_relayed(&address)
                {
                    // A relay hands its addresses out with each reservation: an operator who
                    // runs one on purpose vouches for the addresses it listens on.
                    self.reach.confirmed(address.clone(), Source::Configured);
                    self.swarm.add_external_address(address.clone());
                }
                self.reach.listening(address);
                self.update_state();
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                self.reach.not_listening(&address);
                self.update_state();
            }
            SwarmEvent::ExternalAddrConfirmed { address } => {
                let source = if reach::is_relayed(&address) {
                    Source::Relay
                } else {
                    Source::Probed
                };
                tracing::debug!(%address, ?source, "external address confirmed");
                self.reach.confirmed(address, source);
                self.apply_reach();
            }
            SwarmEvent::ExternalAddrExpired { address } => {
                tracing::debug!(%address, "external address expired");
                self.reach.expired(&address);
                self.apply_reach();
            }
            SwarmEvent::ListenerError { error, .. } => {
                tracing::warn!("listener error: {}", causes(&error));
            }
            SwarmEvent::ListenerClosed {
                listener_id,
                addresses,
                reason,
            } => {
                let relay = self
                    .reservations
                    .iter()
                    .find(|(_, id)| **id == listener_id)
                    .map(|(r, _)| *r);
                for addr in &addresses {
                    self.reach.not_listening(addr);
                }
                if let Some(relay) = relay {
                    // Lost or refused: ask another (or this one again once it identifies
                    // anew) at the next upkeep.
                    self.reservations.remove(&relay);
                    self.relay_candidates.remove(&relay);
                    match &reason {
                        Ok(()) => tracing::info!(%relay, "relay reservation closed"),
                        Err(e) => tracing::info!(%relay, "relay reservation failed: {}", causes(e)),
                    }
                } else if let Err(error) = &reason {
                    tracing::warn!(?addresses, "listener closed: {}", causes(error));
                }
                self.update_state();
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                ..
            } => {
                self.connect_dials.remove(&connection_id);
                let remote = endpoint.get_remote_address().clone();
                let relayed = endpoint.is_relayed() || reach::is_relayed(&remote);
                if !endpoint.is_dialer() && !relayed {
                    self.inbound.entry(peer_id).or_default().push(connection_id);
                }
                self.remotes.insert(connection_id, (peer_id, remote));
                if !relayed || self.has_direct(&peer_id) {
                    self.on_direct(peer_id);
                }
                self.update_state();
                self.finish_connect(peer_id, Ok(()));
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                connection_id,
                num_established,
                ..
            } => {
                self.remotes.remove(&connection_id);
                self.release_direct_waiters(peer_id);
                if !self.swarm.is_connected(&peer_id) {
                    // Nothing left to punch a hole through.
                    for w in self.direct_waiters.remove(&peer_id).unwrap_or_default() {
                        let _ = w.send(Err("the connection closed".into()));
                    }
                }
                if let Some(ids) = self.inbound.get_mut(&peer_id) {
                    ids.retain(|id| *id != connection_id);
                    if ids.is_empty() {
                        self.inbound.remove(&peer_id);
                    }
                }
                self.update_state();
                if num_established == 0 && self.swarm.connected_peers().next().is_none() {
                    // Alone: find the network again now rather than at the next check.
                    self.maintain();
                }
            }
            SwarmEvent::OutgoingConnectionError {
                peer_id: Some(peer),
                error,
                connection_id,
            } => {
                self.connect_dials.remove(&connection_id);
                tracing::debug!(%peer, "dial failed: {error}");
                if let DialError::Transport(failed) = &error {
                    // Dead addresses leave the routing table, so neither we nor the peers we
                    // answer keep dialling them; identify adds the live ones back.
                    for (addr, _) in failed {
                        self.swarm.behaviour_mut().kad.remove_address(&peer, addr);
                    }
                }
                if self.connect_waiters.contains_key(&peer)
                    && self.connect_hints.contains_key(&peer)
                {
                    // The caller's addresses waited for this dial: try them now.
                    self.dial_hints(peer);
                }
                // While its DHT lookup runs, a pending Connect waits: the lookup dials again
                // with fresh addresses. After that, the failure is the answer.
                if !self.lookups.values().any(|p| *p == peer)
                    && !self.connect_dialling(&peer)
                    && !self.swarm.is_connected(&peer)
                {
                    self.finish_connect(
                        peer,
                        Err(NetworkError::Dial {
                            peer,
                            reason: error.to_string(),
                        }),
                    );
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Identify(
                identify::Event::Received {
                    peer_id,
                    connection_id,
                    info,
                }
                | identify::Event::Pushed {
                    peer_id,
                    connection_id,
                    info,
                },
            )) => self.on_identify(peer_id, connection_id, info),
            SwarmEvent::Behaviour(BehaviourEvent::RelayClient(event)) => match event {
                relay::client::Event::ReservationReqAccepted {
                    relay_peer_id,
                    renewal,
                    ..
                } => {
                    if !renewal {
                        tracing::info!(relay = %relay_peer_id, "relay reservation accepted");
                    }
                }
                relay::client::Event::OutboundCircuitEstablished {
                    relay_peer_id,
                    limit,
                } => {
                    let limits = (
                        limit.as_ref().and_then(|l| l.duration()),
                        limit.as_ref().and_then(|l| l.data_in_bytes()),
                    );
                    self.circuit_limits.insert(relay_peer_id, limits);
                }
                relay::client::Event::InboundCircuitEstablished { src_peer_id, .. } => {
                    tracing::debug!(peer = %src_peer_id, "a peer reached us through a relay");
                }
            },
            SwarmEvent::Behaviour(BehaviourEvent::Dcutr(dcutr::Event {
                remote_peer_id,
                result,
            })) => match result {
                Ok(_) => {
                    tracing::info!(peer = %remote_peer_id, "hole punched: direct connection");
                    self.on_direct(remote_peer_id);
                }
                Err(e) => {
                    tracing::info!(peer = %remote_peer_id, "hole punching failed: {e}");
                    if !self.has_direct(&remote_peer_id) {
                        for w in self
                            .direct_waiters
                            .remove(&remote_peer_id)
                            .unwrap_or_default()
                        {
                            let _ = w.send(Err(format!("hole punching failed ({e})")));
                        }
                    }
                }
            },
            SwarmEvent::Behaviour(BehaviourEvent::Upnp(event)) => match event {
                upnp::Event::NewExternalAddr { external_addr, .. } => {
                    tracing::info!(%external_addr, "the router mapped a port (UPnP)");
                    self.reach.confirmed(external_addr, Source::Mapped);
                    self.apply_reach();
                }
                upnp::Event::ExpiredExternalAddr { external_addr, .. } => {
                    tracing::info!(%external_addr, "the router's port mapping expired (UPnP)");
                    self.reach.expired(&external_addr);
                    self.apply_reach();
                }
                upnp::Event::GatewayNotFound => tracing::debug!("no UPnP gateway on the LAN"),
                upnp::Event::NonRoutableGateway => {
                    tracing::info!("the UPnP gateway's own address is private (a NAT behind a NAT)")
                }
            },
            SwarmEvent::Behaviour(BehaviourEvent::AutonatClient(event)) => match &event.result {
                Ok(()) => {
                    tracing::debug!(addr = %event.tested_addr, server = %event.server, "reachable (AutoNAT)")
                }
                Err(e) => {
                    tracing::debug!(addr = %event.tested_addr, server = %event.server, "not reachable (AutoNAT): {e}")
                }
            },
            SwarmEvent::Behaviour(BehaviourEvent::Mdns(mdns::Event::Discovered(found))) => {
                for (peer, addr) in found {
                    tracing::debug!(%peer, %addr, "found on the LAN");
                    let opts = DialOpts::peer_id(peer).addresses(vec![addr]).build();
                    let _ = self.swarm.dial(opts);
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Kad(event)) => self.on_kad(event),
            SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            })) => {
                let m = GossipMessage {
                    source: propagation_source,
                    id: message_id,
                    data: message.data,
                };
                if let Err(e) = self.gossip.try_send(m) {
                    // Nobody keeps up (or nobody listens): drop it without penalty.
                    let m = e.into_inner();
                    let _ = self
                        .swarm
                        .behaviour_mut()
                        .gossipsub
                        .report_message_validation_result(
                            &m.id,
                            &m.source,
                            gossipsub::MessageAcceptance::Ignore,
                        );
                }
            }
            _ => {}
        }
    }

    fn on_kad(&mut self, event: kad::Event) {
        match event {
            kad::Event::RoutingUpdated { .. } => {
                self.update_state();
                // Records announced while we knew nobody reached nobody: announce again now.
                if !self.announced_with_peers && !self.provided.is_empty() {
                    self.announce_all();
                }
            }
            kad::Event::OutboundQueryProgressed {
                id,
                result: QueryResult::GetClosestPeers(result),
                stats,
                ..
            } if self.probes.contains_key(&id) => {
                let probe = self.probes.remove(&id).expect("checked");
                let peers = match result {
                    Ok(ok) => ok.peers,
                    Err(kad::GetClosestPeersError::Timeout { peers, .. }) => peers,
                };
                let reply = Ok(probe_report(probe.key, &probe.known, peers, &stats));
                let _ = probe.reply.send(reply);
            }
            kad::Event::OutboundQueryProgressed {
                id, result, step, ..
            } => match result {
                QueryResult::GetProviders(Ok(kad::GetProvidersOk::FoundProviders {
                    providers,
                    ..
                })) => {
                    for peer in &providers {
                        // Dial now: the query still holds the provider's addresses.
                        if !self.swarm.is_connected(peer) {
                            let _ = self.swarm.dial(DialOpts::peer_id(*peer).build());
                        }
                    }
                    if let Some(q) = self.providers.get_mut(&id) {
                        q.found.extend(providers);
                    }
                    if step.last {
                        self.finish_providers(id, Ok(()));
                    }
                }
                QueryResult::GetProviders(Ok(
                    kad::GetProvidersOk::FinishedWithNoAdditionalRecord { .. },
                )) => {
                    self.finish_providers(id, Ok(()));
                }
                QueryResult::GetProviders(Err(e)) => self.finish_providers(id, Err(e.to_string())),
                QueryResult::GetClosestPeers(result) => {
                    let Some(target) = self.lookups.remove(&id) else {
                        return;
                    };
                    let peers = match result {
                        Ok(ok) => ok.peers,
                        Err(kad::GetClosestPeersError::Timeout { peers, .. }) => peers,
                    };
                    let addrs: Vec<Multiaddr> = peers
                        .into_iter()
                        .filter(|p| p.peer_id == target)
                        .flat_map(|p| p.addrs)
                        .collect();
                    if self.swarm.is_connected(&target) {
                        self.finish_connect(target, Ok(()));
                    } else if addrs.is_empty() {
                        // A dial under way (to the advert's addresses) may still succeed.
                        if !self.connect_dialling(&target) {
                            self.finish_connect(target, Err(NetworkError::NoAddresses(target)));
                        }
                    } else {
                        let opts = DialOpts::peer_id(target).addresses(addrs).build();
                        if let Err(e) = self.dial_for_connect(opts, target) {
                            if self.connect_dialling(&target) {
                                return;
                            }
                            self.finish_connect(
                                target,
                                Err(NetworkError::Dial {
                                    peer: target,
                                    reason: e.to_string(),
                                }),
                            );
                        }
                        // Otherwise ConnectionEstablished or the dial error's follow-up settles it.
                    }
                }
                QueryResult::StartProviding(Err(e)) => {
                    tracing::debug!("announcement incomplete: {e}")
                }
                QueryResult::Bootstrap(Err(e)) => tracing::debug!("bootstrap incomplete: {e}"),
                _ => {}
            },
            _ => {}
        }
    }

    fn finish_providers(&mut self, id: QueryId, result: Result<(), String>) {
        let Some(q) = self.providers.remove(&id) else {
            return;
        };
        let mut found: Vec<PeerId> = q.found.into_iter().collect();
        found.sort();
        let reply = match result {
            Ok(()) => Ok(found),
            // A timed-out query that found providers still answers the question.
            Err(_) if !found.is_empty() => Ok(found),
            Err(e) => Err(NetworkError::Query(e)),
        };
        let _ = q.reply.send(reply);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restart_is_two_connections_from_the_peers_own_socket_not_a_dial_back() {
        let at = |s: &str| -> Multiaddr { s.parse().unwrap() };
        let (old, new, probe) = (
            ConnectionId::new_unchecked(1),
            ConnectionId::new_unchecked(2),
            ConnectionId::new_unchecked(3),
        );
        let before = at("/ip4/198.51.100.7/udp/4001/quic-v1");
        let after = at("/ip4/198.51.100.7/udp/4002/quic-v1");
        // A node that restarted (on another port) dials again from its listening socket.
        let restart = [(old, before.clone()), (new, after.clone())];
        assert!(restarted(&restart, new, std::slice::from_ref(&after)));
        assert!(!restarted(&restart, old, std::slice::from_ref(&after)));
        // A live node's AutoNAT dial-back comes from a fresh port: not a restart, whichever
        // connection identifies (a push on the old one included).
        let listen = [before.clone()];
        let dial_back = [
            (old, before.clone()),
            (probe, at("/ip4/198.51.100.7/udp/51234/quic-v1")),
        ];
        assert!(!restarted(&dial_back, probe, &listen));
        assert!(!restarted(&dial_back, old, &listen));
        assert!(!restarted(&[(old, before)], old, &listen));
    }
}
