//! The worker's side of one job.
//!
//! [`admit`] decides whether a request can run and how it is paid: wire bounds, the price
//! against the client's ceiling, and, for a paid job, the channel: its address must derive
//! from its parameters with this worker's key and payout wallet, and its client key must be
//! the key of the peer that sent the request (the transport authenticated it), so nobody
//! runs jobs on a channel someone else pays for. The shell then loads the channel's core
//! (one job at a time per channel) and starts the generation.
//!
//! [`WorkerSession`]: `Starting → Streaming → [Finishing] → Closing → Finished`. Each
//! chunk is billed before it is sent (the cumulative cost of the prompt and the tokens
//! billed so far, one rounding per job, at most [`chunk_capacity`] tokens per chunk, the
//! surplus riding with the next); past the credit limit the chunk is held (and the shell
//! stops reading the generation, [`WorkerSession::wants_text`]) until a journalled voucher
//! makes room or `voucher_timeout` ends the job with `PaymentRequired`. `Done` bills the
//! rest within the credit; the session then waits (bounded) for the voucher that pays
//! everything, until the client closes its side. Every accepted voucher and the job's final delivery are
//! [`WorkerEvent::Journal`] writes; a voucher counts for credit only once journalled.

use std::collections::VecDeque;
use std::time::Duration;

use cocoon_ledger::channel::{job_cost, CreditExceeded, WorkerChannel, WorkerState};
use cocoon_ledger::journal::ChannelTerms;
use ed25519_dalek::VerifyingKey;

use super::client::voucher_of;
use super::rules::{chunk_capacity, validate_request};
use super::WorkerConfig;
use crate::message::*;

/// The job's cumulative cost at `price` (the one formula, one rounding per job).
fn cost_of(price: JobPrice, prompt: u32, completion: u32) -> u64 {
    job_cost(
        price.prompt_per_mtok,
        price.completion_per_mtok,
        u64::from(prompt),
        u64::from(completion),
    )
}

/// What [`admit`] needs to know about this worker and the requesting peer.
#[derive(Clone, Copy, Debug)]
pub struct AdmitContext {
    /// The price new jobs are billed at; zero serves for free.
    pub price: JobPrice,
    /// The worker's channel key (its identity key).
    pub worker_key: [u8; 32],
    /// The worker's payout wallet (basechain account id).
    pub payout: [u8; 32],
    /// The ed25519 key of the peer that opened the stream (authenticated by the transport);
    /// `None` when its identity is not an ed25519 key.
    pub peer_key: Option<[u8; 32]>,
    /// Whether the worker can take payments (it has a journal).
    pub payments: bool,
}

/// How an admitted job is paid.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Admission {
    /// No charge.
    Free,
    /// Through this channel.
    Paid {
        /// The channel's account id.
        channel: [u8; 32],
        /// Its parameters (with this worker's key and payout).
        terms: ChannelTerms,
        /// The deposit the client claims (a worker with a chain reads the real one).
        claimed_deposit: u64,
    },
}

/// A refused request: the error to answer with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// The code.
    pub code: ErrorCode,
    /// Why, for a person.
    pub message: String,
}

fn refusal(code: ErrorCode, message: impl Into<String>) -> Refusal {
    Refusal {
        code,
        message: message.into(),
    }
}

