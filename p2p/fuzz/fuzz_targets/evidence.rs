//! Arbitrary bytes as handshake evidence: never a panic, and whatever decodes round-trips.
#![no_main]

use cocoon_p2p::attest::evidence::Evidence;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(evidence) = Evidence::decode(data) {
        let bytes = evidence.encode().expect("decoded evidence encodes");
        assert_eq!(Evidence::decode(&bytes).expect("re-decodes"), evidence);
    }
});
