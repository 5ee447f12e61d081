//! The light client's job runner: rank the workers the market knows for a model (DHT provider
//! records when it knows none), run the job on the best, fail over, stream its text.
//!
//! Every job stream opens with the attested Noise handshake: the worker's evidence is checked
//! by the [`Verifier`] (evidence, binding to the enclave key and peer id, policy) before a
//! byte of the request is sent, and a refused worker is skipped like a busy one. Accepting
//! development evidence logs a warning on every job.
//!
//! Candidates are tried in rank order. A worker that is busy, does not serve the model,
//! cannot be reached or fails attestation is skipped; one that dies mid-stream leaves its text
//! in place, and the next worker continues it (the request carries the text so far as a
//! `continuation`), so the caller sees one answer with nothing repeated or lost. The client's
//! reputation record learns from every attempt. Failures list every worker tried.
//!
//! A worker with a price is paid through a payment channel with it ([`ClientLedger`]): the
//! request names the channel, the worker quotes the prompt and the price, and the client
//! signs a voucher for the prompt at once, then every few tokens, and the exact total after
//! `Done`, journalling each before it is sent.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cocoon_gossip::{Advert, Reputation, Selection, Weights};

use cocoon_p2p::attest::verifier::{Verifier, VerifierConfig};
use cocoon_p2p::attest::EvidenceKind;
use cocoon_p2p::frame::FramedStream;
use cocoon_p2p::job::{
    confidential, ClientEvent, ErrorCode, JobChannel, JobConfig, JobInput, JobPrice, JobRequest,
    Message, Sampling,
};
use cocoon_p2p::{Network, NetworkError, PeerId};
use serde::Serialize;

use crate::market::{advert_peer, MarketService};
use crate::payments::{self, ClientLedger, PaymentConfig, PaymentError};

/// How long a paying client waits, after its final voucher, for the worker to end the
/// stream (the worker's acknowledgement that it holds the voucher).
pub const FINAL_ACK_WAIT: Duration = Duration::from_secs(5);

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
    /// Highest price per million tokens accepted, nanoTON. Default: none.
    pub max_price_per_mtok: Option<u64>,
    /// How the market ranks workers.
    pub weights: Weights,
    /// Workers tried at most per job. Default: 5.
    pub max_attempts: usize,
    /// Pays workers that charge; without it only free workers serve. Default: none.
    pub payments: Option<Arc<ClientLedger>>,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            discovery_timeout: Duration::from_secs(20),
            open_timeout: Duration::from_secs(15),
            job: JobConfig::default(),
            verifier: Arc::new(Verifier::new(VerifierConfig::default())),
            max_price_per_mtok: None,
            weights: Weights::default(),
            max_attempts: 5,
            payments: None,
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
    /// Where the worker was found: `market` (ranked adverts) or `dht` (provider records).
    pub source: String,
    /// The serving worker's advertised price per million prompt tokens, nanoTON.
    pub price_prompt_per_mtok: Option<u64>,
    /// Its price per million completion tokens, nanoTON.
    pub price_completion_per_mtok: Option<u64>,
    /// What the job costs at that price, nanoTON.
    pub cost_nanoton: Option<u64>,
    /// What the client paid the serving worker for this job, nanoTON (vouchers signed;
    /// 0 for a free job).
    pub paid_nanoton: u64,
    /// The payment channel used (the contract's account id, hex); absent for a free job.
    pub channel: Option<String>,
    /// Workers that failed before this one ("peer: error"); the answer resumed after each.
    pub failed_attempts: Vec<String>,
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
    #[error("every worker failed ({received_chars} characters received): {}", .tried.iter().map(|(p, e)| format!("{p}: {e}")).collect::<Vec<_>>().join("; "))]
    AllFailed {
        /// (worker, error) per attempt.
        tried: Vec<(PeerId, String)>,
        /// Text received (and shown) before the last failure.
        received_chars: usize,
        /// Every attempt failed for want of money: the channel's deposit does not cover the
        /// job, the wallet cannot fund a channel, or the worker wanted a voucher we could not
        /// sign.
        out_of_funds: bool,
    },
    /// Workers advertise the model, but none at or below the price limit.
    #[error("no worker offers {model:?} at or below {max} nanoTON per million tokens")]
    NoneWithinPrice {
        /// Model id.
        model: String,
        /// The limit.
        max: u64,
    },
}

