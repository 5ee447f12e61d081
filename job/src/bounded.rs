//! A serde helper that keeps decoding a message within [`DECODE_LIMIT`].
//!
//! bincode claims the bytes of every string against its decode limit, but a derived
//! `Vec<T>` of structs or strings is only preallocated from the announced length (up to
//! 1 MiB) and then grows element by element, uncounted: a 1 MiB request of a million empty
//! stop strings or chat messages would become 24 to 48 MiB in memory. A sequence read with
//! [`seq`] holds at most `DECODE_LIMIT` bytes of elements, and a longer announced length is
//! refused before anything is allocated. The wire form is unchanged.

use std::fmt;
use std::marker::PhantomData;

use serde::de::{Deserialize, Deserializer, Error, SeqAccess, Visitor};

use crate::codec::DECODE_LIMIT;

/// Most elements of type `T` a decoded sequence may hold: `DECODE_LIMIT` of them in memory.
fn max_len<T>() -> usize {
    DECODE_LIMIT / std::mem::size_of::<T>().max(1)
}

/// A sequence of at most `DECODE_LIMIT` bytes of elements: `#[serde(deserialize_with =
/// "crate::bounded::seq")]`.
pub fn seq<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Vec<T>, D::Error> {
    d.deserialize_seq(Bounded(PhantomData))
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
