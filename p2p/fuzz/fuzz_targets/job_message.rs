//! Arbitrary bytes through the job message codec: never a panic or a huge allocation, and
//! whatever decodes survives a round trip (compared as bytes, since floats may be NaN).
#![no_main]

use cocoon_p2p::job::{decode, encode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(message) = decode(data) {
        let bytes = encode(&message).expect("a decoded message encodes");
        let again = encode(&decode(&bytes).expect("re-decodes")).expect("encodes");
        assert_eq!(bytes, again);
    }
});
