//! cocoon-client: the light client, for applications that send prompts to the network.
//!
//! It finds workers in the market (gossiped adverts, DHT providers as the fallback), ranks
//! them by price, latency, capacity and reputation, runs each job over the attested and
//! encrypted job stream, pays through payment channels it journals, and fails over to the
//! next worker without losing or repeating text. No inference engine, no web server and no
//! command line come with it.
//! - [`light`]: [`LightClient`], the embeddable client: a builder and a `Stream` of text;
//! - [`infer`]: one job: rank, attest, pay, fail over ([`infer::infer`], [`infer::drive`]);
//! - [`market`]: the gossip market fed by the network (validation, sync, typed rows);
//! - [`trust`]: which attestation evidence the client accepts;
//! - [`payments`]: payment settings and the client's channels, journalled;
//! - [`chain`]: the node's wallet on a TON endpoint;
//! - [`clock`]: the session clock and wall-clock time.
#![warn(missing_docs)]

use std::path::PathBuf;

pub mod chain;
pub mod clock;
pub mod infer;
pub mod light;
pub mod market;
pub mod payments;
pub mod trust;

/// What a request is made of (the job protocol's types), so an application needs no other
/// crate.
pub use cocoon_p2p::job::{ChatMessage, JobInput, Sampling};
/// Bootstrap addresses.
pub use cocoon_p2p::Multiaddr;
pub use infer::{ClientConfig, InferError, InferOutcome, InferRequest};
pub use light::{Event, LightClient, LightClientBuilder};
pub use trust::ClientTrust;

/// `$COCOON_HOME`, default `<user cache dir>/cocoon`.
pub fn cocoon_home() -> PathBuf {
    if let Some(home) = std::env::var_os("COCOON_HOME") {
        return PathBuf::from(home);
    }
    dirs::cache_dir()
        .unwrap_or_else(std::env::temp_dir)
        .join("cocoon")
}
