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
//! Each attempt is a [`ClientSession`], the sans-IO core that owns the job's rules: it checks
//! every quote, chunk and count the worker sends (a quote above the ceiling, a credit beyond
//! the client's bound or a delivery beyond what the client's journal allows fails over with a
//! reputation penalty) and decides every voucher: the prompt at the quote, then every few
//! tokens, and the exact total after `Done`. This module moves its messages, journals its
//! channel state before its vouchers go out ([`ClientLedger`], the journal's owner thread),
//! and hands text to the caller through a bounded channel: a slow reader holds text in a
//! bounded buffer (payments go on meanwhile), nothing is dropped, and a reader that goes
//! away cancels the job: the worker is paid for what arrived and told at once, and the
//! channel is free again.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cocoon_gossip::{Advert, Reputation, Selection, Weights};

use cocoon_p2p::attest::verifier::{Verifier, VerifierConfig};
use cocoon_p2p::attest::EvidenceKind;
use cocoon_p2p::frame::FramedStream;
use cocoon_p2p::job::session::{self, ClientEvent, ClientSession, Fault};
use cocoon_p2p::job::{
    confidential, encode, ErrorCode, JobChannel, JobConfig, JobInput, JobPrice, JobRequest,
    Message, PaymentTerms, Sampling,
};
use cocoon_p2p::{Network, NetworkError, PeerId};
use serde::Serialize;
use tokio::sync::mpsc;

use crate::clock::{instant_of, session_now};
use crate::market::{advert_peer, MarketService};
use crate::payments::{ClientLedger, PaymentConfig, PaymentError};

/// How long a paying client waits, after its final voucher, for the worker to end the
/// stream (the worker's acknowledgement that it holds the voucher).
pub const FINAL_ACK_WAIT: Duration = Duration::from_secs(5);

/// Text received but not yet taken by a slow reader, bytes, at most; beyond it the client
/// stops reading the worker's stream until the reader catches up.
pub const MAX_PENDING_TEXT: usize = 8 << 20;

/// Client settings.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// How long to keep asking the DHT for providers when none is found. Default: 20 s.
    pub discovery_timeout: Duration,
    /// Timeout for connecting to a worker and opening the job stream (for a worker behind
    /// NAT: the relay and hole punching, up to `NetworkConfig::hole_punch_timeout`). Default:
    /// 25 s.
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
            open_timeout: Duration::from_secs(25),
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
    /// How the job reached the worker: `direct`, or `relayed` (hole punching failed and the
    /// relay's limits allowed the job).
    pub path: String,
    /// From choosing the worker to an open job stream: dialling, and for a worker behind
    /// NAT, the relay and hole punching.
    pub connect_ms: f64,
}