/// Starts the client's market and fills it from the given peers (normally the bootstrap
/// peers): their live adverts arrive at once, later ones by gossip. Peers that cannot be
/// reached are skipped (the DHT remains the fallback).
pub async fn join_market(
    network: &Network,
    peers: &[PeerId],
    timeout: Duration,
) -> Result<MarketService, InferError> {
    let market = MarketService::start(network, Default::default())?;
    for peer in peers {
        match market.sync_from(*peer, timeout).await {
            Ok(n) => tracing::debug!(%peer, "market sync: {n} adverts"),
            Err(e) => tracing::info!(%peer, "market sync failed: {e}"),
        }
    }
    Ok(market)
}

/// The peer ids named in multiaddrs (`.../p2p/<id>`).
pub fn peers_of(addrs: &[cocoon_p2p::Multiaddr]) -> Vec<PeerId> {
    addrs
        .iter()
        .filter_map(|a| match a.iter().last() {
            Some(libp2p::multiaddr::Protocol::P2p(p)) => Some(p),
            _ => None,
        })
        .collect()
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

/// Where a job's candidates come from.
struct Target {
    peer: PeerId,
    advert: Option<Advert>,
}

/// Runs `request` on the best worker the market knows (DHT providers when it knows none),
/// failing over to the next candidate (resuming from the text received so far) until one
/// finishes; `on_text` sees each chunk as it arrives, as one answer.
pub async fn infer(
    network: &Network,
    market: &MarketService,
    reputation: &mut Reputation,
    request: InferRequest,
    config: &ClientConfig,
    mut on_text: impl FnMut(&str),
) -> Result<InferOutcome, InferError> {
    let selection = Selection {
        model: request.model.clone(),
        prompt_tokens: estimate_prompt_tokens(&request.input),
        max_tokens: request.sampling.max_tokens as u64,
        max_price_per_mtok: config.max_price_per_mtok,
        accept_dev: config.verifier.policy().allow_dev_insecure,
        exclude: Vec::new(),
        limit: None,
    };
    let ranked = market.select(&selection, reputation, &config.weights);
    let mut targets: Vec<Target> = ranked
        .iter()
        .filter_map(|c| {
            Some(Target {
                peer: advert_peer(&c.advert)?,
                advert: Some(c.advert.clone()),
            })
        })
        .collect();
    let source = if targets.is_empty() {
        if config.max_price_per_mtok.is_some() && !market.adverts().is_empty() {
            // Adverts exist but none fits the price: DHT providers have no known price.
            return Err(InferError::NoneWithinPrice {
                model: request.model.clone(),
                max: config.max_price_per_mtok.unwrap_or_default(),
            });
        }
        let mut providers = discover(network, &request.model, config.discovery_timeout).await?;
        // Ask the providers themselves for their adverts (a client that found the network
        // by mDNS has synced from nobody): with them we can rank and pay.
        for peer in &providers {
            if let Err(e) = market.sync_from(*peer, config.open_timeout).await {
                tracing::debug!(%peer, "market sync failed: {e}");
            }
        }
        let ranked = market.select(&selection, reputation, &config.weights);
        if !ranked.is_empty() {
            providers = ranked
                .iter()
                .filter_map(|c| advert_peer(&c.advert))
                .collect();
        }
        // Without adverts no ranking: start at a different provider per job so clients
        // spread their load instead of all trying the lowest peer id first.
        let start = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos() as usize)
            .unwrap_or(0);
        if ranked.is_empty() {
            let len = providers.len();
            providers.rotate_left(start % len);
        }
        targets = providers
            .into_iter()
            .map(|peer| Target {
                peer,
                advert: ranked
                    .iter()
                    .find(|c| advert_peer(&c.advert) == Some(peer))
                    .map(|c| c.advert.clone()),
            })
            .collect();
        "dht"
    } else {
        "market"
    };
    let candidates = targets.len();
    let mut tried: Vec<(PeerId, String)> = Vec::new();
    let mut unpaid = true;
    let mut text = String::new();
    let mut tokens_before = 0u32;
    let mut first_text: Option<f64> = None;
    let started = Instant::now();
    for (attempt, target) in targets.iter().take(config.max_attempts).enumerate() {
        let worker = target.peer;
        let continuation = (!text.is_empty()).then(|| text.clone());
        let remaining = request.sampling.max_tokens.saturating_sub(tokens_before);
        if continuation.is_some() && remaining == 0 {
            break;
        }
        let mut job = request.clone();
        job.sampling.max_tokens = remaining;
        let result = run_on(
            network,
            target,
            &job,
            continuation,
            config,
            attempt as u64,
            &mut |chunk: &str| {
                first_text.get_or_insert_with(|| started.elapsed().as_secs_f64() * 1e3);
                text.push_str(chunk);
                on_text(chunk)
            },
        )
        .await;
        let now = crate::attestation::unix_now();
        match result {
            Ok(mut done) => {
                let advertised = target
                    .advert
                    .as_ref()
                    .map_or(0.0, |a| a.tokens_per_s as f64);
                reputation.success(
                    &worker.to_bytes(),
                    now,
                    done.ttft_ms,
                    done.tokens_per_s,
                    advertised,
                );
                done.text = text;
                done.completion_tokens += tokens_before;
                done.ttft_ms = first_text.unwrap_or(done.ttft_ms);
                done.total_ms = started.elapsed().as_secs_f64() * 1e3;
                done.providers_found = candidates;
                done.source = source.into();
                done.failed_attempts = tried.iter().map(|(p, e)| format!("{p}: {e}")).collect();
                if let (None, Some(a)) = (&done.channel, &target.advert) {
                    done.price_prompt_per_mtok = Some(a.price.prompt_per_mtok);
                    done.price_completion_per_mtok = Some(a.price.completion_per_mtok);
                    done.cost_nanoton = Some(
                        a.price
                            .cost(done.prompt_tokens as u64, done.completion_tokens as u64),
                    );
                }
                return Ok(done);
            }
            Err(Failure {
                error,
                tokens,
                cause,
            }) => {
                tracing::info!(%worker, "worker failed after {tokens} tokens: {error}");
                if cause == Cause::Worker {
                    reputation.failure(&worker.to_bytes(), now);
                }
                unpaid &= cause == Cause::Funds;
                tokens_before += tokens;
                tried.push((worker, error));
            }
        }
    }
    Err(InferError::AllFailed {
        out_of_funds: unpaid && !tried.is_empty(),
        tried,
        received_chars: text.len(),
    })
}

