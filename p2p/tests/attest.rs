//! Attestation on real recorded Intel TDX quotes (test vectors from the dcap-qvl 0.7.1 crate
//! package, see tests/data/dcap-qvl/README.md).

use cocoon_p2p::attest::binding::Binding;
use cocoon_p2p::attest::policy::{Policy, PolicyError};
use cocoon_p2p::attest::{tdx, Appraisal, AttestError, EvidenceKind};
use libp2p::identity::Keypair;

const QUOTE: &[u8] = include_bytes!("data/dcap-qvl/tdx_quote");
const COLLATERAL: &[u8] = include_bytes!("data/dcap-qvl/tdx_quote_collateral.json");
const OUTDATED: &[u8] = include_bytes!("data/dcap-qvl/tdx_quote_outdated");
const OUTDATED_COLLATERAL: &[u8] =
    include_bytes!("data/dcap-qvl/tdx_quote_outdated_collateral.json");
/// 2025-06-25T00:00:00Z, inside the collateral's validity (2025-06-19 .. 2025-07-19).
const NOW: u64 = 1_750_809_600;
/// 2026-03-01T00:00:00Z, inside the outdated quote's collateral validity.
const NOW_OUTDATED: u64 = 1_772_323_200;

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn appraise() -> Appraisal {
    tdx::appraise(QUOTE, &tdx::parse_collateral(COLLATERAL).unwrap(), NOW)
        .expect("a real quote verifies")
}

/// A policy that trusts exactly the sample quote's image.
fn policy_for(a: &Appraisal) -> Policy {
    Policy {
        allowed_mrtd: vec![hex(&a.mrtd)],
        allowed_rtmrs: vec![a.rtmrs.map(|r| hex(&r))],
        accepted_tcb_statuses: vec![a.tcb_status.clone().unwrap()],
        ..Policy::default()
    }
}

/// Pretends the appraisal's report data binds this key (real quotes bind someone else's
/// key): lets the policy's other checks be tested on real measurements.
fn bound(mut a: Appraisal, b: &Binding) -> Appraisal {
    a.report_data = b.report_data();
    a
}

fn binding(expires_at: u64) -> Binding {
    Binding {
        enclave_key: [9; 32],
        peer_id: Keypair::generate_ed25519().public().to_peer_id(),
        expires_at,
    }
}

#[test]
fn a_real_quote_verifies() {
    let a = appraise();
    assert_eq!(a.kind, EvidenceKind::Tdx);
    assert!(a.tcb_status.is_some());
    assert!(!a.debug);
    assert_ne!(a.mrtd, [0; 48]);
    eprintln!(
        "status {:?}, advisories {:?}, mrtd {}",
        a.tcb_status,
        a.advisory_ids,
        hex(&a.mrtd)
    );
}

#[test]
fn one_changed_byte_fails() {
    let collateral = tdx::parse_collateral(COLLATERAL).unwrap();
    // Bytes in the header, the TD report body (MRTD, report data) and the signature area.
    for at in [10, 200, 600, 700, QUOTE.len() - 100] {
        let mut quote = QUOTE.to_vec();
        quote[at] ^= 0x01;
        assert!(
            matches!(
                tdx::appraise(&quote, &collateral, NOW),
                Err(AttestError::Verification(_))
            ),
            "byte {at} flipped and the quote still verified"
        );
    }
}

#[test]
fn collateral_outside_its_validity_fails() {
    let collateral = tdx::parse_collateral(COLLATERAL).unwrap();
    assert!(tdx::appraise(QUOTE, &collateral, NOW + 365 * 24 * 3600).is_err());
}

#[test]
fn the_outdated_tcb_quote_is_refused_by_the_strict_policy() {
    // Its platform TCB is below every level Intel's TCB info lists: strict DCAP verification
    // refuses it outright (only dcap-qvl's deliberate override feature would pass it).
    let err = tdx::appraise(
        OUTDATED,
        &tdx::parse_collateral(OUTDATED_COLLATERAL).unwrap(),
        NOW_OUTDATED,
    )
    .expect_err("an outdated TCB must not verify");
    assert!(err.to_string().contains("TCB"), "{err}");

    // And a status the policy does not list is refused by the policy.
    let b = binding(NOW + 3600);
    let a = bound(appraise(), &b);
    let mut policy = policy_for(&a);
    policy.accepted_tcb_statuses = vec!["SomethingElse".into()];
    assert!(matches!(
        policy.check(&a, &b, NOW),
        Err(PolicyError::TcbStatus { .. })
    ));
}

#[test]
fn a_real_quote_not_binding_the_presented_key_is_refused() {
    let a = appraise();
    let policy = policy_for(&a);
    let b = binding(NOW + 3600);
    assert_eq!(policy.check(&a, &b, NOW), Err(PolicyError::BindingMismatch));
    // The same measurements, bound to the key, pass every other check.
    assert_eq!(policy.check(&bound(a, &b), &b, NOW), Ok(()));
}

#[test]
fn policy_refusals() {
    let b = binding(NOW + 3600);
    let a = bound(appraise(), &b);
    let good = policy_for(&a);

    // Default policy: no image allowlisted.
    let strict_default = Policy {
        accepted_tcb_statuses: good.accepted_tcb_statuses.clone(),
        ..Policy::default()
    };
    assert!(matches!(
        strict_default.check(&a, &b, NOW),
        Err(PolicyError::Mrtd(_))
    ));
    // Another image's RTMRs.
    let mut other = good.clone();
    other.allowed_rtmrs[0][3] = "ff".repeat(48);
    assert!(matches!(
        other.check(&a, &b, NOW),
        Err(PolicyError::Rtmrs(_))
    ));
    // A wildcard register accepts any value.
    other.allowed_rtmrs[0][3] = "*".into();
    assert_eq!(other.check(&a, &b, NOW), Ok(()));
    // Expired, and too long-lived.
    assert!(matches!(
        good.check(&a, &b, b.expires_at + 1),
        Err(PolicyError::Expired { .. })
    ));
    let long = binding(NOW + 10 * 24 * 3600);
    assert!(matches!(
        good.check(&bound(a.clone(), &long), &long, NOW),
        Err(PolicyError::LifetimeTooLong { .. })
    ));
    // A debug TD.
    let debug = Appraisal {
        debug: true,
        ..a.clone()
    };
    assert_eq!(good.check(&debug, &b, NOW), Err(PolicyError::Debug));
    // Development evidence: refused by default, accepted only when asked for.
    let dev = Appraisal {
        kind: EvidenceKind::DevInsecure,
        tcb_status: None,
        ..a
    };
    assert_eq!(
        Policy::default().check(&dev, &b, NOW),
        Err(PolicyError::DevEvidenceRefused)
    );
    assert_eq!(Policy::insecure_dev().check(&dev, &b, NOW), Ok(()));
}

#[test]
fn policy_files_parse_and_reject_typos() {
    let p: Policy = toml_like(r#"{"allowed_mrtd": ["aa"], "allow_debug": false}"#).unwrap();
    assert_eq!(p.allowed_mrtd, vec!["aa".to_string()]);
    assert_eq!(p.accepted_tcb_statuses, vec!["UpToDate".to_string()]);
    assert!(toml_like::<Policy>(r#"{"allow_dbug": true}"#).is_err());
}

fn toml_like<T: serde::de::DeserializeOwned>(json: &str) -> Result<T, serde_json::Error> {
    serde_json::from_str(json)
}