/// Why a job failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
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
    /// The caller went away (the text receiver was dropped): the job was stopped and the
    /// worker paid for what arrived.
    #[error("the job was cancelled")]
    Cancelled,
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
    /// The request breaks a rule the client checks itself (stop strings, an empty prompt or
    /// chat, `max_tokens`): no worker was asked.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The request does not fit one job frame: no worker was asked.
    #[error("the request takes {bytes} bytes on the wire; a job request holds at most {limit}")]
    TooLarge {
        /// Its encoded size, with the largest payment terms.
        bytes: usize,
        /// The frame limit ([`JobConfig::max_frame`]).
        limit: usize,
    },
    /// Workers refused the request itself: two agreed (or every one asked refused it), so it
    /// is the caller's to fix.
    #[error("the request was refused by {} worker(s): {message}", .workers.len())]
    Refused {
        /// The prompt does not fit the model's context (else another bad request).
        context_length: bool,
        /// The last refusing worker's words.
        message: String,
        /// The workers that refused it.
        workers: Vec<PeerId>,
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

/// The largest payment terms a request may carry (every field at its widest encoding), so
/// a size check holds for any channel.
const WIDEST_TERMS: PaymentTerms = PaymentTerms {
    channel: [0xFF; 32],
    channel_id: u64::MAX,
    client_key: [0xFF; 32],
    client_address: [0xFF; 32],
    challenge_period: u32::MAX,
    worker_timeout: u32::MAX,
    deposit: u64::MAX,
    max_price: JobPrice {
        prompt_per_mtok: u64::MAX,
        completion_per_mtok: u64::MAX,
    },
};

/// Checks what the client can before it chooses a worker: the protocol's bounds
/// ([`session::validate_request`]: stop strings, an empty prompt or chat, `max_tokens`) and
/// that the request, with `continuation` and the widest payment terms, fits one frame of
/// `max_frame` bytes. A caller's mistake is answered here, never blamed on the network.
pub fn check_request(
    request: &InferRequest,
    continuation: Option<&str>,
    max_frame: usize,
) -> Result<(), InferError> {
    let probe = JobRequest {
        id: u64::MAX,
        model: request.model.clone(),
        input: request.input.clone(),
        sampling: request.sampling.clone(),
        continuation: continuation.map(str::to_string),
        payment: Some(Box::new(WIDEST_TERMS)),
    };
    session::validate_request(&probe).map_err(|e| InferError::Invalid(e.to_string()))?;
    let bytes = encode(&Message::Request(probe))
        .map_err(|e| InferError::Invalid(e.to_string()))?
        .len();
    if bytes > max_frame {
        return Err(InferError::TooLarge {
            bytes,
            limit: max_frame,
        });
    }
    Ok(())
}

/// Where a job's candidates come from.
struct Target {
    peer: PeerId,
    advert: Option<Advert>,
}

/// Where to dial `target`: its newest advert's addresses (the market keeps the newest).
fn advert_addrs(target: &Target) -> Vec<cocoon_p2p::Multiaddr> {
    target
        .advert
        .as_ref()
        .map(crate::market::advert_addrs)
        .unwrap_or_default()
}

/// Runs `request` on the best worker the market knows (DHT providers when it knows none),
/// failing over to the next candidate (resuming from the text received so far) until one
/// finishes. The answer's text goes to `texts` as it arrives, as one answer; dropping the
/// receiver cancels the job ([`InferError::Cancelled`]). `reputation` learns from every
/// attempt, each outcome under its lock (concurrent jobs may share it).
pub async fn infer(
    network: &Network,
    market: &MarketService,
    reputation: &Mutex<Reputation>,
    request: InferRequest,
    config: &ClientConfig,
    texts: &mpsc::Sender<String>,
) -> Result<InferOutcome, InferError> {
    check_request(&request, None, config.job.max_frame)?;
    let selection = Selection {
        model: request.model.clone(),
        prompt_tokens: estimate_prompt_tokens(&request.input),
        max_tokens: request.sampling.max_tokens as u64,
        max_price_per_mtok: config.max_price_per_mtok,
        accept_dev: config.verifier.policy().allow_dev_insecure,
        exclude: Vec::new(),
        limit: None,
    };
    let select = || {
        let reputation = reputation.lock().expect("reputation lock");
        market.select(&selection, &reputation, &config.weights)
    };
    let ranked = select();
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
        let ranked = select();
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
    let mut refused = Refusals::default();
    let mut unpaid = true;
    let mut text = String::new();
    let mut tokens_before = 0u32;
    // When the first text of the answer arrived (at whichever worker).
    let mut first_seen: Option<Instant> = None;
    let started = Instant::now();
    for (attempt, target) in targets.iter().take(config.max_attempts).enumerate() {
        if texts.is_closed() {
            // Nobody reads the answer any more: start no job.
            return Err(InferError::Cancelled);
        }
        let worker = target.peer;
        let continuation = (!text.is_empty()).then(|| text.clone());
        let remaining = request.sampling.max_tokens.saturating_sub(tokens_before);
        if continuation.is_some() && remaining == 0 {
            break;
        }
        if continuation.is_some()
            && check_request(&request, continuation.as_deref(), config.job.max_frame).is_err()
        {
            // The answer so far no longer fits a request: no worker can carry it on.
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
            &mut text,
            &mut first_seen,
            texts,
        )
        .await;
        let first_text = first_seen.map(|t| t.duration_since(started).as_secs_f64() * 1e3);
        let now = crate::clock::unix_now();
        match result {
            Ok(mut done) => {
                let advertised = target
                    .advert
                    .as_ref()
                    .map_or(0.0, |a| a.tokens_per_s as f64);
                let mut record = reputation.lock().expect("reputation lock");
                record.success(
                    &worker.to_bytes(),
                    now,
                    done.ttft_ms,
                    done.tokens_per_s,
                    advertised,
                );
                // Another worker served what these called a bad request.
                for peer in refused.blamed() {
                    record.failure(&peer.to_bytes(), now);
                }
                drop(record);
                done.text = text;
                done.completion_tokens = done.completion_tokens.saturating_add(tokens_before);
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
                code,
            }) => {
                tracing::info!(%worker, "worker failed after {tokens} tokens: {error}");
                match cause {
                    Fault::Cancelled => return Err(InferError::Cancelled),
                    Fault::Worker => reputation
                        .lock()
                        .expect("reputation lock")
                        .failure(&worker.to_bytes(), now),
                    Fault::Busy | Fault::Funds => {}
                    Fault::Request => {
                        if let Some(verdict) = refused.note(worker, code, &error) {
                            return Err(verdict);
                        }
                    }
                }
                unpaid &= cause == Fault::Funds;
                tokens_before = tokens_before.saturating_add(tokens);
                tried.push((worker, error));
            }
        }
    }
    if let Some(verdict) = refused.unanimous(tried.len()) {
        return Err(verdict);
    }
    Err(InferError::AllFailed {
        out_of_funds: unpaid && !tried.is_empty(),
        tried,
        received_chars: text.len(),
    })
}

