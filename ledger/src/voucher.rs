//! Vouchers and cooperative-close statements, as cells the channel contract checks.
//!
//! Layout (both): `tag: uint32, channel: uint256, amount: coins, seq: uint64`, one ref-less
//! cell; `channel` is the account id (address hash) of the channel contract, so a voucher for
//! one channel is worthless on another. The signature is ed25519 over the cell's
//! representation hash, which is exactly what the contract's `check_signature` verifies.
//! Golden vectors shared with the contract's JavaScript tests pin the encoding.

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::cell::{Builder, CellError};

/// Tag of a voucher cell ("covc").
pub const VOUCHER_TAG: u32 = 0x636f7663;
/// Tag of a cooperative-close statement ("cocl").
pub const CLOSE_TAG: u32 = 0x636f636c;

/// A cumulative payment promise: "the worker may claim `cumulative` nanoTON in total".
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Voucher {
    /// The channel contract's account id.
    pub channel: [u8; 32],
    /// Total owed to the worker so far, nanoTON.
    pub cumulative: u64,
    /// Strictly increasing per channel.
    pub seq: u64,
}

/// A voucher with the client's signature.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedVoucher {
    /// The voucher.
    pub voucher: Voucher,
    /// ed25519 over the voucher cell's hash.
    #[serde(with = "sig")]
    pub signature: [u8; 64],
}

mod sig {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8; 64], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 64], D::Error> {
        let v: Vec<u8> = Deserialize::deserialize(d)?;
        v.try_into()
            .map_err(|_| serde::de::Error::custom("a signature is 64 bytes"))
    }
}

fn statement(tag: u32, channel: &[u8; 32], amount: u64, seq: u64) -> Result<Builder, CellError> {
    Builder::new()
        .uint(tag as u128, 32)?
        .bytes(channel)?
        .coins(amount as u128)?
        .uint(seq as u128, 64)
}

impl Voucher {
    /// The cell the contract sees.
    pub fn cell(&self) -> Builder {
        statement(VOUCHER_TAG, &self.channel, self.cumulative, self.seq)
            .expect("a voucher fits one cell")
    }

    /// The hash the client signs.
    pub fn hash(&self) -> [u8; 32] {
        self.cell().hash()
    }

    /// Signs it.
    pub fn sign(self, key: &SigningKey) -> SignedVoucher {
        SignedVoucher {
            signature: key.sign(&self.hash()).to_bytes(),
            voucher: self,
        }
    }
}

impl SignedVoucher {
    /// Whether `client` signed it.
    pub fn verify(&self, client: &VerifyingKey) -> bool {
        client
            .verify(
                &self.voucher.hash(),
                &Signature::from_bytes(&self.signature),
            )
            .is_ok()
    }
}

/// The statement both parties sign to close cooperatively: the worker gets `amount`, the
/// client the rest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CloseStatement {
    /// The channel contract's account id.
    pub channel: [u8; 32],
    /// Final amount for the worker, nanoTON.
    pub amount: u64,
    /// The seq of the voucher it settles.
    pub seq: u64,
}

impl CloseStatement {
    /// The hash both parties sign.
    pub fn hash(&self) -> [u8; 32] {
        statement(CLOSE_TAG, &self.channel, self.amount, self.seq)
            .expect("a close statement fits one cell")
            .hash()
    }

    /// One party's signature.
    pub fn sign(&self, key: &SigningKey) -> [u8; 64] {
        key.sign(&self.hash()).to_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The golden vectors of `ton/contract/test/vectors.test.mjs`, produced by @ton/core.
    #[test]
    fn golden_vectors_match_the_contract_tests() {
        let client = SigningKey::from_bytes(&[0x11; 32]);
        let worker = SigningKey::from_bytes(&[0x22; 32]);
        assert_eq!(
            hex::encode(client.verifying_key().to_bytes()),
            "d04ab232742bb4ab3a1368bd4615e4e6d0224ab71a016baf8520a332c9778737"
        );
        assert_eq!(
            hex::encode(worker.verifying_key().to_bytes()),
            "a09aa5f47a6759802ff955f8dc2d2a14a5c99d23be97f864127ff9383455a4f0"
        );
        let v = Voucher {
            channel: [0x55; 32],
            cumulative: 1_500_000_000,
            seq: 42,
        };
        assert_eq!(
            v.cell().hex(),
            "636F76635555555555555555555555555555555555555555555555555555555555555555459682F00000000000000002A"
        );
        assert_eq!(
            hex::encode(v.hash()),
            "7f3eb69df48c3a24caefc08b6c65815d3808ba6ce639f149f9a53874e541d0e0"
        );
        let signed = v.sign(&client);
        assert_eq!(
            hex::encode(signed.signature),
            "8a1f0fe16ba1760bf86e459a2bd173bb8bc20c631919dcd67eb64a97f1cf6c4e5232b9a5bfc21638f9f8218c810e7409887de92b4d7606342e1140f33f0bdd0b"
        );
        assert!(signed.verify(&client.verifying_key()));
        assert!(!signed.verify(&worker.verifying_key()));
        let close = CloseStatement {
            channel: [0x55; 32],
            amount: 2_000_000_000,
            seq: 7,
        };
        assert_eq!(
            hex::encode(close.hash()),
            "c54a2078336a185b25e5d859bbaba97d605ee4175fd44cd251aa332ed9fb89bd"
        );
        assert_eq!(
            hex::encode(close.sign(&client)),
            "1046c6b0fc0545840e97ae266aa46a26a9fb35a5a0bb7deffb4ab3cbc9021644fb00f41cce42dc056aa03441d0fbb3597536e6798c123b4faccfb01e6c694509"
        );
        assert_eq!(
            hex::encode(close.sign(&worker)),
            "b33193941d9da8fc89487106e6bc65dec8f9a53748780c024de1c6c324d70d57377b8f9b994d3b782689073fd5c116703f5dc88d0c451b01d1ec536077cf340e"
        );
    }
}
