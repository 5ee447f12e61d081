//! Worker glue: joins inbound `/cocoon/job/1` streams to the inference engine.
//!
//! Each stream gets its own task, within bounds ([`StreamLimits`]: per peer and in total;
//! over them a small pool answers `Busy`, beyond it the stream is dropped unread): answer
//! the attested Noise handshake with the current enclave key and evidence (nothing else is
//! read before it), read the request (now decrypted), and run the job's
//! [`WorkerSession`], the sans-IO core that owns admission, billing, credit and every error
//! code. This module only moves things in and out of it: the request's model and engine,
//! the channel's core ([`WorkerLedger::lease`]), engine text, client messages, timers,
//! journal writes (through the journal's owner thread) and the stream's end. Rendering and
//! tokenising the prompt run on the blocking pool, never on a runtime thread. When the
//! client goes away or the session ends the job early, the generation is dropped, which
//! stops it before its next token.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cocoon_inference as inference;
use cocoon_ledger::journal::Write;
use cocoon_p2p::attest::attester::Attester;
use cocoon_p2p::frame::FrameTransport;
use cocoon_p2p::frame::FramedStream;
use cocoon_p2p::job::session::{
    self, Admission, AdmitContext, WorkerConfig, WorkerEvent, WorkerSession,
};
use cocoon_p2p::job::{
    self, confidential, ErrorCode, JobChannel, JobConfig, JobError, JobFailure, JobPrice,
    JobRequest, Message,
};
use cocoon_p2p::limits::{GateLimits, StreamGate};
use cocoon_p2p::{Network, NetworkError, PeerId};
use futures::{AsyncRead, AsyncWrite, StreamExt};

use crate::payments::{ChannelLease, WorkerLedger};
use cocoon_client::clock::{instant_of, session_now};

/// Bounds on inbound job streams: each costs a task and buffers, so neither one peer nor
/// everyone together can open them without limit.
#[derive(Clone, Copy, Debug)]
pub struct StreamLimits {
    /// Job streams served at once, in total. Default: 128.
    pub max_streams: usize,
    /// Job streams served at once per peer (a gateway runs a few jobs per worker). Default:
    /// 16.
    pub max_per_peer: usize,
    /// Streams over the limits answered `Busy` at once (the handshake must come first); more
    /// are dropped unread. Default: 32.
    pub max_refusals: usize,
}

impl StreamLimits {
    fn gate(&self) -> GateLimits {
        GateLimits {
            total: self.max_streams,
            per_peer: self.max_per_peer,
        }
    }
}

