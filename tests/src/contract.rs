//! The TON contract directory (`ton/contract`) made ready for tests: its pinned npm
//! packages are installed from the lockfile when missing or stale, once per test process
//! (`cocoon_ton::npm` keeps concurrent processes from racing `npm ci`).

use std::path::PathBuf;
use std::sync::OnceLock;

/// `ton/contract` with its npm packages installed; panics (with npm's output) when they
/// cannot be installed.
pub fn contract_dir_ready() -> PathBuf {
    static READY: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();
    READY
        .get_or_init(|| {
            let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../ton/contract")
                .canonicalize()
                .map_err(|e| format!("ton/contract: {e}"))?;
            cocoon_ton::npm::install(&dir).map_err(|e| e.to_string())?;
            Ok(dir)
        })
        .clone()
        .unwrap_or_else(|e| panic!("ton/contract is not ready: {e}"))
}
