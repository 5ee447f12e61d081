//! `cocoon attest verify` on the real recorded TDX quotes: exit status 0 only when the
//! policy accepts, and the verdict names TCB status, MRTD, RTMRs and report data.

use std::path::PathBuf;
use std::process::Output;

use cocoon_tests::cocoon_bin;

/// Inside the recorded collateral's validity.
const NOW: &str = "1750809600";
const NOW_OUTDATED: &str = "1772323200";

fn data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../p2p/tests/data/dcap-qvl")
        .join(name)
}

fn verify(quote: &str, collateral: &str, now: &str, extra: &[&str]) -> Output {
    std::process::Command::new(cocoon_bin().unwrap())
        .args(["attest", "verify", "--quote"])
        .arg(data(quote))
        .arg("--collateral")
        .arg(data(collateral))
        .args(["--now", now])
        .args(extra)
        .output()
        .unwrap()
}

fn json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

#[test]
fn verify_accepts_only_what_the_policy_allows() {
    // The default policy allowlists no image: DCAP passes, the policy refuses, exit 1.
    let out = verify("tdx_quote", "tdx_quote_collateral.json", NOW, &["--json"]);
    assert_eq!(out.status.code(), Some(1));
    let v = json(&out);
    assert_eq!(v["accepted"], false);
    assert!(v["reason"].as_str().unwrap().contains("MRTD"), "{v}");
    let mrtd = v["mrtd"].as_str().unwrap().to_string();
    assert_eq!(mrtd.len(), 96);
    assert_eq!(v["rtmrs"].as_array().unwrap().len(), 4);
    assert_eq!(v["report_data"].as_str().unwrap().len(), 128);
    let status = v["tcb_status"].as_str().unwrap().to_string();

    // A policy naming the image and its TCB status accepts it: exit 0, human output.
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        format!(
            "allowed_mrtd = [\"{mrtd}\"]\nallowed_rtmrs = [[\"*\", \"*\", \"*\", \"*\"]]\n\
             accepted_tcb_statuses = [\"{status}\"]\n"
        ),
    )
    .unwrap();
    let policy = policy.display().to_string();
    let out = verify(
        "tdx_quote",
        "tdx_quote_collateral.json",
        NOW,
        &["--policy", &policy],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("ACCEPTED") && text.contains(&mrtd), "{text}");

    // Report data that does not match: refused.
    let zeros = "00".repeat(64);
    let out = verify(
        "tdx_quote",
        "tdx_quote_collateral.json",
        NOW,
        &["--policy", &policy, "--report-data", &zeros, "--json"],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(json(&out)["reason"]
        .as_str()
        .unwrap()
        .contains("report data"));

    // Outside the collateral's validity: DCAP itself fails.
    let out = verify(
        "tdx_quote",
        "tdx_quote_collateral.json",
        "1900000000",
        &["--policy", &policy, "--json"],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(json(&out)["mrtd"].is_null());
}

#[test]
fn the_outdated_tcb_quote_is_refused() {
    let out = verify(
        "tdx_quote_outdated",
        "tdx_quote_outdated_collateral.json",
        NOW_OUTDATED,
        &["--json"],
    );
    assert_eq!(out.status.code(), Some(1));
    let v = json(&out);
    assert_eq!(v["accepted"], false);
    assert!(v["reason"].as_str().unwrap().contains("TCB"), "{v}");
}
