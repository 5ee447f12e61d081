//! The confidential job opening end to end: attester, handshake, verifier and policy, with
//! dev evidence and with the real recorded TDX quote; and over real swarms, a tap on the
//! job stream that must see neither prompt nor answer.

use std::time::Duration;

use cocoon_p2p::attest::attester::{Attester, AttesterConfig, EvidenceSource};
use cocoon_p2p::attest::evidence::{Evidence, EvidenceBody};
use cocoon_p2p::attest::policy::{Policy, PolicyError};
use cocoon_p2p::attest::verifier::{collateral_file_name, Verifier, VerifierConfig, VerifyError};
use cocoon_p2p::attest::EvidenceKind;
use cocoon_p2p::frame::FramedStream;
use cocoon_p2p::job::confidential::{self, OpenError};
use cocoon_p2p::job::{JobChannel, JobConfig, JobInput, JobRequest, Message, Sampling, TokenChunk};
use cocoon_p2p::secure::{self, EnclaveKey, HandshakeError};
use cocoon_p2p::testing::{contains, pipe, Pipe, Tap};
use cocoon_p2p::{DhtMode, Network, NetworkConfig, PeerId};
use futures::StreamExt;
use libp2p::identity::Keypair;

const QUOTE: &[u8] = include_bytes!("data/dcap-qvl/tdx_quote");
const COLLATERAL: &[u8] = include_bytes!("data/dcap-qvl/tdx_quote_collateral.json");
/// Inside the recorded collateral's validity.
const NOW: u64 = 1_750_809_600;

/// The recorded quote's MRTD, in hex.
fn mrtd() -> String {
    let m = cocoon_p2p::attest::tdx::quote_mrtd(QUOTE).expect("a TDX quote");
    m.iter().map(|b| format!("{b:02x}")).collect()
}

fn peer() -> PeerId {
    Keypair::generate_ed25519().public().to_peer_id()
}

fn framed() -> (FramedStream<Pipe>, FramedStream<Pipe>) {
    let (a, b) = pipe();
    (FramedStream::new(a, 1 << 20), FramedStream::new(b, 1 << 20))
}

fn verifier(policy: Policy) -> Verifier {
    Verifier::new(VerifierConfig {
        policy,
        ..Default::default()
    })
}

fn dev_attester(worker: PeerId, now: u64) -> Attester {
    Attester::new(
        EvidenceSource::DevInsecure,
        worker,
        AttesterConfig::default(),
        now,
    )
    .unwrap()
}

/// Runs both sides of the opening; returns the client's result.
async fn open_with(
    attester: &Attester,
    verifier: &Verifier,
    client: PeerId,
    worker: PeerId,
    now: u64,
) -> Result<cocoon_p2p::attest::verifier::Verdict, OpenError> {
    let (c, w) = framed();
    let config = JobConfig::default();
    let (opened, _) = futures::join!(
        confidential::open(c, verifier, &client, &worker, now, &config),
        confidential::accept(w, attester, &client, &worker, &config),
    );
    opened.map(|(_, verdict)| verdict)
}

/// A worker presenting `evidence` with `key`, whatever they bind.
async fn open_raw(
    key: &EnclaveKey,
    evidence: &[u8],
    verifier: &Verifier,
    worker: PeerId,
    now: u64,
) -> Result<cocoon_p2p::attest::verifier::Verdict, OpenError> {
    let client = peer();
    let (c, w) = framed();
    let prologue = confidential::prologue(&client, &worker);
    let config = JobConfig::default();
    let (opened, _) = futures::join!(
        confidential::open(c, verifier, &client, &worker, now, &config),
        secure::worker_handshake(w, &prologue, key, evidence),
    );
    opened.map(|(_, verdict)| verdict)
}

