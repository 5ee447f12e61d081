//! The local chain's npm packages (`@ton/sandbox` and friends, pinned by
//! `ton/contract/package-lock.json`): installed with `npm ci` when missing or older than
//! the lockfile, by one process at a time (a lock file in the temp dir keeps concurrent test
//! binaries and demos from racing).

use std::fs::OpenOptions;
use std::hash::{Hash, Hasher};
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use crate::local::LocalChainError;

/// A lock older than this was left by a killed process: 10 min (`npm ci` takes ~10 s).
const STALE_LOCK: Duration = Duration::from_secs(600);

/// Whether `dir`'s packages are installed and not older than its lockfile.
pub fn installed(dir: &Path) -> bool {
    let modified = |p: PathBuf| std::fs::metadata(p).and_then(|m| m.modified());
    match (
        modified(dir.join("node_modules/.package-lock.json")),
        modified(dir.join("package-lock.json")),
    ) {
        (Ok(installed), Ok(lock)) => installed >= lock,
        _ => false,
    }
}

/// Runs `npm ci` in `dir` unless its packages are installed. Blocking.
pub fn install(dir: &Path) -> Result<(), LocalChainError> {
    if installed(dir) {
        return Ok(());
    }
    let _lock = LockFile::acquire(dir)?;
    if installed(dir) {
        return Ok(());
    }
    let mut cmd = Command::new("npm");
    cmd.args(["ci", "--no-audit", "--no-fund"]).current_dir(dir);
    let out = cmd.output().map_err(|e| {
        LocalChainError::Install(format!(
            "cannot run npm (is Node.js with npm installed?): {e}"
        ))
    })?;
    if !out.status.success() {
        return Err(LocalChainError::Install(format!(
            "npm ci in {} failed:\n{}{}",
            dir.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(())
}

/// A lock file in the temp dir, one per contract directory; removed on drop.
struct LockFile(PathBuf);

impl LockFile {
    fn acquire(dir: &Path) -> Result<Self, LocalChainError> {
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
                        return Err(LocalChainError::Install(format!(
                            "{} held for over {STALE_LOCK:?}",
                            path.display()
                        )));
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => {
                    return Err(LocalChainError::Install(format!(
                        "creating {}: {e}",
                        path.display()
                    )))
                }
            }
        }
    }
}

impl Drop for LockFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
