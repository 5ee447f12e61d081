//! Starting `cocoon node` processes and waiting until they are ready: used by `cocoon demo`,
//! the end-to-end tests and the benchmarks, so all of them run the real binary the same way.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::daemon::{LISTEN_LINE, METRICS_LINE, PEER_LINE, READY_LINE};

/// A running `cocoon node` child process; killed when dropped.
#[derive(Debug)]
pub struct NodeProcess {
    child: Child,
    /// Its peer id.
    pub peer_id: String,
    /// Its listen addresses, with `/p2p/<id>`.
    pub listen: Vec<String>,
    /// Its metrics endpoint's URL (`--metrics`), when it serves one.
    pub metrics: Option<String>,
    /// Where its stderr goes.
    pub log: PathBuf,
}

/// Why a node process did not come up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LaunchError {
    /// The process could not be started.
    #[error("cannot start {exe}: {source}")]
    Spawn {
        /// The executable.
        exe: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// It exited or stalled before printing `ready`.
    #[error("node did not become ready ({reason}); its log is {log}:\n{tail}")]
    NotReady {
        /// What happened.
        reason: String,
        /// Log path.
        log: PathBuf,
        /// The log's last lines.
        tail: String,
    },
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

impl NodeProcess {
    /// Runs `exe node ARGS...` with stderr to `log`, and waits up to `timeout` for `ready`.
    pub fn spawn(
        exe: &Path,
        args: &[String],
        log: &Path,
        timeout: Duration,
    ) -> Result<Self, LaunchError> {
        Self::spawn_via(&[], exe, args, log, timeout)
    }

    /// Like [`Self::spawn`], with `prefix` run first and the node as its argument:
    /// `PREFIX... exe node ARGS...`, e.g. `ip netns exec NS` to start the node inside a network
    /// namespace. The prefix must exec the node (as `ip netns exec` and `env` do) so that the
    /// child's pid, [`Self::kill`] and [`Self::stop`] reach the node itself. An empty prefix
    /// is [`Self::spawn`].
    pub fn spawn_via(
        prefix: &[String],
        exe: &Path,
        args: &[String],
        log: &Path,
        timeout: Duration,
    ) -> Result<Self, LaunchError> {
        let stderr = std::fs::File::create(log).map_err(|source| LaunchError::Spawn {
            exe: log.to_path_buf(),
            source,
        })?;
        let mut command = match prefix.split_first() {
            Some((program, rest)) => {
                let mut command = Command::new(program);
                command.args(rest).arg(exe);
                command
            }
            None => Command::new(exe),
        };
        let program = prefix
            .first()
            .map_or_else(|| exe.to_path_buf(), PathBuf::from);
        let mut child = command
            .arg("node")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .map_err(|source| LaunchError::Spawn {
                exe: program,
                source,
            })?;
        let stdout = child.stdout.take().expect("piped stdout");
        // Lines wait here until the readiness check below reads them (it reads until the
        // node is ready, then drops the receiver, after which lines are read and dropped).
        let (tx, rx) = mpsc::sync_channel(1024);
        // Keep draining stdout for the whole life of the child so it never blocks on a pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    // Nobody listens any more: keep reading and drop lines.
                }
            }
        });
        let mut node = NodeProcess {
            child,
            peer_id: String::new(),
            listen: Vec::new(),
            metrics: None,
            log: log.to_path_buf(),
        };
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let fail = |reason: String| LaunchError::NotReady {
                reason,
                log: log.to_path_buf(),
                tail: log_tail(log),
            };
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(id) = line.strip_prefix(PEER_LINE) {
                        node.peer_id = id.trim().to_string();
                    } else if let Some(addr) = line.strip_prefix(LISTEN_LINE) {
                        node.listen.push(addr.trim().to_string());
                    } else if let Some(url) = line.strip_prefix(METRICS_LINE) {
                        node.metrics = Some(url.trim().to_string());
                    } else if line.trim() == READY_LINE {
                        return Ok(node);
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    return Err(fail(format!("no `ready` within {timeout:?}")))
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = node.child.wait().map(|s| s.to_string()).unwrap_or_default();
                    return Err(fail(format!("exited early ({status})")));
                }
            }
        }
    }

    /// The first QUIC listen address, for others to bootstrap from.
    pub fn quic_addr(&self) -> Option<&str> {
        self.listen
            .iter()
            .find(|a| a.contains("/quic-v1"))
            .or(self.listen.first())
            .map(String::as_str)
    }

    /// The OS process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the process at once (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Asks the process to stop (SIGTERM on Unix), waits up to `grace`, then kills it.
    pub fn stop(&mut self, grace: Duration) {
        #[cfg(unix)]
        {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(self.child.id().to_string())
                .status();
            let deadline = Instant::now() + grace;
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = grace;
        self.kill();
    }

    /// Whether it has exited, with its status.
    pub fn try_wait(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
