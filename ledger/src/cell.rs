//! Ordinary TON cells, as far as the payment cores build them: a bit string of at most 1023
//! bits with at most 4 references, and its representation hash as TVM computes it.
//!
//! The hash of an ordinary level-0 cell is
//! `SHA-256(d1 || d2 || data || depth(ref_1) .. depth(ref_n) || hash(ref_1) .. hash(ref_n))`
//! with `d1 = n` (the number of refs; not exotic, level 0), `d2 = floor(bits/8) + ceil(bits/8)`,
//! `data` the bits padded to a whole byte by a single 1 bit followed by 0 bits when the length
//! is not a multiple of 8, and each depth two bytes big-endian. A cell's depth is 0 without
//! refs, else one more than its deepest ref's. Vouchers and close statements are cells without
//! refs (see the contract README); the channel's initial data and StateInit, from which its
//! address derives ([`crate::address`]), have refs.

use sha2::{Digest, Sha256};

/// Most data bits of a cell.
pub const MAX_BITS: usize = 1023;
/// Most references of a cell.
pub const MAX_REFS: usize = 4;

/// Why a cell cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CellError {
    /// More than 1023 bits.
    #[error("cell overflow: {0} bits")]
    Overflow(usize),
    /// A value does not fit its field.
    #[error("value does not fit in {0} bits")]
    Range(usize),
    /// More than 4 references.
    #[error("cell overflow: {0} references")]
    TooManyRefs(usize),
}

/// A finished cell as a parent refers to it: all the parent's hash needs of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CellRef {
    /// Its representation hash.
    pub hash: [u8; 32],
    /// Its depth: 0 without refs, else one more than its deepest ref's.
    pub depth: u16,
}

/// A cell being built: its bits, most significant first, and its references.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Builder {
    bytes: Vec<u8>,
    bits: usize,
    refs: Vec<CellRef>,
}

impl Builder {
    /// An empty cell.
    pub fn new() -> Self {
        Self::default()
    }

    fn push_bit(&mut self, bit: bool) -> Result<(), CellError> {
        if self.bits == MAX_BITS {
            return Err(CellError::Overflow(self.bits + 1));
        }
        if self.bits.is_multiple_of(8) {
            self.bytes.push(0);
        }
        if bit {
            let last = self.bytes.len() - 1;
            self.bytes[last] |= 0x80 >> (self.bits % 8);
        }
        self.bits += 1;
        Ok(())
    }

    /// Appends the low `n` bits of `value`, most significant first.
    pub fn uint(mut self, value: u128, n: usize) -> Result<Self, CellError> {
        if n < 128 && value >> n != 0 {
            return Err(CellError::Range(n));
        }
        for i in (0..n).rev() {
            self.push_bit(i < 128 && (value >> i) & 1 == 1)?;
        }
        Ok(self)
    }

    /// Appends bytes.
    pub fn bytes(mut self, bytes: &[u8]) -> Result<Self, CellError> {
        for b in bytes {
            self = self.uint(*b as u128, 8)?;
        }
        Ok(self)
    }

    /// Appends a `Coins` value (`VarUInteger 16`: a 4-bit byte length, then the bytes).
    pub fn coins(self, value: u128) -> Result<Self, CellError> {
        let len = (128 - value.leading_zeros() as usize).div_ceil(8);
        if len > 15 {
            return Err(CellError::Range(120));
        }
        self.uint(len as u128, 4)?.uint(value, len * 8)
    }

    /// Appends a basechain `MsgAddressInt` (`addr_std` without anycast:
    /// `10 0 workchain:int8 hash:uint256`, 267 bits) of this account id.
    pub fn basechain_address(self, account: &[u8; 32]) -> Result<Self, CellError> {
        self.uint(0b100, 3)?.uint(0, 8)?.bytes(account)
    }

    /// Appends a reference to `child`.
    pub fn reference(mut self, child: CellRef) -> Result<Self, CellError> {
        if self.refs.len() == MAX_REFS {
            return Err(CellError::TooManyRefs(self.refs.len() + 1));
        }
        self.refs.push(child);
        Ok(self)
    }

    /// Number of bits.
    pub fn len(&self) -> usize {
        self.bits
    }

    /// Whether no bit was written.
    pub fn is_empty(&self) -> bool {
        self.bits == 0
    }

    /// The bits as upper-case hex (as @ton/core prints them: a length that is not a whole
    /// number of nibbles gets its completion tag and a trailing `_`).
    pub fn hex(&self) -> String {
        let nibbles = self.bits.div_ceil(4);
        let mut bytes = self.bytes.clone();
        let partial = !self.bits.is_multiple_of(4);
        if partial {
            let last = bytes.len() - 1;
            bytes[last] |= 0x80 >> (self.bits % 8);
        }
        let mut s: String = bytes.iter().map(|b| format!("{b:02X}")).collect();
        s.truncate(nibbles);
        if partial {
            s.push('_');
        }
        s
    }

    /// The representation hash of the ordinary cell with these bits and references.
    pub fn hash(&self) -> [u8; 32] {
        let mut data = self.bytes.clone();
        if !self.bits.is_multiple_of(8) {
            let last = data.len() - 1;
            data[last] |= 0x80 >> (self.bits % 8);
        }
        let d1 = self.refs.len() as u8;
        let d2 = (self.bits / 8 + self.bits.div_ceil(8)) as u8;
        let mut h = Sha256::new();
        h.update([d1, d2]);
        h.update(&data);
        for r in &self.refs {
            h.update(r.depth.to_be_bytes());
        }
        for r in &self.refs {
            h.update(r.hash);
        }
        h.finalize().into()
    }

    /// Its depth: 0 without refs, else one more than its deepest ref's.
    pub fn depth(&self) -> u16 {
        self.refs.iter().map(|r| r.depth + 1).max().unwrap_or(0)
    }

    /// The finished cell as a parent refers to it.
    pub fn finish(&self) -> CellRef {
        CellRef {
            hash: self.hash(),
            depth: self.depth(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_cell_hash_is_tvms() {
        // The well-known hash of the empty cell.
        assert_eq!(
            hex::encode(Builder::new().hash()),
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7"
        );
    }

    #[test]
    fn coins_and_limits() {
        assert_eq!(Builder::new().uint(1, 1).unwrap().hex(), "C_");
        assert_eq!(Builder::new().uint(0xA, 4).unwrap().hex(), "A");
        assert_eq!(Builder::new().coins(0).unwrap().len(), 4);
        assert_eq!(Builder::new().coins(255).unwrap().len(), 12);
        assert_eq!(Builder::new().coins(256).unwrap().len(), 20);
        assert!(Builder::new().uint(2, 1).is_err());
        let full = Builder::new().uint(0, 1023).unwrap();
        assert_eq!(full.clone().uint(0, 1), Err(CellError::Overflow(1024)));
        let leaf = Builder::new().finish();
        let four = (0..4)
            .try_fold(Builder::new(), |b, _| b.reference(leaf))
            .unwrap();
        assert_eq!(four.clone().reference(leaf), Err(CellError::TooManyRefs(5)));
        assert_eq!(four.depth(), 1);
        assert_eq!(Builder::new().reference(four.finish()).unwrap().depth(), 2);
        assert_eq!(
            Builder::new().basechain_address(&[7; 32]).unwrap().len(),
            267
        );
    }
}
