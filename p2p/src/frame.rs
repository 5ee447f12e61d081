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
#[derive(Debug)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    max: usize,
}

impl FrameDecoder {
    /// A decoder that refuses frames longer than `max` bytes.
    pub fn new(max: usize) -> Self {
        Self {
            buf: Vec::new(),
            max,
        }
    }

    /// Appends received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Takes the next complete frame, `Ok(None)` if more bytes are needed. An oversize length
    /// prefix is reported as soon as the prefix arrives, before the body is buffered.
    pub fn next_frame(&mut self) -> Result<Option<Vec<u8>>, FrameError> {
        if self.buf.len() < LENGTH_PREFIX {
            return Ok(None);
        }
        let len =
            u32::from_be_bytes(self.buf[..LENGTH_PREFIX].try_into().expect("4 bytes")) as usize;
        if len > self.max {
            return Err(FrameError::Oversize { len, max: self.max });
        }
        if self.buf.len() < LENGTH_PREFIX + len {
            return Ok(None);
        }
        let frame = self.buf[LENGTH_PREFIX..LENGTH_PREFIX + len].to_vec();
        self.buf.drain(..LENGTH_PREFIX + len);
        Ok(Some(frame))
    }

    /// Call at end of stream: an error if a partial frame is still buffered.
    pub fn finish(&self) -> Result<(), FrameError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let want = if self.buf.len() < LENGTH_PREFIX {
            LENGTH_PREFIX
        } else {
            LENGTH_PREFIX
                + u32::from_be_bytes(self.buf[..LENGTH_PREFIX].try_into().expect("4 bytes"))
                    as usize
        };
        Err(FrameError::Truncated {
            have: self.buf.len(),
            want,
        })
    }

    /// Bytes buffered but not yet returned as a frame.
    pub fn buffered(&self) -> usize {
        self.buf.len()
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

    proptest! {
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
}