fn refused(r: Result<cocoon_p2p::attest::verifier::Verdict, OpenError>) -> VerifyError {
    match r {
        Err(OpenError::Refused(e)) => e,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn dev_evidence_opens_only_under_the_insecure_dev_policy_and_is_cached() {
    let worker = peer();
    let attester = dev_attester(worker, 1_000);
    let dev = verifier(Policy::insecure_dev());
    let v = open_with(&attester, &dev, peer(), worker, 1_000)
        .await
        .unwrap();
    assert_eq!(v.appraisal.kind, EvidenceKind::DevInsecure);
    assert!(!v.cached);
    let again = open_with(&attester, &dev, peer(), worker, 1_001)
        .await
        .unwrap();
    assert!(again.cached, "verified once per worker, not per job");

    let strict = verifier(Policy::default());
    let e = refused(open_with(&attester, &strict, peer(), worker, 1_000).await);
    assert!(matches!(
        e,
        VerifyError::Policy(PolicyError::DevEvidenceRefused)
    ));
    assert!(e.to_string().contains("--insecure-dev-attestation"));
}

#[tokio::test]
async fn evidence_for_another_key_or_peer_is_refused() {
    let worker = peer();
    let attester = dev_attester(worker, 1_000);
    let evidence = attester.current().evidence.clone();
    let dev = verifier(Policy::insecure_dev());
    // The evidence of one key presented with another.
    let other_key = EnclaveKey::generate();
    let e = refused(open_raw(&other_key, &evidence, &dev, worker, 1_000).await);
    assert!(matches!(
        e,
        VerifyError::Policy(PolicyError::BindingMismatch)
    ));
    // The right key, claimed by another peer.
    let creds = attester.current();
    let e = refused(open_raw(&creds.key, &evidence, &dev, peer(), 1_000).await);
    assert!(matches!(
        e,
        VerifyError::Policy(PolicyError::BindingMismatch)
    ));
}

#[tokio::test]
async fn expired_evidence_is_refused_and_rotation_renews_it() {
    let worker = peer();
    let attester = dev_attester(worker, 1_000);
    let dev = verifier(Policy::insecure_dev());
    let late = 1_000 + 3_600 + 1;
    let e = refused(open_with(&attester, &dev, peer(), worker, late).await);
    assert!(matches!(
        e,
        VerifyError::Policy(PolicyError::Expired { .. })
    ));
    assert!(attester.rotate_if_due(late).unwrap());
    open_with(&attester, &dev, peer(), worker, late)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_swapped_peer_id_fails_the_handshake() {
    let worker = peer();
    let attester = dev_attester(worker, 1_000);
    let dev = verifier(Policy::insecure_dev());
    let (c, w) = framed();
    let config = JobConfig::default();
    let (client, someone_else) = (peer(), peer());
    let (opened, accepted) = futures::join!(
        confidential::open(c, &dev, &client, &worker, 1_000, &config),
        // The worker believes it talks to another client: a relayed or spliced session.
        confidential::accept(w, &attester, &someone_else, &worker, &config),
    );
    // The client cannot decrypt the worker's message: it never trusts it, never sends.
    assert!(
        matches!(opened, Err(OpenError::Handshake(HandshakeError::Noise(_)))),
        "{:?}",
        opened.err()
    );
    // The worker learns of it when no valid frame ever arrives.
    let mut worker_side = accepted.expect("NX: the responder finishes first");
    assert!(
        cocoon_p2p::frame::FrameTransport::recv_frame(&mut worker_side)
            .await
            .map_or(true, |f| f.is_none())
    );
}

fn tdx_evidence(expires_at: u64, collateral: Option<&[u8]>) -> Vec<u8> {
    Evidence {
        expires_at,
        body: EvidenceBody::Tdx {
            quote: QUOTE.to_vec(),
            collateral: collateral.map(<[u8]>::to_vec),
        },
    }
    .encode()
    .unwrap()
}

fn tdx_policy(mrtd: &str) -> Policy {
    Policy {
        allowed_mrtd: vec![mrtd.into()],
        allowed_rtmrs: vec![["*".into(), "*".into(), "*".into(), "*".into()]],
        ..Policy::default()
    }
}

#[tokio::test]
async fn a_real_quote_in_the_handshake_is_verified_then_judged() {
    let key = EnclaveKey::generate();
    let evidence = tdx_evidence(NOW + 3_600, Some(COLLATERAL));
    // The measurement is not on the allowlist.
    let e = refused(
        open_raw(
            &key,
            &evidence,
            &verifier(tdx_policy(&"00".repeat(48))),
            peer(),
            NOW,
        )
        .await,
    );
    assert!(matches!(e, VerifyError::Policy(PolicyError::Mrtd(ref m)) if *m == mrtd()));
    // Allowlisted, but the quote's report data binds someone else's key: refused. DCAP's
    // result is cached, so the same worker retrying costs no second quote verification.
    let allowlisted = verifier(tdx_policy(&mrtd()));
    let worker = peer();
    for _ in 0..2 {
        let e = refused(open_raw(&key, &evidence, &allowlisted, worker, NOW).await);
        assert!(matches!(
            e,
            VerifyError::Policy(PolicyError::BindingMismatch)
        ));
        assert_eq!(allowlisted.cached_appraisals(), 1);
    }
    // One changed byte in the quote: DCAP fails.
    let mut forged = QUOTE.to_vec();
    forged[200] ^= 1;
    let forged = Evidence {
        expires_at: NOW + 3_600,
        body: EvidenceBody::Tdx {
            quote: forged,
            collateral: Some(COLLATERAL.to_vec()),
        },
    }
    .encode()
    .unwrap();
    let e = refused(open_raw(&key, &forged, &verifier(tdx_policy(&mrtd())), peer(), NOW).await);
    assert!(
        matches!(e, VerifyError::NoCollateral(ref m) if m.contains("attached")),
        "{e}"
    );
}

#[tokio::test]
async fn collateral_comes_from_the_cache_directory_when_not_attached() {
    let key = EnclaveKey::generate();
    let evidence = tdx_evidence(NOW + 3_600, None);
    // No collateral anywhere: a clear error.
    let e = refused(open_raw(&key, &evidence, &verifier(tdx_policy(&mrtd())), peer(), NOW).await);
    assert!(matches!(e, VerifyError::NoCollateral(_)), "{e}");

    let dir = tempfile::tempdir().unwrap();
    let name = collateral_file_name(QUOTE).unwrap();
    assert!(
        name.starts_with("tdx-") && name.ends_with(".json"),
        "{name}"
    );
    std::fs::write(dir.path().join(&name), COLLATERAL).unwrap();
    let cached = Verifier::new(VerifierConfig {
        policy: tdx_policy(&mrtd()),
        collateral_dir: Some(dir.path().to_path_buf()),
        ..Default::default()
    });
    // DCAP passes with the cached collateral; only the binding fails (no TDX here to make a
    // quote for our key).
    let e = refused(open_raw(&key, &evidence, &cached, peer(), NOW).await);
    assert!(matches!(
        e,
        VerifyError::Policy(PolicyError::BindingMismatch)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_real_swarms_the_job_stream_carries_neither_prompt_nor_answer() {
    const PROMPT: &str = "the secret prompt: my bank PIN is 4711";
    const ANSWER: &str = "the secret answer: keep it to yourself";
    let t = Duration::from_secs(15);
    let config = |mode, bootstrap| NetworkConfig {
        listen: vec!["/ip4/127.0.0.1/udp/0/quic-v1".parse().unwrap()],
        bootstrap,
        mdns: false,
        dht_mode: mode,
        ..Default::default()
    };
    let worker =
        Network::start(Keypair::generate_ed25519(), config(DhtMode::Server, vec![])).unwrap();
    worker
        .wait_for("listening", t, |s| !s.listen_addrs.is_empty())
        .await
        .unwrap();
    let addr = worker.state().listen_addrs[0].clone();
    let client = Network::start(
        Keypair::generate_ed25519(),
        config(DhtMode::Client, vec![addr]),
    )
    .unwrap();

    let worker_id = worker.peer_id();
    let attester = dev_attester(worker_id, NOW);
    let mut incoming = worker.accept_jobs().unwrap();
    let served = tokio::spawn(async move {
        let (peer, stream) = incoming.next().await.unwrap();
        let (tapped, seen) = Tap::new(stream);
        let job = JobConfig::default();
        let secure = confidential::accept(
            FramedStream::new(tapped, job.max_frame),
            &attester,
            &peer,
            &worker_id,
            &job,
        )
        .await
        .unwrap();
        let mut channel = JobChannel::new(secure, job);
        let request = channel.recv_request().await.unwrap();
        assert_eq!(request.input, JobInput::Prompt(PROMPT.into()));
        channel
            .send(&Message::Token(TokenChunk {
                id: request.id,
                index: 0,
                text: ANSWER.into(),
                tokens: 1,
            }))
            .await
            .unwrap();
        channel
            .send(&cocoon_p2p::job::Message::Done(cocoon_p2p::job::JobDone {
                id: request.id,
                usage: Default::default(),
                timings: Default::default(),
                finish_reason: cocoon_p2p::job::FinishReason::Stop,
            }))
            .await
            .unwrap();
        channel.close().await.unwrap();
        let seen = seen.lock().unwrap().clone();
        seen
    });

    let stream = client.open_job_stream(worker_id, t).await.unwrap();
    let job = JobConfig::default();
    let (secure, verdict) = confidential::open(
        FramedStream::new(stream, job.max_frame),
        &verifier(Policy::insecure_dev()),
        &client.peer_id(),
        &worker_id,
        NOW,
        &job,
    )
    .await
    .unwrap();
    assert_eq!(verdict.appraisal.kind, EvidenceKind::DevInsecure);
    let mut channel = JobChannel::new(secure, job);
    channel
        .send(&Message::Request(JobRequest {
            id: 9,
            model: "m".into(),
            input: JobInput::Prompt(PROMPT.into()),
            sampling: Sampling::default(),
            continuation: None,
            payment: None,
        }))
        .await
        .unwrap();
    let mut text = String::new();
    while let Some(Message::Token(t)) = channel.recv(t).await.unwrap() {
        text.push_str(&t.text);
    }
    assert_eq!(text, ANSWER);
    let seen = served.await.unwrap();
    assert!(
        seen.len() > PROMPT.len() + ANSWER.len(),
        "the tap saw the job"
    );
    for secret in [PROMPT, ANSWER, "secret", "4711"] {
        assert!(
            !contains(&seen, secret.as_bytes()),
            "{secret:?} crossed the stream in clear"
        );
    }
    client.shutdown().await;
    worker.shutdown().await;
}