/// [`infer`] with a callback for the text (the command line's printer): `on_text` sees
/// each piece in order as it arrives.
pub async fn infer_with(
    network: &Network,
    market: &MarketService,
    reputation: &Mutex<Reputation>,
    request: InferRequest,
    config: &ClientConfig,
    mut on_text: impl FnMut(&str),
) -> Result<InferOutcome, InferError> {
    let (tx, mut rx) = mpsc::channel::<String>(64);
    let job = async move {
        let result = infer(network, market, reputation, request, config, &tx).await;
        drop(tx);
        result
    };
    let show = async {
        while let Some(text) = rx.recv().await {
            on_text(&text);
        }
    };
    let (result, ()) = tokio::join!(job, show);
    result
}

/// A rough prompt size for ranking (about four characters per token).
fn estimate_prompt_tokens(input: &JobInput) -> u64 {
    let chars: usize = match input {
        JobInput::Prompt(t) => t.len(),
        JobInput::Chat(m) => m.iter().map(|m| m.content.len() + 8).sum(),
    };
    (chars / 4 + 1) as u64
}

/// Workers that called a job's request bad (`Fault::Request`): the caller's mistake once a
/// second worker agrees (or every worker asked refused), the refusers' own if another
/// worker serves it.
#[derive(Debug, Default)]
struct Refusals {
    workers: Vec<PeerId>,
    context_length: bool,
    last: String,
}

impl Refusals {
    /// `worker` refused with `code` (`message`): the verdict when this is the second.
    fn note(
        &mut self,
        worker: PeerId,
        code: Option<ErrorCode>,
        message: &str,
    ) -> Option<InferError> {
        self.workers.push(worker);
        self.context_length |= code == Some(ErrorCode::ContextLengthExceeded);
        self.last = message.to_string();
        (self.workers.len() >= 2).then(|| self.verdict())
    }

    /// The verdict when every one of the `tried` workers that failed refused the request.
    fn unanimous(&self, tried: usize) -> Option<InferError> {
        (!self.workers.is_empty() && self.workers.len() == tried).then(|| self.verdict())
    }

    /// Workers whose refusal another worker's success proved wrong.
    fn blamed(&self) -> &[PeerId] {
        &self.workers
    }

    fn verdict(&self) -> InferError {
        InferError::Refused {
            context_length: self.context_length,
            message: self.last.clone(),
            workers: self.workers.clone(),
        }
    }
}

/// One failed attempt.
struct Failure {
    error: String,
    /// Completion tokens received from this worker before it failed (text kept by the
    /// caller).
    tokens: u32,
    cause: Fault,
    /// The worker's error code, when it answered with one.
    code: Option<ErrorCode>,
}

impl Failure {
    fn before_start(error: impl ToString) -> Self {
        Self {
            error: error.to_string(),
            tokens: 0,
            cause: Fault::Worker,
            code: None,
        }
    }

