//! [`LocalChain`]: a private TON chain for tests and demos, `ton/contract/localchain.mjs`
//! (the real TVM emulator of `@ton/sandbox` behind the toncenter v2 API) run as a child
//! process. It speaks [`Chain`] through an [`HttpChain`], plus the local extras: a faucet,
//! a settable clock and fee statistics.
//!
//! The child gets a piped stdin and exits when it closes, so it dies with this process even
//! when it is killed; dropping the [`LocalChain`] also kills it. Its log (stderr, a line per
//! request) is kept in memory, the last [`LOG_LINES`] lines, for diagnostics.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::future::BoxFuture;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStderr, ChildStdin, Command};
use tokio::task::JoinHandle;
use tonlib_core::TonAddress;

use crate::chain::{AccountState, Chain, ChainError, GetMethodResult, StackEntry, TxInfo};
use crate::http::{HttpChain, HttpChainConfig};

/// The line the local chain prints when it is ready, before its URL.
const READY_PREFIX: &str = "localchain listening ";

/// Lines of the local chain's log kept: the last 64.
pub const LOG_LINES: usize = 64;

/// Environment variable naming the contract directory at run time (overrides the build-time
/// location).
pub const CONTRACT_DIR_ENV: &str = "COCOON_CONTRACT_DIR";

/// Why the local chain did not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LocalChainError {
    /// `node` could not be run.
    #[error("cannot run `{}` (is Node.js installed?): {source}", node.display())]
    Node {
        /// The program.
        node: PathBuf,
        /// The spawn error.
        source: std::io::Error,
    },
    /// The npm packages are missing.
    #[error("{}/node_modules is missing: run `npm ci` in {}", .0.display(), .0.display())]
    NotInstalled(PathBuf),
    /// No contract directory found.
    #[error("no ton/contract directory (set {CONTRACT_DIR_ENV})")]
    NoContractDir,
    /// The npm packages could not be installed.
    #[error("{0}")]
    Install(String),
    /// The child exited or printed something else before it was ready.
    #[error("the local chain did not start: {0}")]
    Startup(String),
    /// The HTTP client could not be built.
    #[error(transparent)]
    Chain(#[from] ChainError),
}

/// How to start the local chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalChainConfig {
    /// `ton/contract` (holds `localchain.mjs` and `node_modules`).
    pub contract_dir: PathBuf,
    /// Persist the chain to this file and restore it at start (`--state`); `None`: in memory.
    pub state: Option<PathBuf>,
    /// Fix the chain's clock at this unixtime (`--now`); `None`: wall clock until set.
    pub now: Option<u32>,
    /// The Node.js program: `node`.
    pub node: PathBuf,
    /// How long to wait for the ready line: 30 s.
    pub startup_timeout: Duration,
}

impl LocalChainConfig {
    /// In memory, wall clock, `node` from `PATH`.
    pub fn new(contract_dir: impl Into<PathBuf>) -> Self {
        Self {
            contract_dir: contract_dir.into(),
            state: None,
            now: None,
            node: "node".into(),
            startup_timeout: Duration::from_secs(30),
        }
    }
}

/// Fee and traffic counters of the local chain (`GET /local/stats`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalStats {
    /// Transactions executed.
    pub transactions: u64,
    /// External messages accepted.
    pub external_messages: u64,
    /// Fees of all transactions, nanoTON.
    pub fees: u128,
    /// Per inbound op (`0x6f70656e`, `external`, `empty`): count and fees.
    pub by_op: BTreeMap<String, (u64, u128)>,
}

/// A running local chain; killed on drop.
pub struct LocalChain {
    http: HttpChain,
    log: Log,
    _child: Child,
    _stdin: ChildStdin,
}

impl LocalChain {
    /// `ton/contract`: `$COCOON_CONTRACT_DIR` if set, else the source tree this crate was
    /// built from.
    pub fn locate_contract_dir() -> Result<PathBuf, LocalChainError> {
        let dir = match std::env::var_os(CONTRACT_DIR_ENV) {
            Some(dir) => PathBuf::from(dir),
            None => Path::new(env!("CARGO_MANIFEST_DIR")).join("contract"),
        };
        if dir.join("localchain.mjs").is_file() {
            Ok(dir)
        } else {
            Err(LocalChainError::NoContractDir)
        }
    }

