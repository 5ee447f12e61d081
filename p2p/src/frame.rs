//! Length-prefixed frames: the lowest layer of the job protocol.
//!
//! A frame is a big-endian `u32` length followed by that many bytes. Frames carry opaque
//! bytes: the message codec ([`crate::job::codec`]) sits above, and the next layer up from
//! the stream (the attestation-bound Noise channel) can encrypt each frame's bytes without
//! touching either. The [`FrameDecoder`] is sans-IO (feed bytes, take frames) so it can be
//! property-tested and fuzzed; [`FramedStream`] is the thin async shell over a byte stream.

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Size of the length prefix in bytes.
pub const LENGTH_PREFIX: usize = 4;

/// Default largest frame body accepted or sent: 1 MiB. A job request with a long chat history
/// fits easily; a peer cannot make us buffer more than this per stream.
pub const DEFAULT_MAX_FRAME: usize = 1 << 20;

/// A framing error. Every malformed input maps to one of these; none panics.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The peer announced (or we tried to send) a frame larger than the limit.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    Oversize {
        /// Announced length.
        len: usize,
        /// The configured limit.
        max: usize,
    },
    /// The stream ended in the middle of a frame.
    #[error("stream ended inside a frame ({have} of {want} bytes received)")]
    Truncated {
        /// Bytes of the frame (prefix included) received.
        have: usize,
        /// Bytes the frame needed.
        want: usize,
    },
    /// The underlying stream failed.
    #[error("stream i/o: {0}")]
    Io(#[from] std::io::Error),
    /// An encrypted frame failed authentication: tampered, replayed, reordered or from
    /// another session. The channel cannot continue.
    #[error("encrypted frame failed authentication (tampered, replayed or out of order)")]
    Decrypt,
}

/// Prepends the length prefix to `body`.
pub fn encode_frame(body: &[u8], max: usize) -> Result<Vec<u8>, FrameError> {
    if body.len() > max {
        return Err(FrameError::Oversize {
            len: body.len(),
            max,
        });
    }
    let mut out = Vec::with_capacity(LENGTH_PREFIX + body.len());
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(body);
    Ok(out)
}

/// Sans-IO frame splitter: push received bytes in, pull whole frames out.
///
/// Once [`FrameDecoder::next_frame`] has returned `Ok(None)`, what it holds unread is at most
/// one partial frame: fewer than `LENGTH_PREFIX + max` bytes.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    /// Bytes at the front of `buf` already returned as frames. They are dropped on the next
    /// push, so taking many small frames out of one read moves the rest once, not per frame.
    start: usize,
    max: usize,
}

impl FrameDecoder {
    /// A decoder that refuses frames longer than `max` bytes.
    pub fn new(max: usize) -> Self {
        Self {
            buf: Vec::new(),
            start: 0,
            max,
        }
    }

    /// Appends received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.drain(..self.start);
        self.start = 0;
        self.buf.extend_from_slice(bytes);
    }

    /// The length a buffered prefix announces, if a whole prefix is buffered.
    fn announced(&self) -> Option<usize> {
        let prefix = self.buf[self.start..].first_chunk::<LENGTH_PREFIX>()?;
        Some(u32::from_be_bytes(*prefix) as usize)
    }

    /// Takes the next complete frame, `Ok(None)` if more bytes are needed. An oversize length
    /// prefix is reported as soon as the prefix arrives, before the body is buffered.
    pub fn next_frame(&mut self) -> Result<Option<Vec<u8>>, FrameError> {
        let Some(len) = self.announced() else {
            return Ok(None);
        };
        if len > self.max {
            return Err(FrameError::Oversize { len, max: self.max });
        }
        // Saturating: where `usize` is 32 bits wide the largest length cannot overflow; such
        // a frame simply never completes.
        let end = LENGTH_PREFIX.saturating_add(len);
        let Some(body) = self.buf[self.start..].get(LENGTH_PREFIX..end) else {
            return Ok(None);
        };
        let frame = body.to_vec();
        self.start += end;
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
        Ok(Some(frame))
    }

    /// Call at end of stream: an error if a partial frame is still buffered.
    pub fn finish(&self) -> Result<(), FrameError> {
        if self.buffered() == 0 {
            return Ok(());
        }
        let want = self
            .announced()
            .map_or(LENGTH_PREFIX, |len| LENGTH_PREFIX.saturating_add(len));
        Err(FrameError::Truncated {
            have: self.buffered(),
            want,
        })
    }

    /// Bytes buffered but not yet returned as a frame.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }
}

