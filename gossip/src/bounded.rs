//! Serde helpers that keep decoding an advert within its byte limit ([`MAX_ADVERT_BYTES`]).
//!
//! A derived `Vec<T>` trusts the length the sender announces: bincode's serde path passes it
//! on as the size hint without claiming it against the decode limit, and serde preallocates
//! up to 1 MiB from that hint. So an 8 KiB advert could make its reader allocate 1 MiB at
//! once, per field. With these helpers a byte field is read by bincode's own `Vec<u8>`
//! decoder, which checks the announced length against the limit before allocating, and a
//! sequence whose elements would take more than the limit in memory is refused before any is
//! read. The wire form is unchanged: bincode writes a byte string and a sequence of bytes
//! alike (the length, then the bytes), so signatures over old adverts still verify.

use std::fmt;
use std::marker::PhantomData;

use serde::de::{Deserialize, Deserializer, Error, SeqAccess, Visitor};
use serde::{Serialize, Serializer};

use crate::advert::MAX_ADVERT_BYTES;

/// Most elements of type `T` a decoded sequence may hold: `MAX_ADVERT_BYTES` of them in memory.
fn max_len<T>() -> usize {
    MAX_ADVERT_BYTES / std::mem::size_of::<T>().max(1)
}

/// A byte field: `#[serde(with = "crate::bounded::bytes")]`.
pub mod bytes {
    use super::*;

    /// Writes the bytes as one byte string.
    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    /// Reads a byte string.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        d.deserialize_byte_buf(ByteBuf)
    }
}

/// A sequence of at most [`max_len`] elements: `#[serde(deserialize_with =
/// "crate::bounded::seq")]`.
pub fn seq<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Vec<T>, D::Error> {
    d.deserialize_seq(Bounded(PhantomData))
}

/// A sequence of byte strings: `#[serde(with = "crate::bounded::byte_strings")]`.
pub mod byte_strings {
    use super::*;

    /// Writes each element as a byte string.
    pub fn serialize<S: Serializer>(v: &[Vec<u8>], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(|b| BytesRef(b)))
    }

    /// Reads a bounded sequence of byte strings.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Vec<u8>>, D::Error> {
        let v: Vec<Bytes> = seq(d)?;
        Ok(v.into_iter().map(|b| b.0).collect())
    }
}

struct ByteBuf;

impl<'de> Visitor<'de> for ByteBuf {
    type Value = Vec<u8>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "at most {MAX_ADVERT_BYTES} bytes")
    }

    fn visit_bytes<E: Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
        Ok(v.to_vec())
    }

    fn visit_byte_buf<E: Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
        Ok(v)
    }

    /// Formats without byte strings (JSON) send a sequence of numbers.
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Vec<u8>, A::Error> {
        Bounded(PhantomData).visit_seq(seq)
    }
}

/// A byte string as one element of a sequence.
struct Bytes(Vec<u8>);

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        bytes::deserialize(d).map(Bytes)
    }
}

struct BytesRef<'a>(&'a [u8]);

impl Serialize for BytesRef<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self.0)
    }
}

struct Bounded<T>(PhantomData<T>);

impl<'de, T: Deserialize<'de>> Visitor<'de> for Bounded<T> {
    type Value = Vec<T>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "a sequence of at most {} elements", max_len::<T>())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
        let max = max_len::<T>();
        // The announced length is refused before anything is allocated for it.
        let announced = seq.size_hint().unwrap_or(0);
        if announced > max {
            return Err(A::Error::invalid_length(announced, &self));
        }
        let mut out = Vec::with_capacity(announced);
        while let Some(x) = seq.next_element()? {
            if out.len() == max {
                return Err(A::Error::invalid_length(max + 1, &self));
            }
            out.push(x);
        }
        Ok(out)
    }
}
