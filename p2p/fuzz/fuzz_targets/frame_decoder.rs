//! Arbitrary bytes, split at arbitrary points, through the sans-IO frame decoder: it must
//! never panic, never return a frame over the limit, and re-encoding its frames must give
//! back a prefix of the input.
#![no_main]

use cocoon_p2p::frame::{encode_frame, FrameDecoder};
use libfuzzer_sys::fuzz_target;

const MAX: usize = 4096;

fuzz_target!(|data: &[u8]| {
    let Some((&split, bytes)) = data.split_first() else { return };
    let mut decoder = FrameDecoder::new(MAX);
    let mut reencoded = Vec::new();
    for chunk in bytes.chunks(usize::from(split).max(1)) {
        decoder.push(chunk);
        loop {
            match decoder.next_frame() {
                Ok(Some(frame)) => {
                    assert!(frame.len() <= MAX);
                    reencoded.extend(encode_frame(&frame, MAX).unwrap());
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
    assert_eq!(&bytes[..reencoded.len()], &reencoded[..]);
    let _ = decoder.finish();
});