/// A rough prompt size for ranking (about four characters per token).
fn estimate_prompt_tokens(input: &JobInput) -> u64 {
    let chars: usize = match input {
        JobInput::Prompt(t) => t.len(),
        JobInput::Chat(m) => m.iter().map(|m| m.content.len() + 8).sum(),
    };
    (chars / 4 + 1) as u64
}

/// One failed attempt.
struct Failure {
    error: String,
    /// Completion tokens received from this worker before it failed (text kept by the
    /// caller).
    tokens: u32,
    cause: Cause,
}

/// Whose fault a failed attempt was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cause {
    /// The worker's or the network's (a reputation penalty).
    Worker,
    /// The worker was busy or too dear (not its fault: no penalty).
    Busy,
    /// We could not pay (no penalty; a gateway answers 402).
    Funds,
}

impl Failure {
    fn before_start(error: impl ToString) -> Self {
        Self {
            error: error.to_string(),
            tokens: 0,
            cause: Cause::Worker,
        }
    }

    fn payment(error: PaymentError) -> Self {
        Self {
            cause: Cause::of(&error),
            ..Self::before_start(error)
        }
    }
}

impl Cause {
    /// Whose fault a payment error is.
    fn of(error: &PaymentError) -> Self {
        if error.out_of_funds() {
            Cause::Funds
        } else {
            Cause::Worker
        }
    }
}

/// A job's payment: the channel and its bill.
struct Paying {
    ledger: Arc<ClientLedger>,
    channel: payments::ClientChannelInfo,
    meter: Option<cocoon_ledger::channel::Meter>,
    _guard: tokio::sync::OwnedMutexGuard<()>,
}

impl Paying {
    /// Signs and journals a voucher up to `total`, then sends it.
    async fn pay<T: cocoon_p2p::frame::FrameTransport>(
        &self,
        channel: &mut JobChannel<T>,
        total: u64,
        job: u64,
    ) -> Result<(), (String, Cause)> {
        match self.ledger.pay(&self.channel.channel, total, job) {
            Ok(Some(p)) => channel
                .send(&Message::Voucher(p))
                .await
                .map_err(|e| (e.to_string(), Cause::Worker)),
            Ok(None) => Ok(()),
            Err(e) => Err((format!("cannot pay: {e}"), Cause::of(&e))),
        }
    }
}

