//! Message codec: a versioned bincode envelope `(version: u16, Message)`.
//!
//! Bincode (v2, standard config) gives a compact, deterministic encoding. The decoder caps
//! allocations at the frame size, rejects trailing bytes, and reports a peer speaking another
//! version distinctly so the worker can answer `UnsupportedVersion`.

use crate::message::Message;

/// The version this build speaks; bumped on any incompatible change of [`Message`].
pub const PROTOCOL_VERSION: u16 = 4;

/// Upper bound on any allocation the decoder makes: one frame (the transport's 1 MiB limit).
pub const DECODE_LIMIT: usize = 1 << 20;

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<DECODE_LIMIT>()
}

/// A message that could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// The envelope names a version this build does not speak.
    #[error("peer speaks job protocol version {0}, this node speaks {PROTOCOL_VERSION}")]
    UnsupportedVersion(u16),
    /// The bytes are not a valid message.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// The bytes hold a message followed by garbage.
    #[error("malformed message: {0} trailing bytes")]
    TrailingBytes(usize),
    /// The message could not be encoded.
    #[error("cannot encode message: {0}")]
    Encode(String),
}

/// Encodes `message` with the current version.
pub fn encode(message: &Message) -> Result<Vec<u8>, CodecError> {
    bincode::serde::encode_to_vec((PROTOCOL_VERSION, message), config())
        .map_err(|e| CodecError::Encode(e.to_string()))
}