/// Sends and receives whole frames of bytes. The job protocol talks to this trait, so a
/// layer that transforms frames (encryption) can be put between the stream and the messages.
pub trait FrameTransport: Send {
    /// Sends one frame.
    fn send_frame(
        &mut self,
        body: &[u8],
    ) -> impl std::future::Future<Output = Result<(), FrameError>> + Send;
    /// Receives the next frame; `Ok(None)` when the peer closed the stream cleanly between
    /// frames. Implementations are cancel-safe: dropping the future before it completes
    /// loses no bytes (partial frames stay buffered in `self`), so a worker can wait for a
    /// voucher in a `select!` next to its token stream.
    fn recv_frame(
        &mut self,
    ) -> impl std::future::Future<Output = Result<Option<Vec<u8>>, FrameError>> + Send;
    /// Flushes and closes the sending side.
    fn close(&mut self) -> impl std::future::Future<Output = Result<(), FrameError>> + Send;
}

/// Frames over any async byte stream (a libp2p stream in production, a pipe in tests).
#[derive(Debug)]
pub struct FramedStream<S> {
    io: S,
    decoder: FrameDecoder,
    max: usize,
    read_buf: Box<[u8]>,
}

impl<S> FramedStream<S> {
    /// Wraps `io`, refusing frames over `max` bytes in either direction.
    pub fn new(io: S, max: usize) -> Self {
        Self {
            io,
            decoder: FrameDecoder::new(max),
            max,
            read_buf: vec![0u8; 16 * 1024].into_boxed_slice(),
        }
    }

