//! Worker glue: joins inbound `/cocoon/job/1` streams to the inference engine.
//!
//! Each stream gets its own task: read and check the request, ask the engine for a
//! generation (answering `Busy` at once when the engine is at its limit, never queueing),
//! stream the text as `Token` chunks and finish with `Done` or `Error`. If the client goes
//! away, the failed send drops the generation, which stops it at once.

use std::collections::HashMap;
use std::sync::Arc;

use cocoon_inference as inference;
use cocoon_p2p::frame::FramedStream;
use cocoon_p2p::job::{self, ErrorCode, JobChannel, JobConfig, JobFailure, JobRequest, Message};
use cocoon_p2p::{Network, NetworkError, PeerId};
use futures::StreamExt;

/// Most stop strings a request may carry.
pub const MAX_STOP_STRINGS: usize = 16;
/// Longest stop string, in bytes.
pub const MAX_STOP_LEN: usize = 256;

/// The models a worker serves, by announced id.
#[derive(Clone)]
pub struct Worker {
    engines: Arc<HashMap<String, inference::Engine>>,
    job_config: JobConfig,
}

impl Worker {
    /// A worker serving `engines` (model id → engine).
    pub fn new(engines: HashMap<String, inference::Engine>, job_config: JobConfig) -> Self {
        Self {
            engines: Arc::new(engines),
            job_config,
        }
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
            tokio::spawn(async move { worker.handle(peer, stream).await });
        }
        Ok(())
    }

    async fn handle(&self, peer: PeerId, stream: cocoon_p2p::Stream) {
        let transport = FramedStream::new(stream, self.job_config.max_frame);
        let mut channel = JobChannel::new(transport, self.job_config.clone());
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

    async fn run<T: cocoon_p2p::frame::FrameTransport>(
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
        let mut generation = match engine.generate(to_engine(request)) {
            Ok(g) => g,
            Err(inference::GenerateError::Busy { limit }) => {
                let msg = format!("worker is running {limit} jobs, its limit");
                return channel.send(&fail(ErrorCode::Busy, msg)).await;
            }
            Err(e) => {
                return channel
                    .send(&fail(ErrorCode::BadRequest, e.to_string()))
                    .await
            }
        };
        while let Some(event) = generation.next().await {
            match event {
                inference::GenerationEvent::Text(text) => channel.send_token(text).await?,
                inference::GenerationEvent::Done(usage) => {
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
                    return channel.send(&Message::Done(done)).await;
                }
                inference::GenerationEvent::Error(e) => {
                    return channel.send(&fail(ErrorCode::Internal, e)).await;
                }
            }
        }
        channel
            .send(&fail(
                ErrorCode::Internal,
                "generation ended without a result".into(),
            ))
            .await
    }
}

/// Checks a request's bounds before it reaches the engine.
pub fn validate(request: &JobRequest) -> Result<(), String> {
    let s = &request.sampling;
    if !(0.0..=10.0).contains(&s.temperature) || s.temperature.is_nan() {
        return Err(format!("temperature {} is outside 0..=10", s.temperature));
    }
    if let Some(p) = s.top_p {
        if !(p > 0.0 && p <= 1.0) {
            return Err(format!("top_p {p} is outside (0, 1]"));
        }
    }
    if s.top_k == Some(0) {
        return Err("top_k must be at least 1".into());
    }
    if s.max_tokens == 0 {
        return Err("max_tokens must be at least 1".into());
    }
    if s.stop.len() > MAX_STOP_STRINGS
        || s.stop
            .iter()
            .any(|x| x.is_empty() || x.len() > MAX_STOP_LEN)
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
