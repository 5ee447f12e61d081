//! The job protocol, `/cocoon/job/1`: one libp2p stream per job.
//!
//! Layering, bottom up (see ARCHITECTURE.md):
//! 1. the libp2p stream on the QUIC connection;
//! 2. [`crate::frame`]: `u32` length-prefixed frames with a size limit ([`FrameTransport`]);
//! 3. [`confidential`]: the Noise handshake bound to the worker's attested enclave key, then
//!    [`crate::secure::SecureTransport`], another `FrameTransport` that encrypts each frame;
//! 4. [`codec`] (from `cocoon-job`): a versioned bincode envelope around a [`Message`];
//! 5. [`channel`]: moves messages with timeouts; the exchange's rules are the sessions' ([`session`]): the client sends one `Request`, the
//!    worker answers with `Token` chunks and ends with `Done` or `Error`.
//!
//! [`FrameTransport`]: crate::frame::FrameTransport

pub mod channel;
pub mod confidential;

/// The messages and their codec live in the I/O-free `cocoon-job` crate (with the session
/// state machines that run them); they are re-exported here where the transport uses them.
pub use cocoon_job::{codec, message, session};

use libp2p::StreamProtocol;

pub use channel::{JobChannel, JobConfig, JobError};
pub use codec::{decode, encode, CodecError, PROTOCOL_VERSION};
pub use message::*;

/// The stream protocol name of the job protocol.
pub const JOB_PROTOCOL: StreamProtocol = StreamProtocol::new("/cocoon/job/1");