impl Default for StreamLimits {
    fn default() -> Self {
        Self {
            max_streams: 128,
            max_per_peer: 16,
            max_refusals: 32,
        }
    }
}

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
    session: WorkerConfig,
    limits: StreamLimits,
    gate: Arc<StreamGate>,
    refusals: Arc<tokio::sync::Semaphore>,
    metrics: Option<cocoon_metrics::NodeMetrics>,
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
        let limits = StreamLimits::default();
        Self {
            engines: Arc::new(engines),
            job_config,
            attester,
            peer_id,
            stats: Arc::new(Stats::default()),
            price: Arc::new(Mutex::new(JobPrice::default())),
            payments: None,
            session: WorkerConfig::default(),
            refusals: Arc::new(tokio::sync::Semaphore::new(limits.max_refusals)),
            gate: StreamGate::new(limits.gate()),
            limits,
            metrics: None,
        }
    }

    /// Records every job into `metrics` (vLLM's inference families, money).
    pub fn with_metrics(mut self, metrics: cocoon_metrics::NodeMetrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Bills jobs through `ledger`, waiting at most `voucher_timeout` for a voucher when the
    /// credit runs out (and for the final one). Without it the worker serves only while its
    /// price is zero.
    pub fn with_payments(mut self, ledger: Arc<WorkerLedger>, voucher_timeout: Duration) -> Self {
        self.payments = Some(ledger);
        self.session = WorkerConfig {
            voucher_timeout,
            final_timeout: voucher_timeout,
        };
        self
    }

    /// Bounds inbound streams by `limits`.
    pub fn with_limits(mut self, limits: StreamLimits) -> Self {
        self.refusals = Arc::new(tokio::sync::Semaphore::new(limits.max_refusals));
        self.gate = StreamGate::new(limits.gate());
        self.limits = limits;
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
            self.dispatch(peer, stream);
        }
        Ok(())
    }

    /// Serves `stream` from `peer` in a task of its own, within the stream limits.
    pub fn dispatch<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
        &self,
        peer: PeerId,
        stream: S,
    ) {
        if let Some(ticket) = self.gate.enter(peer) {
            let worker = self.clone();
            tokio::spawn(async move {
                worker.serve_stream(peer, stream).await;
                drop(ticket);
            });
        } else if let Ok(permit) = self.refusals.clone().try_acquire_owned() {
            let worker = self.clone();
            tokio::spawn(async move {
                worker.refuse_stream(peer, stream).await;
                drop(permit);
            });
        } else {
            tracing::debug!(%peer, "job stream dropped: over every limit");
        }
    }

    /// Answers a stream over the limits with `Busy` (after the handshake, which any answer
    /// needs).
    async fn refuse_stream<S: AsyncRead + AsyncWrite + Unpin + Send>(
        &self,
        peer: PeerId,
        stream: S,
    ) {
        let config = JobConfig {
            request_timeout: self.job_config.request_timeout.min(Duration::from_secs(2)),
            ..self.job_config.clone()
        };
        let transport = FramedStream::new(stream, config.max_frame);
        let Ok(secure) =
            confidential::accept(transport, &self.attester, &peer, &self.peer_id, &config).await
        else {
            return;
        };
        let mut channel = JobChannel::new(secure, config);
        if let Ok(request) = channel.recv_request().await {
            let busy = Message::Error(JobFailure {
                id: request.id,
                code: ErrorCode::Busy,
                message: "this worker has too many job streams open".into(),
            });
            let _ = channel.send(&busy).await;
            let _ = channel.close().await;
        }
        tracing::info!(%peer, "job stream refused: over the stream limits");
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
        match self.run(&mut channel, request, &peer).await {
            Ok(None) => tracing::info!(%peer, job = id, "job finished"),
            Ok(Some(why)) => tracing::info!(%peer, job = id, "job ended: {why}"),
            Err(e) => tracing::info!(%peer, job = id, "job ended: {e}"),
        }
        let _ = channel.close().await;
    }

    /// Runs one job whose request `peer` sent, answering on `channel`. Returns why the job
    /// ended early, if it did.
    pub async fn run<T: FrameTransport>(
        &self,
        channel: &mut JobChannel<T>,
        request: JobRequest,
        peer: &PeerId,
    ) -> Result<Option<String>, JobError> {
        let id = request.id;
        let fail = |code, message: String| Message::Error(JobFailure { id, code, message });
        let Some(engine) = self.engines.get(&request.model).cloned() else {
            let served: Vec<&str> = self.model_ids().collect();
            let msg = format!(
                "model {:?} is not served here (serving {served:?})",
                request.model
            );
            channel
                .send(&fail(ErrorCode::UnknownModel, msg.clone()))
                .await?;
            return Ok(Some(msg));
        };
        let arrival = Instant::now();
        let model = request.model.clone();
        if let Some(m) = &self.metrics {
            m.arrived(&model);
        }
        let mut clock = JobClock::new(arrival);
        let result = self
            .run_admitted(channel, request, peer, engine, &mut clock)
            .await;
        if let Some(m) = &self.metrics {
            if !clock.left_queue {
                m.left_queue(&model);
            }
            if clock.started {
                m.finished(&model, &clock.record());
            }
        }
        result
    }

    /// [`Self::run`] once the model is known, timing the job on `clock`.
    async fn run_admitted<T: FrameTransport>(
        &self,
        channel: &mut JobChannel<T>,
        request: JobRequest,
        peer: &PeerId,
        engine: inference::Engine,
        clock: &mut JobClock,
    ) -> Result<Option<String>, JobError> {
        let id = request.id;
        let fail = |code, message: String| Message::Error(JobFailure { id, code, message });
        let price = self.price();
        let ctx = AdmitContext {
            price,
            worker_key: self.payments.as_ref().map_or([0; 32], |l| l.worker_key()),
            payout: self.payments.as_ref().map_or([0; 32], |l| l.payout()),
            peer_key: cocoon_p2p::identity::peer_ed25519(peer),
            payments: self.payments.is_some(),
        };
        let mut lease = match session::admit(&request, &ctx) {
            Err(r) => {
                channel.send(&fail(r.code, r.message.clone())).await?;
                return Ok(Some(r.message));
            }
            Ok(Admission::Free) => None,
            Ok(Admission::Paid {
                channel: account,
                terms,
                claimed_deposit,
            }) => {
                let ledger = self.payments.as_ref().expect("admitted only with a ledger");
                let leased = async {
                    let deposit = ledger.deposit(account, claimed_deposit).await?;
                    ledger
                        .lease(account, terms, deposit, id, self.session.voucher_timeout)
                        .await
                }
                .await;
                match leased {
                    Ok(l) => Some(l),
                    Err(e) => {
                        let code = match e {
                            cocoon_client::payments::PaymentError::ChannelBusy(_) => {
                                ErrorCode::Busy
                            }
                            _ => ErrorCode::PaymentRequired,
                        };
                        channel.send(&fail(code, e.to_string())).await?;
                        return Ok(Some(e.to_string()));
                    }
                }
            }
        };
        let core = lease.as_mut().map(ChannelLease::take);
        let charged = if core.is_some() {
            price
        } else {
            JobPrice::default()
        };
        let mut session = WorkerSession::new(self.session.clone(), &request, charged, core);
        let model = request.model.clone();
        let generation = self.start(engine, request).await;
        clock.queued();
        if let Some(m) = &self.metrics {
            m.left_queue(&model);
        }
        let paid_before = session.channel().map_or(0, |c| c.paid());
        let mut generation = match generation {
            Ok(g) => {
                session.started(g.prompt_tokens());
                clock.started(g.prompt_tokens());
                Some(g)
            }
            Err(inference::GenerateError::Busy { limit }) => {
                if let Some(m) = &self.metrics {
                    m.busy(&model);
                }
                self.stats
                    .refused_busy
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let msg = format!("worker is running {limit} jobs, its limit");
                session.refuse(ErrorCode::Busy, msg);
                None
            }
            Err(e) => {
                session.refuse(refusal_code(&e), e.to_string());
                None
            }
        };
        let result = self
            .drive(
                channel,
                &mut session,
                &mut generation,
                lease.as_ref(),
                clock,
            )
            .await;
        if let (Some(m), true) = (&self.metrics, lease.is_some()) {
            let paid_after = session.channel().map_or(0, |c| c.paid());
            m.paid(
                session.billed().cost,
                paid_after.saturating_sub(paid_before),
            );
        }
        let why = session.error_message().map(str::to_string);
        if let (Some(lease), Some(core)) = (lease.as_mut(), session.into_channel()) {
            lease.put_back(core);
        }
        result.map(|()| why)
    }

    /// Renders and tokenises the prompt (on the blocking pool) and starts the generation.
    async fn start(
        &self,
        engine: inference::Engine,
        request: JobRequest,
    ) -> Result<inference::Generation, inference::GenerateError> {
        tokio::task::spawn_blocking(move || {
            let continuation = request.continuation.clone();
            let mut engine_request = to_engine(request);
            if let Some(prefix) = continuation {
                // Failover: carry on from the answer so far, as the start of the reply.
                let text = engine.render_prompt(&engine_request.prompt)?;
                engine_request.prompt = inference::Prompt::Text(text + &prefix);
            }
            engine.generate(engine_request)
        })
        .await
        .unwrap_or_else(|e| Err(inference::GenerateError::Failed(e.to_string())))
    }

    /// Moves the session's inputs and outputs until it finishes.
    async fn drive<T: FrameTransport>(
        &self,
        channel: &mut JobChannel<T>,
        session: &mut WorkerSession,
        generation: &mut Option<inference::Generation>,
        lease: Option<&ChannelLease>,
        clock: &mut JobClock,
    ) -> Result<(), JobError> {
        let mut client_open = true;
        let mut stream_ok = true;
        loop {
            while let Some(event) = session.poll_event() {
                match event {
                    WorkerEvent::Journal(state) => {
                        let (ledger, lease) = match (&self.payments, lease) {
                            (Some(l), Some(c)) => (l, c),
                            _ => continue,
                        };
                        let terms = lease.terms();
                        let deposit = session.channel().map_or(0, |c| c.deposit());
                        let record = ledger.record(&terms, deposit, state);
                        if let Err(e) = ledger.write(Write::Worker(lease.channel(), record)).await {
                            // Nothing unjournalled is acted on: the job stops here.
                            tracing::error!(job = session.id(), "cannot journal: {e}");
                            *generation = None;
                            return Err(JobError::Protocol(format!("journal: {e}")));
                        }
                        session.journalled(session_now());
                    }
                    WorkerEvent::Stop => *generation = None,
                }
            }
            while let Some(m) = session.poll_transmit() {
                if let Message::Done(done) = &m {
                    clock.done(done.usage.completion_tokens, done.finish_reason);
                    let (n, t) = (done.usage.completion_tokens, done.timings);
                    let decode_ms = t.total_ms - t.ttft_ms;
                    if n > 1 && decode_ms > 0.0 {
                        self.stats.record_speed((n - 1) as f64 / decode_ms * 1e3);
                    }
                }
                if stream_ok && channel.send(&m).await.is_err() {
                    stream_ok = false;
                    client_open = false;
                    session.handle_closed();
                }
            }
            if session.is_finished() {
                // The job's receipt, for the anchored batches.
                if let (Some(ledger), Some(lease)) = (&self.payments, lease) {
                    if let Some(r) = receipt(lease, session) {
                        if let Err(e) = ledger.write(Write::Receipt(r)).await {
                            tracing::error!(job = session.id(), "cannot journal the receipt: {e}");
                        }
                    }
                }
                return Ok(());
            }
            let deadline = session.poll_timeout().map(instant_of);
            let reading = session.wants_text() && generation.is_some();
            tokio::select! {
                biased;
                _ = async { lease.expect("guarded").wait_superseded().await }, if lease.is_some() => {
                    session.superseded();
                }
                message = channel.recv(Duration::MAX), if client_open => match message {
                    Ok(Some(m)) => session.handle(session_now(), m),
                    Ok(None) | Err(_) => {
                        client_open = false;
                        session.handle_closed();
                    }
                },
                event = async { generation.as_mut().expect("guarded").next().await }, if reading => {
                    let now = session_now();
                    match event {
                        Some(inference::GenerationEvent::Text(text)) => {
                            clock.text();
                            let sampled = generation.as_ref().map_or(0, |g| g.tokens_so_far());
                            session.text(now, text, sampled);
                        }
                        Some(inference::GenerationEvent::Done(usage)) => {
                            session.finished(
                                now,
                                usage.completion_tokens,
                                job::Timings {
                                    ttft_ms: usage.time_to_first_token_ms,
                                    total_ms: usage.total_ms,
                                },
                                match usage.finish_reason {
                                    inference::FinishReason::Length => job::FinishReason::Length,
                                    _ => job::FinishReason::Stop,
                                },
                            );
                            *generation = None;
                        }
                        Some(inference::GenerationEvent::Error(e)) => {
                            session.failed(e);
                            *generation = None;
                        }
                        None => {
                            session.failed("generation ended without a result".into());
                            *generation = None;
                        }
                    }
                }
                _ = async { tokio::time::sleep_until(deadline.expect("guarded")).await }, if deadline.is_some() => {
                    session.handle_timeout(session_now());
                }
                // Nothing to wait for can only mean a session that is not finished yet
                // waits on nothing: end it rather than hang.
                else => session.handle_closed(),
            }
        }
    }
}

