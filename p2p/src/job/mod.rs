//! The job protocol, `/cocoon/job/1`: one libp2p stream per job.
//!
//! Layering, bottom up (see ARCHITECTURE.md):
//! 1. the libp2p stream on the QUIC connection;
//! 2. [`crate::frame`]: `u32` length-prefixed frames with a size limit ([`FrameTransport`]);
//! 3. [`confidential`]: the Noise handshake bound to the worker's attested enclave key, then
//!    [`crate::secure::SecureTransport`], another `FrameTransport` that encrypts each frame;
//! 4. [`codec`]: a versioned bincode envelope around a [`Message`];
//! 5. [`channel`]: the exchange itself with timeouts: the client sends one `Request`, the
//!    worker answers with `Token` chunks and ends with `Done` or `Error`.
//!
//! [`FrameTransport`]: crate::frame::FrameTransport

pub mod channel;
pub mod codec;
pub mod confidential;
pub mod message;

use libp2p::StreamProtocol;

pub use channel::{ClientEvent, JobChannel, JobConfig, JobError};
pub use codec::{decode, encode, CodecError, PROTOCOL_VERSION};
pub use message::*;

/// The stream protocol name of the job protocol.
pub const JOB_PROTOCOL: StreamProtocol = StreamProtocol::new("/cocoon/job/1");
