//! cocoon-job: the job protocol without I/O.
//!
//! - [`message`]: the messages of `/cocoon/job/1` (request, quote, tokens, vouchers, done,
//!   error), plain data;
//! - [`codec`]: their versioned bincode envelope, bounded and total (never panics);
//! - [`session`]: the two deterministic state machines that run one job,
//!   [`session::ClientSession`] and [`session::WorkerSession`]. They own every rule of the
//!   exchange: message order, request bounds, quote validation, billing (one formula, one
//!   rounding per job, a chunk billed at most for the tokens it can hold), the worker's
//!   credit limit, the client's voucher schedule, final accounting and every error code.
//!   They take `now` and messages in and hand messages, journal writes and timers out, like
//!   quinn-proto's `Connection`; no clock, no socket, no runtime.
//!
//! The async shells (`cocoon_p2p::job::JobChannel` moves frames; the node's client, worker,
//! light client and gateway move bytes and time) and the simulator drive the same two
//! cores, so the billing rules exist once.
#![warn(missing_docs)]

mod bounded;
pub mod codec;
#[cfg(test)]
mod fuzz;
pub mod message;
pub mod session;

pub use codec::{decode, encode, CodecError, PROTOCOL_VERSION};
pub use message::*;
