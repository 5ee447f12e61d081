//! The light client's job runner: find workers for a model in the DHT, run the job on one,
//! stream its text.
//!
//! Every job stream opens with the attested Noise handshake: the worker's evidence is checked
//! by the [`Verifier`] (evidence, binding to the enclave key and peer id, policy) before a
//! byte of the request is sent, and a refused worker is skipped like a busy one. Accepting
//! development evidence logs a warning on every job.
//!
//! Candidates are tried in turn while none has produced text: a worker that is busy, does not
//! serve the model, or cannot be reached is skipped. Once text has arrived, a failure ends the
//! job with an error (resuming on another worker from the received text comes with the
//! market issue). Failures list every worker tried.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cocoon_p2p::attest::verifier::{Verifier, VerifierConfig};
use cocoon_p2p::attest::EvidenceKind;
use cocoon_p2p::frame::FramedStream;
use cocoon_p2p::job::{
    confidential, ClientEvent, JobChannel, JobConfig, JobError, JobInput, JobRequest, Sampling,
};
use cocoon_p2p::{Network, NetworkError, PeerId};
use serde::Serialize;

/// Client settings.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// How long to keep asking the DHT for providers when none is found. Default: 20 s.
    pub discovery_timeout: Duration,
    /// Timeout for connecting to a worker and opening the job stream. Default: 15 s.
    pub open_timeout: Duration,
    /// Job protocol limits and timeouts.
    pub job: JobConfig,
    /// Checks workers' attestation. Default: the default policy (refuses dev evidence and
    /// every TDX image not allowlisted), no collateral cache, no PCCS.
    pub verifier: Arc<Verifier>,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            discovery_timeout: Duration::from_secs(20),
            open_timeout: Duration::from_secs(15),
            job: JobConfig::default(),
            verifier: Arc::new(Verifier::new(VerifierConfig::default())),
        }
    }
}

/// A job to run.
#[derive(Clone, Debug)]
pub struct InferRequest {
    /// Model id.
    pub model: String,
    /// Prompt or chat.
    pub input: JobInput,
    /// Sampling settings.
    pub sampling: Sampling,
}

/// The result of a job. Field names are stable: `--json` prints this.
#[derive(Clone, Debug, Serialize)]
pub struct InferOutcome {
    /// Our peer id.
    pub client_peer: String,
    /// The worker that served the job.
    pub worker_peer: String,
    /// Model id.
    pub model: String,
    /// The whole generated text.
    pub text: String,
    /// Prompt tokens, as counted by the worker.
    pub prompt_tokens: u32,
    /// Generated tokens, as counted by the worker.
    pub completion_tokens: u32,
    /// From sending the request to the first text, as seen by the client.
    pub ttft_ms: f64,
    /// Decode speed seen by the client: tokens after the first over the time after it.
    pub tokens_per_s: f64,
    /// From sending the request to `Done`.
    pub total_ms: f64,
    /// `stop` or `length`.
    pub finish_reason: String,
    /// Workers found in the DHT for the model.
    pub providers_found: usize,
    /// The worker's evidence kind: `tdx` or `dev-insecure`.
    pub attestation: String,
    /// The measured image (MRTD for TDX; self-reported for dev evidence), hex.
    pub measurement: String,
    /// The TDX TCB status; absent for dev evidence.
    pub tcb_status: Option<String>,
}

