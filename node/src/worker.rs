//! Worker glue: joins inbound `/cocoon/job/1` streams to the inference engine.
//!
//! Each stream gets its own task: answer the attested Noise handshake with the current
//! enclave key and evidence (nothing else is read before it), read and check the request
//! (now decrypted), ask the engine for a
//! generation (answering `Busy` at once when the engine is at its limit, never queueing),
//! stream the text as `Token` chunks and finish with `Done` or `Error`. If the client goes
//! away, the failed send drops the generation, which stops it at once.
//!
//! A worker with a price bills every job through a payment channel ([`crate::payments`]):
//! it admits the channel named in the request, quotes the prompt size and price, counts each
//! chunk against its credit limit before sending it, takes vouchers as they come (racing
//! them against the token stream; receiving is cancel-safe) and, when the credit runs out,
//! waits for one; no voucher in time ends the job with `PaymentRequired`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cocoon_inference as inference;
use cocoon_p2p::attest::attester::Attester;
use cocoon_p2p::frame::FrameTransport;
use cocoon_p2p::frame::FramedStream;
use cocoon_p2p::job::{
    self, confidential, ErrorCode, JobChannel, JobConfig, JobError, JobFailure, JobPrice, JobQuote,
    JobRequest, Message,
};
use cocoon_p2p::{Network, NetworkError, PeerId};
use futures::{AsyncRead, AsyncWrite, StreamExt};

use crate::payments::WorkerLedger;

/// Most stop strings a request may carry.
pub const MAX_STOP_STRINGS: usize = 16;
/// Longest stop string, in bytes.
pub const MAX_STOP_LEN: usize = 256;

/// The models a worker serves, by announced id.
#[derive(Clone)]
pub struct Worker {
    engines: Arc<HashMap<String, inference::Engine>>,
    job_config: JobConfig,
    attester: Arc<Attester>,
    peer_id: PeerId,
    stats: Arc<Stats>,
    price: Arc<Mutex<JobPrice>>,
    payments: Option<Arc<WorkerLedger>>,
    voucher_timeout: Duration,
}

/// A paid job's bookkeeping on the worker.
struct Billing {
    ledger: Arc<WorkerLedger>,
    channel: [u8; 32],
    price: JobPrice,
    /// Value delivered by this job so far.
    delivered: u64,
    /// Completion tokens billed so far.
    tokens: u32,
    /// The job's hold on the channel.
    claim: crate::payments::JobClaim,
}

/// What the worker measured, for its advert and price policy.
#[derive(Debug, Default)]
pub struct Stats {
    refused_busy: std::sync::atomic::AtomicU32,
    /// Moving average of decode speed, tokens/s (0 = not measured yet).
    speed_milli: std::sync::atomic::AtomicU64,
}

impl Stats {
    /// Jobs refused as busy since the last call.
    pub fn take_refused(&self) -> u32 {
        self.refused_busy
            .swap(0, std::sync::atomic::Ordering::Relaxed)
    }

    /// Measured decode speed, tokens per second; 0 until a job has run.
    pub fn tokens_per_s(&self) -> f64 {
        self.speed_milli.load(std::sync::atomic::Ordering::Relaxed) as f64 / 1000.0
    }

