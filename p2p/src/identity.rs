//! The node's long-lived libp2p identity: an ed25519 key created once and kept in the data
//! directory (`identity.key`, file mode 0600 on Unix) so a node keeps its peer id across
//! restarts. This is the network identity only; the enclave key that encrypts jobs is separate
//! (see ARCHITECTURE.md) and is never written here.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use libp2p::identity::Keypair;

/// File name of the identity key inside the data directory.
pub const IDENTITY_FILE: &str = "identity.key";

/// Why an identity could not be loaded or created.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// The key file or data directory could not be read or written.
    #[error("identity file {path}: {source}")]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The key file exists but is empty (typically a failed copy or restore).
    #[error(
        "identity key file {} is empty (0 bytes): it holds no key. Restore it from a backup, \
         or move it away to create a new identity ({NEW_KEY})",
        path.display()
    )]
    Empty {
        /// The key file.
        path: PathBuf,
    },
    /// The key file exists but does not hold a protobuf-encoded ed25519 key.
    #[error(
        "identity key file {} is corrupt ({len} bytes): not a protobuf-encoded ed25519 key \
         ({reason}). Restore it from a backup, or move it away to create a new identity \
         ({NEW_KEY})",
        path.display()
    )]
    Corrupt {
        /// The key file.
        path: PathBuf,
        /// Its length in bytes.
        len: usize,
        /// What the decoder said.
        reason: String,
    },
}

/// What replacing the key means, for the errors that suggest it.
const NEW_KEY: &str = "a new key: the peer id, and all that is tied to the old key, change";

/// Loads the identity from `data_dir/identity.key`, creating the directory and a fresh
/// ed25519 key (mode 0600) when none exists yet.
pub fn load_or_create(data_dir: &Path) -> Result<Keypair, IdentityError> {
    let path = data_dir.join(IDENTITY_FILE);
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| IdentityError::Io { path, source }
    };
    match fs::read(&path) {
        Ok(bytes) if bytes.is_empty() => Err(IdentityError::Empty { path }),
        Ok(bytes) => Keypair::from_protobuf_encoding(&bytes).map_err(|e| IdentityError::Corrupt {
            path: path.clone(),
            len: bytes.len(),
            reason: e.to_string(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            fs::create_dir_all(data_dir).map_err(io(data_dir))?;
            let keypair = Keypair::generate_ed25519();
            let bytes = keypair
                .to_protobuf_encoding()
                .expect("ed25519 keys always encode");
            // Write to a temporary file first so a crash never leaves a half-written key.
            let tmp = path.with_extension("key.tmp");
            let mut options = fs::OpenOptions::new();
            options.write(true).create(true).truncate(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                options.mode(0o600);
            }
            let mut file = options.open(&tmp).map_err(io(&tmp))?;
            file.write_all(&bytes).map_err(io(&tmp))?;
            file.sync_all().map_err(io(&tmp))?;
            fs::rename(&tmp, &path).map_err(io(&path))?;
            Ok(keypair)
        }
        Err(e) => Err(io(&path)(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_is_created_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("nested/data");
        let a = load_or_create(&data).unwrap();
        let b = load_or_create(&data).unwrap();
        assert_eq!(a.public().to_peer_id(), b.public().to_peer_id());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(data.join(IDENTITY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn corrupt_identity_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(IDENTITY_FILE);
        fs::write(&path, b"not a key").unwrap();
        let err = load_or_create(dir.path()).unwrap_err();
        assert!(matches!(err, IdentityError::Corrupt { .. }), "{err}");
        let text = err.to_string();
        for word in [
            &path.display().to_string(),
            "corrupt",
            "(9 bytes)",
            "backup",
        ] {
            assert!(text.contains(word), "{word:?} not in: {text}");
        }
        assert_eq!(fs::read(&path).unwrap(), b"not a key", "left as it was");
    }

    /// An empty key file (a failed copy) says so, not what the key decoder guessed.
    #[test]
    fn an_empty_identity_file_says_it_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(IDENTITY_FILE);
        fs::write(&path, b"").unwrap();
        let err = load_or_create(dir.path()).unwrap_err();
        let text = err.to_string();
        for word in [
            &path.display().to_string(),
            "is empty",
            "(0 bytes)",
            "backup",
        ] {
            assert!(text.contains(word), "{word:?} not in: {text}");
        }
        assert!(!text.contains("rsa"), "{text}");
        assert!(fs::read(&path).unwrap().is_empty(), "left as it was");
    }
}

/// The ed25519 signing key of an identity: it signs adverts, vouchers and the node's
/// wallet messages (`None` for a key of another type).
pub fn signing_key(keypair: &Keypair) -> Option<ed25519_dalek::SigningKey> {
    let ed = keypair.clone().try_into_ed25519().ok()?;
    let secret: [u8; 32] = ed.secret().as_ref().try_into().ok()?;
    Some(ed25519_dalek::SigningKey::from_bytes(&secret))
}

/// The ed25519 public key a peer id carries (ed25519 peer ids inline their key); `None` for
/// another key type. With it a worker knows which key the peer that opened a stream holds,
/// as the transport authenticated it.
pub fn peer_ed25519(peer: &libp2p::PeerId) -> Option<[u8; 32]> {
    let hash: &libp2p::multihash::Multihash<64> = peer.as_ref();
    if hash.code() != 0 {
        return None;
    }
    let key = libp2p::identity::PublicKey::try_decode_protobuf(hash.digest()).ok()?;
    Some(key.try_into_ed25519().ok()?.to_bytes())
}

#[cfg(test)]
mod peer_key_tests {
    #[test]
    fn an_ed25519_peer_id_yields_its_key() {
        let keypair = libp2p::identity::Keypair::generate_ed25519();
        let key = keypair.public().try_into_ed25519().unwrap().to_bytes();
        assert_eq!(
            super::peer_ed25519(&keypair.public().to_peer_id()),
            Some(key)
        );
        assert_eq!(super::peer_ed25519(&libp2p::PeerId::random()), None);
    }
}
