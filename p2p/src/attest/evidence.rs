//! Evidence as it travels in the worker's handshake message.
//!
//! Encoding: a bincode envelope `(version: u16 = 1, Evidence)` with a hard size limit, so a
//! worker can send it inside one Noise message ([`crate::secure::MAX_EVIDENCE`]). The body is
//! an enum with one variant per evidence kind; new kinds (NVIDIA GPU attestation, AMD
//! SEV-SNP) are new variants, and an old client reads them as an unknown kind and refuses
//! the worker with a clear error instead of misreading them.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha384};

use super::binding::Binding;
use super::{Appraisal, EvidenceKind, Measurement, MEASUREMENT_LEN};

/// Version of the evidence envelope.
pub const EVIDENCE_VERSION: u16 = 1;
/// Largest quote accepted (a TDX v4 quote with its PCK chain is about 5 KiB).
pub const MAX_QUOTE: usize = 16 * 1024;
/// Largest attached collateral (JSON) accepted.
pub const MAX_COLLATERAL: usize = 44 * 1024;
/// Largest encoded evidence: fits one Noise handshake message.
pub const MAX_ENCODED: usize = crate::secure::MAX_EVIDENCE;

/// What a worker presents: evidence of one kind, valid until `expires_at`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Evidence {
    /// Unix seconds after which the evidence is void; bound into the report data.
    pub expires_at: u64,
    /// The kind-specific body.
    pub body: EvidenceBody,
}

/// The kind-specific part of [`Evidence`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EvidenceBody {
    /// An Intel TDX quote whose report data binds the worker's key, peer id and expiry.
    Tdx {
        /// The raw quote, as configfs-tsm returned it.
        #[serde(with = "bytes")]
        quote: Vec<u8>,
        /// DCAP collateral (JSON) the worker fetched for its platform, so clients can verify
        /// offline. It is signed by Intel, so the worker cannot forge it; clients may also
        /// use their own cache or PCCS.
        #[serde(with = "opt_bytes")]
        collateral: Option<Vec<u8>>,
    },
    /// Development evidence: the worker's own claim, no hardware behind it. INSECURE.
    DevInsecure {
        /// A self-reported measurement ([`dev_measurement`]).
        #[serde(with = "bytes")]
        measurement: Vec<u8>,
        /// The report data the worker computed for its binding.
        #[serde(with = "bytes")]
        report_data: Vec<u8>,
    },
}

/// Why evidence could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EvidenceError {
    /// The bytes are not evidence (or of an evidence kind this version does not know).
    #[error("malformed evidence: {0}")]
    Malformed(String),
    /// Another envelope version.
    #[error("evidence version {0} is not supported (this node speaks {EVIDENCE_VERSION})")]
    Version(u16),
    /// Too large.
    #[error("evidence field {field} is {len} bytes, more than {max}")]
    TooLarge {
        /// Which part.
        field: &'static str,
        /// Its size.
        len: usize,
        /// The limit.
        max: usize,
    },
}

/// Byte fields as one length-prefixed run (serde's `bytes`), not a sequence of integers:
/// decoding a quote plus collateral is then a copy, not 20,000 calls.
mod bytes {
    use serde::de::{Deserializer, Error, SeqAccess, Visitor};
    use serde::Serializer;

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub(super) struct Bytes;

    impl<'de> Visitor<'de> for Bytes {
        type Value = Vec<u8>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("bytes")
        }
        fn visit_bytes<E: Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
            Ok(v.to_vec())
        }
        fn visit_byte_buf<E: Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
            Ok(v)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
            let mut out = Vec::new();
            while let Some(b) = seq.next_element()? {
                out.push(b);
            }
            Ok(out)
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        d.deserialize_byte_buf(Bytes)
    }
}

/// [`bytes`] for an optional field.
mod opt_bytes {
    use serde::de::{Deserializer, Visitor};
    use serde::Serializer;

    pub fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(b) => s.serialize_some(&Ref(b)),
            None => s.serialize_none(),
        }
    }

    struct Ref<'a>(&'a [u8]);
    impl serde::Serialize for Ref<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_bytes(self.0)
        }
    }

    struct Opt;
    impl<'de> Visitor<'de> for Opt {
        type Value = Option<Vec<u8>>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("optional bytes")
        }
        fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_byte_buf(super::bytes::Bytes).map(Some)
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        d.deserialize_option(Opt)
    }
}

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_ENCODED>()
}

impl Evidence {
    /// The evidence kind.
    pub fn kind(&self) -> EvidenceKind {
        match self.body {
            EvidenceBody::Tdx { .. } => EvidenceKind::Tdx,
            EvidenceBody::DevInsecure { .. } => EvidenceKind::DevInsecure,
        }
    }

