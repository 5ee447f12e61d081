//! Worker adverts: what a worker offers, at what price, signed by its node identity.
//!
//! Wire form (gossipsub topic [`TOPIC`], and the market sync protocol): bincode of
//! `(version: u16 = 1, SignedAdvert)`, at most [`MAX_ADVERT_BYTES`]. The signature is ed25519
//! by the worker's libp2p identity key over `DOMAIN || advert bytes`; the advert names its
//! signer's public key, and the peer id is *derived* from that key (libp2p's identity
//! multihash of the protobuf-encoded ed25519 key), so an advert cannot speak for another
//! peer. This module needs no libp2p: it is a sans-IO core the simulator drives too.

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};

/// The gossipsub topic adverts ride on.
pub const TOPIC: &str = "/cocoon/adverts/1";
/// Version of the advert envelope.
pub const ADVERT_VERSION: u16 = 1;
/// Largest encoded signed advert.
pub const MAX_ADVERT_BYTES: usize = 8 * 1024;
/// Signature domain.
pub const DOMAIN: &[u8] = b"cocoon/advert/v1";

/// Field bounds a valid advert respects.
pub mod limits {
    /// Models per advert.
    pub const MODELS: usize = 16;
    /// Listen addresses per advert.
    pub const ADDRS: usize = 16;
    /// Bytes per address.
    pub const ADDR_BYTES: usize = 256;
    /// Bytes of a model id, quantization or GPU name.
    pub const NAME_BYTES: usize = 128;
    /// Concurrent jobs.
    pub const CONCURRENCY: u32 = 4096;
    /// Advertised decode speed, tokens per second.
    pub const TOKENS_PER_S: f32 = 1.0e6;
    /// Price per million tokens, nanoTON (1,000 TON).
    pub const PRICE: u64 = 1_000_000_000_000;
    /// Longest advert lifetime, seconds.
    pub const TTL_SECS: u64 = 3600;
    /// Context length.
    pub const CONTEXT: u32 = 10_000_000;
}

/// A model on offer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelOffer {
    /// Model id (as in DHT provider records and job requests).
    pub id: String,
    /// Weight format, e.g. `Q4_1` or `F16`.
    pub quantization: String,
    /// Context length in tokens.
    pub context_length: u32,
}

/// The hardware a worker runs on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Hardware {
    /// CPU only.
    Cpu {
        /// Cores used.
        threads: u32,
    },
    /// A GPU.
    Gpu {
        /// Its name, e.g. `NVIDIA H100`.
        name: String,
        /// Its memory in MiB.
        vram_mib: u64,
    },
}

/// Prices in nanoTON per million tokens.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Price {
    /// Per million prompt tokens.
    pub prompt_per_mtok: u64,
    /// Per million completion tokens.
    pub completion_per_mtok: u64,
}

impl Price {
    /// What a job of this size costs, in nanoTON (rounded up).
    pub fn cost(&self, prompt_tokens: u64, completion_tokens: u64) -> u64 {
        let n = (self.prompt_per_mtok as u128 * prompt_tokens as u128)
            .saturating_add(self.completion_per_mtok as u128 * completion_tokens as u128);
        n.div_ceil(1_000_000).min(u64::MAX as u128) as u64
    }

    /// The ceiling a client sends with a job: each price times `slack` (prices move between
    /// adverts), rounded up, never below the price itself.
    pub fn with_slack(&self, slack: f64) -> Price {
        let up = |p: u64| ((p as f64 * slack).ceil() as u64).max(p);
        Price {
            prompt_per_mtok: up(self.prompt_per_mtok),
            completion_per_mtok: up(self.completion_per_mtok),
        }
    }
}

/// How the worker proves what it runs (the handshake carries the evidence itself).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Trust {
    /// Intel TDX.
    Tdx,
    /// Development evidence: proves nothing.
    DevInsecure,
}

