//! What evidence a worker presents: `attestation = "auto"` (the default) uses Intel TDX
//! when configfs-tsm can produce quotes and otherwise says why not and falls back to
//! development evidence, which clients with the default policy refuse; `"tdx"` refuses to
//! start without TDX; `"dev-insecure"` always uses dev evidence.

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use cocoon_client::trust::AttestationSetupError;
use cocoon_p2p::attest::attester::{Attester, AttesterConfig, EvidenceSource};
use cocoon_p2p::attest::tsm::{Tsm, DEFAULT_ROOT};
use cocoon_p2p::PeerId;

/// Which evidence a worker presents.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttestationMode {
    /// TDX when available, else dev evidence (saying so).
    Auto,
    /// TDX or nothing.
    Tdx,
    /// Dev evidence always.
    DevInsecure,
}

impl FromStr for AttestationMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "tdx" => Ok(Self::Tdx),
            "dev-insecure" => Ok(Self::DevInsecure),
            other => Err(format!(
                "attestation must be auto, tdx or dev-insecure, not {other:?}"
            )),
        }
    }
}

/// A worker's attestation settings.
#[derive(Clone, Debug)]
pub struct WorkerAttestation {
    /// Mode. Default: auto.
    pub mode: AttestationMode,
    /// configfs-tsm report directory. Default: [`DEFAULT_ROOT`].
    pub tsm_root: PathBuf,
    /// DCAP collateral (JSON) to attach to TDX evidence. Default: none.
    pub collateral_file: Option<PathBuf>,
    /// Key and evidence lifetime and rotation.
    pub attester: AttesterConfig,
}

impl Default for WorkerAttestation {
    fn default() -> Self {
        Self {
            mode: AttestationMode::Auto,
            tsm_root: DEFAULT_ROOT.into(),
            collateral_file: None,
            attester: AttesterConfig::default(),
        }
    }
}

/// Makes the worker's attester; the string says why dev evidence is used, if it is.
/// Blocking (configfs-tsm I/O).
pub fn worker_attester(
    settings: &WorkerAttestation,
    peer_id: PeerId,
) -> Result<(Arc<Attester>, Option<String>), AttestationSetupError> {
    let (source, why_dev) = match settings.mode {
        AttestationMode::DevInsecure => (
            EvidenceSource::DevInsecure,
            Some("attestation = dev-insecure".to_string()),
        ),
        AttestationMode::Tdx | AttestationMode::Auto => match Tsm::detect(&settings.tsm_root) {
            Ok(tsm) => {
                let collateral = match &settings.collateral_file {
                    Some(p) => Some(
                        std::fs::read(p).map_err(|e| AttestationSetupError::Read(p.clone(), e))?,
                    ),
                    None => None,
                };
                (EvidenceSource::Tdx { tsm, collateral }, None)
            }
            Err(e) if settings.mode == AttestationMode::Tdx => {
                return Err(AttestationSetupError::TdxUnavailable(e))
            }
            Err(e) => (EvidenceSource::DevInsecure, Some(e.to_string())),
        },
    };
    let attester = Attester::new(
        source,
        peer_id,
        settings.attester.clone(),
        cocoon_client::clock::unix_now(),
    )?;
    Ok((Arc::new(attester), why_dev))
}

#[cfg(test)]
mod tests {
    use super::*;
    use cocoon_p2p::attest::EvidenceKind;

    #[test]
    fn auto_falls_back_to_dev_and_says_why_tdx_mode_refuses() {
        let dir = tempfile::tempdir().unwrap();
        let peer = libp2p::identity::Keypair::generate_ed25519()
            .public()
            .to_peer_id();
        let settings = WorkerAttestation {
            tsm_root: dir.path().join("no-tsm"),
            ..Default::default()
        };
        let (attester, why) = worker_attester(&settings, peer).unwrap();
        assert_eq!(attester.kind(), EvidenceKind::DevInsecure);
        assert!(why.unwrap().contains("configfs-tsm"));
        let tdx = WorkerAttestation {
            mode: AttestationMode::Tdx,
            ..settings
        };
        assert!(matches!(
            worker_attester(&tdx, peer),
            Err(AttestationSetupError::TdxUnavailable(_))
        ));
        assert!("sgx".parse::<AttestationMode>().is_err());
    }
}
