//! Node-side attestation settings: what evidence a worker presents, and what a client trusts.
//!
//! Worker: `attestation = "auto"` (the default) uses Intel TDX when configfs-tsm can produce
//! quotes and otherwise says why not and falls back to development evidence, which clients
//! with the default policy refuse; `"tdx"` refuses to start without TDX; `"dev-insecure"`
//! always uses dev evidence. Client: a [`Policy`] from a TOML file (or the safe default),
//! relaxed for dev evidence only by `--insecure-dev-attestation`.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use cocoon_p2p::attest::attester::{Attester, AttesterConfig, AttesterError, EvidenceSource};
use cocoon_p2p::attest::policy::Policy;
use cocoon_p2p::attest::tsm::{Tsm, TsmError, DEFAULT_ROOT};
use cocoon_p2p::attest::verifier::{Verifier, VerifierConfig};
use cocoon_p2p::PeerId;

/// The warning shown whenever development evidence is accepted.
pub const DEV_WARNING: &str = "INSECURE development attestation: no hardware vouches for this \
worker, its host can read your prompt and answer (accepted because of \
--insecure-dev-attestation)";

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

/// Why attestation could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AttestationSetupError {
    /// TDX was required but is not available.
    #[error("attestation = \"tdx\" but this machine cannot produce TDX quotes: {0}")]
    TdxUnavailable(TsmError),
    /// The first credentials could not be made.
    #[error("cannot create attestation evidence: {0}")]
    Attester(#[from] AttesterError),
    /// The collateral or policy file could not be read.
    #[error("cannot read {0}: {1}")]
    Read(PathBuf, std::io::Error),
    /// The policy file is not a valid policy.
    #[error("policy file {0}: {1}")]
    Policy(PathBuf, toml::de::Error),
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
        crate::clock::unix_now(),
    )?;
    Ok((Arc::new(attester), why_dev))
}

/// Client-side trust settings.
#[derive(Clone, Debug, Default)]
pub struct ClientTrust {
    /// A policy file (TOML, see [`Policy`]); default: the safe default policy.
    pub policy_file: Option<PathBuf>,
    /// Accept development evidence (`--insecure-dev-attestation`).
    pub insecure_dev: bool,
    /// Directory of cached DCAP collateral. Default: `$COCOON_HOME/collateral`.
    pub collateral_dir: Option<PathBuf>,
    /// PCCS URL for collateral. Default: none.
    pub pccs_url: Option<String>,
}

/// Reads a policy file.
pub fn load_policy(path: &Path) -> Result<Policy, AttestationSetupError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| AttestationSetupError::Read(path.to_path_buf(), e))?;
    toml::from_str(&text).map_err(|e| AttestationSetupError::Policy(path.to_path_buf(), e))
}

impl ClientTrust {
    /// The verifier these settings describe.
    pub fn verifier(&self) -> Result<Verifier, AttestationSetupError> {
        let mut policy = match &self.policy_file {
            Some(p) => load_policy(p)?,
            None => Policy::default(),
        };
        if self.insecure_dev {
            policy.allow_dev_insecure = true;
        }
        Ok(Verifier::new(VerifierConfig {
            policy,
            collateral_dir: Some(
                self.collateral_dir
                    .clone()
                    .unwrap_or_else(|| crate::models::cocoon_home().join("collateral")),
            ),
            pccs_url: self.pccs_url.clone(),
            ..Default::default()
        }))
    }
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

    #[test]
    fn policy_files_load_and_typos_fail() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("policy.toml");
        std::fs::write(
            &good,
            "allowed_mrtd = [\"ab\"]\naccepted_tcb_statuses = [\"UpToDate\", \"SWHardeningNeeded\"]\n",
        )
        .unwrap();
        let p = load_policy(&good).unwrap();
        assert_eq!(p.allowed_mrtd, vec!["ab".to_string()]);
        assert!(!p.allow_dev_insecure);
        let bad = dir.path().join("bad.toml");
        std::fs::write(&bad, "allow_dbug = true\n").unwrap();
        let err = load_policy(&bad).unwrap_err().to_string();
        assert!(err.contains("allow_dbug"), "{err}");
        let trust = ClientTrust {
            policy_file: Some(good),
            insecure_dev: true,
            ..Default::default()
        };
        assert!(trust.verifier().unwrap().policy().allow_dev_insecure);
    }
}