    /// Development evidence for `binding`: proves nothing, see [`EvidenceKind::DevInsecure`].
    pub fn dev_insecure(binding: &Binding) -> Self {
        Self {
            expires_at: binding.expires_at,
            body: EvidenceBody::DevInsecure {
                measurement: dev_measurement().to_vec(),
                report_data: binding.report_data().to_vec(),
            },
        }
    }

    fn check_sizes(&self) -> Result<(), EvidenceError> {
        let check = |field, len, max| {
            if len > max {
                Err(EvidenceError::TooLarge { field, len, max })
            } else {
                Ok(())
            }
        };
        match &self.body {
            EvidenceBody::Tdx { quote, collateral } => {
                check("quote", quote.len(), MAX_QUOTE)?;
                check(
                    "collateral",
                    collateral.as_ref().map_or(0, Vec::len),
                    MAX_COLLATERAL,
                )
            }
            EvidenceBody::DevInsecure {
                measurement,
                report_data,
            } => {
                check("measurement", measurement.len(), MEASUREMENT_LEN)?;
                check("report_data", report_data.len(), 64)
            }
        }
    }

    /// Encodes the evidence for the handshake.
    pub fn encode(&self) -> Result<Vec<u8>, EvidenceError> {
        self.check_sizes()?;
        let bytes = bincode::serde::encode_to_vec((EVIDENCE_VERSION, self), config())
            .map_err(|e| EvidenceError::Malformed(e.to_string()))?;
        if bytes.len() > MAX_ENCODED {
            return Err(EvidenceError::TooLarge {
                field: "evidence",
                len: bytes.len(),
                max: MAX_ENCODED,
            });
        }
        Ok(bytes)
    }

    /// Decodes evidence received in a handshake.
    pub fn decode(bytes: &[u8]) -> Result<Self, EvidenceError> {
        if bytes.len() > MAX_ENCODED {
            return Err(EvidenceError::TooLarge {
                field: "evidence",
                len: bytes.len(),
                max: MAX_ENCODED,
            });
        }
        let malformed = |e: bincode::error::DecodeError| EvidenceError::Malformed(e.to_string());
        let (version, used): (u16, usize) =
            bincode::serde::decode_from_slice(bytes, config()).map_err(malformed)?;
        if version != EVIDENCE_VERSION {
            return Err(EvidenceError::Version(version));
        }
        let (evidence, rest): (Evidence, usize) =
            bincode::serde::decode_from_slice(&bytes[used..], config()).map_err(malformed)?;
        if used + rest != bytes.len() {
            return Err(EvidenceError::Malformed(format!(
                "{} trailing bytes",
                bytes.len() - used - rest
            )));
        }
        evidence.check_sizes()?;
        Ok(evidence)
    }
}

/// The measurement dev evidence claims: SHA-384 over a tag and this crate's version. It names
/// the build a dev worker says it runs; nothing vouches for it.
pub fn dev_measurement() -> Measurement {
    let mut h = Sha384::new();
    h.update(b"cocoon/dev-measurement/v1/");
    h.update(env!("CARGO_PKG_VERSION").as_bytes());
    h.finalize().into()
}