    /// The wrapped stream.
    pub fn into_inner(self) -> S {
        self.io
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> FrameTransport for FramedStream<S> {
    async fn send_frame(&mut self, body: &[u8]) -> Result<(), FrameError> {
        let bytes = encode_frame(body, self.max)?;
        self.io.write_all(&bytes).await?;
        self.io.flush().await?;
        Ok(())
    }

    async fn recv_frame(&mut self) -> Result<Option<Vec<u8>>, FrameError> {
        loop {
            if let Some(frame) = self.decoder.next_frame()? {
                return Ok(Some(frame));
            }
            let n = self.io.read(&mut self.read_buf).await?;
            if n == 0 {
                self.decoder.finish()?;
                return Ok(None);
            }
            self.decoder.push(&self.read_buf[..n]);
        }
    }

    async fn close(&mut self) -> Result<(), FrameError> {
        self.io.close().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fuzz::{apply, mutations};
    use proptest::prelude::*;

    fn decode_all(bytes: &[u8], max: usize, split: usize) -> Result<Vec<Vec<u8>>, FrameError> {
        let mut d = FrameDecoder::new(max);
        let mut out = Vec::new();
        for chunk in bytes.chunks(split.max(1)) {
            d.push(chunk);
            while let Some(f) = d.next_frame()? {
                out.push(f);
            }
        }
        d.finish()?;
        Ok(out)
    }

    /// Pushes `bytes` in chunks of `split` and takes frames as the fuzz target does: every
    /// frame is within `max`, after `Ok(None)` at most one partial frame is held, and the
    /// frames re-encoded are a prefix of the input. Returns the frames and how it ended.
    fn decode_hostile(
        bytes: &[u8],
        max: usize,
        split: usize,
    ) -> (Vec<Vec<u8>>, Result<(), FrameError>) {
        let mut d = FrameDecoder::new(max);
        let mut frames = Vec::new();
        let mut reencoded = Vec::new();
        let mut ended = Ok(());
        'read: for chunk in bytes.chunks(split.max(1)) {
            d.push(chunk);
            loop {
                match d.next_frame() {
                    Ok(Some(frame)) => {
                        assert!(frame.len() <= max);
                        reencoded.extend(encode_frame(&frame, max).unwrap());
                        frames.push(frame);
                    }
                    Ok(None) => break,
                    Err(e) => {
                        assert!(matches!(e, FrameError::Oversize { len, .. } if len > max));
                        ended = Err(e);
                        break 'read;
                    }
                }
            }
            assert!(d.buffered() < LENGTH_PREFIX + max, "held more than a frame");
        }
        assert_eq!(&bytes[..reencoded.len()], &reencoded[..]);
        if ended.is_ok() {
            ended = d.finish();
            assert!(matches!(ended, Ok(()) | Err(FrameError::Truncated { .. })));
        }
        (frames, ended)
    }

    /// Regression guard (no bug on 64-bit targets): the largest announced length is reported
    /// by `finish` without overflowing, whatever the limit.
    #[test]
    fn a_maximal_length_prefix_is_reported_not_overflowed() {
        let mut d = FrameDecoder::new(usize::MAX);
        d.push(&u32::MAX.to_be_bytes());
        d.push(&[0; 10]);
        assert!(d.next_frame().unwrap().is_none());
        assert!(matches!(
            d.finish(),
            Err(FrameError::Truncated { have: 14, want }) if want == LENGTH_PREFIX + u32::MAX as usize
        ));
    }

    #[test]
    fn many_small_frames_from_one_push() {
        let wire: Vec<u8> = (0..5_000u32)
            .flat_map(|i| encode_frame(&i.to_be_bytes()[3..], 8).unwrap())
            .collect();
        let mut d = FrameDecoder::new(8);
        d.push(&wire);
        for i in 0..5_000u32 {
            assert_eq!(d.next_frame().unwrap().unwrap(), [i as u8]);
        }
        assert_eq!(d.buffered(), 0);
        assert!(d.next_frame().unwrap().is_none());
        d.finish().unwrap();
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_keep_the_fuzz_target_invariants(
            bytes in proptest::collection::vec(any::<u8>(), 0..2048),
            split in 1usize..300,
            max in 0usize..600,
        ) {
            let _ = decode_hostile(&bytes, max, split);
        }

        #[test]
        fn mutated_streams_are_refused_or_reframed(
            frames in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..200), 1..6),
            mutations in mutations(),
            split in 1usize..300,
        ) {
            let wire: Vec<u8> = frames.iter().flat_map(|f| encode_frame(f, 256).unwrap()).collect();
            let mutated = apply(wire.clone(), &mutations);
            let (decoded, ended) = decode_hostile(&mutated, 256, split);
            if mutated == wire {
                prop_assert_eq!(decoded, frames);
                prop_assert!(ended.is_ok());
            }
        }

        #[test]
        fn round_trip_any_split(frames in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..8), split in 1usize..64) {
            let mut wire = Vec::new();
            for f in &frames {
                wire.extend(encode_frame(f, 1024).unwrap());
            }
            prop_assert_eq!(decode_all(&wire, 1024, split).unwrap(), frames);
        }

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048), split in 1usize..64) {
            let _ = decode_all(&bytes, 512, split);
        }

        #[test]
        fn truncation_is_an_error(body in proptest::collection::vec(any::<u8>(), 1..300), cut in 1usize..300) {
            let wire = encode_frame(&body, 1024).unwrap();
            let cut = cut.min(wire.len() - 1);
            let err = decode_all(&wire[..cut], 1024, 7).unwrap_err();
            prop_assert!(matches!(err, FrameError::Truncated { .. }), "unexpected error kind");
        }
    }

    #[test]
    fn oversize_is_refused_on_both_sides() {
        assert!(matches!(
            encode_frame(&[0; 11], 10),
            Err(FrameError::Oversize { len: 11, max: 10 })
        ));
        let mut d = FrameDecoder::new(10);
        // Only the prefix: the decoder refuses before buffering the body.
        d.push(&u32::MAX.to_be_bytes());
        assert!(matches!(d.next_frame(), Err(FrameError::Oversize { .. })));
    }

    #[test]
    fn framed_stream_over_a_pipe() {
        futures::executor::block_on(async {
            let (a, b) = crate::testing::pipe();
            let mut tx = FramedStream::new(a, 64);
            let mut rx = FramedStream::new(b, 64);
            tx.send_frame(b"hello").await.unwrap();
            tx.send_frame(b"").await.unwrap();
            tx.close().await.unwrap();
            assert_eq!(rx.recv_frame().await.unwrap().unwrap(), b"hello");
            assert_eq!(rx.recv_frame().await.unwrap().unwrap(), b"");
            assert!(rx.recv_frame().await.unwrap().is_none());
            assert!(matches!(
                tx.send_frame(&[0; 65]).await,
                Err(FrameError::Oversize { .. })
            ));
        });
    }

    /// The reader of `/cocoon/market/1` (the node's `MarketService::sync_from`): frames of at
    /// most one advert's size off the stream, each admitted through the market, for at most
    /// a bounded number of adverts.
    mod market_sync {
        use super::*;
        use cocoon_gossip::advert::{Hardware, ModelOffer, Price, Trust, MAX_ADVERT_BYTES};
        use cocoon_gossip::{Advert, Market, MarketConfig};
        use ed25519_dalek::SigningKey;

        const NOW: u64 = 1_700_000_000;
        /// The node's `MAX_SYNC_ADVERTS`.
        const MAX_SYNC_ADVERTS: usize = 4096;

        fn advert(seed: u8, addrs: usize) -> (SigningKey, Advert) {
            let key = SigningKey::from_bytes(&[seed; 32]);
            let advert = Advert {
                public_key: key.verifying_key().to_bytes(),
                enclave_key: [seed; 32],
                trust: Trust::DevInsecure,
                measurement: vec![seed; 48],
                models: vec![ModelOffer {
                    id: "smollm2".into(),
                    quantization: "Q4_1".into(),
                    context_length: 8192,
                }],
                hardware: Hardware::Cpu { threads: 2 },
                max_concurrent: 2,
                free_slots: 1,
                queued: 0,
                tokens_per_s: 20.0,
                price: Price {
                    prompt_per_mtok: 1_000,
                    completion_per_mtok: 3_000,
                },
                min_deposit: 0,
                payout: None,
                expected_uptime_secs: 3600,
                addrs: vec![vec![seed; 200]; addrs],
                seq: 1,
                issued_at: NOW,
                expires_at: NOW + 120,
            };
            (key, advert)
        }

        /// Reads a sync stream as the node does; returns the adverts admitted.
        fn sync(wire: &[u8]) -> Vec<Advert> {
            futures::executor::block_on(async {
                let (mut tx, rx) = crate::testing::pipe();
                futures::AsyncWriteExt::write_all(&mut tx, wire)
                    .await
                    .unwrap();
                drop(tx);
                let mut framed = FramedStream::new(rx, MAX_ADVERT_BYTES);
                let mut market = Market::new(MarketConfig::default());
                let mut admitted = Vec::new();
                for _ in 0..MAX_SYNC_ADVERTS {
                    let frame = match framed.recv_frame().await {
                        Ok(Some(frame)) => frame,
                        Ok(None) => break,
                        Err(e) => {
                            assert!(matches!(
                                e,
                                FrameError::Oversize { .. } | FrameError::Truncated { .. }
                            ));
                            break;
                        }
                    };
                    assert!(frame.len() <= MAX_ADVERT_BYTES);
                    if let Ok(a) = market.insert_synced(&frame, b"peer", NOW) {
                        admitted.push(a);
                    }
                }
                admitted
            })
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(64))]

            #[test]
            fn a_mutated_sync_stream_admits_only_signed_adverts(
                seeds in proptest::collection::btree_set(any::<u8>(), 1..5),
                addrs in 0usize..16,
                mutations in mutations(),
            ) {
                let adverts: Vec<(Vec<u8>, Advert)> = seeds
                    .iter()
                    .map(|&seed| {
                        let (key, advert) = advert(seed, addrs);
                        (advert.sign(&key).unwrap().encode().unwrap(), advert)
                    })
                    .collect();
                let wire: Vec<u8> = adverts
                    .iter()
                    .flat_map(|(bytes, _)| encode_frame(bytes, MAX_ADVERT_BYTES).unwrap())
                    .collect();
                let expected: Vec<Advert> = adverts.into_iter().map(|(_, a)| a).collect();
                prop_assert_eq!(&sync(&wire), &expected);
                // Whatever a tampered stream yields was signed by its worker, unchanged.
                for admitted in sync(&apply(wire, &mutations)) {
                    prop_assert!(expected.contains(&admitted));
                }
            }

            #[test]
            fn an_arbitrary_sync_stream_admits_nothing(
                bytes in proptest::collection::vec(any::<u8>(), 0..4096),
            ) {
                prop_assert!(sync(&bytes).is_empty());
            }
        }
    }
}
