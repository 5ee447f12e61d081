//! Ordinary TON cells without references: a bit string of at most 1023 bits, and its
//! representation hash as TVM computes it.
//!
//! The hash of a ref-less, level-0 ordinary cell is `SHA-256(d1 || d2 || data)` with
//! `d1 = 0` (no refs, not exotic, level 0), `d2 = floor(bits/8) + ceil(bits/8)`, and `data`
//! the bits padded to a whole byte by a single 1 bit followed by 0 bits when the length is not
//! a multiple of 8. Vouchers and close statements are such cells (see the contract README).

use sha2::{Digest, Sha256};

/// Most data bits of a cell.
pub const MAX_BITS: usize = 1023;

/// Why a cell cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CellError {
    /// More than 1023 bits.
    #[error("cell overflow: {0} bits")]
    Overflow(usize),
    /// A value does not fit its field.
    #[error("value does not fit in {0} bits")]
    Range(usize),
}

/// A bit string being built, most significant bit first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Builder {
    bytes: Vec<u8>,
    bits: usize,
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

    /// The representation hash of the ref-less ordinary cell with these bits.
    pub fn hash(&self) -> [u8; 32] {
        let mut data = self.bytes.clone();
        if !self.bits.is_multiple_of(8) {
            let last = data.len() - 1;
            data[last] |= 0x80 >> (self.bits % 8);
        }
        let d2 = (self.bits / 8 + self.bits.div_ceil(8)) as u8;
        let mut h = Sha256::new();
        h.update([0u8, d2]);
        h.update(&data);
        h.finalize().into()
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
    }
}