/// The payment channel for `request` on `target`, when it charges and we can pay: one with
/// room for the job at the price ceiling, reserved for this job.
async fn paying(
    target: &Target,
    request: &InferRequest,
    config: &ClientConfig,
) -> Result<Option<Paying>, Failure> {
    let (Some(ledger), Some(advert)) = (&config.payments, &target.advert) else {
        return Ok(None);
    };
    let Some(payout) = advert.payout else {
        return Ok(None);
    };
    let ceiling = max_price(advert, config);
    let need = cocoon_ledger::channel::job_cost(
        ceiling.prompt_per_mtok,
        ceiling.completion_per_mtok,
        estimate_prompt_tokens(&request.input),
        request.sampling.max_tokens as u64,
    );
    let reserved = ledger
        .acquire(advert.public_key, payout, need)
        .await
        .map_err(Failure::payment)?;
    Ok(Some(Paying {
        ledger: ledger.clone(),
        channel: reserved.info,
        meter: None,
        _guard: reserved.guard,
    }))
}

/// The price ceiling sent with a job: the advertised price with some slack, never above the
/// client's own limit.
fn max_price(advert: &Advert, config: &ClientConfig) -> JobPrice {
    let slack = config
        .payments
        .as_ref()
        .map_or(PaymentConfig::default().price_slack, |l| {
            l.config().price_slack
        });
    let cap = config.max_price_per_mtok.unwrap_or(u64::MAX);
    let (p, up) = (advert.price, advert.price.with_slack(slack));
    JobPrice {
        prompt_per_mtok: up.prompt_per_mtok.min(cap.max(p.prompt_per_mtok)),
        completion_per_mtok: up.completion_per_mtok.min(cap.max(p.completion_per_mtok)),
    }
}