    fn payment(error: PaymentError) -> Self {
        Self {
            cause: if error.out_of_funds() {
                Fault::Funds
            } else {
                Fault::Worker
            },
            ..Self::before_start(error)
        }
    }
}

/// A job's payment: the channel reserved for it and the price ceiling it offers.
struct Paying {
    ledger: Arc<ClientLedger>,
    info: crate::payments::ClientChannelInfo,
    ceiling: JobPrice,
    _guard: tokio::sync::OwnedMutexGuard<()>,
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
        info: reserved.info,
        ceiling,
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

/// The session settings of `config`.
fn session_config(config: &ClientConfig) -> session::ClientConfig {
    let payments = config
        .payments
        .as_ref()
        .map_or_else(PaymentConfig::default, |l| l.config().clone());
    session::ClientConfig {
        pay_every: payments.pay_every,
        max_credit: payments.max_credit,
        idle_timeout: config.job.idle_timeout,
        ack_timeout: FINAL_ACK_WAIT,
    }
}

/// What [`drive`] saw of a job.
#[derive(Clone, Debug)]
pub struct Driven {
    /// When the first text arrived.
    pub first_text: Option<Instant>,
    /// Completion tokens the received chunks billed.
    pub tokens: u32,
    /// The reader went away and the job was cancelled.
    pub cancelled: bool,
    /// A journal write failed: the job stopped there, nothing unjournalled was sent.
    pub journal_error: Option<String>,
}

/// Runs a client session over `channel` until it finishes: its messages out and in, its
/// timers, its journal writes (`paying`: the ledger and channel it pays through; a voucher
/// goes out only once written) and its text, appended to `answer` and handed to `texts`
/// in order (buffered up to [`MAX_PENDING_TEXT`] bytes for a slow reader; a reader that
/// goes away cancels the job). Closes our side once the session has nothing more to send.
/// `Err` when a journal write failed (the job stopped there, nothing unjournalled sent).
pub async fn drive<T: cocoon_p2p::frame::FrameTransport>(
    channel: &mut JobChannel<T>,
    session: &mut ClientSession,
    paying: Option<(&ClientLedger, &crate::payments::ClientChannelInfo)>,
    answer: &mut String,
    texts: &mpsc::Sender<String>,
) -> Driven {
    let mut first: Option<Instant> = None;
    let mut tokens = 0u32;
    let mut pending: VecDeque<String> = VecDeque::new();
    let mut pending_bytes = 0usize;
    let mut stream_ok = true;
    let mut closed_ours = false;
    let mut cancelled = false;
    loop {
        while let Some(event) = session.poll_event() {
            match event {
                ClientEvent::Journal(state) => {
                    let Some((ledger, info)) = paying else {
                        continue;
                    };
                    if let Err(e) = ledger.record(info, &state).await {
                        // Nothing unjournalled goes out: the voucher waiting on this write
                        // stays unsent, and the job stops here.
                        let _ = channel.close().await;
                        return Driven {
                            first_text: first,
                            tokens,
                            cancelled,
                            journal_error: Some(format!("cannot journal a voucher: {e}")),
                        };
                    }
                    session.journalled();
                }
                ClientEvent::Text { text, tokens: n } => {
                    first.get_or_insert_with(Instant::now);
                    tokens = tokens.saturating_add(n);
                    answer.push_str(&text);
                    pending_bytes += text.len();
                    pending.push_back(text);
                }
                ClientEvent::Quote(_) | ClientEvent::Done(_) => {}
                ClientEvent::Failed(e) => tracing::debug!(job = session.id(), "job failed: {e}"),
            }
        }
        while let Some(m) = session.poll_transmit() {
            if stream_ok && channel.send(&m).await.is_err() {
                stream_ok = false;
                session.handle_closed(session_now(), "the stream broke while sending");
            }
        }
        if session.has_ended() && !closed_ours && !session.journal_pending() {
            // Our last voucher is out: closing our side tells the worker nothing more comes.
            closed_ours = true;
            let _ = channel.close().await;
        }
        if session.is_finished() && (pending.is_empty() || cancelled) {
            return Driven {
                first_text: first,
                tokens,
                cancelled,
                journal_error: None,
            };
        }
        let deadline = session.poll_timeout().map(instant_of);
        let reading = stream_ok && !session.is_finished() && pending_bytes < MAX_PENDING_TEXT;
        tokio::select! {
            biased;
            _ = texts.closed(), if !cancelled => {
                cancelled = true;
                pending.clear();
                session.cancel(session_now());
            }
            permit = texts.reserve(), if !pending.is_empty() && !cancelled => match permit {
                Ok(permit) => {
                    let text = pending.pop_front().expect("guarded");
                    pending_bytes -= text.len();
                    permit.send(text);
                }
                Err(_) => {
                    cancelled = true;
                    pending.clear();
                    session.cancel(session_now());
                }
            },
            message = channel.recv(Duration::MAX), if reading => match message {
                Ok(Some(m)) => session.handle(session_now(), m),
                Ok(None) => session.handle_closed(session_now(), "the worker closed the stream"),
                Err(e) => {
                    stream_ok = false;
                    session.handle_closed(session_now(), &e.to_string());
                }
            },
            _ = async { tokio::time::sleep_until(deadline.expect("guarded")).await }, if deadline.is_some() => {
                session.handle_timeout(session_now());
            }
            else => session.handle_closed(session_now(), "nothing left to wait for"),
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn run_on(
    network: &Network,
    target: &Target,
    request: &InferRequest,
    continuation: Option<String>,
    config: &ClientConfig,
    attempt: u64,
    answer: &mut String,
    first_text: &mut Option<Instant>,
    texts: &mpsc::Sender<String>,
) -> Result<InferOutcome, Failure> {
    let worker = target.peer;
    let paying = paying(target, request, config).await?;
    if texts.is_closed() {
        // The reader left while we waited for a channel.
        return Err(Failure {
            error: "cancelled".into(),
            tokens: 0,
            cause: Fault::Cancelled,
            code: None,
        });
    }
    let opening = Instant::now();
    let stream = match network
        .open_job_stream_at(worker, advert_addrs(target), config.open_timeout)
        .await
    {
        Ok(s) => s,
        Err(e) => {
            // A connection that cannot carry a stream is dead or stuck (a worker that
            // restarted leaves one behind until it times out): the next job dials afresh.
            let _ = network.disconnect(worker).await;
            return Err(Failure::before_start(e));
        }
    };
    let connect_ms = opening.elapsed().as_secs_f64() * 1e3;
    let relayed = network
        .paths(worker)
        .await
        .unwrap_or_default()
        .iter()
        .any(cocoon_p2p::reach::is_relayed);
    let (secure, verdict) = confidential::open(
        FramedStream::new(stream, config.job.max_frame),
        &config.verifier,
        &network.peer_id(),
        &worker,
        crate::clock::unix_now(),
        &config.job,
    )
    .await
    .map_err(Failure::before_start)?;
    let appraisal = verdict.appraisal;
    if appraisal.kind == EvidenceKind::DevInsecure {
        tracing::warn!(%worker, "{}", crate::trust::DEV_WARNING);
    }
    let mut channel = JobChannel::new(secure, config.job.clone());
    // A job id unique enough per client: time-based, plus the attempt.
    let id = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
        .wrapping_add(attempt);
    let started = Instant::now();
    let job_request = JobRequest {
        id,
        model: request.model.clone(),
        input: request.input.clone(),
        sampling: request.sampling.clone(),
        continuation,
        payment: paying
            .as_ref()
            .map(|p| Box::new(p.ledger.terms(&p.info, p.ceiling))),
    };
    let mut session = ClientSession::new(
        session_config(config),
        session_now(),
        job_request,
        paying.as_ref().map(|p| p.ledger.payment(&p.info)),
    );
    let driven = drive(
        &mut channel,
        &mut session,
        paying.as_ref().map(|p| (&*p.ledger, &p.info)),
        answer,
        texts,
    )
    .await;
    let Driven {
        first_text: first,
        tokens,
        cancelled,
        journal_error,
    } = driven;
    if first_text.is_none() {
        *first_text = first;
    }
    if let Some(error) = journal_error {
        // Our own fault, not the worker's: no penalty, and what arrived stays in `answer`.
        return Err(Failure {
            error,
            tokens,
            cause: Fault::Busy,
            code: None,
        });
    }
    let paid = session.job_cost();
    let quote = session.quote().copied();
    let done = match session.result() {
        Some(Ok(done)) => done.clone(),
        Some(Err(e)) => {
            return Err(Failure {
                error: e.to_string(),
                tokens,
                cause: if cancelled {
                    Fault::Cancelled
                } else {
                    e.fault()
                },
                code: match e {
                    session::SessionError::Remote(f) => Some(f.code),
                    _ => None,
                },
            })
        }
        None => {
            return Err(Failure {
                error: "the job ended without a result".into(),
                tokens,
                cause: Fault::Worker,
                code: None,
            })
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
        price_prompt_per_mtok: quote.map(|q| q.price.prompt_per_mtok),
        price_completion_per_mtok: quote.map(|q| q.price.completion_per_mtok),
        cost_nanoton: paying.as_ref().map(|_| paid),
        paid_nanoton: paid,
        channel: paying.as_ref().map(|p| hex::encode(p.info.channel)),
        failed_attempts: Vec::new(),
        path: if relayed { "relayed" } else { "direct" }.into(),
        connect_ms,
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

    /// A worker's word that the request is bad needs a second: one refusal alone fails over
    /// (and is blamed if another worker serves the job), two end the job as the caller's
    /// mistake, as does every worker asked refusing.
    #[test]
    fn a_bad_request_needs_a_second_opinion() {
        let (a, b) = (PeerId::random(), PeerId::random());
        let mut r = Refusals::default();
        assert!(r.note(a, Some(ErrorCode::BadRequest), "bad").is_none());
        assert!(r.unanimous(2).is_none(), "another worker failed otherwise");
        assert_eq!(r.blamed(), &[a][..]);
        match r.unanimous(1) {
            Some(InferError::Refused {
                context_length: false,
                workers,
                ..
            }) => {
                assert_eq!(workers, vec![a])
            }
            other => panic!("{other:?}"),
        }
        let too_long = "prompt has 9000 tokens; the context holds 4096";
        match r.note(b, Some(ErrorCode::ContextLengthExceeded), too_long) {
            Some(InferError::Refused {
                context_length: true,
                message,
                workers,
            }) => {
                assert_eq!(message, too_long);
                assert_eq!(workers, vec![a, b]);
            }
            other => panic!("{other:?}"),
        }
        assert!(Refusals::default().unanimous(0).is_none());
        assert!(Refusals::default().unanimous(3).is_none());
    }

    /// The caller's mistakes are found before a worker is chosen.
    #[test]
    fn requests_are_checked_before_a_worker_is_chosen() {
        let ok = InferRequest {
            model: "m".into(),
            input: JobInput::Prompt("hi".into()),
            sampling: Sampling {
                max_tokens: 4,
                ..Default::default()
            },
        };
        check_request(&ok, None, 1 << 20).unwrap();
        let with = |f: &dyn Fn(&mut InferRequest)| {
            let mut r = ok.clone();
            f(&mut r);
            check_request(&r, None, 1 << 20)
        };
        for bad in [
            with(&|r| r.input = JobInput::Prompt(String::new())),
            with(&|r| r.input = JobInput::Chat(Vec::new())),
            with(&|r| r.sampling.stop = vec![String::new()]),
            with(&|r| r.sampling.stop = vec!["x".into(); 17]),
            with(&|r| r.sampling.stop = vec!["x".repeat(257)]),
            with(&|r| r.sampling.max_tokens = 0),
        ] {
            assert!(matches!(bad, Err(InferError::Invalid(_))), "{bad:?}");
        }
        let big = with(&|r| r.input = JobInput::Prompt("a".repeat(1 << 20)));
        assert!(
            matches!(big, Err(InferError::TooLarge { limit, .. }) if limit == 1 << 20),
            "{big:?}"
        );
        // The answer so far travels too: a continuation can push a request over the frame.
        let half = "a".repeat(600 << 10);
        let r = InferRequest {
            input: JobInput::Prompt(half.clone()),
            ..ok.clone()
        };
        check_request(&r, None, 1 << 20).unwrap();
        assert!(check_request(&r, Some(&half), 1 << 20).is_err());
    }

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