/// One job's times and counts for the metrics: arrival, start, each piece of text, the end.
struct JobClock {
    arrival: Instant,
    queue_s: f64,
    left_queue: bool,
    started: bool,
    prompt_tokens: u32,
    first: Option<Instant>,
    last: Option<Instant>,
    gaps: Vec<f64>,
    done: Option<(u32, job::FinishReason)>,
}

impl JobClock {
    /// Gaps kept per job at most (a job's text pieces are bounded by its `max_tokens`, which
    /// the context bounds; this bounds the memory whatever the model).
    const MAX_GAPS: usize = 1 << 16;

    fn new(arrival: Instant) -> Self {
        Self {
            arrival,
            queue_s: 0.0,
            left_queue: false,
            started: false,
            prompt_tokens: 0,
            first: None,
            last: None,
            gaps: Vec::new(),
            done: None,
        }
    }

    fn queued(&mut self) {
        self.queue_s = self.arrival.elapsed().as_secs_f64();
        self.left_queue = true;
    }

    fn started(&mut self, prompt_tokens: u32) {
        self.started = true;
        self.prompt_tokens = prompt_tokens;
    }

    fn text(&mut self) {
        let now = Instant::now();
        if let Some(last) = self.last {
            if self.gaps.len() < Self::MAX_GAPS {
                self.gaps.push(now.duration_since(last).as_secs_f64());
            }
        }
        self.first.get_or_insert(now);
        self.last = Some(now);
    }

