//! The official `openai` Python package against a real gateway and real workers: model
//! listing, a chat completion with and without streaming (same greedy text), a text
//! completion, and typed errors (404 unknown model, 400 bad request). The package is
//! installed into a virtual environment under the target dir on first use (pinned version).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use cocoon_tests::LoopbackNet;

/// The `openai` package version the test pins.
const OPENAI: &str = "openai==3.54.0";

/// `target/openai-venv` with the package installed.
fn venv() -> PathBuf {
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target");
    let venv = target.join("openai-venv");
    let python = venv.join("bin/python");
    let ready = Command::new(&python)
        .args(["-c", "import openai"])
        .status()
        .is_ok_and(|s| s.success());
    if !ready {
        let made = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .expect("python3 -m venv");
        assert!(made.success(), "cannot create {}", venv.display());
        let out = Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", OPENAI])
            .output()
            .expect("pip install");
        assert!(
            out.status.success(),
            "pip install {OPENAI}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    python
}

#[test]
fn the_official_openai_client_works_against_the_gateway() {
    let python = venv();
    let net = LoopbackNet::start("openai", &[vec![]]).expect("start the network");
    let mut gateway = Command::new(cocoon_tests::cocoon_bin().unwrap())
        .args([
            "gateway",
            "--listen",
            "127.0.0.1:0",
            "--api-key",
            "test-key",
        ])
        .arg("--bootstrap")
        .arg(net.bootstrap_addr())
        .arg("--insecure-dev-attestation")
        .arg("--data-dir")
        .arg(net.dir.path().join("gateway"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(gateway.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .trim()
        .strip_prefix("gateway listening on ")
        .unwrap()
        .to_string();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("openai/check_gateway.py");
    let out = Command::new(python)
        .arg(script)
        .env("OPENAI_BASE_URL", format!("{url}/v1"))
        .env("OPENAI_API_KEY", "test-key")
        .output()
        .unwrap();
    let _ = gateway.kill();
    let _ = gateway.wait();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
