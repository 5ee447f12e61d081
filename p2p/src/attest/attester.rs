//! The worker's side of attestation: an enclave key and the evidence that binds it.
//!
//! The [`Attester`] holds the current [`Credentials`]: a fresh X25519 enclave key that exists
//! only in this process's memory, and evidence binding it (with the peer id and an expiry)
//! through the report data. [`Attester::rotate_if_due`] replaces both together before the
//! evidence expires: a new key, a new quote. Jobs already running keep the session keys
//! their handshake derived; new handshakes get the new credentials.
//!
//! Sources: a TDX quote from configfs-tsm ([`super::tsm`]), or development evidence, which
//! proves nothing and which default client policies refuse.

use std::sync::{Arc, RwLock};

use libp2p::PeerId;

use super::binding::Binding;
use super::evidence::{dev_measurement, Evidence, EvidenceBody, EvidenceError};
use super::tsm::{Tsm, TsmError};
use super::{EvidenceKind, Measurement};
use crate::secure::EnclaveKey;

/// Where evidence comes from.
#[derive(Clone, Debug)]
pub enum EvidenceSource {
    /// TDX quotes from configfs-tsm, with optional DCAP collateral (JSON) to attach.
    Tdx {
        /// The quote generator.
        tsm: Tsm,
        /// Collateral for this platform, attached so clients can verify offline.
        collateral: Option<Vec<u8>>,
    },
    /// Development evidence. INSECURE: no hardware vouches for anything.
    DevInsecure,
}

impl EvidenceSource {
    /// The kind of evidence this source produces.
    pub fn kind(&self) -> EvidenceKind {
        match self {
            EvidenceSource::Tdx { .. } => EvidenceKind::Tdx,
            EvidenceSource::DevInsecure => EvidenceKind::DevInsecure,
        }
    }
}

/// Attester settings.
#[derive(Clone, Debug)]
pub struct AttesterConfig {
    /// Evidence lifetime in seconds. Default: 3600 (clients accept up to a day by default).
    pub lifetime_secs: u64,
    /// Rotate when less than this many seconds of validity remain. Default: 900.
    pub rotate_before_secs: u64,
}

impl Default for AttesterConfig {
    fn default() -> Self {
        Self {
            lifetime_secs: 3600,
            rotate_before_secs: 900,
        }
    }
}

/// Why credentials could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AttesterError {
    /// The TEE did not produce a quote.
    #[error(transparent)]
    Tsm(#[from] TsmError),
    /// The evidence could not be encoded.
    #[error(transparent)]
    Evidence(#[from] EvidenceError),
}

/// An enclave key with its encoded evidence.
#[derive(Debug)]
pub struct Credentials {
    /// The enclave key (private half in memory only).
    pub key: EnclaveKey,
    /// The encoded [`Evidence`] sent in handshakes.
    pub evidence: Vec<u8>,
    /// When the evidence expires.
    pub expires_at: u64,
    /// The measurement the evidence reports (MRTD for TDX, self-reported for dev).
    pub measurement: Option<Measurement>,
}

/// Holds and rotates a worker's credentials.
#[derive(Debug)]
pub struct Attester {
    source: EvidenceSource,
    peer_id: PeerId,
    config: AttesterConfig,
    current: RwLock<Arc<Credentials>>,
}

impl Attester {
    /// Makes the first credentials at `now`. Blocking for TDX (configfs-tsm file I/O).
    pub fn new(
        source: EvidenceSource,
        peer_id: PeerId,
        config: AttesterConfig,
        now: u64,
    ) -> Result<Self, AttesterError> {
        let first = make(&source, &peer_id, now + config.lifetime_secs)?;
        Ok(Self {
            source,
            peer_id,
            config,
            current: RwLock::new(Arc::new(first)),
        })
    }

    /// The evidence kind.
    pub fn kind(&self) -> EvidenceKind {
        self.source.kind()
    }

    /// The credentials new handshakes use.
    pub fn current(&self) -> Arc<Credentials> {
        self.current.read().expect("credentials lock").clone()
    }

    /// Replaces key and evidence when they are close to expiry; returns whether it rotated.
    /// Blocking for TDX.
    pub fn rotate_if_due(&self, now: u64) -> Result<bool, AttesterError> {
        let expires_at = self.current().expires_at;
        if now.saturating_add(self.config.rotate_before_secs) < expires_at {
            return Ok(false);
        }
        self.rotate(now)?;
        Ok(true)
    }

    /// Replaces key and evidence now.
    pub fn rotate(&self, now: u64) -> Result<(), AttesterError> {
        let next = make(&self.source, &self.peer_id, now + self.config.lifetime_secs)?;
        *self.current.write().expect("credentials lock") = Arc::new(next);
        Ok(())
    }
}

fn make(
    source: &EvidenceSource,
    peer_id: &PeerId,
    expires_at: u64,
) -> Result<Credentials, AttesterError> {
    let key = EnclaveKey::generate();
    let binding = Binding {
        enclave_key: key.public(),
        peer_id: *peer_id,
        expires_at,
    };
    let (evidence, measurement) = match source {
        EvidenceSource::DevInsecure => (Evidence::dev_insecure(&binding), Some(dev_measurement())),
        EvidenceSource::Tdx { tsm, collateral } => {
            let quote = tsm.quote(&binding.report_data())?;
            let measurement = super::tdx::quote_mrtd(&quote);
            (
                Evidence {
                    expires_at,
                    body: EvidenceBody::Tdx {
                        quote,
                        collateral: collateral.clone(),
                    },
                },
                measurement,
            )
        }
    };
    Ok(Credentials {
        key,
        evidence: evidence.encode()?,
        expires_at,
        measurement,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use libp2p::identity::Keypair;

    #[test]
    fn rotation_replaces_key_and_evidence_together() {
        let peer = Keypair::generate_ed25519().public().to_peer_id();
        let a = Attester::new(
            EvidenceSource::DevInsecure,
            peer,
            AttesterConfig::default(),
            1_000,
        )
        .unwrap();
        let first = a.current();
        assert_eq!(first.expires_at, 4_600);
        assert!(!a.rotate_if_due(1_000 + 2_000).unwrap(), "not yet due");
        assert!(a.rotate_if_due(4_600 - 899).unwrap());
        let second = a.current();
        assert_ne!(first.key.public(), second.key.public());
        assert_ne!(first.evidence, second.evidence);
        let ev = Evidence::decode(&second.evidence).unwrap();
        let EvidenceBody::DevInsecure { report_data, .. } = ev.body else {
            panic!("dev evidence expected")
        };
        let binding = Binding {
            enclave_key: second.key.public(),
            peer_id: peer,
            expires_at: second.expires_at,
        };
        assert_eq!(report_data, binding.report_data().to_vec());
    }
}
