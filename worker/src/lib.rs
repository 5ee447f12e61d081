//! cocoon-worker: a node of the network, and a worker when it serves models (`cocoon node`).
//!
//! It joins the network as any peer, serves the market's sync protocol, and with a model
//! loads the inference engine, publishes signed adverts with its prices, answers job
//! streams (after the attested handshake) and is paid through payment channels it
//! journals and settles on TON. It uses the light client's market and payment settings
//! ([`cocoon_client`]) and adds:
//! - [`daemon`]: `cocoon node` start-up order and lifetime;
//! - [`worker`]: job streams in, engine generations out, the job session driven;
//! - [`advertiser`]: the worker's signed advert and its price policy;
//! - [`attestation`]: which evidence the worker presents;
//! - [`payments`]: the worker's channels, one slot per channel, journalled;
//! - [`settlement`]: the worker's channels settled on chain, receipts anchored;
//! - [`accounts`]: `cocoon wallet|channel|ledger`: a data dir's wallet and channels;
//! - [`telemetry`]: what the node records about itself for `--metrics` and its dashboard;
//! - [`config`]: TOML + environment + flags, checked against what an advert can carry;
//! - [`models`]: known models and `cocoon model fetch`;
//! - [`demo`]: the whole network on loopback; [`launch`]: starting `cocoon node` processes;
//! - [`progress`]: how the slow steps (fetch, load, demo) report progress without printing.
#![warn(missing_docs)]

pub mod accounts;
pub mod advertiser;
pub mod attestation;
pub mod config;
pub mod daemon;
pub mod demo;
pub mod launch;
pub mod models;
pub mod payments;
pub mod progress;
pub mod settlement;
pub mod telemetry;
pub mod worker;

pub use worker::Worker;
