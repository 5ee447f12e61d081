//! Quote generation through Linux configfs-tsm (`/sys/kernel/config/tsm/report`).
//!
//! The kernel interface (Documentation/ABI/testing/configfs-tsm): create a directory under
//! `report/`, write up to 64 bytes of report data to its `inblob`, read the quote from
//! `outblob`; `provider` names the TEE (`tdx_guest` for Intel TDX) and `generation` counts
//! writes, so a reader can tell whether another process changed the request in between.
//! Each quote uses its own directory, removed afterwards.
//!
//! Blocking file I/O: call it from a blocking thread. [`Tsm::detect`] tells at start whether
//! this machine can produce TDX quotes at all, and why not.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Where the kernel mounts configfs-tsm reports.
pub const DEFAULT_ROOT: &str = "/sys/kernel/config/tsm/report";
/// The provider name of an Intel TDX guest.
pub const TDX_PROVIDER: &str = "tdx_guest";
/// Attempts when another writer races us on the same entry.
const ATTEMPTS: usize = 3;

/// Why quotes cannot be produced.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TsmError {
    /// No configfs-tsm on this machine (not a TEE guest, old kernel, configfs not mounted).
    #[error("no configfs-tsm at {0} (not a TDX guest, or configfs is not mounted)")]
    Missing(PathBuf),
    /// configfs-tsm exists but the TEE is not TDX.
    #[error("configfs-tsm provider is {0:?}, not {TDX_PROVIDER:?}")]
    NotTdx(String),
    /// A file operation failed.
    #[error("configfs-tsm {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// Another process kept changing the request.
    #[error("configfs-tsm entry {0} was modified concurrently {ATTEMPTS} times")]
    Raced(PathBuf),
    /// The kernel returned no quote.
    #[error("configfs-tsm returned an empty quote")]
    Empty,
}

/// A handle on a TDX-capable configfs-tsm.
#[derive(Clone, Debug)]
pub struct Tsm {
    root: PathBuf,
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> TsmError + '_ {
    move |source| TsmError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A report entry, removed on drop.
struct Entry(PathBuf);

impl Entry {
    fn create(root: &Path) -> Result<Self, TsmError> {
        let name = format!(
            "cocoon-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let dir = root.join(name);
        fs::create_dir(&dir).map_err(io_err(&dir))?;
        Ok(Self(dir))
    }

    fn read(&self, file: &str) -> Result<Vec<u8>, TsmError> {
        let path = self.0.join(file);
        fs::read(&path).map_err(io_err(&path))
    }

    fn generation(&self) -> Result<u64, TsmError> {
        let raw = self.read("generation")?;
        String::from_utf8_lossy(&raw)
            .trim()
            .parse()
            .map_err(|e| TsmError::Io {
                path: self.0.join("generation"),
                source: io::Error::new(io::ErrorKind::InvalidData, e),
            })
    }
}

impl Drop for Entry {
    fn drop(&mut self) {
        let _ = fs::remove_dir(&self.0);
    }
}

impl Tsm {
    /// Checks that `root` (normally [`DEFAULT_ROOT`]) is a configfs-tsm that produces TDX
    /// quotes, by creating an entry and reading its provider.
    pub fn detect(root: impl Into<PathBuf>) -> Result<Self, TsmError> {
        let root = root.into();
        if !root.is_dir() {
            return Err(TsmError::Missing(root));
        }
        let entry = Entry::create(&root)?;
        let provider = String::from_utf8_lossy(&entry.read("provider")?)
            .trim()
            .to_string();
        if provider != TDX_PROVIDER {
            return Err(TsmError::NotTdx(provider));
        }
        Ok(Self { root })
    }

    /// A TDX quote whose report data is `report_data`.
    pub fn quote(&self, report_data: &[u8; 64]) -> Result<Vec<u8>, TsmError> {
        for _ in 0..ATTEMPTS {
            let entry = Entry::create(&self.root)?;
            let before = entry.generation()?;
            let inblob = entry.0.join("inblob");
            fs::write(&inblob, report_data).map_err(io_err(&inblob))?;
            let quote = entry.read("outblob")?;
            // Exactly our write happened between creating the entry and reading the quote.
            if entry.generation()? != before + 1 {
                continue;
            }
            if quote.is_empty() {
                return Err(TsmError::Empty);
            }
            return Ok(quote);
        }
        Err(TsmError::Raced(self.root.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_machine_without_configfs_tsm_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("tsm/report");
        let err = Tsm::detect(&missing).unwrap_err();
        assert!(matches!(err, TsmError::Missing(_)), "{err}");
        assert!(err.to_string().contains("not a TDX guest"));
    }
}