/// Appraises development evidence: it is taken at its word, and marked as such.
pub fn appraise_dev(measurement: &[u8], report_data: &[u8]) -> Result<Appraisal, EvidenceError> {
    let mrtd: Measurement = measurement.try_into().map_err(|_| {
        EvidenceError::Malformed(format!(
            "dev measurement is {} bytes, not {MEASUREMENT_LEN}",
            measurement.len()
        ))
    })?;
    let report_data: [u8; 64] = report_data.try_into().map_err(|_| {
        EvidenceError::Malformed(format!(
            "dev report data is {} bytes, not 64",
            report_data.len()
        ))
    })?;
    Ok(Appraisal {
        kind: EvidenceKind::DevInsecure,
        tcb_status: None,
        advisory_ids: Vec::new(),
        mrtd,
        rtmrs: [[0; MEASUREMENT_LEN]; 4],
        report_data,
        debug: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fuzz::{apply, largest_allocation, mutations};
    use libp2p::identity::Keypair;
    use proptest::collection::vec;
    use proptest::prelude::*;

    fn binding() -> Binding {
        Binding {
            enclave_key: [3; 32],
            peer_id: Keypair::generate_ed25519().public().to_peer_id(),
            expires_at: 1_000,
        }
    }

    #[test]
    fn round_trips() {
        let dev = Evidence::dev_insecure(&binding());
        assert_eq!(Evidence::decode(&dev.encode().unwrap()).unwrap(), dev);
        let tdx = Evidence {
            expires_at: 5,
            body: EvidenceBody::Tdx {
                quote: vec![1; MAX_QUOTE],
                collateral: Some(vec![2; MAX_COLLATERAL]),
            },
        };
        assert_eq!(Evidence::decode(&tdx.encode().unwrap()).unwrap(), tdx);
    }

    #[test]
    fn limits_and_versions_are_enforced() {
        let big = Evidence {
            expires_at: 5,
            body: EvidenceBody::Tdx {
                quote: vec![1; MAX_QUOTE + 1],
                collateral: None,
            },
        };
        assert!(matches!(
            big.encode(),
            Err(EvidenceError::TooLarge { field: "quote", .. })
        ));
        let bytes =
            bincode::serde::encode_to_vec((2u16, &Evidence::dev_insecure(&binding())), config())
                .unwrap();
        assert_eq!(Evidence::decode(&bytes), Err(EvidenceError::Version(2)));
        let mut bytes = Evidence::dev_insecure(&binding()).encode().unwrap();
        bytes.push(0);
        assert!(matches!(
            Evidence::decode(&bytes),
            Err(EvidenceError::Malformed(_))
        ));
        // An evidence kind this version does not know (variant 7).
        let unknown = bincode::serde::encode_to_vec((1u16, 5u64, 7u32), config()).unwrap();
        assert!(matches!(
            Evidence::decode(&unknown),
            Err(EvidenceError::Malformed(_))
        ));
    }

    #[test]
    fn dev_appraisal_is_marked_insecure() {
        let b = binding();
        let EvidenceBody::DevInsecure {
            measurement,
            report_data,
        } = Evidence::dev_insecure(&b).body
        else {
            unreachable!()
        };
        let a = appraise_dev(&measurement, &report_data).unwrap();
        assert_eq!(a.kind, EvidenceKind::DevInsecure);
        assert_eq!(a.report_data, b.report_data());
        assert_eq!(a.mrtd, dev_measurement());
        assert!(appraise_dev(&measurement[1..], &report_data).is_err());
    }

    /// Evidence of either kind within the size limits.
    fn arb_evidence() -> impl Strategy<Value = Evidence> {
        let body = prop_oneof![
            (
                vec(any::<u8>(), 0..2048),
                proptest::option::of(vec(any::<u8>(), 0..2048))
            )
                .prop_map(|(quote, collateral)| EvidenceBody::Tdx { quote, collateral }),
            (
                vec(any::<u8>(), 0..=MEASUREMENT_LEN),
                vec(any::<u8>(), 0..=64)
            )
                .prop_map(|(measurement, report_data)| EvidenceBody::DevInsecure {
                    measurement,
                    report_data
                }),
        ];
        (any::<u64>(), body).prop_map(|(expires_at, body)| Evidence { expires_at, body })
    }

    /// What the `evidence` fuzz target checks, plus the allocation bound.
    fn decode_hostile(bytes: &[u8]) -> Result<Evidence, EvidenceError> {
        let (decoded, largest) = largest_allocation(|| Evidence::decode(bytes));
        assert!(
            largest <= MAX_ENCODED,
            "decoding {} bytes allocated {largest} at once",
            bytes.len()
        );
        if let Ok(evidence) = &decoded {
            let bytes = evidence.encode().expect("decoded evidence encodes");
            assert_eq!(&Evidence::decode(&bytes).expect("re-decodes"), evidence);
        }
        decoded
    }

    /// Guard (no bug found): a quote announcing 2^60 bytes is refused by the decode limit
    /// before anything is allocated for it.
    #[test]
    fn a_huge_quote_length_is_refused_before_allocating() {
        let bytes = Evidence {
            expires_at: 0,
            body: EvidenceBody::Tdx {
                quote: vec![1; 4],
                collateral: None,
            },
        }
        .encode()
        .unwrap();
        // version 1, expires_at 0, variant 0, then the quote's length 4.
        assert_eq!(bytes[..4], [1, 0, 0, 4]);
        let forged = [
            &bytes[..3],
            &[253][..],
            &(1u64 << 60).to_le_bytes(),
            &bytes[4..],
        ]
        .concat();
        assert!(matches!(
            decode_hostile(&forged),
            Err(EvidenceError::Malformed(_))
        ));
    }

    proptest! {
        #[test]
        fn decoding_garbage_never_panics(bytes in vec(any::<u8>(), 0..512)) {
            let _ = decode_hostile(&bytes);
        }

        #[test]
        fn arbitrary_evidence_round_trips(evidence in arb_evidence()) {
            let bytes = evidence.encode().unwrap();
            prop_assert_eq!(decode_hostile(&bytes).unwrap(), evidence);
        }

        #[test]
        fn mutated_evidence_is_refused_or_within_limits(
            evidence in arb_evidence(),
            mutations in mutations(),
        ) {
            let bytes = apply(evidence.encode().unwrap(), &mutations);
            if let Ok(decoded) = decode_hostile(&bytes) {
                prop_assert!(decoded.check_sizes().is_ok());
            }
        }
    }
}