    fn record_speed(&self, tokens_per_s: f64) {
        if !(tokens_per_s.is_finite() && tokens_per_s > 0.0) {
            return;
        }
        let old = self.tokens_per_s();
        let new = if old == 0.0 {
            tokens_per_s
        } else {
            old + 0.3 * (tokens_per_s - old)
        };
        self.speed_milli
            .store((new * 1000.0) as u64, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Worker {
    /// A worker serving `engines` (model id → engine) as `peer_id`, presenting `attester`'s
    /// credentials.
    pub fn new(
        engines: HashMap<String, inference::Engine>,
        job_config: JobConfig,
        attester: Arc<Attester>,
        peer_id: PeerId,
    ) -> Self {
        Self {
            engines: Arc::new(engines),
            job_config,
            attester,
            peer_id,
            stats: Arc::new(Stats::default()),
            price: Arc::new(Mutex::new(JobPrice::default())),
            payments: None,
            voucher_timeout: Duration::from_secs(10),
        }
    }

    /// Bills jobs through `ledger`, waiting at most `voucher_timeout` for a voucher when the
    /// credit runs out. Without it the worker serves only while its price is zero.
    pub fn with_payments(mut self, ledger: Arc<WorkerLedger>, voucher_timeout: Duration) -> Self {
        self.payments = Some(ledger);
        self.voucher_timeout = voucher_timeout;
        self
    }

    /// Sets the price new jobs are billed at (the advertiser keeps it current).
    pub fn set_price(&self, price: JobPrice) {
        *self.price.lock().expect("price lock") = price;
    }

    /// The price new jobs are billed at.
    pub fn price(&self) -> JobPrice {
        *self.price.lock().expect("price lock")
    }

    /// The payment ledger, when jobs are billed.
    pub fn payments(&self) -> Option<&Arc<WorkerLedger>> {
        self.payments.as_ref()
    }

    /// The engines, by model id.
    pub fn engines(&self) -> &HashMap<String, inference::Engine> {
        &self.engines
    }

    /// The attester whose credentials this worker presents.
    pub fn attester(&self) -> &Arc<Attester> {
        &self.attester
    }

    /// Measured load and speed.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Model ids served.
    pub fn model_ids(&self) -> impl Iterator<Item = &str> {
        self.engines.keys().map(String::as_str)
    }

    /// Accepts job streams until the network stops. Announce the models first.
    pub async fn serve(self, network: Network) -> Result<(), NetworkError> {
        let mut incoming = network.accept_jobs()?;
        while let Some((peer, stream)) = incoming.next().await {
            let worker = self.clone();
            tokio::spawn(async move { worker.serve_stream(peer, stream).await });
        }
        Ok(())
    }

    /// Serves one job stream opened by `peer`: handshake, request, generation.
    pub async fn serve_stream<S: AsyncRead + AsyncWrite + Unpin + Send>(
        &self,
        peer: PeerId,
        stream: S,
    ) {
        let transport = FramedStream::new(stream, self.job_config.max_frame);
        let secure = match confidential::accept(
            transport,
            &self.attester,
            &peer,
            &self.peer_id,
            &self.job_config,
        )
        .await
        {
            Ok(s) => s,
            Err(e) => {
                tracing::info!(%peer, "handshake failed: {e}");
                return;
            }
        };
        let mut channel = JobChannel::new(secure, self.job_config.clone());
        let request = match channel.recv_request().await {
            Ok(r) => r,
            Err(e) => {
                tracing::info!(%peer, "job refused before start: {e}");
                return;
            }
        };
        let id = request.id;
        tracing::info!(%peer, job = id, model = %request.model, "job started");
        match self.run(&mut channel, request).await {
            Ok(()) => tracing::info!(%peer, job = id, "job finished"),
            Err(e) => tracing::info!(%peer, job = id, "job ended: {e}"),
        }
        let _ = channel.close().await;
    }

    /// Runs one job whose request has been read, answering on `channel`.
    pub async fn run<T: cocoon_p2p::frame::FrameTransport>(
        &self,
        channel: &mut JobChannel<T>,
        request: JobRequest,
    ) -> Result<(), job::JobError> {
        let id = request.id;
        let fail = |code, message: String| Message::Error(JobFailure { id, code, message });
        let Some(engine) = self.engines.get(&request.model) else {
            let served: Vec<&str> = self.model_ids().collect();
            let msg = format!(
                "model {:?} is not served here (serving {served:?})",
                request.model
            );
            return channel.send(&fail(ErrorCode::UnknownModel, msg)).await;
        };
        if let Err(msg) = validate(&request) {
            return channel.send(&fail(ErrorCode::BadRequest, msg)).await;
        }
        let mut billing = match self.admit(&request).await {
            Ok(b) => b,
            Err((code, msg)) => return channel.send(&fail(code, msg)).await,
        };
        let continuation = request.continuation.clone();
        let mut engine_request = to_engine(request);
        if let Some(prefix) = continuation {
            // Failover: carry on from the answer so far, as the start of the reply.
            match engine.render_prompt(&engine_request.prompt) {
                Ok(text) => engine_request.prompt = inference::Prompt::Text(text + &prefix),
                Err(e) => {
                    return channel
                        .send(&fail(ErrorCode::BadRequest, e.to_string()))
                        .await
                }
            }
        }
        let mut generation = match engine.generate(engine_request) {
            Ok(g) => g,
            Err(inference::GenerateError::Busy { limit }) => {
                self.stats
                    .refused_busy
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let msg = format!("worker is running {limit} jobs, its limit");
                return channel.send(&fail(ErrorCode::Busy, msg)).await;
            }
            Err(e) => {
                return channel
                    .send(&fail(ErrorCode::BadRequest, e.to_string()))
                    .await
            }
        };
        let prompt_tokens = generation.prompt_tokens();
        if let Some(b) = &billing {
            let view = b.ledger.view(&b.channel).unwrap_or_default();
            let quote = JobQuote {
                id,
                prompt_tokens,
                price: b.price,
                channel_paid: view.paid,
                channel_seq: view.seq,
                channel_delivered: view.delivered,
                credit_limit: b.ledger.credit_limit(),
            };
            channel.send(&Message::Quote(quote)).await?;
        }
        let result = self
            .stream(channel, &mut generation, billing.as_mut(), id)
            .await;
        if let Some(b) = &billing {
            let receipt = cocoon_ledger::settle::Receipt {
                channel: b.channel,
                job: id,
                prompt_tokens,
                completion_tokens: b.tokens,
                cost: b.delivered,
                finished_at: crate::attestation::unix_now(),
            };
            let journalled = b
                .ledger
                .record(&b.channel)
                .and_then(|()| Ok(b.ledger.journal().add_receipt(&receipt)?));
            if let Err(e) = journalled {
                tracing::error!(job = id, "cannot journal the delivery: {e}");
            }
        }
        match result {
            Ok(()) => Ok(()),
            Err(Stop::Job(e)) => Err(e),
            Err(Stop::Payment(msg)) => {
                channel
                    .send(&fail(ErrorCode::PaymentRequired, msg.clone()))
                    .await?;
                Err(JobError::Protocol(msg))
            }
        }
    }

    /// Decides how a job is paid: `None` for a free job, the channel's bookkeeping for a paid
    /// one, or the refusal to send.
    async fn admit(&self, request: &JobRequest) -> Result<Option<Billing>, (ErrorCode, String)> {
        let price = self.price();
        if price == JobPrice::default() {
            return Ok(None);
        }
        let Some(terms) = &request.payment else {
            return Err((
                ErrorCode::PaymentRequired,
                format!(
                    "this worker charges {} / {} nanoTON per million prompt / completion \
                     tokens: send the job with a payment channel",
                    price.prompt_per_mtok, price.completion_per_mtok
                ),
            ));
        };
        if price.prompt_per_mtok > terms.max_price.prompt_per_mtok
            || price.completion_per_mtok > terms.max_price.completion_per_mtok
        {
            return Err((
                ErrorCode::PriceTooHigh,
                format!(
                    "the price is {} / {} nanoTON per million tokens, above the {} / {} offered",
                    price.prompt_per_mtok,
                    price.completion_per_mtok,
                    terms.max_price.prompt_per_mtok,
                    terms.max_price.completion_per_mtok
                ),
            ));
        }
        let Some(ledger) = &self.payments else {
            return Err((
                ErrorCode::PaymentRequired,
                "this worker has no payment journal".into(),
            ));
        };
        let refuse = |e: crate::payments::PaymentError| (ErrorCode::PaymentRequired, e.to_string());
        let deposit = ledger.deposit(terms).await.map_err(refuse)?;
        ledger.admit(terms, deposit).map_err(refuse)?;
        let claim = ledger
            .claim(terms.channel, request.id, self.voucher_timeout)
            .await;
        Ok(Some(Billing {
            ledger: ledger.clone(),
            channel: terms.channel,
            price,
            delivered: 0,
            tokens: 0,
            claim,
        }))
    }

    /// Streams the generation's events to the client, billing each chunk and taking
    /// vouchers as they come.
    async fn stream<T: FrameTransport>(
        &self,
        channel: &mut JobChannel<T>,
        generation: &mut inference::Generation,
        mut billing: Option<&mut Billing>,
        id: job::JobId,
    ) -> Result<(), Stop> {
        let fail = |code, message: String| Message::Error(JobFailure { id, code, message });
        let mut client_open = billing.is_some();
        loop {
            let event = match billing.as_deref_mut() {
                Some(b) => {
                    tokio::select! {
                        biased;
                        _ = b.claim.wait_superseded() => {
                            return Err(Stop::Job(JobError::Protocol(
                                "superseded by a newer job on the same channel".into(),
                            )));
                        }
                        voucher = channel.recv_voucher(Duration::MAX), if client_open => {
                            client_open = self.take_voucher(b, voucher)?;
                            continue;
                        }
                        event = generation.next() => event,
                    }
                }
                None => generation.next().await,
            };
            match event {
                Some(inference::GenerationEvent::Text(text)) => {
                    let sampled = generation.tokens_so_far();
                    let tokens = match billing.as_deref_mut() {
                        Some(b) => {
                            let prompt = generation.prompt_tokens();
                            self.charge(channel, b, prompt, sampled, false).await?
                        }
                        None => sampled,
                    };
                    channel.send_token(text, tokens).await?;
                }
                Some(inference::GenerationEvent::Done(usage)) => {
                    if let Some(b) = billing.as_deref_mut() {
                        let (p, c) = (usage.prompt_tokens, usage.completion_tokens);
                        self.charge(channel, b, p, c, true).await?;
                    }
                    let decode_ms = usage.total_ms - usage.time_to_first_token_ms;
                    if usage.completion_tokens > 1 && decode_ms > 0.0 {
                        self.stats
                            .record_speed((usage.completion_tokens - 1) as f64 / decode_ms * 1e3);
                    }
                    let done = job::JobDone {
                        id,
                        usage: job::Usage {
                            prompt_tokens: usage.prompt_tokens,
                            completion_tokens: usage.completion_tokens,
                        },
                        timings: job::Timings {
                            ttft_ms: usage.time_to_first_token_ms,
                            total_ms: usage.total_ms,
                        },
                        finish_reason: match usage.finish_reason {
                            inference::FinishReason::Length => job::FinishReason::Length,
                            _ => job::FinishReason::Stop,
                        },
                    };
                    channel.send(&Message::Done(done)).await?;
                    if let Some(b) = billing {
                        self.final_payment(channel, b, client_open).await;
                    }
                    return Ok(());
                }
                Some(inference::GenerationEvent::Error(e)) => {
                    return Ok(channel.send(&fail(ErrorCode::Internal, e)).await?);
                }
                None => {
                    let msg = "generation ended without a result".to_string();
                    return Ok(channel.send(&fail(ErrorCode::Internal, msg)).await?);
                }
            }
        }
    }

    /// Bills the job up to `completion` tokens (and its prompt) before the text that goes
    /// with them is sent, waiting for vouchers while the credit is used up (unless `done`:
    /// the final count, for work already delivered). Returns the tokens newly billed.
    async fn charge<T: FrameTransport>(
        &self,
        channel: &mut JobChannel<T>,
        b: &mut Billing,
        prompt: u32,
        completion: u32,
        done: bool,
    ) -> Result<u32, Stop> {
        let total = crate::payments::job_cost(b.price, prompt as u64, completion as u64);
        let cost = total.saturating_sub(b.delivered);
        while let Err(exceeded) = b.ledger.deliver(&b.channel, cost, done) {
            let voucher = channel.recv_voucher(self.voucher_timeout).await;
            let waited = matches!(voucher, Err(JobError::Timeout { .. }));
            if waited || !self.take_voucher(b, voucher)? {
                return Err(Stop::Payment(format!(
                    "payment required: {exceeded}; no voucher came within {:?}",
                    self.voucher_timeout
                )));
            }
        }
        b.delivered += cost;
        let new = completion.saturating_sub(b.tokens);
        b.tokens = b.tokens.max(completion);
        Ok(new)
    }

    /// Handles what `recv_voucher` returned; `Ok(false)` when the client closed its side.
    fn take_voucher(
        &self,
        b: &mut Billing,
        voucher: Result<Option<job::Payment>, JobError>,
    ) -> Result<bool, Stop> {
        match voucher.map_err(Stop::Job)? {
            None => Ok(false),
            Some(p) => {
                b.ledger
                    .accept(&b.channel, &p)
                    .map_err(|e| Stop::Payment(e.to_string()))?;
                Ok(true)
            }
        }
    }

    /// After `Done`: waits (bounded) for the voucher that pays the whole job.
    async fn final_payment<T: FrameTransport>(
        &self,
        channel: &mut JobChannel<T>,
        b: &mut Billing,
        mut client_open: bool,
    ) {
        let deadline = tokio::time::Instant::now() + self.voucher_timeout;
        while client_open {
            let view = b.ledger.view(&b.channel).unwrap_or_default();
            if view.paid >= view.delivered {
                return;
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let voucher = channel.recv_voucher(left).await;
            client_open = matches!(self.take_voucher(b, voucher), Ok(true));
        }
    }
}

/// Why a job stopped early.
enum Stop {
    /// The stream failed.
    Job(JobError),
    /// The client did not pay.
    Payment(String),
}

impl From<JobError> for Stop {
    fn from(e: JobError) -> Self {
        Stop::Job(e)
    }
}

/// Checks the limits the wire protocol adds; sampling bounds are the engine's to check
/// (`SamplingParams::validate`, reported as `BadRequest` too).
pub fn validate(request: &JobRequest) -> Result<(), String> {
    let stop = &request.sampling.stop;
    if stop.len() > MAX_STOP_STRINGS || stop.iter().any(|x| x.is_empty() || x.len() > MAX_STOP_LEN)
    {
        return Err(format!(
            "at most {MAX_STOP_STRINGS} non-empty stop strings of at most {MAX_STOP_LEN} bytes"
        ));
    }
    if let job::JobInput::Chat(messages) = &request.input {
        if messages.is_empty() {
            return Err("a chat needs at least one message".into());
        }
    }
    Ok(())
}

/// Converts a wire request to an engine request.
pub fn to_engine(request: JobRequest) -> inference::GenerateRequest {
    let prompt = match request.input {
        job::JobInput::Chat(messages) => inference::Prompt::Chat(
            messages
                .into_iter()
                .map(|m| inference::ChatMessage {
                    role: m.role,
                    content: m.content,
                })
                .collect(),
        ),
        job::JobInput::Prompt(text) => inference::Prompt::Text(text),
    };
    let s = request.sampling;
    inference::GenerateRequest {
        prompt,
        sampling: inference::SamplingParams {
            seed: s.seed,
            temperature: s.temperature,
            top_p: s.top_p,
            top_k: s.top_k.map(|k| k as usize),
            max_tokens: s.max_tokens,
            stop: s.stop,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cocoon_p2p::frame::FramedStream;
    use cocoon_p2p::job::{ChatMessage, ClientEvent, JobError, JobInput, Sampling};
    use cocoon_p2p::testing::{pipe, Pipe};

    fn tiny_worker(max_concurrent: usize) -> (Worker, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tiny.gguf");
        inference::testing::write_tiny_gguf(&path, &Default::default()).unwrap();
        let source = inference::ModelSource::from_path(&path).unwrap();
        let config = inference::EngineConfig {
            max_concurrent,
            // A generation nobody reads blocks after one chunk, holding its slot.
            channel_capacity: 1,
            ..Default::default()
        };
        let engine = inference::Engine::load(&source, config).unwrap();
        let engines = HashMap::from([("tiny".to_string(), engine)]);
        let (attester, _) = crate::attestation::worker_attester(
            &crate::attestation::WorkerAttestation {
                mode: crate::attestation::AttestationMode::DevInsecure,
                ..Default::default()
            },
            worker_peer(),
        )
        .unwrap();
        (
            Worker::new(engines, JobConfig::default(), attester, worker_peer()),
            dir,
        )
    }

    fn worker_peer() -> PeerId {
        static PEER: std::sync::OnceLock<PeerId> = std::sync::OnceLock::new();
        *PEER.get_or_init(|| {
            libp2p::identity::Keypair::generate_ed25519()
                .public()
                .to_peer_id()
        })
    }

    fn request(model: &str, max_tokens: u32) -> JobRequest {
        JobRequest {
            id: 3,
            model: model.into(),
            input: JobInput::Chat(vec![ChatMessage {
                role: "user".into(),
                content: "hello".into(),
            }]),
            sampling: Sampling {
                max_tokens,
                ..Default::default()
            },
            continuation: None,
            payment: None,
        }
    }

    type Channel = JobChannel<FramedStream<Pipe>>;

    fn channels() -> (Channel, Channel) {
        let (a, b) = pipe();
        let c = JobConfig::default();
        (
            JobChannel::new(FramedStream::new(a, c.max_frame), c.clone()),
            JobChannel::new(FramedStream::new(b, c.max_frame), c),
        )
    }

    /// Runs `req` through the worker glue; returns the client's events up to the end.
    async fn exchange(worker: &Worker, req: JobRequest) -> (String, Result<ClientEvent, JobError>) {
        let (mut client, mut server) = channels();
        client.send_request(req).await.unwrap();
        let req = server.recv_request().await.unwrap();
        worker.run(&mut server, req).await.unwrap();
        let mut text = String::new();
        loop {
            match client.next_event().await {
                Ok(ClientEvent::Token { text: t, .. }) => text.push_str(&t),
                other => return (text, other),
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn streams_the_engine_text_and_usage() {
        let (worker, _dir) = tiny_worker(2);
        let (text, end) = exchange(&worker, request("tiny", 5)).await;
        let Ok(ClientEvent::Done(done)) = end else {
            panic!("{end:?}")
        };
        assert_eq!(done.id, 3);
        assert!(done.usage.completion_tokens >= 1 && done.usage.completion_tokens <= 5);
        assert!(done.usage.prompt_tokens > 0);
        // The same request in process gives the same text.
        let engine = &worker.engines["tiny"];
        let (expected, _) =
            tokio::task::block_in_place(|| engine.generate_text(to_engine(request("tiny", 5))))
                .unwrap();
        assert_eq!(text, expected);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_served_stream_carries_neither_prompt_nor_answer_in_clear() {
        use cocoon_p2p::attest::policy::Policy;
        use cocoon_p2p::attest::verifier::{Verifier, VerifierConfig};
        use cocoon_p2p::testing::{contains, Tap};
        let (worker, _dir) = tiny_worker(1);
        let client_peer = libp2p::identity::Keypair::generate_ed25519()
            .public()
            .to_peer_id();
        let (c, w) = pipe();
        let (tapped, seen) = Tap::new(w);
        let served = {
            let worker = worker.clone();
            tokio::spawn(async move { worker.serve_stream(client_peer, tapped).await })
        };
        let config = JobConfig::default();
        let verifier = Verifier::new(VerifierConfig {
            policy: Policy::insecure_dev(),
            ..Default::default()
        });
        let (secure, _) = confidential::open(
            FramedStream::new(c, config.max_frame),
            &verifier,
            &client_peer,
            &worker_peer(),
            crate::attestation::unix_now(),
            &config,
        )
        .await
        .unwrap();
        let mut client = JobChannel::new(secure, config);
        let prompt = "please keep my diagnosis confidential";
        let mut req = request("tiny", 24);
        req.input = JobInput::Prompt(prompt.into());
        client.send_request(req).await.unwrap();
        let mut text = String::new();
        while let Ok(ClientEvent::Token { text: t, .. }) = client.next_event().await {
            text.push_str(&t);
        }
        served.await.unwrap();
        assert!(text.len() >= 8, "the tiny model answered {text:?}");
        let seen = seen.lock().unwrap().clone();
        assert!(!contains(&seen, prompt.as_bytes()));
        assert!(!contains(&seen, b"diagnosis"));
        assert!(
            !contains(&seen, text.as_bytes()),
            "the answer crossed in clear"
        );
    }

    fn assert_refused(end: &Result<ClientEvent, JobError>, want: ErrorCode) {
        match end {
            Err(JobError::Remote(JobFailure { code, .. })) if *code == want => {}
            other => panic!("expected a {want:?} refusal, got {other:?}"),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn refusals_are_typed() {
        let (worker, _dir) = tiny_worker(1);
        let (_, end) = exchange(&worker, request("other-model", 5)).await;
        assert_refused(&end, ErrorCode::UnknownModel);

        let mut bad = request("tiny", 5);
        bad.sampling.top_p = Some(1.5);
        let (_, end) = exchange(&worker, bad).await;
        assert_refused(&end, ErrorCode::BadRequest);

        let mut bad = request("tiny", 5);
        bad.sampling.stop = vec![String::new()];
        let (_, end) = exchange(&worker, bad).await;
        assert_refused(&end, ErrorCode::BadRequest);

        // Hold the only slot, then a second job is answered Busy at once.
        let engine = &worker.engines["tiny"];
        let _held = engine.generate(to_engine(request("tiny", 10_000))).unwrap();
        let (_, end) = exchange(&worker, request("tiny", 5)).await;
        assert_refused(&end, ErrorCode::Busy);
    }
}
