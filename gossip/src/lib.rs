//! cocoon-gossip: the market, as sans-IO cores.
//!
//! - [`advert`]: the signed worker advert (models, hardware, capacity, speed, price,
//!   attestation kind and measurement, addresses, seq, expiry), its wire form and validation;
//! - [`market`]: the table of live adverts (admission with rate limits and sequence checks,
//!   expiry, bounded size) and `select`, which ranks workers for a job;
//! - [`price`]: a worker's price policy, fixed or moving with load within bounds;
//! - [`publish`]: when a worker publishes its advert (on change, and periodically);
//! - [`reputation`]: a client's decaying record of each worker.
//!
//! Nothing here touches a socket, a clock or a global RNG: `now` is an argument. The node
//! drives these cores from gossipsub (topic [`advert::TOPIC`]) and its job runner; the
//! simulator drives the very same code.
#![warn(missing_docs)]

pub mod advert;
mod bounded;
#[cfg(test)]
mod fuzz;
pub mod market;
pub mod price;
pub mod publish;
pub mod reputation;

pub use advert::{Advert, AdvertError, Hardware, ModelOffer, Price, SignedAdvert, Trust, Verified};
pub use market::{Candidate, Market, MarketConfig, Selection, Weights};
pub use price::{Load, PriceCore, PricePolicy};
pub use publish::Schedule;
pub use reputation::Reputation;