/// The admission rules that need no channel: the request's bounds, payment required, the
/// price against the client's ceiling. `Ok(Some(terms))` for a paid job, `Ok(None)` for a
/// free one.
pub fn admit_request(
    request: &JobRequest,
    price: JobPrice,
) -> Result<Option<&PaymentTerms>, Refusal> {
    validate_request(request).map_err(|e| refusal(ErrorCode::BadRequest, e.to_string()))?;
    if price == JobPrice::default() {
        return Ok(None);
    }
    let Some(terms) = request.payment.as_deref() else {
        return Err(refusal(
            ErrorCode::PaymentRequired,
            format!(
                "this worker charges {} / {} nanoTON per million prompt / completion tokens: \
                 send the job with a payment channel",
                price.prompt_per_mtok, price.completion_per_mtok
            ),
        ));
    };
    if price.prompt_per_mtok > terms.max_price.prompt_per_mtok
        || price.completion_per_mtok > terms.max_price.completion_per_mtok
    {
        return Err(refusal(
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
    Ok(Some(terms))
}

/// Decides whether `request` may run and how it is paid (see the module docs).
pub fn admit(request: &JobRequest, ctx: &AdmitContext) -> Result<Admission, Refusal> {
    let Some(terms) = admit_request(request, ctx.price)? else {
        return Ok(Admission::Free);
    };
    if !ctx.payments {
        return Err(refusal(
            ErrorCode::PaymentRequired,
            "this worker has no payment journal",
        ));
    }
    if ctx.peer_key != Some(terms.client_key) {
        return Err(refusal(
            ErrorCode::PaymentRequired,
            "the channel's client key is not the requesting peer's: a channel pays only for \
             its own client's jobs",
        ));
    }
    if VerifyingKey::from_bytes(&terms.client_key).is_err() {
        return Err(refusal(
            ErrorCode::PaymentRequired,
            "the client key is not a valid ed25519 key",
        ));
    }
    let channel_terms = ChannelTerms {
        channel_id: terms.channel_id,
        client_key: terms.client_key,
        worker_key: ctx.worker_key,
        client_address: terms.client_address,
        worker_payout: ctx.payout,
        challenge_period: terms.challenge_period,
        worker_timeout: terms.worker_timeout,
    };
    match channel_terms.address() {
        Ok(a) if a == terms.channel => Ok(Admission::Paid {
            channel: terms.channel,
            terms: channel_terms,
            claimed_deposit: terms.deposit,
        }),
        Ok(_) => Err(refusal(
            ErrorCode::PaymentRequired,
            "the channel's address does not match its parameters and this worker",
        )),
        Err(e) => Err(refusal(
            ErrorCode::PaymentRequired,
            format!("channel parameters: {e}"),
        )),
    }
}

/// What the worker's shell must do.
#[derive(Clone, Debug, PartialEq, Eq)]
// Deliberately exhaustive: every shell (node, simulator) must handle every event, so a new
// one breaks their build instead of being ignored.
pub enum WorkerEvent {
    /// Write this channel state durably, then call [`WorkerSession::journalled`].
    Journal(WorkerState),
    /// Stop the generation: the job ended before it did.
    Stop,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Starting,
    Streaming,
    Finishing,
    Closing,
    Finished,
}

/// What a job billed, for its receipt.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Billed {
    /// Prompt tokens quoted.
    pub prompt_tokens: u32,
    /// Completion tokens billed.
    pub completion_tokens: u32,
    /// Value counted as delivered by this job, nanoTON.
    pub cost: u64,
}

/// The end of a generation, as the engine reports it.
#[derive(Clone, Copy, Debug)]
struct Finish {
    completion_tokens: u32,
    timings: Timings,
    reason: FinishReason,
}

/// The worker's side of one job (see the module docs).
pub struct WorkerSession {
    config: WorkerConfig,
    id: JobId,
    price: JobPrice,
    max_tokens: u32,
    state: State,
    channel: Option<WorkerChannel>,
    prompt_tokens: u32,
    sampled: u32,
    billed: u32,
    counted: u64,
    next_index: u32,
    held: Option<String>,
    finish: Option<Finish>,
    transmit: VecDeque<Message>,
    events: VecDeque<WorkerEvent>,
    journal_pending: u32,
    /// The channel state last handed out to be journalled.
    written: Option<WorkerState>,
    deadline: Option<Duration>,
    held_reason: Option<String>,
    error: Option<String>,
}

impl WorkerSession {
    /// A job for `request`, admitted; paid through `channel` (its core, deposit set) at
    /// `price`, or free without one.
    pub fn new(
        config: WorkerConfig,
        request: &JobRequest,
        price: JobPrice,
        channel: Option<WorkerChannel>,
    ) -> Self {
        Self {
            config,
            id: request.id,
            price,
            max_tokens: request.sampling.max_tokens,
            state: State::Starting,
            channel,
            prompt_tokens: 0,
            sampled: 0,
            billed: 0,
            counted: 0,
            next_index: 0,
            held: None,
            finish: None,
            transmit: VecDeque::new(),
            events: VecDeque::new(),
            journal_pending: 0,
            written: None,
            deadline: None,
            held_reason: None,
            error: None,
        }
    }

    /// The job id.
    pub fn id(&self) -> JobId {
        self.id
    }

    /// The job cannot start (busy, bad input for the engine): answer `code` and end.
    pub fn refuse(&mut self, code: ErrorCode, message: String) {
        self.error(code, message);
        self.end(false);
    }

    /// The generation started on a prompt of `prompt_tokens`: a paid job is quoted.
    pub fn started(&mut self, prompt_tokens: u32) {
        if self.state != State::Starting {
            return;
        }
        self.prompt_tokens = prompt_tokens;
        self.state = State::Streaming;
        if let Some(c) = self.channel.as_mut() {
            let state = c.state();
            // The prompt is work done once quoted: counted now, as far as the credit allows
            // (the rest with the first chunk, which waits for the client's prompt voucher).
            self.counted = c.owe(cost_of(self.price, prompt_tokens, 0));
            self.transmit.push_back(Message::Quote(JobQuote {
                id: self.id,
                prompt_tokens,
                price: self.price,
                channel_paid: c.paid(),
                channel_seq: state.best.map_or(0, |b| b.voucher.seq),
                channel_delivered: state.delivered,
                credit_limit: c.credit_limit(),
            }));
        }
    }

    /// Whether the shell should read the next piece of the generation: streaming, and no
    /// chunk held for want of credit.
    pub fn wants_text(&self) -> bool {
        self.state == State::Streaming && self.held.is_none() && self.finish.is_none()
    }

    /// The generation produced `text`; `sampled` tokens so far in all.
    pub fn text(&mut self, now: Duration, text: String, sampled: u32) {
        if self.state != State::Streaming {
            return;
        }
        self.sampled = self.sampled.max(sampled.min(self.max_tokens));
        self.send_chunk(now, text);
    }

    fn send_chunk(&mut self, now: Duration, text: String) {
        let tokens = self
            .sampled
            .saturating_sub(self.billed)
            .min(chunk_capacity(&text));
        let billed = self.billed + tokens;
        if let Some(c) = self.channel.as_mut() {
            let total = cost_of(self.price, self.prompt_tokens, billed);
            let cost = total.saturating_sub(self.counted);
            match c.deliver(cost) {
                Ok(()) => self.counted += cost,
                Err(e @ CreditExceeded::Credit { .. }) => {
                    self.held = Some(text);
                    if self.deadline.is_none() {
                        self.deadline = Some(now + self.config.voucher_timeout);
                    }
                    self.held_reason = Some(format!(
                        "payment required: {e}; no voucher came within {:?}",
                        self.config.voucher_timeout
                    ));
                    return;
                }
                Err(e) => {
                    self.error(ErrorCode::PaymentRequired, format!("payment required: {e}"));
                    self.events.push_back(WorkerEvent::Stop);
                    self.end(false);
                    return;
                }
            }
        }
        self.deadline = None;
        self.billed = billed;
        let index = self.next_index;
        self.next_index = self.next_index.saturating_add(1);
        self.transmit.push_back(Message::Token(TokenChunk {
            id: self.id,
            index,
            text,
            tokens,
        }));
        if let Some(f) = self.finish.take() {
            self.do_finish(now, f);
        }
    }

    /// The generation ended after `completion_tokens` tokens.
    pub fn finished(
        &mut self,
        now: Duration,
        completion_tokens: u32,
        timings: Timings,
        reason: FinishReason,
    ) {
        if self.state != State::Streaming {
            return;
        }
        let f = Finish {
            completion_tokens,
            timings,
            reason,
        };
        if self.held.is_some() {
            self.finish = Some(f);
        } else {
            self.do_finish(now, f);
        }
    }

    fn do_finish(&mut self, now: Duration, f: Finish) {
        let completion = f
            .completion_tokens
            .min(self.max_tokens)
            .max(self.billed)
            .max(self.sampled);
        if let Some(c) = self.channel.as_mut() {
            let total = cost_of(self.price, self.prompt_tokens, completion);
            self.counted += c.owe(total.saturating_sub(self.counted));
        }
        self.billed = completion;
        self.transmit.push_back(Message::Done(JobDone {
            id: self.id,
            usage: Usage {
                prompt_tokens: self.prompt_tokens,
                completion_tokens: completion,
            },
            timings: f.timings,
            finish_reason: f.reason,
        }));
        if self.channel.is_some() {
            // Wait for the final voucher: the client sends it and closes its side.
            self.state = State::Finishing;
            self.deadline = Some(now + self.config.final_timeout);
        } else {
            self.end(true);
        }
    }

    /// The generation failed.
    pub fn failed(&mut self, message: String) {
        if matches!(self.state, State::Closing | State::Finished) {
            return;
        }
        self.error(ErrorCode::Internal, message);
        self.end(true);
    }

    /// A message from the client.
    pub fn handle(&mut self, now: Duration, message: Message) {
        if matches!(self.state, State::Closing | State::Finished) {
            return;
        }
        match message {
            Message::Voucher(p) if p.id == self.id => self.on_voucher(now, p),
            Message::Error(f) => {
                self.error = Some(format!("the client ended the job: {}", f.message));
                self.events.push_back(WorkerEvent::Stop);
                self.end(false);
            }
            other => {
                let m = format!("expected a voucher for job {}, got {other:?}", self.id);
                self.error(ErrorCode::BadRequest, m);
                self.events.push_back(WorkerEvent::Stop);
                self.end(false);
            }
        }
    }

    fn on_voucher(&mut self, now: Duration, p: Payment) {
        let Some(c) = self.channel.as_mut() else {
            self.error(ErrorCode::BadRequest, "a voucher for a free job".into());
            self.events.push_back(WorkerEvent::Stop);
            return self.end(false);
        };
        if p.cumulative <= c.paid() {
            // Nothing new (a voucher sent twice): no signature check, no journal write.
            return;
        }
        let Some(v) = voucher_of(&p, c.channel()) else {
            self.error(
                ErrorCode::PaymentRequired,
                "malformed voucher signature".into(),
            );
            self.events.push_back(WorkerEvent::Stop);
            return self.end(false);
        };
        match c.accept(&v) {
            Ok(_) => {
                let state = c.state();
                self.journal(state);
            }
            Err(e) => {
                self.error(ErrorCode::PaymentRequired, format!("voucher refused: {e}"));
                self.events.push_back(WorkerEvent::Stop);
                self.end(false);
            }
        }
        let _ = now;
    }

    /// The shell wrote the last [`WorkerEvent::Journal`] durably.
    pub fn journalled(&mut self, now: Duration) {
        self.journal_pending = self.journal_pending.saturating_sub(1);
        if self.journal_pending > 0 {
            return;
        }
        if let Some(c) = self.channel.as_mut() {
            c.journalled();
        }
        match self.state {
            State::Streaming => {
                if let Some(text) = self.held.take() {
                    self.send_chunk(now, text);
                }
            }
            State::Closing => {
                self.state = State::Finished;
                self.deadline = None;
            }
            _ => {}
        }
    }

    /// The client closed its side of the stream (or it broke): a job still running is
    /// cancelled, a finished one waits for no more vouchers.
    pub fn handle_closed(&mut self) {
        match self.state {
            State::Starting | State::Streaming => {
                self.error = Some("the client went away".into());
                self.events.push_back(WorkerEvent::Stop);
                self.end(false);
            }
            State::Finishing => self.end(true),
            State::Closing | State::Finished => {}
        }
    }

    /// A newer job on the same channel took over (this job's client is gone).
    pub fn superseded(&mut self) {
        if matches!(self.state, State::Closing | State::Finished) {
            return;
        }
        self.error = Some("superseded by a newer job on the same channel".into());
        self.events.push_back(WorkerEvent::Stop);
        self.end(false);
    }

    /// The next deadline, if any.
    pub fn poll_timeout(&self) -> Option<Duration> {
        self.deadline
    }

    /// Time passed: a held chunk whose voucher did not come ends the job with
    /// `PaymentRequired`; a finished job stops waiting for its final voucher.
    pub fn handle_timeout(&mut self, now: Duration) {
        if self.deadline.is_none_or(|d| now < d) {
            return;
        }
        match self.state {
            State::Streaming if self.held.is_some() => {
                let m = self
                    .held_reason
                    .take()
                    .unwrap_or_else(|| "payment required".into());
                self.error(ErrorCode::PaymentRequired, m);
                self.events.push_back(WorkerEvent::Stop);
                self.end(false);
            }
            State::Finishing => self.end(true),
            _ => self.deadline = None,
        }
    }

    fn error(&mut self, code: ErrorCode, message: String) {
        self.error = Some(message.clone());
        self.transmit.push_back(Message::Error(JobFailure {
            id: self.id,
            code,
            message,
        }));
    }

    /// Ends the job: the channel's final state is journalled, then the stream closes.
    fn end(&mut self, completed: bool) {
        if !completed {
            self.held = None;
            self.finish = None;
        }
        self.deadline = None;
        let state = self.channel.as_ref().map(WorkerChannel::state);
        if let Some(state) = state.filter(|s| self.written.as_ref() != Some(s)) {
            if self.state != State::Starting || self.counted > 0 {
                self.journal(state);
            }
        }
        self.state = if self.journal_pending > 0 {
            State::Closing
        } else {
            State::Finished
        };
    }

    fn journal(&mut self, state: WorkerState) {
        self.written = Some(state.clone());
        self.events.push_back(WorkerEvent::Journal(state));
        self.journal_pending += 1;
    }

    /// The next message to send.
    pub fn poll_transmit(&mut self) -> Option<Message> {
        self.transmit.pop_front()
    }

    /// The next event for the shell.
    pub fn poll_event(&mut self) -> Option<WorkerEvent> {
        self.events.pop_front()
    }

    /// The job is over and its state journalled: send what is left, close the stream, and
    /// give the channel back ([`Self::into_channel`]).
    pub fn is_finished(&self) -> bool {
        self.state == State::Finished
    }

    /// Whether the job has ended (its last journal write may still be due).
    pub fn has_ended(&self) -> bool {
        matches!(self.state, State::Closing | State::Finished)
    }

    /// Why the job ended early, if it did.
    pub fn error_message(&self) -> Option<&str> {
        self.error.as_deref()
    }

    /// What the job billed.
    pub fn billed(&self) -> Billed {
        Billed {
            prompt_tokens: self.prompt_tokens,
            completion_tokens: self.billed,
            cost: self.counted,
        }
    }

    /// The channel's core, for the next job on the channel.
    pub fn into_channel(self) -> Option<WorkerChannel> {
        self.channel
    }

    /// The channel's core.
    pub fn channel(&self) -> Option<&WorkerChannel> {
        self.channel.as_ref()
    }
}
