//! cocoon-p2p: the network layer of a cocoon node.
//!
//! - [`swarm`]: the libp2p swarm (QUIC, TCP fallback, identify, ping, Kademlia under
//!   `/cocoon/kad/1.0.0`, mDNS; AutoNAT v2, circuit relay v2, DCUtR and UPnP for NAT) behind
//!   the [`Network`] handle; model discovery through DHT provider records; gossipsub for
//!   adverts with application-side validation.
//! - [`job`]: the `/cocoon/job/1` stream protocol: framing, versioned messages, timeouts.
//! - [`attest`]: attestation evidence (Intel TDX via DCAP, dev), key binding, trust policy.
//! - [`frame`]: the length-prefixed framing beneath it, the seam where encryption plugs in.
//! - [`secure`]: the Noise channel bound to the worker's enclave key (a `FrameTransport`).
//! - [`identity`]: the node's persistent ed25519 identity.
//! - [`reach`]: reachability (AutoNAT, UPnP, relays): what a node publishes, its DHT mode.
//! - [`limits`]: bounds on the inbound streams a node serves at once, per peer and in total.
//! - [`testing`]: an in-memory duplex pipe for testing protocol code without a network.
//!
//! This crate knows nothing of models or inference: the node crate joins job streams to the
//! engine.
#![warn(missing_docs)]

pub mod attest;
pub mod frame;
#[cfg(test)]
mod fuzz;
pub mod identity;
pub mod job;
pub mod limits;
pub mod reach;
pub mod secure;
pub mod swarm;
pub mod testing;

pub use libp2p::{Multiaddr, PeerId, Stream};
pub use reach::{Reachability, RelayServe};
pub use swarm::{
    model_key, DhtMode, GossipMessage, GossipVerdict, LookupProbe, Network, NetworkConfig,
    NetworkError, NetworkState, RelayLimits, ADVERT_TOPIC, MARKET_PROTOCOL,
};
