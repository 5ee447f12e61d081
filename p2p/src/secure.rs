//! The end-to-end secure channel of a job stream: a Noise handshake whose responder static
//! key is the worker's *enclave key*, then every frame encrypted and authenticated.
//!
//! Pattern `Noise_NX_25519_ChaChaPoly_BLAKE2s`: the client has no static key (it needs no
//! identity inside the channel); the worker sends its static key and, in the same message,
//! its evidence (encrypted under the ephemeral-ephemeral secret). The client's `verify`
//! callback sees both and must approve *before* the client sends any application byte. The
//! prologue binds the protocol, its version and both libp2p peer ids, so a session spliced
//! onto another connection, or relayed with different peer ids, fails the handshake.
//!
//! After the handshake a [`SecureTransport`] is a [`FrameTransport`] over the inner one:
//! each plaintext frame is split into chunks of at most [`MAX_CHUNK`] bytes, each chunk
//! carries a one-byte "more follows" flag inside the ciphertext and travels as one inner
//! frame. Nonces are the Noise counters: never reused, and any replayed, reordered, dropped
//! or altered chunk fails authentication ([`FrameError::Decrypt`]).

use libp2p::PeerId;
use snow::params::NoiseParams;

use crate::frame::{FrameError, FrameTransport, DEFAULT_MAX_FRAME};

/// The Noise protocol name.
pub const NOISE_PARAMS: &str = "Noise_NX_25519_ChaChaPoly_BLAKE2s";
/// Largest Noise message.
const MAX_MESSAGE: usize = 65535;
/// Noise's authentication tag length.
const TAG: usize = 16;
/// Largest plaintext carried by one encrypted chunk (one byte goes to the flag).
pub const MAX_CHUNK: usize = MAX_MESSAGE - TAG - 1;
/// Largest evidence payload in the handshake.
pub const MAX_EVIDENCE: usize = MAX_MESSAGE - 32 - 32 - TAG - TAG;

const MORE: u8 = 1;
const LAST: u8 = 0;

fn params() -> NoiseParams {
    NOISE_PARAMS.parse().expect("valid Noise parameters")
}

/// The prologue both sides must agree on: protocol, version, client and worker peer ids.
pub fn prologue(version: u16, client: &PeerId, worker: &PeerId) -> Vec<u8> {
    let mut p = b"cocoon/job/noise".to_vec();
    p.extend(version.to_be_bytes());
    for id in [client.to_bytes(), worker.to_bytes()] {
        p.extend((id.len() as u16).to_be_bytes());
        p.extend(id);
    }
    p
}

/// A worker's enclave key: an X25519 key pair that lives only in memory.
pub struct EnclaveKey {
    private: Vec<u8>,
    public: [u8; 32],
}

impl EnclaveKey {
    /// A fresh random key.
    pub fn generate() -> Self {
        let kp = snow::Builder::new(params())
            .generate_keypair()
            .expect("X25519 key generation");
        let public = kp.public.as_slice().try_into().expect("32-byte X25519 key");
        Self {
            private: kp.private,
            public,
        }
    }

    /// The public half, which the evidence binds.
    pub fn public(&self) -> [u8; 32] {
        self.public
    }
}

impl std::fmt::Debug for EnclaveKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the private half.
        f.debug_struct("EnclaveKey")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

/// Why a handshake failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HandshakeError {
    /// The stream failed or closed during the handshake.
    #[error("handshake stream: {0}")]
    Frame(#[from] FrameError),
    /// The stream closed before the handshake finished.
    #[error("the peer closed the stream during the handshake")]
    Closed,
    /// A handshake message did not decrypt or parse: wrong prologue (other peer ids or
    /// version), a replayed or altered message, or not Noise at all.
    #[error("Noise handshake failed: {0}")]
    Noise(String),
    /// The client's check of the worker's key and evidence refused it.
    #[error("worker refused: {0}")]
    Refused(String),
    /// The evidence is too large for a handshake message.
    #[error("evidence of {0} bytes exceeds {MAX_EVIDENCE}")]
    EvidenceTooLarge(usize),
}

fn noise(e: snow::Error) -> HandshakeError {
    HandshakeError::Noise(e.to_string())
}

