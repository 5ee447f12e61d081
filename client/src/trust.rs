//! What a client trusts: the attestation policy (a TOML file or the safe default),
//! relaxed for development evidence only by `--insecure-dev-attestation`, and the verifier
//! it makes (DCAP collateral cached under `$COCOON_HOME/collateral`).

use std::path::{Path, PathBuf};

use cocoon_p2p::attest::attester::AttesterError;
use cocoon_p2p::attest::policy::Policy;
use cocoon_p2p::attest::tsm::TsmError;
use cocoon_p2p::attest::verifier::{Verifier, VerifierConfig};

/// The warning shown whenever development evidence is accepted.
pub const DEV_WARNING: &str = "INSECURE development attestation: no hardware vouches for this \
worker, its host can read your prompt and answer (accepted because of \
--insecure-dev-attestation)";

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
                    .unwrap_or_else(|| crate::cocoon_home().join("collateral")),
            ),
            pccs_url: self.pccs_url.clone(),
            ..Default::default()
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
