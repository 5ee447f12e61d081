//! Test support for the property tests of every reader of untrusted bytes (frames, the
//! secure channel, job messages, adverts, evidence; the cargo-fuzz targets in `p2p/fuzz/` run
//! the same entry points on nightly, these run in `cargo test` on stable): structured
//! mutations of valid wire bytes ([`mutations`], [`apply`]), and a probe of the largest
//! single allocation a decode makes ([`largest_allocation`]).
//!
//! The probe needs [`Probe`] as the test binary's global allocator:
//! `#[global_allocator] static PROBE: cocoon_testkit::Probe = cocoon_testkit::Probe;`.
//! It records per thread, so parallel tests do not disturb each other.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use proptest::prelude::*;
use proptest::sample::Index;

/// An allocator that forwards to the system's and records, per thread, the largest block
/// asked for. A test binary makes it its global allocator (see the crate docs).
pub struct Probe;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    // `try_with`: an allocation during thread teardown is simply not recorded.
    let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
}

// SAFETY: every call forwards to `System` with the caller's arguments unchanged.
unsafe impl GlobalAlloc for Probe {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        System.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        System.alloc_zeroed(layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        System.realloc(ptr, layout, new_size)
    }
}

/// Runs `f` and returns its result with the largest single allocation it made (bytes); 0
/// unless [`Probe`] is the test binary's global allocator.
pub fn largest_allocation<T>(f: impl FnOnce() -> T) -> (T, usize) {
    LARGEST.with(|l| l.set(0));
    let out = f();
    (out, LARGEST.with(Cell::get))
}

/// One structured change to valid wire bytes.
#[derive(Clone, Debug)]
pub enum Mutation {
    /// Flips one bit.
    Flip(Index, u8),
    /// Overwrites one byte.
    Set(Index, u8),
    /// Overwrites four bytes with a big-endian `u32` (a frame's length prefix).
    U32(Index, u32),
    /// Replaces one byte with a bincode varint (a length or count of a bincode field).
    Varint(Index, u64),
    /// Cuts the bytes off at a position.
    Truncate(Index),
    /// Appends bytes.
    Append(Vec<u8>),
    /// Inserts bytes at a position.
    Insert(Index, Vec<u8>),
    /// Removes up to `n` bytes at a position.
    Remove(Index, usize),
}

/// Lengths a hostile peer would claim; `over` is one past the reader's own limit.
fn huge(over: u64) -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(u64::MAX),
        Just(u64::from(u32::MAX)),
        Just(0x7fff_ffff),
        Just(1 << 20),
        Just(over),
        any::<u64>(),
        0u64..300,
    ]
}

/// Up to four mutations; `over` is a length just past the reader's limit, claimed among
/// the huge ones.
pub fn mutations(over: u64) -> impl Strategy<Value = Vec<Mutation>> {
    let bytes = || proptest::collection::vec(any::<u8>(), 1..16);
    let one = prop_oneof![
        (any::<Index>(), 0u8..8).prop_map(|(i, b)| Mutation::Flip(i, b)),
        (any::<Index>(), any::<u8>()).prop_map(|(i, v)| Mutation::Set(i, v)),
        (any::<Index>(), huge(over)).prop_map(|(i, v)| Mutation::U32(i, v as u32)),
        (any::<Index>(), huge(over)).prop_map(|(i, v)| Mutation::Varint(i, v)),
        any::<Index>().prop_map(Mutation::Truncate),
        bytes().prop_map(Mutation::Append),
        (any::<Index>(), bytes()).prop_map(|(i, b)| Mutation::Insert(i, b)),
        (any::<Index>(), 1usize..16).prop_map(|(i, n)| Mutation::Remove(i, n)),
    ];
    proptest::collection::vec(one, 1..4)
}

/// bincode's (standard config) encoding of an integer length.
fn varint(v: u64) -> Vec<u8> {
    match v {
        0..=250 => vec![v as u8],
        251..=0xffff => [&[251][..], &(v as u16).to_le_bytes()].concat(),
        0x1_0000..=0xffff_ffff => [&[252][..], &(v as u32).to_le_bytes()].concat(),
        _ => [&[253][..], &v.to_le_bytes()].concat(),
    }
}

/// Applies `mutations` to `bytes` in order.
pub fn apply(mut bytes: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for m in mutations {
        let at = |i: &Index, len: usize| if len == 0 { 0 } else { i.index(len) };
        match m {
            Mutation::Flip(i, bit) if !bytes.is_empty() => {
                let i = at(i, bytes.len());
                bytes[i] ^= 1 << bit;
            }
            Mutation::Set(i, v) if !bytes.is_empty() => {
                let i = at(i, bytes.len());
                bytes[i] = *v;
            }
            Mutation::U32(i, v) => {
                let i = at(i, bytes.len());
                let end = (i + 4).min(bytes.len());
                bytes.splice(i..end, v.to_be_bytes());
            }
            Mutation::Varint(i, v) => {
                let i = at(i, bytes.len());
                let end = (i + 1).min(bytes.len());
                bytes.splice(i..end, varint(*v));
            }
            Mutation::Truncate(i) => bytes.truncate(at(i, bytes.len())),
            Mutation::Append(b) => bytes.extend_from_slice(b),
            Mutation::Insert(i, b) => {
                let i = at(i, bytes.len() + 1);
                bytes.splice(i..i, b.iter().copied());
            }
            Mutation::Remove(i, n) => {
                let i = at(i, bytes.len());
                let end = (i + n).min(bytes.len());
                bytes.drain(i..end);
            }
            Mutation::Flip(..) | Mutation::Set(..) => {}
        }
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[global_allocator]
    static PROBE: Probe = Probe;

    #[test]
    fn the_probe_sees_the_largest_allocation() {
        let (v, largest) = largest_allocation(|| vec![0u8; 3 << 20]);
        assert_eq!(v.len(), 3 << 20);
        assert!(largest >= 3 << 20, "{largest}");
        let ((), small) = largest_allocation(|| drop(vec![0u8; 100]));
        assert!(small < 1 << 20, "reset between probes: {small}");
    }
}