/// Client side: runs the handshake; `verify(worker_static_key, evidence)` decides whether
/// to trust the worker before anything else is sent.
pub async fn client_handshake<T: FrameTransport>(
    inner: T,
    prologue: &[u8],
    verify: impl FnOnce(&[u8; 32], &[u8]) -> Result<(), String>,
) -> Result<SecureTransport<T>, HandshakeError> {
    let pending = client_handshake_unverified(inner, prologue).await?;
    verify(&pending.worker_key, &pending.evidence).map_err(HandshakeError::Refused)?;
    Ok(pending.accept())
}

/// Client side, for verification that must await (fetching collateral): runs the handshake
/// and returns the worker's key and evidence *without* a usable channel. Only
/// [`Unverified::accept`], called after the evidence was checked, yields one; until then
/// nothing can be sent.
pub async fn client_handshake_unverified<T: FrameTransport>(
    mut inner: T,
    prologue: &[u8],
) -> Result<Unverified<T>, HandshakeError> {
    let mut hs = snow::Builder::new(params())
        .prologue(prologue)
        .map_err(noise)?
        .build_initiator()
        .map_err(noise)?;
    let mut buf = vec![0u8; MAX_MESSAGE];
    let n = hs.write_message(&[], &mut buf).map_err(noise)?;
    inner.send_frame(&buf[..n]).await?;
    let reply = inner.recv_frame().await?.ok_or(HandshakeError::Closed)?;
    let mut evidence = vec![0u8; MAX_MESSAGE];
    let n = hs.read_message(&reply, &mut evidence).map_err(noise)?;
    evidence.truncate(n);
    let worker_key: [u8; 32] = hs
        .get_remote_static()
        .and_then(|k| k.try_into().ok())
        .ok_or_else(|| HandshakeError::Noise("no worker static key".into()))?;
    let state = hs.into_transport_mode().map_err(noise)?;
    Ok(Unverified {
        inner,
        state,
        worker_key,
        evidence,
    })
}

/// A finished handshake whose worker has not been verified yet.
pub struct Unverified<T> {
    inner: T,
    state: snow::TransportState,
    worker_key: [u8; 32],
    evidence: Vec<u8>,
}

impl<T> Unverified<T> {
    /// The worker's static (enclave) key, authenticated by the handshake.
    pub fn worker_key(&self) -> &[u8; 32] {
        &self.worker_key
    }

    /// The evidence the worker sent, encrypted in transit.
    pub fn evidence(&self) -> &[u8] {
        &self.evidence
    }

    /// The channel, once the caller has decided to trust the worker.
    pub fn accept(self) -> SecureTransport<T> {
        SecureTransport::new(self.inner, self.state, self.worker_key)
    }
}

/// Worker side: answers the handshake with `key` as the static key and `evidence` as payload.
pub async fn worker_handshake<T: FrameTransport>(
    mut inner: T,
    prologue: &[u8],
    key: &EnclaveKey,
    evidence: &[u8],
) -> Result<SecureTransport<T>, HandshakeError> {
    if evidence.len() > MAX_EVIDENCE {
        return Err(HandshakeError::EvidenceTooLarge(evidence.len()));
    }
    let mut hs = snow::Builder::new(params())
        .local_private_key(&key.private)
        .map_err(noise)?
        .prologue(prologue)
        .map_err(noise)?
        .build_responder()
        .map_err(noise)?;
    let first = inner.recv_frame().await?.ok_or(HandshakeError::Closed)?;
    let mut payload = vec![0u8; MAX_MESSAGE];
    hs.read_message(&first, &mut payload).map_err(noise)?;
    let mut buf = vec![0u8; MAX_MESSAGE];
    let n = hs.write_message(evidence, &mut buf).map_err(noise)?;
    inner.send_frame(&buf[..n]).await?;
    let state = hs.into_transport_mode().map_err(noise)?;
    Ok(SecureTransport::new(inner, state, key.public))
}

/// Encrypted frames over an inner frame transport.
pub struct SecureTransport<T> {
    inner: T,
    state: snow::TransportState,
    worker_key: [u8; 32],
    buf: Vec<u8>,
    /// The chunks of a frame received so far: kept here, not in the future, so that
    /// [`FrameTransport::recv_frame`] is cancel-safe when the inner transport's is.
    partial: Vec<u8>,
    max_frame: usize,
}

