//! The TON contract directory (`ledger/contract`) made ready for tests: its pinned npm
//! packages are installed from the lockfile when missing or stale, once, by whichever test
//! process gets there first (a lock file keeps concurrent test binaries from racing `npm ci`).

use std::fs::OpenOptions;
use std::hash::{Hash, Hasher};
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use anyhow::{bail, ensure, Context, Result};

/// A lock older than this was left by a killed process: 10 min (`npm ci` takes ~10 s).
const STALE_LOCK: Duration = Duration::from_secs(600);

/// `ledger/contract` with its npm packages installed; panics (with npm's output) when they
/// cannot be installed.
pub fn contract_dir_ready() -> PathBuf {
    static READY: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();
    READY
        .get_or_init(|| install().map_err(|e| format!("{e:#}")))
        .clone()
        .unwrap_or_else(|e| panic!("ledger/contract is not ready: {e}"))
}

/// Installed, and not older than the lockfile.
fn installed(dir: &Path) -> bool {
    let modified = |p: PathBuf| std::fs::metadata(p).and_then(|m| m.modified());
    match (
        modified(dir.join("node_modules/.package-lock.json")),
        modified(dir.join("package-lock.json")),
    ) {
        (Ok(installed), Ok(lock)) => installed >= lock,
        _ => false,
    }
}

fn install() -> Result<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../ledger/contract")
        .canonicalize()
        .context("ledger/contract")?;
    if installed(&dir) {
        return Ok(dir);
    }
    let _lock = LockFile::acquire(&dir)?;
    if !installed(&dir) {
        let mut cmd = Command::new("npm");
        cmd.args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&dir);
        let out = cmd
            .output()
            .with_context(|| format!("cannot run {cmd:?} (is Node.js with npm installed?)"))?;
        ensure!(
            out.status.success(),
            "{cmd:?} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(dir)
}

/// A lock file in the temp dir, one per contract directory; removed on drop.
struct LockFile(PathBuf);

impl LockFile {
    fn acquire(dir: &Path) -> Result<Self> {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        dir.hash(&mut h);
        let path = std::env::temp_dir().join(format!("cocoon-npm-ci-{:016x}.lock", h.finish()));
        let started = SystemTime::now();
        loop {
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(_) => return Ok(Self(path)),
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                    let age = std::fs::metadata(&path)
                        .and_then(|m| m.modified())
                        .ok()
                        .and_then(|t| t.elapsed().ok());
                    if age.is_some_and(|a| a > STALE_LOCK) {
                        let _ = std::fs::remove_file(&path);
                    } else if started.elapsed().unwrap_or_default() > STALE_LOCK {
                        bail!("{} held for over {STALE_LOCK:?}", path.display());
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => return Err(e).with_context(|| format!("creating {}", path.display())),
            }
        }
    }
}

impl Drop for LockFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
