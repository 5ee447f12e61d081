//! The confidential opening of a job stream: the attested Noise handshake that runs before
//! any job frame.
//!
//! Worker: [`accept`] answers with its current enclave key and evidence from the
//! [`Attester`]. Client: [`open`] runs the handshake, has the [`Verifier`] check evidence,
//! binding and policy, and only then returns a channel; a refused worker never receives a
//! byte of the job. Both bind the prologue to the job protocol version and both peer ids, so
//! a session relayed between other peers, or spliced onto another connection, fails.
//!
//! The handshake shares the request timeout of [`JobConfig`]: a peer that stalls it is
//! dropped.

use libp2p::PeerId;

use super::{JobConfig, PROTOCOL_VERSION};
use crate::attest::attester::Attester;
use crate::attest::verifier::{Verdict, Verifier, VerifyError};
use crate::frame::FrameTransport;
use crate::secure::{self, HandshakeError, SecureTransport};

/// Why a confidential job stream could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The handshake failed.
    #[error(transparent)]
    Handshake(#[from] HandshakeError),
    /// The worker's evidence was not trusted: nothing was sent to it.
    #[error("worker attestation refused: {0}")]
    Refused(#[from] VerifyError),
    /// The handshake did not finish in time.
    #[error("the handshake did not finish within {0:?}")]
    Timeout(std::time::Duration),
}

/// The prologue of a job stream between `client` and `worker`.
pub fn prologue(client: &PeerId, worker: &PeerId) -> Vec<u8> {
    secure::prologue(PROTOCOL_VERSION, client, worker)
}

/// Worker side: answers the handshake of `client` on `inner`.
pub async fn accept<T: FrameTransport>(
    inner: T,
    attester: &Attester,
    client: &PeerId,
    worker: &PeerId,
    config: &JobConfig,
) -> Result<SecureTransport<T>, OpenError> {
    let credentials = attester.current();
    let prologue = prologue(client, worker);
    let handshake =
        secure::worker_handshake(inner, &prologue, &credentials.key, &credentials.evidence);
    let transport = tokio::time::timeout(config.request_timeout, handshake)
        .await
        .map_err(|_| OpenError::Timeout(config.request_timeout))??;
    Ok(transport.with_max_frame(config.max_frame))
}

/// Client side: opens a confidential channel to `worker` on `inner`, trusting it only if
/// `verifier` accepts its evidence at `now` (Unix seconds).
pub async fn open<T: FrameTransport>(
    inner: T,
    verifier: &Verifier,
    client: &PeerId,
    worker: &PeerId,
    now: u64,
    config: &JobConfig,
) -> Result<(SecureTransport<T>, Verdict), OpenError> {
    let handshake = async {
        let pending = secure::client_handshake_unverified(inner, &prologue(client, worker)).await?;
        let verdict = verifier
            .verify(pending.evidence(), pending.worker_key(), worker, now)
            .await?;
        Ok::<_, OpenError>((pending.accept().with_max_frame(config.max_frame), verdict))
    };
    tokio::time::timeout(config.request_timeout, handshake)
        .await
        .map_err(|_| OpenError::Timeout(config.request_timeout))?
}
