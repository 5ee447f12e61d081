//! The official `openai` Python package against a real gateway and real workers: model
//! listing, a chat completion with and without streaming (same greedy text), a text
//! completion, and typed errors (404 unknown model, 400 bad request). The package is
//! installed into a virtual environment under the target dir on first use (pinned version).

use std::path::{Path, PathBuf};
use std::process::Command;

use cocoon_tests::{Gateway, LoopbackNet};

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
    let gateway = Gateway::start(&net, "gateway", &["--api-key", "test-key"]).unwrap();
    let url = format!("http://{}", gateway.addr);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("openai/check_gateway.py");
    let out = Command::new(python)
        .arg(script)
        .env("OPENAI_BASE_URL", format!("{url}/v1"))
        .env("OPENAI_API_KEY", "test-key")
        .output()
        .unwrap();
    drop(gateway);
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
