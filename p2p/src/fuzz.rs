//! Test support for the property tests of this crate's readers of untrusted bytes (frames,
//! the secure channel, evidence; the cargo-fuzz targets in `fuzz/` run the same entry
//! points): the shared mutations and allocation probe of `cocoon-testkit`, with this
//! crate's limit.

use proptest::prelude::*;

pub use cocoon_testkit::{apply, largest_allocation, Mutation};

#[global_allocator]
static PROBE: cocoon_testkit::Probe = cocoon_testkit::Probe;

/// Up to four mutations, claiming lengths just past this crate's limit among the huge ones.
pub fn mutations() -> impl Strategy<Value = Vec<Mutation>> {
    cocoon_testkit::mutations((1 << 16) + 1)
}