/// Why a job failed.
#[derive(Debug, thiserror::Error)]
pub enum InferError {
    /// The DHT knows no worker for the model.
    #[error("no worker for model {model:?} found in the DHT within {after:?}")]
    NoProviders {
        /// Model id.
        model: String,
        /// How long we searched.
        after: Duration,
    },
    /// The network failed.
    #[error(transparent)]
    Network(#[from] NetworkError),
    /// Every candidate failed; each entry names a worker and what went wrong.
    #[error("every worker failed: {}", .tried.iter().map(|(p, e)| format!("{p}: {e}")).collect::<Vec<_>>().join("; "))]
    AllFailed {
        /// (worker, error) per attempt.
        tried: Vec<(PeerId, String)>,
    },
    /// The worker failed after it had started streaming.
    #[error("worker {worker} failed mid-stream after {received_chars} characters: {source}")]
    MidStream {
        /// The worker.
        worker: PeerId,
        /// Text received before the failure.
        received_chars: usize,
        /// What happened.
        source: JobError,
    },
}

/// Looks up providers for `model`, retrying until one is found or the timeout passes.
pub async fn discover(
    network: &Network,
    model: &str,
    timeout: Duration,
) -> Result<Vec<PeerId>, InferError> {
    let deadline = Instant::now() + timeout;
    loop {
        match network.find_providers(model).await {
            Ok(found) if !found.is_empty() => return Ok(found),
            Ok(_) => {}
            Err(NetworkError::Query(e)) => tracing::debug!("provider lookup: {e}"),
            Err(e) => return Err(e.into()),
        }
        if Instant::now() >= deadline {
            return Err(InferError::NoProviders {
                model: model.to_string(),
                after: timeout,
            });
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Runs `request` on a worker found in the DHT; `on_text` sees each chunk as it arrives.
pub async fn infer(
    network: &Network,
    request: InferRequest,
    config: &ClientConfig,
    mut on_text: impl FnMut(&str),
) -> Result<InferOutcome, InferError> {
    let mut providers = discover(network, &request.model, config.discovery_timeout).await?;
    // Until the market ranks workers (issue 4), start at a different provider per job so
    // clients spread their load instead of all trying the lowest peer id first.
    let start = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as usize)
        .unwrap_or(0);
    let len = providers.len();
    providers.rotate_left(start % len);
    let mut tried = Vec::new();
    for (attempt, worker) in providers.iter().copied().enumerate() {
        match run_on(
            network,
            worker,
            &request,
            config,
            attempt as u64,
            &mut on_text,
        )
        .await
        {
            Ok(mut outcome) => {
                outcome.providers_found = providers.len();
                return Ok(outcome);
            }
            Err(Attempt::Skip(e)) => {
                tracing::info!(%worker, "worker skipped: {e}");
                tried.push((worker, e));
            }
            Err(Attempt::Fatal(e)) => return Err(e),
        }
    }
    Err(InferError::AllFailed { tried })
}

enum Attempt {
    /// Nothing was received; the next candidate may be tried.
    Skip(String),
    Fatal(InferError),
}

async fn run_on(
    network: &Network,
    worker: PeerId,
    request: &InferRequest,
    config: &ClientConfig,
    attempt: u64,
    on_text: &mut impl FnMut(&str),
) -> Result<InferOutcome, Attempt> {
    let stream = network
        .open_job_stream(worker, config.open_timeout)
        .await
        .map_err(|e| Attempt::Skip(e.to_string()))?;
    let (secure, verdict) = confidential::open(
        FramedStream::new(stream, config.job.max_frame),
        &config.verifier,
        &network.peer_id(),
        &worker,
        crate::attestation::unix_now(),
        &config.job,
    )
    .await
    .map_err(|e| Attempt::Skip(e.to_string()))?;
    let appraisal = verdict.appraisal;
    if appraisal.kind == EvidenceKind::DevInsecure {
        tracing::warn!(%worker, "{}", crate::attestation::DEV_WARNING);
    }
    let mut channel = JobChannel::new(secure, config.job.clone());
    // A job id unique enough per client: time-based, plus the attempt.
    let id = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
        .wrapping_add(attempt);
    let started = Instant::now();
    channel
        .send_request(JobRequest {
            id,
            model: request.model.clone(),
            input: request.input.clone(),
            sampling: request.sampling.clone(),
        })
        .await
        .map_err(|e| Attempt::Skip(e.to_string()))?;
    let mut text = String::new();
    let mut first: Option<Instant> = None;
    loop {
        match channel.next_event().await {
            Ok(ClientEvent::Token(chunk)) => {
                first.get_or_insert_with(Instant::now);
                on_text(&chunk);
                text.push_str(&chunk);
            }
            Ok(ClientEvent::Done(done)) => {
                let end = Instant::now();
                let first = first.unwrap_or(end);
                let decode_s = end.duration_since(first).as_secs_f64();
                let after_first = done.usage.completion_tokens.saturating_sub(1) as f64;
                let _ = channel.close().await;
                return Ok(InferOutcome {
                    client_peer: network.peer_id().to_string(),
                    worker_peer: worker.to_string(),
                    model: request.model.clone(),
                    text,
                    prompt_tokens: done.usage.prompt_tokens,
                    completion_tokens: done.usage.completion_tokens,
                    ttft_ms: first.duration_since(started).as_secs_f64() * 1e3,
                    tokens_per_s: if decode_s > 0.0 {
                        after_first / decode_s
                    } else {
                        0.0
                    },
                    total_ms: end.duration_since(started).as_secs_f64() * 1e3,
                    finish_reason: match done.finish_reason {
                        cocoon_p2p::job::FinishReason::Stop => "stop".into(),
                        cocoon_p2p::job::FinishReason::Length => "length".into(),
                    },
                    providers_found: 0,
                    attestation: appraisal.kind.as_str().into(),
                    measurement: hex::encode(appraisal.mrtd),
                    tcb_status: appraisal.tcb_status.clone(),
                });
            }
            Err(e) if text.is_empty() => return Err(Attempt::Skip(e.to_string())),
            Err(source) => {
                return Err(Attempt::Fatal(InferError::MidStream {
                    worker,
                    received_chars: text.len(),
                    source,
                }))
            }
        }
    }
}
