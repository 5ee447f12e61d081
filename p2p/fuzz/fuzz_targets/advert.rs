//! Arbitrary bytes as a gossiped advert through the market's admission: never a panic, and
//! nothing unsigned or out of bounds is admitted.
#![no_main]

use cocoon_gossip::{Market, MarketConfig, SignedAdvert};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let now = 1_700_000_000;
    if let Ok((signed, advert)) = SignedAdvert::open(data, now) {
        assert_eq!(signed.verify().expect("opened adverts verify"), advert);
    }
    let mut market = Market::new(MarketConfig::default());
    let _ = market.insert(data, b"fuzzer", now);
});