/// What a worker offers. All times are Unix seconds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Advert {
    /// The signer's ed25519 public key; the worker's peer id derives from it.
    pub public_key: [u8; 32],
    /// The worker's current enclave (Noise static) key.
    pub enclave_key: [u8; 32],
    /// Evidence kind.
    pub trust: Trust,
    /// The measurement its evidence reports (MRTD, or self-reported for dev).
    #[serde(with = "crate::bounded::bytes")]
    pub measurement: Vec<u8>,
    /// Models served.
    #[serde(deserialize_with = "crate::bounded::seq")]
    pub models: Vec<ModelOffer>,
    /// Hardware.
    pub hardware: Hardware,
    /// Jobs it runs at once.
    pub max_concurrent: u32,
    /// Slots free when the advert was made.
    pub free_slots: u32,
    /// Jobs waiting (the engine answers `busy` instead of queueing: normally 0).
    pub queued: u32,
    /// Measured decode speed, tokens per second.
    pub tokens_per_s: f32,
    /// Current price.
    pub price: Price,
    /// Smallest payment-channel deposit accepted, nanoTON.
    pub min_deposit: u64,
    /// The worker's payout wallet (basechain account id) that its payment channels pay;
    /// `None` when it takes no payments. The channel's worker key is `public_key`.
    pub payout: Option<[u8; 32]>,
    /// How long the operator expects to stay up from now, seconds.
    pub expected_uptime_secs: u64,
    /// Listen multiaddrs (binary form).
    #[serde(with = "crate::bounded::byte_strings")]
    pub addrs: Vec<Vec<u8>>,
    /// Strictly increasing per worker.
    pub seq: u64,
    /// When it was made.
    pub issued_at: u64,
    /// When it stops being valid.
    pub expires_at: u64,
}

/// A signed advert as it travels.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SignedAdvert {
    /// The advert's bincode bytes (what was signed, kept as sent).
    #[serde(with = "crate::bounded::bytes")]
    pub body: Vec<u8>,
    /// ed25519 signature over `DOMAIN || body`.
    #[serde(with = "crate::bounded::bytes")]
    pub signature: Vec<u8>,
}

/// Why an advert is refused. Each maps to a gossipsub `Reject` (the sender is penalised)
/// except [`AdvertError::Stale`] and [`AdvertError::RateLimited`], which are `Ignore`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum AdvertError {
    /// Not decodable, another version, or too large.
    #[error("malformed advert: {0}")]
    Malformed(String),
    /// The signature does not verify.
    #[error("bad advert signature")]
    BadSignature,
    /// Expired, or valid for longer than allowed, or issued in the future.
    #[error("advert expiry out of bounds: {0}")]
    Expiry(String),
    /// A field is out of bounds.
    #[error("advert field out of bounds: {0}")]
    Bounds(String),
    /// Not newer than what we hold for this worker.
    #[error("stale advert: seq {got} <= {have}")]
    Stale {
        /// The advert's seq.
        got: u64,
        /// The seq we hold.
        have: u64,
    },
    /// The forwarding peer sends too fast.
    #[error("rate limited")]
    RateLimited,
}

impl AdvertError {
    /// Whether the sender should be penalised (gossipsub `Reject`) rather than ignored.
    pub fn is_misbehaviour(&self) -> bool {
        !matches!(self, AdvertError::Stale { .. } | AdvertError::RateLimited)
    }

    /// A short name of the reason, for metrics labels.
    pub fn reason(&self) -> &'static str {
        match self {
            AdvertError::Malformed(_) => "malformed",
            AdvertError::BadSignature => "bad_signature",
            AdvertError::Expiry(_) => "expiry",
            AdvertError::Bounds(_) => "bounds",
            AdvertError::Stale { .. } => "stale",
            AdvertError::RateLimited => "rate_limited",
        }
    }
}

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_ADVERT_BYTES>()
}

/// The libp2p peer id bytes of an ed25519 public key: identity multihash (0x00, length 36)
/// of the protobuf `PublicKey { Type: Ed25519 (1), Data: key }`.
pub fn peer_id_bytes(public_key: &[u8; 32]) -> Vec<u8> {
    let mut out = vec![0x00, 36, 0x08, 0x01, 0x12, 32];
    out.extend_from_slice(public_key);
    out
}

impl Advert {
    /// The worker's peer id bytes.
    pub fn peer_id(&self) -> Vec<u8> {
        peer_id_bytes(&self.public_key)
    }

