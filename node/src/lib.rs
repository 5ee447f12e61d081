//! cocoon-node: the library behind the `cocoon` binary.
//!
//! It wires the network ([`cocoon_p2p`]) to the inference engine ([`cocoon_inference`]):
//! - [`daemon`]: `cocoon node`, a DHT node that is also a worker when it serves models;
//! - [`worker`]: job streams in (after the attested handshake), engine generations out;
//! - [`attestation`]: which evidence a worker presents, which a client trusts;
//! - [`market`]: the gossip market core fed by the network (validation, sync);
//! - [`advertiser`]: a worker's signed advert and its price policy;
//! - [`client`]: the light client that ranks workers, runs a job, pays, fails over;
//! - [`light`]: the same as an embeddable library: a builder and a `Stream` of text;
//! - [`payments`]: payment channels on both sides of a job, journalled;
//! - [`settlement`]: a worker's channels settled on TON;
//! - [`accounts`]: `cocoon wallet|channel|ledger`: a data dir's wallet and channels;
//! - [`demo`]: the whole network on loopback;
//! - [`launch`]: starting `cocoon node` processes (demo, tests, benchmarks);
//! - [`models`]: known models and `cocoon model fetch`;
//! - [`config`]: TOML + environment + flags;
//! - [`clock`]: the monotonic clock the job sessions run on.
//!
//! Feature `worker` (default) adds the inference engine (candle), the daemon, the demo and
//! the binary; without it this crate is the light client ([`light`]) and pulls in no candle.
#![warn(missing_docs)]

pub mod accounts;
#[cfg(feature = "worker")]
pub mod advertiser;
pub mod attestation;
pub mod client;
pub mod clock;
#[cfg(feature = "worker")]
pub mod config;
#[cfg(feature = "worker")]
pub mod daemon;
#[cfg(feature = "worker")]
pub mod demo;
#[cfg(feature = "worker")]
pub mod launch;
pub mod light;
pub mod market;
pub mod models;
pub mod payments;
pub mod settlement;
#[cfg(feature = "worker")]
pub mod worker;
