//! Attestation: evidence that a worker's enclave key belongs to measured code.
//!
//! A worker's Noise static key (its *enclave key*, not its libp2p identity) is bound into its
//! evidence through the 64-byte report data ([`binding`]). A client appraises the evidence
//! ([`tdx`] for Intel TDX quotes, verified with Intel DCAP through the pure-Rust `dcap-qvl`)
//! into an [`Appraisal`], and its [`policy`] decides whether to trust it before any prompt
//! byte is sent. A development evidence kind exists for machines without a TEE; it proves
//! nothing and the default policy refuses it.
//!
//! Worker side: the [`attester`] keeps the enclave key and its [`evidence`] (a TDX quote
//! from configfs-tsm, [`tsm`], or dev evidence) and rotates them together. Client side: the
//! [`verifier`] decodes evidence from the handshake, finds DCAP collateral (attached, cached
//! on disk, or from a PCCS), appraises, applies the policy and caches the result.
//!
//! Open for more evidence kinds (NVIDIA GPU attestation, AMD SEV-SNP): each appraises into
//! the same [`Appraisal`].

pub mod attester;
pub mod binding;
pub mod evidence;
pub mod policy;
pub mod tdx;
pub mod tsm;
pub mod verifier;

use serde::{Deserialize, Serialize};

/// Length of a TDX measurement register (SHA-384).
pub const MEASUREMENT_LEN: usize = 48;

/// A measurement register value.
pub type Measurement = [u8; MEASUREMENT_LEN];

/// What kind of evidence backs a worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum EvidenceKind {
    /// An Intel TDX quote.
    Tdx,
    /// Development evidence: no hardware root of trust. Never trust it in production.
    DevInsecure,
}

impl EvidenceKind {
    /// The name used in `--json` output and logs (`tdx`, `dev-insecure`).
    pub fn as_str(self) -> &'static str {
        match self {
            EvidenceKind::Tdx => "tdx",
            EvidenceKind::DevInsecure => "dev-insecure",
        }
    }
}

/// What an appraisal established about a piece of evidence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Appraisal {
    /// Evidence kind.
    pub kind: EvidenceKind,
    /// TCB status as reported by DCAP (`UpToDate`, `OutOfDate`, ...); `None` for dev evidence.
    pub tcb_status: Option<String>,
    /// Intel security advisories that apply.
    pub advisory_ids: Vec<String>,
    /// MRTD: the measurement of the initial TD image.
    pub mrtd: Measurement,
    /// RTMR0..3: runtime measurement registers.
    pub rtmrs: [Measurement; 4],
    /// The 64 bytes of report data the evidence carries.
    pub report_data: [u8; 64],
    /// Whether the TD runs in debug mode (its memory is readable by the host).
    pub debug: bool,
}

/// Why evidence could not be appraised.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AttestError {
    /// The quote or its collateral failed DCAP verification (bad signature, broken chain,
    /// revoked or expired collateral, malformed bytes).
    #[error("quote verification failed: {0}")]
    Verification(String),
    /// The collateral could not be parsed.
    #[error("malformed collateral: {0}")]
    Collateral(String),
    /// The quote is not a TDX quote (e.g. SGX).
    #[error("not a TDX quote")]
    NotTdx,
}