    /// Whether it offers `model`.
    pub fn serves(&self, model: &str) -> bool {
        self.models.iter().any(|m| m.id == model)
    }

    /// Checks field bounds and times at `now`.
    pub fn check(&self, now: u64) -> Result<(), AdvertError> {
        let bounds = |ok: bool, what: &str| {
            if ok {
                Ok(())
            } else {
                Err(AdvertError::Bounds(what.to_string()))
            }
        };
        bounds(
            !self.models.is_empty() && self.models.len() <= limits::MODELS,
            "models",
        )?;
        for m in &self.models {
            bounds(
                !m.id.is_empty()
                    && m.id.len() <= limits::NAME_BYTES
                    && m.quantization.len() <= limits::NAME_BYTES
                    && m.context_length <= limits::CONTEXT,
                "model offer",
            )?;
        }
        if let Hardware::Gpu { name, .. } = &self.hardware {
            bounds(name.len() <= limits::NAME_BYTES, "gpu name")?;
        }
        bounds(self.measurement.len() <= 64, "measurement")?;
        bounds(
            self.max_concurrent >= 1 && self.max_concurrent <= limits::CONCURRENCY,
            "max_concurrent",
        )?;
        bounds(self.free_slots <= self.max_concurrent, "free_slots")?;
        bounds(self.queued <= limits::CONCURRENCY, "queued")?;
        bounds(
            self.tokens_per_s.is_finite()
                && self.tokens_per_s >= 0.0
                && self.tokens_per_s <= limits::TOKENS_PER_S,
            "tokens_per_s",
        )?;
        bounds(
            self.price.prompt_per_mtok <= limits::PRICE
                && self.price.completion_per_mtok <= limits::PRICE
                && self.min_deposit <= limits::PRICE,
            "price",
        )?;
        bounds(
            self.addrs.len() <= limits::ADDRS
                && self.addrs.iter().all(|a| a.len() <= limits::ADDR_BYTES),
            "addrs",
        )?;
        if self.expires_at <= now {
            return Err(AdvertError::Expiry(format!(
                "expired at {}, now {now}",
                self.expires_at
            )));
        }
        if self.expires_at - now > limits::TTL_SECS {
            return Err(AdvertError::Expiry(format!(
                "valid for {} s, more than {}",
                self.expires_at - now,
                limits::TTL_SECS
            )));
        }
        // A little clock skew is tolerated; an advert from the future is not.
        if self.issued_at > now.saturating_add(60) || self.issued_at > self.expires_at {
            return Err(AdvertError::Expiry(format!(
                "issued at {}, now {now}",
                self.issued_at
            )));
        }
        Ok(())
    }

    /// Signs the advert with the worker's identity key.
    pub fn sign(&self, key: &SigningKey) -> Result<SignedAdvert, AdvertError> {
        if key.verifying_key().to_bytes() != self.public_key {
            return Err(AdvertError::BadSignature);
        }
        let body = bincode::serde::encode_to_vec(self, config())
            .map_err(|e| AdvertError::Malformed(e.to_string()))?;
        let signature = key.sign(&signed_message(&body)).to_bytes().to_vec();
        let signed = SignedAdvert { body, signature };
        let len = signed.encode()?.len();
        if len > MAX_ADVERT_BYTES {
            return Err(AdvertError::Malformed(format!(
                "{len} bytes, more than {MAX_ADVERT_BYTES}"
            )));
        }
        Ok(signed)
    }
}

fn signed_message(body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(DOMAIN.len() + body.len());
    m.extend_from_slice(DOMAIN);
    m.extend_from_slice(body);
    m
}

impl SignedAdvert {
    /// Wire bytes.
    pub fn encode(&self) -> Result<Vec<u8>, AdvertError> {
        bincode::serde::encode_to_vec((ADVERT_VERSION, self), config())
            .map_err(|e| AdvertError::Malformed(e.to_string()))
    }