    /// Starts `node localchain.mjs --port 0` and waits until it listens.
    pub async fn start(config: LocalChainConfig) -> Result<Self, LocalChainError> {
        let dir = &config.contract_dir;
        if !dir.join("node_modules").is_dir() {
            return Err(LocalChainError::NotInstalled(dir.clone()));
        }
        let mut cmd = Command::new(&config.node);
        cmd.arg(dir.join("localchain.mjs")).args(["--port", "0"]);
        if let Some(state) = &config.state {
            cmd.arg("--state").arg(state);
        }
        if let Some(now) = config.now {
            cmd.args(["--now", &now.to_string()]);
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| LocalChainError::Node {
                node: config.node.clone(),
                source,
            })?;
        let (Some(stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Err(LocalChainError::Startup("no stdio pipes".into()));
        };
        let (log, draining) = Log::drain(stderr);
        let mut lines = BufReader::new(stdout).lines();
        let first = tokio::time::timeout(config.startup_timeout, lines.next_line()).await;
        let Some(url) = first
            .as_ref()
            .ok()
            .and_then(|line| line.as_ref().ok())
            .and_then(|line| line.as_deref()?.strip_prefix(READY_PREFIX))
            .map(|url| url.trim().to_string())
        else {
            let _ = child.start_kill();
            let _ = tokio::time::timeout(Duration::from_secs(1), draining).await;
            return Err(LocalChainError::Startup(format!(
                "expected `{READY_PREFIX}URL` within {:?}, got {first:?}; its log:\n{}",
                config.startup_timeout,
                log.lines().join("\n")
            )));
        };
        // Keep draining stdout so the child never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(Self {
            http: HttpChain::new(HttpChainConfig::new(url))?,
            log,
            _child: child,
            _stdin: stdin,
        })
    }

    /// The HTTP client to it (its base URL is the chain's URL).
    pub fn http(&self) -> &HttpChain {
        &self.http
    }

    /// The last [`LOG_LINES`] lines of its log.
    pub fn recent_log(&self) -> Vec<String> {
        self.log.lines()
    }

    /// Sends `nanoton` from the faucet to `address` (non-bounceable, so it also funds
    /// undeployed wallets); returns the new balance.
    pub async fn fund(&self, address: &TonAddress, nanoton: u128) -> Result<u128, ChainError> {
        let body = json!({ "address": address.to_hex(), "amount": nanoton.to_string() });
        let result = self.http.post("/local/fund", &body).await?;
        decimal(&result["balance"], "balance")
    }

    /// Fixes the chain's clock at `now`; returns it.
    pub async fn set_time(&self, now: u32) -> Result<u32, ChainError> {
        self.time(json!({ "now": now })).await
    }

    /// Moves the chain's clock `secs` ahead (and fixes it there); returns the new time.
    pub async fn advance(&self, secs: u32) -> Result<u32, ChainError> {
        self.time(json!({ "advance": secs })).await
    }

    async fn time(&self, body: Value) -> Result<u32, ChainError> {
        let result = self.http.post("/local/time", &body).await?;
        result["now"]
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| ChainError::decode(format!("bad /local/time answer {result}")))
    }

    /// The fee and traffic counters.
    pub async fn stats(&self) -> Result<LocalStats, ChainError> {
        let v = self.http.get("/local/stats", &[]).await?;
        let count = |v: &Value, what: &str| {
            v.as_u64()
                .ok_or_else(|| ChainError::decode(format!("stats: bad {what}")))
        };
        let mut by_op = BTreeMap::new();
        for (op, e) in v["by_op"].as_object().into_iter().flatten() {
            by_op.insert(
                op.clone(),
                (count(&e["count"], op)?, decimal(&e["fees"], op)?),
            );
        }
        Ok(LocalStats {
            transactions: count(&v["transactions"], "transactions")?,
            external_messages: count(&v["external_messages"], "external_messages")?,
            fees: decimal(&v["fees"], "fees")?,
            by_op,
        })
    }
}

/// The tail of the child's stderr.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<VecDeque<String>>>);

impl Log {
    /// Reads `stderr` to its end in a task, keeping the last lines.
    fn drain(stderr: ChildStderr) -> (Self, JoinHandle<()>) {
        let log = Self::default();
        let tail = log.0.clone();
        let task = tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let mut tail = tail.lock().unwrap_or_else(PoisonError::into_inner);
                if tail.len() == LOG_LINES {
                    tail.pop_front();
                }
                tail.push_back(line);
            }
        });
        (log, task)
    }

    fn lines(&self) -> Vec<String> {
        let tail = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        tail.iter().cloned().collect()
    }
}

/// A nanoTON amount written as a decimal string.
fn decimal(v: &Value, what: &str) -> Result<u128, ChainError> {
    v.as_str()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| ChainError::decode(format!("bad {what}: {v}")))
}

impl Chain for LocalChain {
    fn send_boc<'a>(&'a self, boc: &'a [u8]) -> BoxFuture<'a, Result<(), ChainError>> {
        self.http.send_boc(boc)
    }

    fn account<'a>(
        &'a self,
        address: &'a TonAddress,
    ) -> BoxFuture<'a, Result<AccountState, ChainError>> {
        self.http.account(address)
    }

    fn run_get_method<'a>(
        &'a self,
        address: &'a TonAddress,
        method: &'a str,
        args: Vec<StackEntry>,
    ) -> BoxFuture<'a, Result<GetMethodResult, ChainError>> {
        self.http.run_get_method(address, method, args)
    }

    fn transactions<'a>(
        &'a self,
        address: &'a TonAddress,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<TxInfo>, ChainError>> {
        self.http.transactions(address, limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn startup_failures_say_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let config = LocalChainConfig::new(dir.path());
        let err = LocalChain::start(config.clone()).await.err().unwrap();
        assert!(err.to_string().contains("run `npm ci` in"), "{err}");

        std::fs::create_dir(dir.path().join("node_modules")).unwrap();
        let missing = LocalChainConfig {
            node: dir.path().join("no-such-node"),
            ..config.clone()
        };
        let err = LocalChain::start(missing).await.err().unwrap();
        assert!(matches!(err, LocalChainError::Node { .. }), "{err}");

        // A "node" that exits at once without the ready line.
        let quits = LocalChainConfig {
            node: "true".into(),
            ..config
        };
        let err = LocalChain::start(quits).await.err().unwrap();
        assert!(matches!(err, LocalChainError::Startup(_)), "{err}");
    }

    #[test]
    fn the_contract_dir_is_found_from_the_source_tree() {
        let dir = LocalChain::locate_contract_dir().unwrap();
        assert!(dir.join("localchain.mjs").is_file());
    }
}