impl<T> SecureTransport<T> {
    fn new(inner: T, state: snow::TransportState, worker_key: [u8; 32]) -> Self {
        Self {
            inner,
            state,
            worker_key,
            buf: vec![0u8; MAX_MESSAGE],
            partial: Vec::new(),
            max_frame: DEFAULT_MAX_FRAME,
        }
    }

    /// Sets the largest plaintext frame sent or reassembled (default
    /// [`DEFAULT_MAX_FRAME`]): a peer cannot make us buffer more.
    pub fn with_max_frame(mut self, max_frame: usize) -> Self {
        self.max_frame = max_frame;
        self
    }

    /// The worker's enclave key this channel is bound to.
    pub fn worker_key(&self) -> [u8; 32] {
        self.worker_key
    }
}

impl<T: FrameTransport> FrameTransport for SecureTransport<T> {
    async fn send_frame(&mut self, body: &[u8]) -> Result<(), FrameError> {
        if body.len() > self.max_frame {
            return Err(FrameError::Oversize {
                len: body.len(),
                max: self.max_frame,
            });
        }
        let mut chunks = body.chunks(MAX_CHUNK).peekable();
        let mut plain = Vec::with_capacity(MAX_CHUNK + 1);
        loop {
            let chunk = chunks.next().unwrap_or(&[]);
            plain.clear();
            plain.push(if chunks.peek().is_some() { MORE } else { LAST });
            plain.extend_from_slice(chunk);
            let n = self
                .state
                .write_message(&plain, &mut self.buf)
                .map_err(|_| FrameError::Decrypt)?;
            self.inner.send_frame(&self.buf[..n]).await?;
            if chunks.peek().is_none() {
                return Ok(());
            }
        }
    }

    async fn recv_frame(&mut self) -> Result<Option<Vec<u8>>, FrameError> {
        loop {
            // The only await: after it returns, nothing below awaits, so a cancelled call
            // loses no chunk.
            let Some(cipher) = self.inner.recv_frame().await? else {
                if self.partial.is_empty() {
                    return Ok(None);
                }
                return Err(FrameError::Truncated {
                    have: self.partial.len(),
                    want: self.partial.len() + 1,
                });
            };
            let n = self
                .state
                .read_message(&cipher, &mut self.buf)
                .map_err(|_| FrameError::Decrypt)?;
            let (flag, chunk) = self.buf[..n].split_first().ok_or(FrameError::Decrypt)?;
            if self.partial.len() + chunk.len() > self.max_frame {
                return Err(FrameError::Oversize {
                    len: self.partial.len() + chunk.len(),
                    max: self.max_frame,
                });
            }
            self.partial.extend_from_slice(chunk);
            match *flag {
                LAST => return Ok(Some(std::mem::take(&mut self.partial))),
                MORE => continue,
                _ => return Err(FrameError::Decrypt),
            }
        }
    }

