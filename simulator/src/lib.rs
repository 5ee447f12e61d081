//! cocoon-sim: a deterministic discrete-event simulator of the cocoon network, from a few
//! nodes to a million, driving the project's real sans-IO cores.
//!
//! - [`engine`]: virtual time, the event queue and the one seeded RNG;
//! - [`scenario`]: the TOML scenario with documented defaults;
//! - [`net`]: regions, latency, bandwidth and loss;
//! - [`kad`]: Kademlia routing tables and iterative lookups (hops come out of the model);
//! - [`mesh`]: the gossipsub-like mesh that carries adverts;
//! - [`world`]: nodes and what each event does, a file per subsystem (churn, DHT, gossip,
//!   jobs); workers run `cocoon_gossip`'s price core and publication schedule and sign real
//!   adverts, mesh nodes admit them with the real market core, clients rank with it and
//!   their reputation core, and every job attempt runs through `cocoon_job`'s client and
//!   worker sessions (quote, billing, credit, vouchers, refusals) on `cocoon_ledger`'s
//!   channel cores with signed vouchers;
//! - [`session`]: one attempt through those two sessions on a modelled link;
//! - [`slab`]: the reusable-key store the world keeps jobs, lookups and messages in;
//! - [`metrics`] and [`report`]: time series, distributions, CSV, JSON and charts;
//! - [`sweep`]: parameter grids run in parallel.
//!
//! The simulator never touches p2p, node or inference: what it shares with a real node is
//! exactly the sans-IO cores, which is the test of their design.
#![warn(missing_docs)]

pub mod calibration;
pub mod engine;
pub mod kad;
pub mod mesh;
pub mod metrics;
pub mod net;
pub mod report;
pub mod scenario;
pub mod session;
pub mod slab;
pub mod sweep;
pub mod world;

pub use scenario::Scenario;
pub use world::World;