async fn run_on(
    network: &Network,
    target: &Target,
    request: &InferRequest,
    continuation: Option<String>,
    config: &ClientConfig,
    attempt: u64,
    on_text: &mut impl FnMut(&str),
) -> Result<InferOutcome, Failure> {
    let worker = target.peer;
    let mut paying = paying(target, request, config).await?;
    let stream = network
        .open_job_stream(worker, config.open_timeout)
        .await
        .map_err(Failure::before_start)?;
    let (secure, verdict) = confidential::open(
        FramedStream::new(stream, config.job.max_frame),
        &config.verifier,
        &network.peer_id(),
        &worker,
        crate::attestation::unix_now(),
        &config.job,
    )
    .await
    .map_err(Failure::before_start)?;
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
    let payment = match (&paying, &target.advert) {
        (Some(p), Some(a)) => Some(Box::new(p.ledger.terms(&p.channel, max_price(a, config)))),
        _ => None,
    };
    channel
        .send_request(JobRequest {
            id,
            model: request.model.clone(),
            input: request.input.clone(),
            sampling: request.sampling.clone(),
            continuation,
            payment,
        })
        .await
        .map_err(Failure::before_start)?;
    let mut tokens = 0u32;
    let mut first: Option<Instant> = None;
    let result = loop {
        let event = match channel.next_event().await {
            Ok(e) => e,
            Err(e) => {
                // Busy or too dear is not the worker's fault: no reputation penalty.
                let cause = match &e {
                    cocoon_p2p::job::JobError::Remote(f) => match f.code {
                        ErrorCode::Busy | ErrorCode::PriceTooHigh => Cause::Busy,
                        ErrorCode::PaymentRequired => Cause::Funds,
                        _ => Cause::Worker,
                    },
                    _ => Cause::Worker,
                };
                break Err((e.to_string(), cause));
            }
        };
        let due = match (event, paying.as_mut()) {
            (ClientEvent::Quote(q), Some(p)) => {
                let every = p.ledger.config().pay_every;
                let meter = p.meter.insert(payments::meter(&q, p.channel.paid, every));
                let due = meter.prompt(q.prompt_tokens as u64);
                if due <= p.channel.paid && q.channel_paid < p.channel.paid {
                    // The worker missed our last voucher (it crashed before it arrived).
                    if let Ok(Some(last)) = p.ledger.last(&p.channel.channel, id) {
                        if let Err(e) = channel.send(&Message::Voucher(last)).await {
                            break Err((e.to_string(), Cause::Worker));
                        }
                    }
                }
                Some(due)
            }
            (ClientEvent::Quote(_), None) => {
                let msg = "the worker quoted a price for a job we did not offer to pay";
                break Err((msg.into(), Cause::Worker));
            }
            (ClientEvent::Token { text, tokens: n }, p) => {
                first.get_or_insert_with(Instant::now);
                tokens += n;
                on_text(&text);
                p.and_then(|p| p.meter.as_mut()?.tokens(n as u64))
            }
            (ClientEvent::Done(done), p) => {
                if let Some(m) = p.and_then(|p| p.meter.as_mut()) {
                    m.finish(
                        done.usage.prompt_tokens as u64,
                        done.usage.completion_tokens as u64,
                    );
                }
                break Ok(done);
            }
        };
        if let (Some(total), Some(p)) = (due, &paying) {
            if let Err(e) = p.pay(&mut channel, total, id).await {
                break Err(e);
            }
        }
    };
    let (paid, channel_hex) = match &paying {
        Some(p) => {
            let owed = p.meter.as_ref().map_or(0, |m| m.owed());
            // Pay for everything received, also when the job failed: the voucher is
            // journalled and reaches the worker now or with the next job.
            let sent = p.pay(&mut channel, owed, id).await;
            if let Err((e, _)) = sent {
                tracing::info!(%worker, "final voucher not delivered now: {e}");
            }
            (
                p.meter.as_ref().map_or(0, |m| m.job_cost()),
                Some(hex::encode(p.channel.channel)),
            )
        }
        None => (0, None),
    };
    let _ = channel.close().await;
    if paying.is_some() {
        // Wait for the worker to end the stream: it does so once it holds the final voucher,
        // which could otherwise be lost in our send buffer when the process exits.
        let _ = tokio::time::timeout(FINAL_ACK_WAIT, channel.next_event()).await;
    }
    let done = match result {
        Ok(done) => done,
        Err((error, cause)) => {
            return Err(Failure {
                error,
                tokens,
                cause,
            });
        }
    };
    let end = Instant::now();
    let first = first.unwrap_or(end);
    let decode_s = end.duration_since(first).as_secs_f64();
    let after_first = done.usage.completion_tokens.saturating_sub(1) as f64;
    Ok(InferOutcome {
        client_peer: network.peer_id().to_string(),
        worker_peer: worker.to_string(),
        model: request.model.clone(),
        text: String::new(),
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
        source: String::new(),
        price_prompt_per_mtok: paying
            .as_ref()
            .and_then(|p| Some(p.meter.as_ref()?.prompt_price)),
        price_completion_per_mtok: paying
            .as_ref()
            .and_then(|p| Some(p.meter.as_ref()?.completion_price)),
        cost_nanoton: paying.as_ref().map(|_| paid),
        paid_nanoton: paid,
        channel: channel_hex,
        failed_attempts: Vec::new(),
    })
}

/// Reads a reputation file; a missing file is an empty record, a corrupt one is set aside.
pub fn load_reputation(path: &Path) -> Reputation {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            tracing::warn!(
                "{}: unreadable reputation ({e}); starting afresh",
                path.display()
            );
            let _ = std::fs::rename(path, path.with_extension("json.corrupt"));
            Reputation::default()
        }),
        Err(_) => Reputation::default(),
    }
}

/// Writes a reputation file atomically.
pub fn save_reputation(path: &Path, reputation: &Reputation) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    // A per-process temporary name: clients sharing a data dir never write the same file.
    let tmp = path.with_extension(format!("json.{}.tmp", std::process::id()));
    std::fs::write(&tmp, serde_json::to_vec_pretty(reputation)?)?;
    std::fs::rename(tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reputation_survives_a_restart_and_a_corrupt_file_is_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("client/reputation.json");
        assert!(load_reputation(&path).is_empty());
        let mut r = Reputation::default();
        r.success(b"w1", 100, 250.0, 9.0, 10.0);
        r.failure(b"w2", 100);
        save_reputation(&path, &r).unwrap();
        assert_eq!(load_reputation(&path), r);
        std::fs::write(&path, b"{not json").unwrap();
        assert!(load_reputation(&path).is_empty());
        assert!(path.with_extension("json.corrupt").exists());
    }

    #[test]
    fn prompt_size_estimate_grows_with_the_prompt() {
        let short = estimate_prompt_tokens(&JobInput::Prompt("hi".into()));
        let long = estimate_prompt_tokens(&JobInput::Prompt("word ".repeat(400)));
        assert!(short >= 1 && (400..1000).contains(&long));
    }
}