    /// Parses wire bytes (no signature check yet: see [`SignedAdvert::verify`]).
    pub fn decode(bytes: &[u8]) -> Result<Self, AdvertError> {
        if bytes.len() > MAX_ADVERT_BYTES {
            return Err(AdvertError::Malformed(format!(
                "{} bytes, more than {MAX_ADVERT_BYTES}",
                bytes.len()
            )));
        }
        let malformed = |e: bincode::error::DecodeError| AdvertError::Malformed(e.to_string());
        let ((version, signed), used): ((u16, SignedAdvert), usize) =
            bincode::serde::decode_from_slice(bytes, config()).map_err(malformed)?;
        if version != ADVERT_VERSION {
            return Err(AdvertError::Malformed(format!(
                "version {version}, this node speaks {ADVERT_VERSION}"
            )));
        }
        if used != bytes.len() {
            return Err(AdvertError::Malformed("trailing bytes".into()));
        }
        Ok(signed)
    }

    /// Checks the signature and returns the advert it vouches for (bounds not checked: see
    /// [`Advert::check`]).
    pub fn verify(&self) -> Result<Advert, AdvertError> {
        let (advert, used): (Advert, usize) =
            bincode::serde::decode_from_slice(&self.body, config())
                .map_err(|e| AdvertError::Malformed(e.to_string()))?;
        if used != self.body.len() {
            return Err(AdvertError::Malformed("trailing bytes in body".into()));
        }
        let key =
            VerifyingKey::from_bytes(&advert.public_key).map_err(|_| AdvertError::BadSignature)?;
        let signature =
            Signature::from_slice(&self.signature).map_err(|_| AdvertError::BadSignature)?;
        key.verify(&signed_message(&self.body), &signature)
            .map_err(|_| AdvertError::BadSignature)?;
        Ok(advert)
    }

    /// Decode, verify and check at `now`: everything but sequence and rate.
    pub fn open(bytes: &[u8], now: u64) -> Result<(Self, Advert), AdvertError> {
        let verified = Self::verified(bytes)?;
        verified.advert.check(now)?;
        Ok((verified.signed, verified.advert))
    }

    /// Decode and verify the signature, once, for adverts handed to many markets (see
    /// [`crate::Market::insert_verified`]); bounds and expiry are checked at each admission.
    pub fn verified(bytes: &[u8]) -> Result<Verified, AdvertError> {
        let signed = Self::decode(bytes)?;
        let advert = signed.verify()?;
        Ok(Verified { signed, advert })
    }
}

/// An advert whose signature was checked. Only [`SignedAdvert::verified`] makes one, so a
/// market fed these never holds an advert its worker did not sign.
#[derive(Clone, Debug)]
pub struct Verified {
    signed: SignedAdvert,
    advert: Advert,
}

impl Verified {
    /// As received.
    pub fn signed(&self) -> &SignedAdvert {
        &self.signed
    }

