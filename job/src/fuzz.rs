//! Test support for the property tests of the message codec (the `job_message` cargo-fuzz
//! target runs the same entry point): the shared mutations and allocation probe of `cocoon-
//! testkit`, with this crate's limit.

use proptest::prelude::*;

pub use cocoon_testkit::{apply, largest_allocation, Mutation};

#[global_allocator]
static PROBE: cocoon_testkit::Probe = cocoon_testkit::Probe;

/// Up to four mutations, claiming lengths just past this crate's limit among the huge ones.
pub fn mutations() -> impl Strategy<Value = Vec<Mutation>> {
    cocoon_testkit::mutations((1 << 20) + 1)
}
