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
#[non_exhaustive]
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

#[cfg(test)]
mod tests {
    //! The client's side of the opening under hostile handshake payloads.
    use super::*;
    use crate::attest::binding::Binding;
    use crate::attest::evidence::{Evidence, EvidenceBody};
    use crate::attest::policy::Policy;
    use crate::attest::verifier::VerifierConfig;
    use crate::frame::FramedStream;
    use crate::fuzz::{apply, mutations};
    use crate::secure::EnclaveKey;
    use crate::testing::pipe;
    use libp2p::identity::Keypair;
    use proptest::prelude::*;

    const NOW: u64 = 1_000;

    fn peer() -> PeerId {
        Keypair::generate_ed25519().public().to_peer_id()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]

        #[test]
        fn hostile_evidence_is_refused_before_the_channel_opens(
            mutations in mutations(),
            garbage in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..1024)),
        ) {
            let (client, worker) = (peer(), peer());
            let key = EnclaveKey::generate();
            let binding = Binding {
                enclave_key: key.public(),
                peer_id: worker,
                expires_at: NOW + 600,
            };
            let valid = Evidence::dev_insecure(&binding).encode().unwrap();
            let evidence = garbage.unwrap_or_else(|| apply(valid, &mutations));
            let verifier = Verifier::new(VerifierConfig {
                policy: Policy::insecure_dev(),
                ..Default::default()
            });
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .unwrap();
            let opened = rt.block_on(async {
                let (a, b) = pipe();
                let (c, w) = (FramedStream::new(a, 1 << 20), FramedStream::new(b, 1 << 20));
                let config = JobConfig::default();
                let prologue = prologue(&client, &worker);
                let (opened, _) = futures::join!(
                    open(c, &verifier, &client, &worker, NOW, &config),
                    secure::worker_handshake(w, &prologue, &key, &evidence),
                );
                opened
            });
            match opened {
                // Only evidence that binds this key, peer and expiry opens a channel.
                Ok((_, verdict)) => {
                    let decoded = Evidence::decode(&evidence).unwrap();
                    let EvidenceBody::DevInsecure { report_data, .. } = decoded.body else {
                        panic!("dev evidence became {:?}", decoded.kind());
                    };
                    prop_assert_eq!(verdict.expires_at, binding.expires_at);
                    prop_assert_eq!(&report_data[..], &binding.report_data()[..]);
                }
                Err(OpenError::Refused(_)) => {}
                Err(e) => panic!("the handshake itself failed: {e}"),
            }
        }
    }
}