    /// Its content.
    pub fn advert(&self) -> &Advert {
        &self.advert
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn slack_rounds_up_and_never_lowers_a_price() {
        let p = Price {
            prompt_per_mtok: 10,
            completion_per_mtok: 0,
        };
        assert_eq!(
            p.with_slack(1.25),
            Price {
                prompt_per_mtok: 13,
                completion_per_mtok: 0
            }
        );
        assert_eq!(p.with_slack(0.5), p);
    }

    /// A deterministic signing key from a seed byte.
    pub fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    /// A valid advert for `key` at `now`.
    pub fn advert(key: &SigningKey, seq: u64, now: u64) -> Advert {
        Advert {
            public_key: key.verifying_key().to_bytes(),
            enclave_key: [1; 32],
            trust: Trust::DevInsecure,
            measurement: vec![2; 48],
            models: vec![ModelOffer {
                id: "smollm2".into(),
                quantization: "Q4_1".into(),
                context_length: 8192,
            }],
            hardware: Hardware::Cpu { threads: 2 },
            max_concurrent: 2,
            free_slots: 2,
            queued: 0,
            tokens_per_s: 20.0,
            price: Price {
                prompt_per_mtok: 1_000,
                completion_per_mtok: 3_000,
            },
            min_deposit: 0,
            payout: Some([7; 32]),
            expected_uptime_secs: 3600,
            addrs: vec![b"/ip4/127.0.0.1/udp/1/quic-v1".to_vec()],
            seq,
            issued_at: now,
            expires_at: now + 120,
        }
    }

    #[test]
    fn signed_adverts_round_trip_and_verify() {
        let k = key(1);
        let a = advert(&k, 1, 1000);
        let bytes = a.sign(&k).unwrap().encode().unwrap();
        let (_, opened) = SignedAdvert::open(&bytes, 1000).unwrap();
        assert_eq!(opened, a);
        assert_eq!(opened.peer_id()[..6], [0, 36, 8, 1, 0x12, 32]);
    }

    #[test]
    fn forged_oversize_and_out_of_bounds_adverts_are_refused() {
        let k = key(1);
        let a = advert(&k, 1, 1000);
        // Signed by another key than the one it names.
        assert_eq!(a.sign(&key(2)), Err(AdvertError::BadSignature));
        let mut signed = a.sign(&k).unwrap();
        // A changed body no longer matches the signature.
        let mut other = a.clone();
        other.price.completion_per_mtok = 1;
        signed.body = bincode::serde::encode_to_vec(&other, config()).unwrap();
        assert_eq!(signed.verify(), Err(AdvertError::BadSignature));
        // Claims another peer's key: the signature cannot match.
        let mut stolen = a.clone();
        stolen.public_key = key(3).verifying_key().to_bytes();
        let mut s = a.sign(&k).unwrap();
        s.body = bincode::serde::encode_to_vec(&stolen, config()).unwrap();
        assert_eq!(s.verify(), Err(AdvertError::BadSignature));
        // Oversize.
        let mut big = a.clone();
        big.addrs = vec![vec![0; limits::ADDR_BYTES]; 40];
        assert!(matches!(big.sign(&k), Err(AdvertError::Malformed(_))));
        assert!(matches!(
            SignedAdvert::decode(&vec![0; MAX_ADVERT_BYTES + 1]),
            Err(AdvertError::Malformed(_))
        ));
        // Bounds and times.
        let mut bad = a.clone();
        bad.free_slots = 3;
        assert!(matches!(bad.check(1000), Err(AdvertError::Bounds(_))));
        let mut bad = a.clone();
        bad.tokens_per_s = f32::NAN;
        assert!(matches!(bad.check(1000), Err(AdvertError::Bounds(_))));
        assert!(matches!(a.check(1120), Err(AdvertError::Expiry(_))));
        let mut long = a.clone();
        long.expires_at = 1000 + limits::TTL_SECS + 1;
        assert!(matches!(long.check(1000), Err(AdvertError::Expiry(_))));
    }

    #[test]
    fn cost_rounds_up_and_never_overflows() {
        let p = Price {
            prompt_per_mtok: 1,
            completion_per_mtok: 2,
        };
        assert_eq!(p.cost(1, 0), 1);
        assert_eq!(p.cost(1_000_000, 1_000_000), 3);
        let max = Price {
            prompt_per_mtok: u64::MAX,
            completion_per_mtok: u64::MAX,
        };
        assert_eq!(max.cost(u64::MAX, u64::MAX), u64::MAX);
    }

    mod untrusted {
        //! The advert reader under hostile input: what the `advert` cargo-fuzz target runs,
        //! as property tests on stable Rust.
        use super::*;
        use crate::fuzz::{apply, largest_allocation, mutations};
        use crate::market::{Market, MarketConfig};
        use proptest::collection::vec;
        use proptest::prelude::*;

        const NOW: u64 = 1_700_000_000;

        /// Any advert within the bounds [`Advert::check`] enforces, valid at `NOW`, with the
        /// seed of the key that signs it.
        fn arb_advert() -> impl Strategy<Value = (u8, Advert)> {
            let name = || "[a-zA-Z0-9_./-]{1,24}";
            let model = (name(), "[A-Z0-9_]{0,8}", 0..=limits::CONTEXT).prop_map(
                |(id, quantization, context_length)| ModelOffer {
                    id,
                    quantization,
                    context_length,
                },
            );
            let hardware = prop_oneof![
                any::<u32>().prop_map(|threads| Hardware::Cpu { threads }),
                (name(), any::<u64>())
                    .prop_map(|(name, vram_mib)| Hardware::Gpu { name, vram_mib }),
            ];
            let capacity = (
                1..=limits::CONCURRENCY,
                any::<u32>(),
                0..=limits::CONCURRENCY,
                0.0f32..=limits::TOKENS_PER_S,
            );
            let money = (0..=limits::PRICE, 0..=limits::PRICE, 0..=limits::PRICE);
            let times = (any::<u64>(), 0..1_000u64, 1..=limits::TTL_SECS);
            (
                (
                    any::<u8>(),
                    any::<[u8; 32]>(),
                    any::<bool>(),
                    vec(any::<u8>(), 0..=64),
                ),
                (vec(model, 1..=4), hardware, capacity, money),
                (
                    proptest::option::of(any::<[u8; 32]>()),
                    any::<u64>(),
                    vec(vec(any::<u8>(), 0..=64), 0..=4),
                    times,
                ),
            )
                .prop_map(
                    |(
                        (seed, enclave_key, tdx, measurement),
                        (
                            models,
                            hardware,
                            (max, free, queued, speed),
                            (prompt, completion, deposit),
                        ),
                        (payout, uptime, addrs, (seq, age, ttl)),
                    )| {
                        let advert = Advert {
                            public_key: key(seed).verifying_key().to_bytes(),
                            enclave_key,
                            trust: if tdx { Trust::Tdx } else { Trust::DevInsecure },
                            measurement,
                            models,
                            hardware,
                            max_concurrent: max,
                            free_slots: free % (max + 1),
                            queued,
                            tokens_per_s: speed,
                            price: Price {
                                prompt_per_mtok: prompt,
                                completion_per_mtok: completion,
                            },
                            min_deposit: deposit,
                            payout,
                            expected_uptime_secs: uptime,
                            addrs,
                            seq,
                            issued_at: NOW - age,
                            expires_at: NOW + ttl,
                        };
                        (seed, advert)
                    },
                )
        }

        /// The fuzz target's checks, plus the allocation bound, on any bytes.
        fn admit(bytes: &[u8]) -> Result<Advert, AdvertError> {
            let (opened, largest) = largest_allocation(|| SignedAdvert::open(bytes, NOW));
            assert!(
                largest <= MAX_ADVERT_BYTES,
                "decoding {} bytes allocated {largest} at once",
                bytes.len()
            );
            if let Ok((signed, advert)) = &opened {
                assert_eq!(&signed.verify().expect("opened adverts verify"), advert);
            }
            let mut market = Market::new(MarketConfig::default());
            let gossiped = market.insert(bytes, b"source", NOW);
            let synced = Market::new(MarketConfig::default()).insert_synced(bytes, b"source", NOW);
            assert_eq!(gossiped, synced);
            assert_eq!(gossiped, opened.clone().map(|(_, a)| a));
            opened.map(|(_, a)| a)
        }

        /// The wire bytes of `advert(key(1), 1, 1000)` before the bounded decoders: reading
        /// byte fields as byte strings must not change a single byte (old signatures verify).
        const GOLDEN: &str = concat!(
            "01dc8a88e3dd7409f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f5c010101010101",
            "01010101010101010101010101010101010101010101010101010130020202020202020202020202",
            "0202020202020202020202020202020202020202020202020202020202020202020202020107736d",
            "6f6c6c6d320451345f31fb002000020202000000a041fbe803fbb80b000107070707070707070707",
            "07070707070707070707070707070707070707070707fb100e011c2f6970342f3132372e302e302e",
            "312f7564702f312f717569632d763101fbe803fb600440469a9c0eebdcf28d7032c650fb05c841f6",
            "9ceb4b902a708966bbb5f790fc0346ce5558adedc136d3a92def6f12890f3feec62a798019225eb4",
            "d25b1762e26b06",
        );

        #[test]
        fn the_wire_form_is_unchanged() {
            let k = key(1);
            let a = advert(&k, 1, 1000);
            let bytes = a.sign(&k).unwrap().encode().unwrap();
            let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            assert_eq!(hex, GOLDEN);
            assert_eq!(SignedAdvert::open(&bytes, 1000).unwrap().1, a);
        }

        /// bincode's varint of a huge length (`u64` marker, then 8 little-endian bytes).
        fn huge_varint(n: u64) -> Vec<u8> {
            [&[253][..], &n.to_le_bytes()].concat()
        }

        /// Regression (found by `arbitrary_bytes_are_refused`): the body's announced length was
        /// taken as serde's size hint and 1 MiB allocated for a 162-byte advert.
        #[test]
        fn a_huge_body_length_is_refused_before_allocating() {
            let k = key(1);
            let bytes = advert(&k, 1, NOW).sign(&k).unwrap().encode().unwrap();
            // Version 1, then the body's length: claim 2^60 bytes.
            let forged = [&bytes[..1], &huge_varint(1 << 60), &bytes[2..]].concat();
            let (result, largest) = largest_allocation(|| SignedAdvert::decode(&forged));
            assert!(matches!(result, Err(AdvertError::Malformed(_))));
            assert!(largest <= MAX_ADVERT_BYTES, "allocated {largest} bytes");
        }

        /// Regression (found by `signed_mutated_bodies_are_bounded`): a signed body announcing
        /// a million addresses made its reader allocate 1 MiB for the list.
        #[test]
        fn a_huge_address_count_is_refused_before_allocating() {
            let k = key(1);
            let mut a = advert(&k, 1, NOW);
            a.addrs.clear();
            let body = bincode::serde::encode_to_vec(&a, config()).unwrap();
            // The advert ends with the address count (0), seq, issued_at and expires_at.
            let tail = bincode::serde::encode_to_vec((a.seq, a.issued_at, a.expires_at), config())
                .unwrap();
            let count = body.len() - tail.len() - 1;
            assert_eq!(body[count], 0);
            let body = [&body[..count], &huge_varint(1 << 20), &tail].concat();
            let signature = k.sign(&signed_message(&body)).to_bytes().to_vec();
            let bytes = SignedAdvert { body, signature }.encode().unwrap();
            let (result, largest) = largest_allocation(|| SignedAdvert::open(&bytes, NOW));
            assert!(
                matches!(result, Err(AdvertError::Malformed(_))),
                "{result:?}"
            );
            assert!(largest <= MAX_ADVERT_BYTES, "allocated {largest} bytes");
        }

        proptest! {
            #[test]
            fn valid_adverts_round_trip((seed, advert) in arb_advert()) {
                let signed = advert.sign(&key(seed)).unwrap();
                let bytes = signed.encode().unwrap();
                prop_assert_eq!(SignedAdvert::decode(&bytes).unwrap(), signed);
                prop_assert_eq!(admit(&bytes).unwrap(), advert);
            }

            #[test]
            fn arbitrary_bytes_are_refused(bytes in vec(any::<u8>(), 0..1024)) {
                prop_assert!(admit(&bytes).is_err());
            }

            #[test]
            fn mutated_adverts_are_refused_or_unchanged(
                (seed, advert) in arb_advert(),
                mutations in mutations(),
            ) {
                let bytes = advert.sign(&key(seed)).unwrap().encode().unwrap();
                let mutated = apply(bytes, &mutations);
                // The signature covers the body: whatever still opens is the original.
                if let Ok(opened) = admit(&mutated) {
                    prop_assert_eq!(opened, advert);
                }
            }

            #[test]
            fn signed_mutated_bodies_are_bounded(
                (seed, advert) in arb_advert(),
                mutations in mutations(),
            ) {
                // The worker itself signs garbage: decoding, bounds and times must hold.
                let body = bincode::serde::encode_to_vec(&advert, config()).unwrap();
                let body = apply(body, &mutations);
                let signature = key(seed).sign(&signed_message(&body)).to_bytes().to_vec();
                let signed = SignedAdvert { body, signature };
                let Ok(bytes) = signed.encode() else { return Ok(()) };
                if let Ok(opened) = admit(&bytes) {
                    prop_assert!(opened.check(NOW).is_ok());
                    prop_assert_eq!(opened.public_key, advert.public_key);
                }
            }
        }
    }
}
