//! The client's trust policy: which appraised evidence it accepts.
//!
//! Safe by default: only `UpToDate` TCBs, no debug TDs, no development evidence, evidence
//! that expires within a day, and *explicit* allowlists of measurements: an empty MRTD or
//! RTMR allowlist accepts nothing, so an operator must name the images they trust. The
//! binding check (report data = hash of the presented key, peer and expiry) always runs.

use serde::{Deserialize, Serialize};

use super::binding::Binding;
use super::{Appraisal, EvidenceKind, Measurement};

/// A set of RTMR values; `"*"` accepts any value of that register.
pub type RtmrSet = [String; 4];

/// Which evidence a client trusts. Loaded from TOML (`--policy FILE`); measurements in hex.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Policy {
    /// Accepted MRTD values (96 hex digits). Default: none.
    pub allowed_mrtd: Vec<String>,
    /// Accepted RTMR0..3 sets; a register given as `"*"` is not checked. Default: none.
    pub allowed_rtmrs: Vec<RtmrSet>,
    /// Accepted DCAP TCB statuses. Default: `["UpToDate"]`.
    pub accepted_tcb_statuses: Vec<String>,
    /// Accept debug TDs (the host can read their memory). Default: false.
    pub allow_debug: bool,
    /// Accept development evidence, which proves nothing (`--insecure-dev-attestation`).
    /// Default: false.
    pub allow_dev_insecure: bool,
    /// Longest evidence lifetime accepted, in seconds from now to its expiry. Default: 86400.
    pub max_evidence_lifetime_secs: u64,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            allowed_mrtd: Vec::new(),
            allowed_rtmrs: Vec::new(),
            accepted_tcb_statuses: vec!["UpToDate".into()],
            allow_debug: false,
            allow_dev_insecure: false,
            max_evidence_lifetime_secs: 24 * 3600,
        }
    }
}

/// Why the policy refused evidence.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// The report data does not bind the presented key, peer and expiry.
    #[error("the evidence does not bind the presented enclave key, peer id and expiry")]
    BindingMismatch,
    /// The evidence has expired.
    #[error("evidence expired at {expires_at}, now is {now}")]
    Expired {
        /// Its expiry.
        expires_at: u64,
        /// The time of the check.
        now: u64,
    },
    /// The evidence claims a lifetime longer than the policy allows.
    #[error("evidence valid for {lifetime} s, more than the {max} s the policy allows")]
    LifetimeTooLong {
        /// Seconds until expiry.
        lifetime: u64,
        /// The policy's maximum.
        max: u64,
    },
    /// Development evidence under a policy that refuses it.
    #[error("development evidence is insecure and refused (use --insecure-dev-attestation to accept it)")]
    DevEvidenceRefused,
    /// A debug TD.
    #[error("the TD runs in debug mode")]
    Debug,
    /// The platform's TCB status is not accepted.
    #[error("TCB status {status} is not accepted (accepted: {accepted:?})")]
    TcbStatus {
        /// The status.
        status: String,
        /// What the policy accepts.
        accepted: Vec<String>,
    },
    /// MRTD not on the allowlist.
    #[error("MRTD {0} is not on the allowlist")]
    Mrtd(String),
    /// RTMRs match no allowed set.
    #[error("RTMRs [{}] match no allowed set", .0.join(", "))]
    Rtmrs(Vec<String>),
}

fn hex(m: &Measurement) -> String {
    m.iter().map(|b| format!("{b:02x}")).collect()
}

impl Policy {
    /// The default policy plus development evidence: for demos and tests only.
    pub fn insecure_dev() -> Self {
        Self {
            allow_dev_insecure: true,
            ..Self::default()
        }
    }

    /// Decides whether `appraisal` is trusted as evidence for `expected` at `now`: what the
    /// evidence says ([`Policy::check_appraisal`]), then that it binds the presented key, peer
    /// and expiry, then its lifetime.
    pub fn check(
        &self,
        appraisal: &Appraisal,
        expected: &Binding,
        now: u64,
    ) -> Result<(), PolicyError> {
        self.check_appraisal(appraisal)?;
        if appraisal.report_data != expected.report_data() {
            return Err(PolicyError::BindingMismatch);
        }
        if now > expected.expires_at {
            return Err(PolicyError::Expired {
                expires_at: expected.expires_at,
                now,
            });
        }
        let lifetime = expected.expires_at - now;
        if lifetime > self.max_evidence_lifetime_secs {
            return Err(PolicyError::LifetimeTooLong {
                lifetime,
                max: self.max_evidence_lifetime_secs,
            });
        }
        Ok(())
    }

    /// Decides whether what the evidence says is acceptable, without the binding: kind, debug
    /// mode, TCB status, MRTD and RTMRs. `cocoon attest verify` uses this on a bare quote.
    pub fn check_appraisal(&self, appraisal: &Appraisal) -> Result<(), PolicyError> {
        match appraisal.kind {
            EvidenceKind::DevInsecure if self.allow_dev_insecure => return Ok(()),
            EvidenceKind::DevInsecure => return Err(PolicyError::DevEvidenceRefused),
            EvidenceKind::Tdx => {}
        }
        if appraisal.debug && !self.allow_debug {
            return Err(PolicyError::Debug);
        }
        let status = appraisal.tcb_status.clone().unwrap_or_default();
        if !self.accepted_tcb_statuses.contains(&status) {
            return Err(PolicyError::TcbStatus {
                status,
                accepted: self.accepted_tcb_statuses.clone(),
            });
        }
        let mrtd = hex(&appraisal.mrtd);
        if !self
            .allowed_mrtd
            .iter()
            .any(|m| m.eq_ignore_ascii_case(&mrtd))
        {
            return Err(PolicyError::Mrtd(mrtd));
        }
        let rtmrs: Vec<String> = appraisal.rtmrs.iter().map(hex).collect();
        let matches = |set: &RtmrSet| {
            set.iter()
                .zip(&rtmrs)
                .all(|(want, have)| want == "*" || want.eq_ignore_ascii_case(have))
        };
        if !self.allowed_rtmrs.iter().any(matches) {
            return Err(PolicyError::Rtmrs(rtmrs));
        }
        Ok(())
    }
}