/// Decodes one message; never panics on arbitrary input.
pub fn decode(bytes: &[u8]) -> Result<Message, CodecError> {
    let (version, used): (u16, usize) = bincode::serde::decode_from_slice(bytes, config())
        .map_err(|e| CodecError::Malformed(e.to_string()))?;
    if version != PROTOCOL_VERSION {
        return Err(CodecError::UnsupportedVersion(version));
    }
    let (message, n): (Message, usize) =
        bincode::serde::decode_from_slice(&bytes[used..], config())
            .map_err(|e| CodecError::Malformed(e.to_string()))?;
    let trailing = bytes.len() - used - n;
    if trailing != 0 {
        return Err(CodecError::TrailingBytes(trailing));
    }
    Ok(message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fuzz::{apply, largest_allocation, mutations};
    use crate::message::*;
    use proptest::prelude::*;

    fn arb_message() -> impl Strategy<Value = Message> {
        let chat = proptest::collection::vec(("[a-z]{1,9}", ".{0,40}"), 0..4).prop_map(|v| {
            JobInput::Chat(
                v.into_iter()
                    .map(|(role, content)| ChatMessage { role, content })
                    .collect(),
            )
        });
        let input = prop_oneof![chat, ".{0,80}".prop_map(JobInput::Prompt)];
        let sampling = (
            any::<u64>(),
            0.0f64..2.0,
            proptest::option::of(0.0f64..1.0),
            proptest::option::of(any::<u32>()),
            any::<u32>(),
            proptest::collection::vec(".{0,8}", 0..3),
        )
            .prop_map(
                |(seed, temperature, top_p, top_k, max_tokens, stop)| Sampling {
                    seed,
                    temperature,
                    top_p,
                    top_k,
                    max_tokens,
                    stop,
                },
            );
        let code = prop_oneof![
            Just(ErrorCode::Busy),
            Just(ErrorCode::UnknownModel),
            Just(ErrorCode::BadRequest),
            Just(ErrorCode::UnsupportedVersion),
            Just(ErrorCode::Timeout),
            Just(ErrorCode::Internal),
            Just(ErrorCode::PaymentRequired),
            Just(ErrorCode::PriceTooHigh),
            Just(ErrorCode::ContextLengthExceeded)
        ];
        let price = (any::<u64>(), any::<u64>()).prop_map(|(p, c)| JobPrice {
            prompt_per_mtok: p,
            completion_per_mtok: c,
        });
        let terms = (
            any::<[u8; 32]>(),
            any::<u64>(),
            any::<[u8; 32]>(),
            any::<(u32, u32, u64)>(),
            price.clone(),
        )
            .prop_map(|(channel, channel_id, key, (cp, wt, deposit), max_price)| {
                PaymentTerms {
                    channel,
                    channel_id,
                    client_key: key,
                    client_address: channel,
                    challenge_period: cp,
                    worker_timeout: wt,
                    deposit,
                    max_price,
                }
            });
        prop_oneof![
            (
                any::<u64>(),
                "[a-z0-9_.-]{1,30}",
                input,
                sampling,
                proptest::option::of(".{0,20}"),
                proptest::option::of(terms.prop_map(Box::new)),
            )
                .prop_map(|(id, model, input, sampling, continuation, payment)| {
                    Message::Request(JobRequest {
                        id,
                        model,
                        input,
                        sampling,
                        continuation,
                        payment,
                    })
                }),
            (any::<u64>(), any::<u32>(), ".{0,20}", any::<u32>()).prop_map(
                |(id, index, text, tokens)| Message::Token(TokenChunk {
                    id,
                    index,
                    text,
                    tokens
                })
            ),
            (
                any::<u64>(),
                any::<u32>(),
                price,
                any::<(u64, u64, u64, u64)>()
            )
                .prop_map(
                    |(id, prompt_tokens, price, (paid, seq, delivered, credit))| {
                        Message::Quote(JobQuote {
                            id,
                            prompt_tokens,
                            price,
                            channel_paid: paid,
                            channel_seq: seq,
                            channel_delivered: delivered,
                            credit_limit: credit,
                        })
                    }
                ),
            (
                any::<u64>(),
                any::<u64>(),
                any::<u64>(),
                proptest::collection::vec(any::<u8>(), 0..70)
            )
                .prop_map(|(id, cumulative, seq, signature)| Message::Voucher(
                    Payment {
                        id,
                        cumulative,
                        seq,
                        signature
                    }
                )),
            (
                any::<u64>(),
                any::<u32>(),
                any::<u32>(),
                0.0f64..1e6,
                any::<bool>()
            )
                .prop_map(|(id, p, c, ms, stop)| Message::Done(JobDone {
                    id,
                    usage: Usage {
                        prompt_tokens: p,
                        completion_tokens: c
                    },
                    timings: Timings {
                        ttft_ms: ms / 2.0,
                        total_ms: ms
                    },
                    finish_reason: if stop {
                        FinishReason::Stop
                    } else {
                        FinishReason::Length
                    },
                })),
            (any::<u64>(), code, ".{0,40}")
                .prop_map(|(id, code, message)| Message::Error(JobFailure { id, code, message })),
        ]
    }

    /// What the `job_message` fuzz target checks, plus the allocation bound: never a panic,
    /// never one allocation over [`DECODE_LIMIT`], and whatever decodes re-encodes stably
    /// (compared as bytes: floats may be NaN).
    fn decode_hostile(bytes: &[u8]) -> Result<Message, CodecError> {
        let (decoded, largest) = largest_allocation(|| decode(bytes));
        assert!(
            largest <= DECODE_LIMIT,
            "decoding {} bytes allocated {largest} at once",
            bytes.len()
        );
        if let Ok(message) = &decoded {
            let bytes = encode(message).expect("a decoded message encodes");
            let again = encode(&decode(&bytes).expect("re-decodes")).expect("encodes");
            assert_eq!(bytes, again);
        }
        decoded
    }

    /// A request whose stop strings or chat are `n` empty strings or messages: about `n`
    /// (or `2n`) bytes on the wire.
    fn request_of_empties(n: usize, chat: bool) -> Message {
        let mut sampling = Sampling::default();
        let input = if chat {
            JobInput::Chat(vec![
                ChatMessage {
                    role: String::new(),
                    content: String::new(),
                };
                n
            ])
        } else {
            sampling.stop = vec![String::new(); n];
            JobInput::Prompt(String::new())
        };
        Message::Request(JobRequest {
            id: 1,
            model: "m".into(),
            input,
            sampling,
            continuation: None,
            payment: None,
        })
    }

    /// Regression (a sibling of the advert reader's 1 MiB preallocation): a 1 MiB request of
    /// a million empty stop strings, or half a million empty chat messages, became one
    /// allocation of 24 MiB or more. Now the count is refused before the list is allocated.
    #[test]
    fn a_million_empty_strings_are_refused_before_allocating() {
        for chat in [false, true] {
            let n = if chat { 500_000 } else { 1_000_000 };
            let bytes = encode(&request_of_empties(n, chat)).unwrap();
            assert!(bytes.len() <= DECODE_LIMIT);
            let (decoded, largest) = largest_allocation(|| decode(&bytes));
            assert!(
                matches!(decoded, Err(CodecError::Malformed(_))),
                "chat: {chat}"
            );
            assert!(
                largest <= DECODE_LIMIT,
                "chat: {chat}: allocated {largest} bytes"
            );
        }
        // As many as fit the limit in memory still decode.
        let n = DECODE_LIMIT / std::mem::size_of::<String>();
        let message = request_of_empties(n, false);
        assert_eq!(decode(&encode(&message).unwrap()).unwrap(), message);
    }

    /// The bounded lists keep the wire form: a request encodes as the derived `Vec`s did.
    #[test]
    fn the_wire_form_is_unchanged() {
        let message = request_of_empties(3, true);
        let Message::Request(request) = &message else {
            unreachable!()
        };
        let plain = bincode::serde::encode_to_vec(
            (
                PROTOCOL_VERSION,
                0u32,
                request.id,
                &request.model,
                &request.input,
                &request.sampling,
                &request.continuation,
                &request.payment,
            ),
            config(),
        )
        .unwrap();
        assert_eq!(encode(&message).unwrap(), plain);
    }

    proptest! {
        #[test]
        fn round_trip(message in arb_message()) {
            let bytes = encode(&message).unwrap();
            prop_assert_eq!(decode(&bytes).unwrap(), message);
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_hostile(&bytes);
        }

        #[test]
        fn mutated_messages_are_refused_or_re_encode(
            message in arb_message(),
            mutations in mutations(),
        ) {
            let bytes = apply(encode(&message).unwrap(), &mutations);
            if let Ok(decoded) = decode_hostile(&bytes) {
                // Still a message of this version: it carries some job id, and encodes.
                let _ = decoded.job_id();
            }
        }

        #[test]
        fn truncated_message_is_an_error(message in arb_message(), cut in 0usize..1000) {
            let bytes = encode(&message).unwrap();
            let cut = cut % bytes.len();
            prop_assert!(decode(&bytes[..cut]).is_err());
        }
    }

    #[test]
    fn other_version_is_reported() {
        let msg = Message::Token(TokenChunk {
            id: 1,
            index: 0,
            text: "x".into(),
            tokens: 1,
        });
        let bytes = bincode::serde::encode_to_vec((7u16, &msg), config()).unwrap();
        assert!(matches!(
            decode(&bytes),
            Err(CodecError::UnsupportedVersion(7))
        ));
    }

    #[test]
    fn trailing_bytes_are_refused() {
        let msg = Message::Token(TokenChunk {
            id: 1,
            index: 0,
            text: "x".into(),
            tokens: 1,
        });
        let mut bytes = encode(&msg).unwrap();
        bytes.push(0);
        assert!(matches!(decode(&bytes), Err(CodecError::TrailingBytes(1))));
    }

    #[test]
    fn huge_length_claims_do_not_allocate() {
        // version, variant Token, id, index, then a string claiming 2^60 bytes.
        let mut bytes = encode(&Message::Token(TokenChunk {
            id: 1,
            index: 0,
            text: String::new(),
            tokens: 0,
        }))
        .unwrap();
        bytes.truncate(bytes.len() - 2); // the empty text's length and `tokens`
        bytes.extend([0xfd, 0, 0, 0, 0, 0, 0, 0, 0x10]);
        assert!(matches!(decode(&bytes), Err(CodecError::Malformed(_))));
    }
}