    async fn close(&mut self) -> Result<(), FrameError> {
        self.inner.close().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::FramedStream;
    use crate::fuzz::{apply, mutations, Mutation};
    use crate::testing::{contains, pipe, Pipe, Tap};
    use libp2p::identity::Keypair;
    use proptest::prelude::*;
    use std::collections::VecDeque;
    use std::sync::{Arc, Mutex};

    fn peer() -> PeerId {
        Keypair::generate_ed25519().public().to_peer_id()
    }

    fn framed() -> (FramedStream<Pipe>, FramedStream<Pipe>) {
        let (a, b) = pipe();
        (FramedStream::new(a, 1 << 20), FramedStream::new(b, 1 << 20))
    }

    type Pair<T> = (
        Result<SecureTransport<T>, HandshakeError>,
        Result<SecureTransport<FramedStream<Pipe>>, HandshakeError>,
    );

    async fn handshake<T: FrameTransport>(
        client_io: T,
        worker_io: FramedStream<Pipe>,
        client_prologue: Vec<u8>,
        worker_prologue: Vec<u8>,
        key: &EnclaveKey,
        accept: bool,
    ) -> Pair<T> {
        let expected = key.public();
        let client = client_handshake(client_io, &client_prologue, move |k, evidence| {
            assert_eq!(k, &expected);
            assert_eq!(evidence, b"evidence");
            if accept {
                Ok(())
            } else {
                Err("policy says no".into())
            }
        });
        let worker = worker_handshake(worker_io, &worker_prologue, key, b"evidence");
        futures::join!(client, worker)
    }

    /// A client and a worker that completed the handshake over an in-memory pipe.
    async fn connected() -> (
        SecureTransport<FramedStream<Pipe>>,
        SecureTransport<FramedStream<Pipe>>,
    ) {
        let (c, w) = framed();
        let (client, worker) = (peer(), peer());
        let p = prologue(1, &client, &worker);
        let (c, w) = handshake(c, w, p.clone(), p, &EnclaveKey::generate(), true).await;
        (c.unwrap(), w.unwrap())
    }

    #[tokio::test]
    async fn frames_cross_encrypted_and_the_prompt_never_appears_on_the_wire() {
        let (c, w) = pipe();
        // Every byte the client's side of the stream carries: what an observer sees.
        let (tapped, seen) = Tap::new(c);
        let tap = FramedStream::new(tapped, 1 << 20);
        let w = FramedStream::new(w, 1 << 20);
        let (client, worker) = (peer(), peer());
        let p = prologue(1, &client, &worker);
        let key = EnclaveKey::generate();
        let (c, w) = handshake(tap, w, p.clone(), p, &key, true).await;
        let (mut c, mut w) = (c.unwrap(), w.unwrap());
        assert_eq!(c.worker_key(), key.public());
        let prompt = b"SECRET PROMPT: the launch codes are 0000";
        let answer = b"SECRET ANSWER: never share them";
        c.send_frame(prompt).await.unwrap();
        assert_eq!(w.recv_frame().await.unwrap().unwrap(), prompt);
        w.send_frame(answer).await.unwrap();
        assert_eq!(c.recv_frame().await.unwrap().unwrap(), answer);
        let wire = seen.lock().unwrap().clone();
        assert!(
            wire.len() > prompt.len() + answer.len(),
            "the tap saw the stream"
        );
        for secret in [&prompt[..], &answer[..], b"SECRET"] {
            assert!(!contains(&wire, secret), "plaintext on the wire");
        }
    }

    #[tokio::test]
    async fn a_swapped_peer_id_in_the_prologue_fails() {
        let (c, w) = framed();
        let (client, worker, other) = (peer(), peer(), peer());
        let key = EnclaveKey::generate();
        let (c, _w) = handshake(
            c,
            w,
            prologue(1, &client, &worker),
            prologue(1, &other, &worker),
            &key,
            true,
        )
        .await;
        assert!(matches!(c, Err(HandshakeError::Noise(_))));
        let (c, w) = framed();
        let (c, _w) = handshake(
            c,
            w,
            prologue(1, &client, &worker),
            prologue(2, &client, &worker),
            &key,
            true,
        )
        .await;
        assert!(
            matches!(c, Err(HandshakeError::Noise(_))),
            "another version"
        );
    }

    #[tokio::test]
    async fn a_refused_worker_gets_nothing() {
        let (c, w) = framed();
        let (client, worker) = (peer(), peer());
        let p = prologue(1, &client, &worker);
        let key = EnclaveKey::generate();
        let (c, w) = handshake(c, w, p.clone(), p, &key, false).await;
        assert!(matches!(c, Err(HandshakeError::Refused(_))));
        // The client's transport was dropped with the refusal: the worker sees the end.
        let mut w = w.unwrap();
        assert!(w.recv_frame().await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_flipped_ciphertext_bit_ends_the_channel() {
        let (mut c, mut w) = connected().await;
        // A genuine encrypted frame with one bit flipped on its way.
        let n = c
            .state
            .write_message(&[LAST, b'h', b'i'], &mut c.buf)
            .unwrap();
        let mut tampered = c.buf[..n].to_vec();
        tampered[3] ^= 0x04;
        c.inner.send_frame(&tampered).await.unwrap();
        assert!(matches!(w.recv_frame().await, Err(FrameError::Decrypt)));
    }

    #[tokio::test]
    async fn a_replayed_session_cannot_talk_to_a_new_worker_session() {
        // Session A: record the client's first message and its encrypted request.
        let (c, w) = framed();
        let frames = Arc::new(Mutex::new(Vec::<Vec<u8>>::new()));
        struct Rec<T>(T, Arc<Mutex<Vec<Vec<u8>>>>);
        impl<T: FrameTransport> FrameTransport for Rec<T> {
            async fn send_frame(&mut self, b: &[u8]) -> Result<(), FrameError> {
                self.1.lock().unwrap().push(b.to_vec());
                self.0.send_frame(b).await
            }
            async fn recv_frame(&mut self) -> Result<Option<Vec<u8>>, FrameError> {
                self.0.recv_frame().await
            }
            async fn close(&mut self) -> Result<(), FrameError> {
                self.0.close().await
            }
        }
        let (client, worker) = (peer(), peer());
        let p = prologue(1, &client, &worker);
        let key = EnclaveKey::generate();
        let (c, w) = handshake(Rec(c, frames.clone()), w, p.clone(), p.clone(), &key, true).await;
        let (mut c, mut w) = (c.unwrap(), w.unwrap());
        c.send_frame(b"request").await.unwrap();
        assert_eq!(w.recv_frame().await.unwrap().unwrap(), b"request");
        let recorded = frames.lock().unwrap().clone();
        assert_eq!(recorded.len(), 2, "handshake message + one request");

        // Session B, same worker key: replay both messages.
        let (mut attacker, w) = framed();
        let worker_b = tokio::spawn(async move {
            let mut w = worker_handshake(w, &p, &key, b"evidence").await.unwrap();
            w.recv_frame().await
        });
        attacker.send_frame(&recorded[0]).await.unwrap();
        let _reply = attacker.recv_frame().await.unwrap().unwrap();
        attacker.send_frame(&recorded[1]).await.unwrap();
        assert!(matches!(worker_b.await.unwrap(), Err(FrameError::Decrypt)));
    }

    #[tokio::test]
    async fn oversize_frames_are_refused() {
        let (c, w) = connected().await;
        let (mut c, mut w) = (c.with_max_frame(1 << 20), w.with_max_frame(100_000));
        assert!(matches!(
            c.send_frame(&vec![0; (1 << 20) + 1]).await,
            Err(FrameError::Oversize { .. })
        ));
        // A sender with a higher limit cannot make the receiver buffer past its own.
        c.send_frame(&vec![1; 200_000]).await.unwrap();
        assert!(matches!(
            w.recv_frame().await,
            Err(FrameError::Oversize { .. })
        ));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn random_sizes_round_trip(sizes in proptest::collection::vec(0usize..150_000, 1..5)) {
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            rt.block_on(async {
                let (mut c, mut w) = connected().await;
                for (i, n) in sizes.iter().enumerate() {
                    let body: Vec<u8> = (0..*n).map(|j| (i * 31 + j) as u8).collect();
                    c.send_frame(&body).await.unwrap();
                    assert_eq!(w.recv_frame().await.unwrap().unwrap(), body);
                    w.send_frame(&body).await.unwrap();
                    assert_eq!(c.recv_frame().await.unwrap().unwrap(), body);
                }
            });
        }
    }

    /// A peer that sends scripted frames (then ends the stream) and ignores what it gets.
    struct Script {
        incoming: VecDeque<Vec<u8>>,
    }

    impl Script {
        fn new(incoming: impl IntoIterator<Item = Vec<u8>>) -> Self {
            Self {
                incoming: incoming.into_iter().collect(),
            }
        }
    }

    impl FrameTransport for Script {
        async fn send_frame(&mut self, _: &[u8]) -> Result<(), FrameError> {
            Ok(())
        }
        async fn recv_frame(&mut self) -> Result<Option<Vec<u8>>, FrameError> {
            Ok(self.incoming.pop_front())
        }
        async fn close(&mut self) -> Result<(), FrameError> {
            Ok(())
        }
    }

    /// A transport that applies `edit` to the first frame it receives.
    struct Tamper<T> {
        inner: T,
        edit: Option<Vec<Mutation>>,
    }

    impl<T: FrameTransport> FrameTransport for Tamper<T> {
        async fn send_frame(&mut self, body: &[u8]) -> Result<(), FrameError> {
            self.inner.send_frame(body).await
        }
        async fn recv_frame(&mut self) -> Result<Option<Vec<u8>>, FrameError> {
            let frame = self.inner.recv_frame().await?;
            Ok(frame.map(|f| match self.edit.take() {
                Some(edit) => apply(f, &edit),
                None => f,
            }))
        }
        async fn close(&mut self) -> Result<(), FrameError> {
            self.inner.close().await
        }
    }

    /// Records the frames that cross it, unchanged.
    struct Record<T> {
        inner: T,
        seen: Arc<Mutex<Vec<Vec<u8>>>>,
    }

    impl<T: FrameTransport> FrameTransport for Record<T> {
        async fn send_frame(&mut self, body: &[u8]) -> Result<(), FrameError> {
            self.inner.send_frame(body).await
        }
        async fn recv_frame(&mut self) -> Result<Option<Vec<u8>>, FrameError> {
            let frame = self.inner.recv_frame().await?;
            if let Some(f) = &frame {
                self.seen.lock().unwrap().push(f.clone());
            }
            Ok(frame)
        }
        async fn close(&mut self) -> Result<(), FrameError> {
            self.inner.close().await
        }
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    /// One authenticated chunk with any plaintext, flag byte included.
    fn seal(c: &mut SecureTransport<FramedStream<Pipe>>, plain: &[u8]) -> Vec<u8> {
        let n = c.state.write_message(plain, &mut c.buf).unwrap();
        c.buf[..n].to_vec()
    }

    /// Receives until the end, an error or `limit` frames; checks that the partial frame
    /// never outgrows the limit.
    async fn drain(
        w: &mut SecureTransport<FramedStream<Pipe>>,
        limit: usize,
    ) -> (Vec<Vec<u8>>, Result<(), FrameError>) {
        let mut frames = Vec::new();
        let mut ended = Ok(());
        for _ in 0..limit {
            let got = w.recv_frame().await;
            assert!(w.partial.len() <= w.max_frame);
            match got {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => break,
                Err(e) => {
                    ended = Err(e);
                    break;
                }
            }
        }
        (frames, ended)
    }

    #[test]
    fn authenticated_but_malformed_chunks_are_refused() {
        block_on(async {
            // An empty plaintext has no flag byte; a flag other than MORE or LAST.
            for plain in [&[][..], &[2, b'x'][..], &[0xff][..]] {
                let (mut c, mut w) = connected().await;
                let chunk = seal(&mut c, plain);
                c.inner.send_frame(&chunk).await.unwrap();
                assert!(matches!(w.recv_frame().await, Err(FrameError::Decrypt)));
            }
        });
    }

    #[test]
    fn oversize_handshake_messages_are_refused() {
        block_on(async {
            let huge = vec![7u8; MAX_MESSAGE + 1];
            let client = client_handshake_unverified(Script::new([huge.clone()]), b"p").await;
            assert!(matches!(client, Err(HandshakeError::Noise(_))));
            let key = EnclaveKey::generate();
            let worker = worker_handshake(Script::new([huge]), b"p", &key, b"e").await;
            assert!(matches!(worker, Err(HandshakeError::Noise(_))));
            let closed = worker_handshake(Script::new([]), b"p", &key, b"e").await;
            assert!(matches!(closed, Err(HandshakeError::Closed)));
        });
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]

        #[test]
        fn arbitrary_ciphertext_never_decrypts(
            frames in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..600), 1..4),
        ) {
            block_on(async {
                let (mut c, mut w) = connected().await;
                for f in &frames {
                    c.inner.send_frame(f).await.unwrap();
                }
                c.inner.close().await.unwrap();
                let (got, ended) = drain(&mut w, 8).await;
                assert!(got.is_empty());
                assert!(matches!(ended, Err(FrameError::Decrypt)));
            });
        }

        #[test]
        fn tampered_chunks_are_refused_and_nothing_unauthentic_is_delivered(
            len in prop_oneof![0usize..100, (MAX_CHUNK - 2)..(MAX_CHUNK + 2), (2 * MAX_CHUNK)..(2 * MAX_CHUNK + 9)],
            target in any::<proptest::sample::Index>(),
            edit in prop_oneof![
                mutations().prop_map(Some),
                Just(None),
            ],
            reorder in 0u8..4,
        ) {
            block_on(async {
                let (mut c, mut w) = connected().await;
                let body: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
                c.send_frame(&body).await.unwrap();
                // The chunks as they cross the wire, taken off before the worker reads them.
                let n = len.div_ceil(MAX_CHUNK).max(1);
                let mut chunks = Vec::new();
                for _ in 0..n {
                    chunks.push(w.inner.recv_frame().await.unwrap().unwrap());
                }
                let original = chunks.clone();
                let i = target.index(n);
                match (edit, reorder) {
                    (Some(m), _) => chunks[i] = apply(chunks[i].clone(), &m),
                    (None, 0) => drop(chunks.remove(i)),
                    (None, 1) => chunks.insert(i, chunks[i].clone()),
                    (None, 2) => chunks.swap(i, n - 1),
                    (None, _) => chunks.push(chunks[i].clone()),
                }
                for f in &chunks {
                    c.inner.send_frame(f).await.unwrap();
                }
                c.inner.close().await.unwrap();
                let (got, ended) = drain(&mut w, 8).await;
                // Whatever is delivered is the body, at most once: no replay, no splice.
                assert!(got.len() <= 1);
                assert!(got.iter().all(|f| *f == body));
                if chunks == original {
                    assert_eq!(got, vec![body.clone()]);
                    assert!(ended.is_ok());
                } else if got.is_empty() {
                    assert!(ended.is_err() || chunks.is_empty());
                }
            });
        }

        #[test]
        fn authenticated_chunks_never_outgrow_the_frame_limit(
            sizes in proptest::collection::vec(0usize..700, 1..12),
            last in any::<bool>(),
        ) {
            block_on(async {
                let (mut c, w) = connected().await;
                let mut w = w.with_max_frame(1_000);
                let total: usize = sizes.iter().sum();
                for (i, size) in sizes.iter().enumerate() {
                    let flag = if last && i == sizes.len() - 1 { LAST } else { MORE };
                    let mut plain = vec![flag];
                    plain.resize(size + 1, 9);
                    let chunk = seal(&mut c, &plain);
                    c.inner.send_frame(&chunk).await.unwrap();
                }
                c.inner.close().await.unwrap();
                let (got, ended) = drain(&mut w, 4).await;
                if total > 1_000 {
                    assert!(got.is_empty());
                    assert!(matches!(ended, Err(FrameError::Oversize { .. })));
                } else if last {
                    assert_eq!(got, vec![vec![9; total]]);
                } else {
                    assert!(matches!(ended, Err(FrameError::Truncated { .. })));
                }
            });
        }

        #[test]
        fn arbitrary_handshake_messages_never_panic(
            first in proptest::collection::vec(any::<u8>(), 0..200),
            reply in proptest::collection::vec(any::<u8>(), 0..400),
        ) {
            block_on(async {
                // The worker's first read: the client's ephemeral key and a clear payload, so
                // 32 bytes or more may well be accepted; fewer never are.
                let key = EnclaveKey::generate();
                let worker = worker_handshake(Script::new([first.clone()]), b"p", &key, b"e").await;
                match worker {
                    Ok(_) => assert!(first.len() >= 32),
                    Err(e) => assert!(matches!(e, HandshakeError::Noise(_))),
                }
                // The client's read must authenticate the worker's key: random bytes never do.
                let client = client_handshake_unverified(Script::new([reply]), b"p").await;
                assert!(matches!(client, Err(HandshakeError::Noise(_))));
            });
        }

        #[test]
        fn a_tampered_handshake_never_opens_a_channel(
            edit in mutations(),
            tamper_reply in any::<bool>(),
        ) {
            block_on(async {
                let (c, w) = framed();
                let p = prologue(1, &peer(), &peer());
                let key = EnclaveKey::generate();
                // What each side received, before the edit.
                let (to_client, to_worker) = (Arc::default(), Arc::default());
                let client = Tamper {
                    inner: Record { inner: c, seen: Arc::clone(&to_client) },
                    edit: tamper_reply.then(|| edit.clone()),
                };
                let worker = Tamper {
                    inner: Record { inner: w, seen: Arc::clone(&to_worker) },
                    edit: (!tamper_reply).then(|| edit.clone()),
                };
                let (c, w) = futures::join!(
                    client_handshake_unverified(client, &p),
                    worker_handshake(worker, &p, &key, b"evidence"),
                );
                let tampered: &Mutex<Vec<Vec<u8>>> = if tamper_reply { &to_client } else { &to_worker };
                let untouched = tampered
                    .lock()
                    .unwrap()
                    .first()
                    .is_some_and(|m| apply(m.clone(), &edit) == *m);
                // The channel opens exactly when the edit changed nothing, and then with the
                // worker's own key and evidence.
                prop_assert_eq!(c.is_ok(), untouched);
                if let Ok(pending) = &c {
                    prop_assert!(w.is_ok());
                    prop_assert_eq!(pending.worker_key(), &key.public());
                    prop_assert_eq!(pending.evidence(), b"evidence");
                }
                Ok(())
            })?;
        }
    }
}