    fn done(&mut self, completion_tokens: u32, reason: job::FinishReason) {
        self.done = Some((completion_tokens, reason));
    }

    fn record(&self) -> cocoon_metrics::JobRecord {
        let (generated, reason) = match self.done {
            Some((n, job::FinishReason::Stop)) => (n, "stop"),
            Some((n, job::FinishReason::Length)) => (n, "length"),
            None => (
                u32::try_from(self.gaps.len() + usize::from(self.first.is_some()))
                    .unwrap_or(u32::MAX),
                "abort",
            ),
        };
        cocoon_metrics::JobRecord {
            queue_s: self.queue_s,
            ttft_s: self
                .first
                .map(|f| f.duration_since(self.arrival).as_secs_f64()),
            inter_token_s: self.gaps.clone(),
            e2e_s: self.arrival.elapsed().as_secs_f64(),
            prompt_tokens: self.prompt_tokens.into(),
            generation_tokens: generated.into(),
            finished_reason: reason,
        }
    }
}

/// The job's receipt (what it billed), for the anchored batches.
fn receipt(
    lease: &ChannelLease,
    session: &WorkerSession,
) -> Option<cocoon_ledger::settle::Receipt> {
    let billed = session.billed();
    (billed.cost > 0 || billed.completion_tokens > 0).then(|| cocoon_ledger::settle::Receipt {
        channel: lease.channel(),
        job: session.id(),
        prompt_tokens: billed.prompt_tokens,
        completion_tokens: billed.completion_tokens,
        cost: billed.cost,
        finished_at: cocoon_client::clock::unix_now(),
    })
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

/// The wire code for an engine that would not start a job: the caller's mistakes
/// (`BadRequest`, `ContextLengthExceeded`) apart from the worker's own failures (`Internal`),
/// so a client blames the right party.
fn refusal_code(e: &inference::GenerateError) -> ErrorCode {
    use inference::GenerateError as E;
    match e {
        E::Busy { .. } => ErrorCode::Busy,
        E::PromptTooLong { .. } => ErrorCode::ContextLengthExceeded,
        E::InvalidRequest(_) | E::Template(_) => ErrorCode::BadRequest,
        // Tokenizer, thread and generation failures are the worker's.
        _ => ErrorCode::Internal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cocoon_client::payments::{ClientChannelInfo, ClientLedger, PaymentConfig};
    use cocoon_p2p::frame::FramedStream;
    use cocoon_p2p::job::session::{ClientSession, SessionError};
    use cocoon_p2p::job::{ChatMessage, JobDone, JobInput, Sampling};
    use cocoon_p2p::testing::{pipe, Pipe};
    use std::time::Instant;

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

    fn worker_keypair() -> libp2p::identity::Keypair {
        libp2p::identity::Keypair::ed25519_from_bytes([21; 32]).unwrap()
    }

    fn worker_peer() -> PeerId {
        worker_keypair().public().to_peer_id()
    }

    fn client_keypair(seed: u8) -> libp2p::identity::Keypair {
        libp2p::identity::Keypair::ed25519_from_bytes([seed; 32]).unwrap()
    }

    const PRICE: JobPrice = JobPrice {
        prompt_per_mtok: 1_000_000_000,
        completion_per_mtok: 3_000_000_000,
    };

    /// The worker with a journal, charging `PRICE`.
    fn paid_worker(max_concurrent: usize, dir: &std::path::Path) -> (Worker, tempfile::TempDir) {
        let (worker, model) = tiny_worker(max_concurrent);
        let key = cocoon_p2p::identity::signing_key(&worker_keypair()).unwrap();
        let ledger = WorkerLedger::open(
            &dir.join("worker.redb"),
            key.verifying_key().to_bytes(),
            cocoon_ton::wallet::account_of(&key).unwrap(),
            1_000_000,
        )
        .unwrap();
        let worker = worker.with_payments(Arc::new(ledger), Duration::from_secs(5));
        worker.set_price(PRICE);
        (worker, model)
    }

    /// A client's ledger for the identity `seed`.
    fn client_ledger(seed: u8, dir: &std::path::Path) -> Arc<ClientLedger> {
        let key = cocoon_p2p::identity::signing_key(&client_keypair(seed)).unwrap();
        let address = cocoon_ton::wallet::account_of(&key).unwrap();
        let config = PaymentConfig {
            deposit: 100_000_000,
            ..Default::default()
        };
        Arc::new(
            ClientLedger::open(
                &dir.join(format!("client{seed}.redb")),
                key,
                address,
                config,
            )
            .unwrap(),
        )
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

    /// The outcome of one job as the client saw it.
    struct Seen {
        text: String,
        result: Result<JobDone, SessionError>,
        session: ClientSession,
    }

    /// Runs `req` from `peer` through the worker glue, driven on the client side by the
    /// real client session and shell (`client::drive`), paying through `paying` when given.
    async fn exchange_as(
        worker: &Worker,
        req: JobRequest,
        peer: PeerId,
        paying: Option<(&ClientLedger, &ClientChannelInfo)>,
    ) -> Seen {
        exchange_read(worker, req, peer, paying, Duration::ZERO).await
    }

    /// [`exchange_as`] with a reader that takes `per_piece` over each piece of text.
    async fn exchange_read(
        worker: &Worker,
        mut req: JobRequest,
        peer: PeerId,
        paying: Option<(&ClientLedger, &ClientChannelInfo)>,
        per_piece: Duration,
    ) -> Seen {
        let (mut client, mut server) = channels();
        if let Some((ledger, info)) = paying {
            req.payment = Some(Box::new(ledger.terms(info, PRICE)));
        }
        let worker = worker.clone();
        let served = tokio::spawn(async move {
            let req = server.recv_request().await.unwrap();
            let _ = worker.run(&mut server, req, &peer).await;
            let _ = server.close().await;
        });
        let mut session = ClientSession::new(
            Default::default(),
            cocoon_client::clock::session_now(),
            req.clone(),
            paying.map(|(l, i)| l.payment(i)),
        );
        // The request goes out first (journalled first when paid).
        let (tx, mut rx) = tokio::sync::mpsc::channel::<String>(1);
        let reader = tokio::spawn(async move {
            let mut text = String::new();
            while let Some(t) = rx.recv().await {
                text.push_str(&t);
                tokio::time::sleep(per_piece).await;
            }
            text
        });
        let mut answer = String::new();
        let driven =
            cocoon_client::infer::drive(&mut client, &mut session, paying, &mut answer, &tx).await;
        assert_eq!(driven.journal_error, None);
        drop(tx);
        served.await.unwrap();
        let text = reader.await.unwrap();
        assert_eq!(text, answer, "the reader got every piece");
        let result = match session.result() {
            Some(Ok(d)) => Ok(d.clone()),
            Some(Err(e)) => Err(e.clone()),
            None => panic!("the session ended without a result"),
        };
        Seen {
            text,
            result,
            session,
        }
    }

    /// Both sides' journal records of `channel`.
    fn journals(
        worker: &Worker,
        ledger: &ClientLedger,
        channel: [u8; 32],
    ) -> (
        cocoon_ledger::journal::ClientRecord,
        cocoon_ledger::journal::WorkerRecord,
    ) {
        let client = ledger.journal().client(&channel).unwrap().unwrap();
        let journal = worker.payments().unwrap().journal();
        (client, journal.worker(&channel).unwrap().unwrap())
    }

    async fn exchange(worker: &Worker, req: JobRequest) -> Seen {
        exchange_as(worker, req, client_keypair(1).public().to_peer_id(), None).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn streams_the_engine_text_and_usage() {
        let (worker, _dir) = tiny_worker(2);
        let seen = exchange(&worker, request("tiny", 5)).await;
        let done = seen.result.unwrap();
        assert_eq!(done.id, 3);
        assert!(done.usage.completion_tokens >= 1 && done.usage.completion_tokens <= 5);
        assert!(done.usage.prompt_tokens > 0);
        // The same request in process gives the same text.
        let engine = &worker.engines["tiny"];
        let (expected, _) =
            tokio::task::block_in_place(|| engine.generate_text(to_engine(request("tiny", 5))))
                .unwrap();
        assert_eq!(seen.text, expected);
    }

    /// Hole 4, the reader's half: a reader slower than the worker loses no text (the
    /// client buffers it, bounded, and keeps paying meanwhile).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_slow_reader_loses_no_text() {
        let (worker, _dir) = tiny_worker(2);
        let peer = client_keypair(1).public().to_peer_id();
        let slow = Duration::from_millis(3);
        let seen = exchange_read(&worker, request("tiny", 60), peer, None, slow).await;
        let done = seen.result.unwrap();
        assert!(done.usage.completion_tokens >= 30, "{done:?}");
        let engine = &worker.engines["tiny"];
        let (expected, _) =
            tokio::task::block_in_place(|| engine.generate_text(to_engine(request("tiny", 60))))
                .unwrap();
        assert_eq!(seen.text, expected);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_paid_job_pays_exactly_and_both_journals_agree() {
        let dir = tempfile::tempdir().unwrap();
        let (worker, _model) = paid_worker(2, dir.path());
        let ledger = client_ledger(1, dir.path());
        let worker_key = cocoon_p2p::identity::signing_key(&worker_keypair()).unwrap();
        let wk = worker_key.verifying_key().to_bytes();
        let payout = cocoon_ton::wallet::account_of(&worker_key).unwrap();
        let peer = client_keypair(1).public().to_peer_id();
        let mut total = 0;
        for _ in 0..2 {
            let reserved = ledger.acquire(wk, payout, 1).await.unwrap();
            let seen = exchange_as(
                &worker,
                request("tiny", 12),
                peer,
                Some((&ledger, &reserved.info)),
            )
            .await;
            let done = seen.result.unwrap();
            let cost = cocoon_ledger::channel::job_cost(
                PRICE.prompt_per_mtok,
                PRICE.completion_per_mtok,
                done.usage.prompt_tokens.into(),
                done.usage.completion_tokens.into(),
            );
            assert_eq!(seen.session.job_cost(), cost);
            total += cost;
            let (client, w) = journals(&worker, &ledger, reserved.info.channel);
            assert_eq!(client.paid, total);
            assert!(!client.job_open, "a clean end");
            assert_eq!(w.state.delivered, total);
            assert_eq!(w.state.best.unwrap().voucher.cumulative, total);
        }
        let receipts = worker
            .payments()
            .unwrap()
            .journal()
            .pending_receipts()
            .unwrap();
        assert_eq!(receipts.len(), 2);
    }

    /// Hole 1: anyone who read a channel's public terms could run jobs on it, billed to its
    /// owner. The worker now refuses a channel whose client key is not the requester's.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_channel_cannot_be_used_by_another_peer() {
        let dir = tempfile::tempdir().unwrap();
        let (worker, _model) = paid_worker(2, dir.path());
        let owner = client_ledger(1, dir.path());
        let worker_key = cocoon_p2p::identity::signing_key(&worker_keypair()).unwrap();
        let (wk, payout) = (
            worker_key.verifying_key().to_bytes(),
            cocoon_ton::wallet::account_of(&worker_key).unwrap(),
        );
        let reserved = owner.acquire(wk, payout, 1).await.unwrap();
        let req = request("tiny", 12);
        // The thief sends the owner's terms from its own identity (signing with its own
        // key, or not at all): the worker must not start.
        let thief = client_keypair(2).public().to_peer_id();
        let thief_ledger = client_ledger(2, dir.path());
        let seen = exchange_as(&worker, req, thief, Some((&thief_ledger, &reserved.info))).await;
        match seen.result {
            Err(SessionError::Remote(f)) => assert_eq!(f.code, ErrorCode::PaymentRequired),
            other => panic!("expected a refusal, got {other:?}"),
        }
        assert!(seen.text.is_empty());
        let journal = worker.payments().unwrap().journal();
        assert!(journal.worker(&reserved.info.channel).unwrap().is_none());
        assert!(journal.pending_receipts().unwrap().is_empty());
    }

    /// Hole 4, the worker's half: a client that goes away mid-stream stops the generation
    /// at once (the engine slot is free again) and the channel's delivery is journalled.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_client_that_leaves_stops_the_generation() {
        let dir = tempfile::tempdir().unwrap();
        let (worker, _model) = paid_worker(1, dir.path());
        let ledger = client_ledger(1, dir.path());
        let worker_key = cocoon_p2p::identity::signing_key(&worker_keypair()).unwrap();
        let reserved = ledger
            .acquire(
                worker_key.verifying_key().to_bytes(),
                cocoon_ton::wallet::account_of(&worker_key).unwrap(),
                1,
            )
            .await
            .unwrap();
        let (mut client, mut server) = channels();
        let mut req = request("tiny", 100_000);
        req.payment = Some(Box::new(ledger.terms(&reserved.info, PRICE)));
        let peer = client_keypair(1).public().to_peer_id();
        let w = worker.clone();
        let served = tokio::spawn(async move {
            let req = server.recv_request().await.unwrap();
            w.run(&mut server, req, &peer).await
        });
        let mut session = ClientSession::new(
            Default::default(),
            cocoon_client::clock::session_now(),
            req,
            Some(ledger.payment(&reserved.info)),
        );
        // Read until text flows, then the reader goes away.
        let (tx, mut rx) = tokio::sync::mpsc::channel(1);
        let drive = {
            let ledger = ledger.clone();
            let info = reserved.info;
            tokio::spawn(async move {
                let mut answer = String::new();
                let r = cocoon_client::infer::drive(
                    &mut client,
                    &mut session,
                    Some((&ledger, &info)),
                    &mut answer,
                    &tx,
                )
                .await;
                (r, session)
            })
        };
        assert!(rx.recv().await.is_some());
        drop(rx);
        let gone = Instant::now();
        let engine = worker.engines["tiny"].clone();
        let freed = loop {
            if engine.generate(to_engine(request("tiny", 1))).is_ok() {
                break gone.elapsed();
            }
            assert!(
                gone.elapsed() < Duration::from_secs(5),
                "the generation kept its slot"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        };
        // The probe's own generation was cancelled by its drop; its thread frees the slot
        // when it notices, so wait for that before the next job asks for the slot.
        while engine.active() > 0 {
            assert!(
                gone.elapsed() < Duration::from_secs(10),
                "the probe kept its slot"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let (driven, session) = drive.await.unwrap();
        assert_eq!(driven.journal_error, None);
        assert!(driven.cancelled);
        assert_eq!(session.fault(), Some(session::Fault::Cancelled));
        served.await.unwrap().unwrap();
        // The worker holds the client's last voucher: everything the client received is
        // paid. It may have delivered a chunk more (in flight when the reader left), within
        // its credit; the client's journal keeps the job open, so the next quote settles it.
        let channel = reserved.info.channel;
        let (client, w) = journals(&worker, &ledger, channel);
        assert_eq!(w.state.best.unwrap().voucher.cumulative, client.paid);
        assert!(w.state.delivered >= client.paid && w.state.delivered <= client.paid + 1_000_000);
        assert!(client.job_open);
        drop(reserved);
        let again = ledger
            .acquire(
                worker_key.verifying_key().to_bytes(),
                cocoon_ton::wallet::account_of(&worker_key).unwrap(),
                1,
            )
            .await
            .unwrap();
        assert_eq!(again.info.channel, channel);
        let seen = exchange_as(
            &worker,
            request("tiny", 5),
            peer,
            Some((&ledger, &again.info)),
        )
        .await;
        seen.result.unwrap();
        let (client, w) = journals(&worker, &ledger, channel);
        assert_eq!(w.state.best.unwrap().voucher.cumulative, client.paid);
        assert_eq!(w.state.delivered, client.paid, "agreed after the next job");
        assert!(!client.job_open);
        eprintln!("the generation stopped {freed:?} after the reader left");
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
            cocoon_client::clock::unix_now(),
            &config,
        )
        .await
        .unwrap();
        let mut client = JobChannel::new(secure, config);
        let prompt = "please keep my diagnosis confidential";
        let mut req = request("tiny", 24);
        req.input = JobInput::Prompt(prompt.into());
        let mut session = ClientSession::new(
            Default::default(),
            cocoon_client::clock::session_now(),
            req,
            None,
        );
        let (tx, mut rx) = tokio::sync::mpsc::channel(64);
        let mut text = String::new();
        let reader = tokio::spawn(async move { while rx.recv().await.is_some() {} });
        let driven =
            cocoon_client::infer::drive(&mut client, &mut session, None, &mut text, &tx).await;
        assert_eq!(driven.journal_error, None);
        drop(tx);
        reader.await.unwrap();
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

    fn assert_refused(seen: &Seen, want: ErrorCode) {
        match &seen.result {
            Err(SessionError::Remote(JobFailure { code, .. })) if *code == want => {}
            other => panic!("expected a {want:?} refusal, got {other:?}"),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn refusals_are_typed() {
        let (worker, _dir) = tiny_worker(1);
        let seen = exchange(&worker, request("other-model", 5)).await;
        assert_refused(&seen, ErrorCode::UnknownModel);

        let mut bad = request("tiny", 5);
        bad.sampling.top_p = Some(1.5);
        assert_refused(&exchange(&worker, bad).await, ErrorCode::BadRequest);

        let mut bad = request("tiny", 5);
        bad.sampling.stop = vec![String::new()];
        assert_refused(&exchange(&worker, bad).await, ErrorCode::BadRequest);

        // A priced worker refuses a free job.
        worker.set_price(PRICE);
        assert_refused(
            &exchange(&worker, request("tiny", 5)).await,
            ErrorCode::PaymentRequired,
        );
        worker.set_price(JobPrice::default());

        // Hold the only slot, then a second job is answered Busy at once.
        let engine = &worker.engines["tiny"];
        let _held = engine.generate(to_engine(request("tiny", 10_000))).unwrap();
        assert_refused(
            &exchange(&worker, request("tiny", 5)).await,
            ErrorCode::Busy,
        );
    }

    /// Hole 7: inbound streams are bounded per peer and in total; over the bounds a small
    /// pool answers Busy and the rest are dropped unread.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn inbound_streams_are_bounded_per_peer_and_in_total() {
        let limits = StreamLimits {
            max_streams: 3,
            max_per_peer: 2,
            max_refusals: 1,
        };
        let (worker, _dir) = tiny_worker(1);
        let worker = worker.with_limits(limits);
        let (a, b) = (PeerId::random(), PeerId::random());
        // Streams whose handshake never comes hold their places.
        let mut held = Vec::new();
        for peer in [a, a, b] {
            let (c, w) = pipe();
            worker.dispatch(peer, w);
            held.push(c);
        }
        assert!(worker.gate.enter(a).is_none(), "per peer");
        assert!(worker.gate.enter(PeerId::random()).is_none(), "in total");
        // Over the limits: one is taken by the refusal pool, the next is dropped unread.
        let (c1, w1) = pipe();
        worker.dispatch(a, w1);
        let (mut c2, w2) = pipe();
        worker.dispatch(a, w2);
        use futures::AsyncReadExt;
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(5), c2.read(&mut byte)).await;
        assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "dropped: {read:?}");
        assert_eq!(worker.refusals.available_permits(), 0);
        drop(c1);
        // Closing a held stream frees its place.
        drop(held.pop());
        let deadline = Instant::now() + Duration::from_secs(5);
        while worker.gate.enter(PeerId::random()).is_none() {
            assert!(Instant::now() < deadline, "the place was not freed");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
