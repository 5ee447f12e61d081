//! Intel TDX quotes: verification with Intel DCAP (`dcap-qvl`, pure Rust) into an
//! [`Appraisal`].
//!
//! Verification checks the quote's signature chain up to Intel's root CA, the QE identity,
//! the TCB info and CRLs in the collateral, at the given `now` (so results are reproducible
//! and collateral expiry is enforced). It says what the TD is; whether to trust that is the
//! [`super::policy`]'s decision.

use dcap_qvl::QuoteCollateralV3;

use super::{Appraisal, AttestError, EvidenceKind, Measurement};

/// Bit 0 of a TD's attributes: the TD is debuggable (the host can read its memory).
const TD_ATTRIBUTE_DEBUG: u8 = 0x01;

/// Parses DCAP collateral from its JSON form (as PCCS-derived caches store it).
pub fn parse_collateral(json: &[u8]) -> Result<QuoteCollateralV3, AttestError> {
    serde_json::from_slice(json).map_err(|e| AttestError::Collateral(e.to_string()))
}

/// Verifies a TDX quote against its collateral at `now` (Unix seconds).
pub fn appraise(
    quote: &[u8],
    collateral: &QuoteCollateralV3,
    now: u64,
) -> Result<Appraisal, AttestError> {
    let verified = dcap_qvl::verify::verify(quote, collateral, now)
        .map_err(|e| AttestError::Verification(format!("{e:#}")))?;
    let r = verified.report.as_td10().ok_or(AttestError::NotTdx)?;
    Ok(Appraisal {
        kind: EvidenceKind::Tdx,
        tcb_status: Some(verified.status),
        advisory_ids: verified.advisory_ids,
        mrtd: r.mr_td,
        rtmrs: [r.rt_mr0, r.rt_mr1, r.rt_mr2, r.rt_mr3],
        report_data: r.report_data,
        debug: r.td_attributes[0] & TD_ATTRIBUTE_DEBUG != 0,
    })
}

/// The MRTD a quote claims, read without verifying it (for display on the worker's side).
pub fn quote_mrtd(quote: &[u8]) -> Option<Measurement> {
    let parsed = dcap_qvl::quote::Quote::parse(quote).ok()?;
    parsed.report.as_td10().map(|r| r.mr_td)
}
