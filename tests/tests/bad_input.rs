//! Bad input to the real `cocoon` binary gets a clear answer at start: a setting no advert
//! can carry, a taken port, an empty identity key, a damaged or empty payment journal.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use cocoon_tests::cocoon_bin;

/// Runs `cocoon args`; a command still running after `limit` is killed (and fails the
/// caller's expectations of an exit).
fn cocoon(args: &[&str], limit: Duration) -> Output {
    let mut child = Command::new(cocoon_bin().unwrap())
        .args(args)
        .env(
            "COCOON_HOME",
            std::env::temp_dir().join("cocoon-bad-input-home"),
        )
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    child.wait_with_output().unwrap()
}

/// A `cocoon node` on `dir`, listening on loopback only, plus `extra`.
fn node(dir: &Path, extra: &[&str]) -> Output {
    let dir = dir.to_str().unwrap();
    let mut args = vec!["node", "--data-dir", dir, "--no-mdns"];
    if !extra.contains(&"--listen") {
        args.extend(["--listen", "/ip4/127.0.0.1/udp/0/quic-v1"]);
    }
    args.extend(extra);
    cocoon(&args, Duration::from_secs(60))
}

/// It exited with an error whose text holds every word.
fn refused(out: &Output, words: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "not refused: {stderr}");
    for w in words {
        assert!(stderr.contains(w), "{w:?} not in: {stderr}");
    }
}

#[test]
fn settings_no_advert_can_carry_are_refused_naming_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    refused(
        &node(dir.path(), &["--max-concurrent", "5000"]),
        &["--max-concurrent 5000 is out of range", "1 to 4096"],
    );
    refused(
        &node(dir.path(), &["--price", "18446744073709551615,1"]),
        &["--price 18446744073709551615,1", "0 to 1000000000000"],
    );
}

#[test]
fn a_taken_port_is_refused_with_its_cause() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = format!("/ip4/127.0.0.1/tcp/{}", taken.local_addr().unwrap().port());
    refused(
        &node(dir.path(), &["--listen", &addr]),
        &[
            &format!("cannot listen on {addr}"),
            "Address already in use",
        ],
    );
}

#[test]
fn an_empty_identity_key_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("identity.key");
    std::fs::write(&key, b"").unwrap();
    refused(
        &node(dir.path(), &[]),
        &[&format!(
            "identity key file {} is empty (0 bytes)",
            key.display()
        )],
    );
}

#[test]
fn a_damaged_journal_is_refused_and_an_empty_one_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let journal = dir.path().join("journal.redb");
    let garbage: Vec<u8> = (0..40_000u32).map(|i| (i * 7919 % 251) as u8).collect();
    std::fs::write(&journal, &garbage).unwrap();
    let list = || {
        cocoon(
            &["channel", "list", "--data-dir", data],
            Duration::from_secs(60),
        )
    };
    refused(
        &list(),
        &[
            &format!("journal {} is corrupt", journal.display()),
            "restore the journal from a backup",
        ],
    );
    assert_eq!(std::fs::read(&journal).unwrap(), garbage, "left as it was");

    std::fs::write(&journal, b"").unwrap();
    let out = list();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("the journal file is empty"), "{stderr}");
}
