//! The report data that binds evidence to one enclave key, one peer and one expiry.
//!
//! `report_data = SHA-512("cocoon/attest/report-data/v1" || u32 len || enclave key ||
//! u32 len || peer id bytes || u64 expiry)`, all integers big-endian: 64 bytes, exactly the
//! size of a TDX report's `REPORTDATA`. The domain tag keeps the hash from meaning anything
//! in another protocol; the lengths keep field boundaries unambiguous.

use libp2p::PeerId;
use sha2::{Digest, Sha512};

/// Domain separation tag of the report data, version 1.
pub const DOMAIN: &[u8] = b"cocoon/attest/report-data/v1";

/// What a worker's evidence vouches for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Binding {
    /// The worker's Noise static public key (X25519, 32 bytes).
    pub enclave_key: [u8; 32],
    /// The worker's libp2p peer id.
    pub peer_id: PeerId,
    /// Unix seconds after which the evidence must not be accepted.
    pub expires_at: u64,
}

impl Binding {
    /// The 64 report-data bytes for this binding.
    pub fn report_data(&self) -> [u8; 64] {
        let peer = self.peer_id.to_bytes();
        let mut h = Sha512::new();
        h.update(DOMAIN);
        h.update((self.enclave_key.len() as u32).to_be_bytes());
        h.update(self.enclave_key);
        h.update((peer.len() as u32).to_be_bytes());
        h.update(&peer);
        h.update(self.expires_at.to_be_bytes());
        h.finalize().into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use libp2p::identity::Keypair;

    #[test]
    fn every_field_changes_the_report_data() {
        let peer = Keypair::generate_ed25519().public().to_peer_id();
        let b = Binding {
            enclave_key: [7; 32],
            peer_id: peer,
            expires_at: 100,
        };
        let base = b.report_data();
        assert_eq!(base, b.clone().report_data(), "deterministic");
        let mut other = b.clone();
        other.enclave_key[0] ^= 1;
        assert_ne!(base, other.report_data());
        let other = Binding {
            peer_id: Keypair::generate_ed25519().public().to_peer_id(),
            ..b.clone()
        };
        assert_ne!(base, other.report_data());
        let other = Binding {
            expires_at: 101,
            ..b
        };
        assert_ne!(base, other.report_data());
    }
}
