//! The client's side of one job.
//!
//! States: `Requested → [Quoted] → Streaming → Closing → Finished`. The session checks
//! everything the worker says before acting on it: message order and job ids; a quote's
//! price against the ceiling the client sent, its credit limit against
//! [`ClientConfig::max_credit`], its prompt size against [`prompt_token_bound`], and its
//! view of the channel against the client's own journal (the worker cannot hold more than
//! the client signed, nor have delivered more than that, plus one credit window when the
//! client's last job on the channel did not end cleanly); each chunk's tokens against
//! [`chunk_capacity`] and `max_tokens`; `Done`'s counts against the quote and the chunks.
//! A refused message ends the job with [`Fault::Worker`] (fail over, penalise) and is not
//! paid for; everything received before it is.
//!
//! Payments follow the ledger's [`Meter`]: the prompt at the quote, then every `pay_every`
//! tokens or when half the credit is used, then the exact total after `Done`. Each voucher
//! is a [`ClientEvent::Journal`] first and reaches `poll_transmit` only after
//! [`ClientSession::journalled`].

use std::collections::VecDeque;
use std::time::Duration;

use cocoon_ledger::channel::{ClientChannel, Meter};
use cocoon_ledger::voucher::{SignedVoucher, Voucher};
use ed25519_dalek::SigningKey;

use super::rules::{chunk_capacity, prompt_token_bound};
use super::{ClientConfig, Fault, SessionError};
use crate::message::*;

/// What the client journals per channel (the shell keeps the channel's terms beside it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientChannelState {
    /// The deposit.
    pub deposit: u64,
    /// Total signed.
    pub paid: u64,
    /// The last seq signed.
    pub seq: u64,
    /// The last voucher, to send again if the worker missed it.
    pub last: Option<SignedVoucher>,
    /// A job on the channel has not ended cleanly (see `ledger::journal::ClientRecord`).
    pub job_open: bool,
}

/// A paid job's channel, as the client's journal has it.
#[derive(Clone, Debug)]
pub struct ClientPayment {
    /// The channel's account id.
    pub channel: [u8; 32],
    /// The key that signs vouchers.
    pub key: SigningKey,
    /// The channel's journalled state.
    pub state: ClientChannelState,
}

/// What the shell must do or show.
#[derive(Clone, Debug, PartialEq)]
// Deliberately exhaustive: every shell (node, simulator) must handle every event, so a new
// one breaks their build instead of being ignored.
pub enum ClientEvent {
    /// Write this channel state durably, then call [`ClientSession::journalled`].
    Journal(ClientChannelState),
    /// The worker's quote, accepted.
    Quote(JobQuote),
    /// More of the answer, accounting for `tokens` completion tokens.
    Text {
        /// The text.
        text: String,
        /// Completion tokens it bills.
        tokens: u32,
    },
    /// The job finished; the session still sends the final voucher and waits for the ack.
    Done(JobDone),
    /// The job failed; the session still pays for what was received.
    Failed(SessionError),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Requested,
    Streaming,
    Closing,
    Finished,
}

struct Paying {
    channel: [u8; 32],
    core: ClientChannel,
    state: ClientChannelState,
    /// The job began with `job_open` clear: the worker's delivery must not pass what we
    /// signed.
    clean: bool,
    ceiling: JobPrice,
    meter: Option<Meter>,
}

/// The client's side of one job (see the module docs).
pub struct ClientSession {
    config: ClientConfig,
    id: JobId,
    max_tokens: u32,
    prompt_bound: u64,
    state: State,
    paying: Option<Paying>,
    quote: Option<JobQuote>,
    next_index: u32,
    tokens: u64,
    done: Option<JobDone>,
    error: Option<SessionError>,
    transmit: VecDeque<Message>,
    held: VecDeque<Message>,
    journal_pending: u32,
    events: VecDeque<ClientEvent>,
    deadline: Option<Duration>,
}

impl ClientSession {
    /// Starts a job: `request` is sent (after the journal records the job as open, for a
    /// paid job). `payment` is the channel `request.payment` names, as journalled; a paid
    /// request without it, or the reverse, is a caller error reported as a failure.
    pub fn new(
        config: ClientConfig,
        now: Duration,
        request: JobRequest,
        payment: Option<ClientPayment>,
    ) -> Self {
        let mut s = Self {
            id: request.id,
            max_tokens: request.sampling.max_tokens,
            prompt_bound: prompt_token_bound(&request),
            state: State::Requested,
            paying: None,
            quote: None,
            next_index: 0,
            tokens: 0,
            done: None,
            error: None,
            transmit: VecDeque::new(),
            held: VecDeque::new(),
            journal_pending: 0,
            events: VecDeque::new(),
            deadline: Some(now + config.idle_timeout),
            config,
        };
        let terms = request.payment.as_deref().copied();
        match (terms, payment) {
            (None, None) => {}
            (Some(t), Some(p)) if t.channel == p.channel => {
                let core = ClientChannel::restore(
                    p.channel,
                    p.state.deposit,
                    p.key,
                    p.state.paid,
                    p.state.seq,
                );
                let clean = !p.state.job_open;
                let mut paying = Paying {
                    channel: p.channel,
                    core,
                    state: p.state,
                    clean,
                    ceiling: t.max_price,
                    meter: None,
                };
                if clean {
                    paying.state.job_open = true;
                    s.events
                        .push_back(ClientEvent::Journal(paying.state.clone()));
                    s.journal_pending += 1;
                }
                s.paying = Some(paying);
            }
            _ => {
                s.fail(
                    now,
                    SessionError::Pay("the request's payment terms and channel differ".into()),
                );
                return s;
            }
        }
        s.send(Message::Request(request));
        s
    }

    /// The job id.
    pub fn id(&self) -> JobId {
        self.id
    }

    /// A message from the worker.
    pub fn handle(&mut self, now: Duration, message: Message) {
        if matches!(self.state, State::Finished) {
            return;
        }
        if matches!(self.state, State::Closing) {
            // After the job ended only the stream's end matters; a worker still talking is
            // ignored (its stream is closed by the shell once our voucher is out).
            return;
        }
        self.deadline = Some(now + self.config.idle_timeout);
        if message.job_id() != self.id && !matches!(&message, Message::Error(f) if f.id == 0) {
            let e = format!("message for job {} on job {}", message.job_id(), self.id);
            return self.fail(now, SessionError::Protocol(e));
        }
        let result = match message {
            Message::Quote(q) => self.on_quote(q),
            Message::Token(t) => self.on_token(t),
            Message::Done(d) => self.on_done(now, d),
            Message::Error(f) => Err(SessionError::Remote(f)),
            Message::Request(_) | Message::Voucher(_) => Err(SessionError::Protocol(
                "the worker sent a client's message".into(),
            )),
        };
        if let Err(e) = result {
            self.fail(now, e);
        }
    }

    fn on_quote(&mut self, q: JobQuote) -> Result<(), SessionError> {
        if self.state != State::Requested || self.quote.is_some() {
            return Err(SessionError::Protocol(
                "a quote after the first token or a second quote".into(),
            ));
        }
        let Some(p) = self.paying.as_mut() else {
            return Err(SessionError::Protocol(
                "the worker quoted a price for a job we did not offer to pay".into(),
            ));
        };
        let refuse = |m: String| Err(SessionError::Quote(m));
        if q.price.prompt_per_mtok > p.ceiling.prompt_per_mtok
            || q.price.completion_per_mtok > p.ceiling.completion_per_mtok
        {
            return refuse(format!(
                "price {} / {} above our ceiling {} / {}",
                q.price.prompt_per_mtok,
                q.price.completion_per_mtok,
                p.ceiling.prompt_per_mtok,
                p.ceiling.completion_per_mtok
            ));
        }
        if q.credit_limit > self.config.max_credit {
            return refuse(format!(
                "credit limit {} above our bound {}",
                q.credit_limit, self.config.max_credit
            ));
        }
        if u64::from(q.prompt_tokens) > self.prompt_bound {
            return refuse(format!(
                "{} prompt tokens for a prompt of at most {}",
                q.prompt_tokens, self.prompt_bound
            ));
        }
        let (signed, seq) = (p.core.paid(), p.core.seq());
        if q.channel_paid > signed || q.channel_seq > seq {
            return refuse(format!(
                "the worker claims a voucher of {} (seq {}) but we signed {signed} (seq {seq})",
                q.channel_paid, q.channel_seq
            ));
        }
        let allowed = if p.clean {
            signed
        } else {
            signed.saturating_add(q.credit_limit)
        };
        if q.channel_delivered > allowed {
            return refuse(format!(
                "the worker claims {} delivered on the channel; our journal allows {allowed}",
                q.channel_delivered
            ));
        }
        let base = signed.max(q.channel_delivered);
        let mut meter = Meter::new(
            q.price.prompt_per_mtok,
            q.price.completion_per_mtok,
            self.config.pay_every,
            base,
        )
        .with_credit(q.credit_limit);
        let due = meter.prompt(u64::from(q.prompt_tokens));
        p.meter = Some(meter);
        let resend = (due <= signed && q.channel_paid < signed)
            .then_some(p.state.last)
            .flatten();
        self.quote = Some(q);
        self.state = State::Streaming;
        self.events.push_back(ClientEvent::Quote(q));
        self.pay(due)?;
        if let Some(v) = resend {
            // The worker missed our last voucher (it crashed before it arrived).
            let m = self.voucher_message(&v);
            self.send(m);
        }
        Ok(())
    }

    fn on_token(&mut self, t: TokenChunk) -> Result<(), SessionError> {
        // Text without a quote on a job we offered to pay for: the worker serves it for
        // free (nothing is billed, nothing paid); a quote can no longer come.
        if t.index != self.next_index {
            return Err(SessionError::Protocol(format!(
                "token chunk {} where {} was expected",
                t.index, self.next_index
            )));
        }
        if t.tokens > chunk_capacity(&t.text) {
            return Err(SessionError::Protocol(format!(
                "a chunk of {} bytes bills {} tokens",
                t.text.len(),
                t.tokens
            )));
        }
        let total = self.tokens.saturating_add(u64::from(t.tokens));
        if total > u64::from(self.max_tokens) {
            return Err(SessionError::Protocol(format!(
                "{total} completion tokens billed, max_tokens is {}",
                self.max_tokens
            )));
        }
        self.next_index = self.next_index.saturating_add(1);
        self.tokens = total;
        self.state = State::Streaming;
        let due = self
            .paying
            .as_mut()
            .and_then(|p| p.meter.as_mut()?.tokens(u64::from(t.tokens)));
        self.events.push_back(ClientEvent::Text {
            text: t.text,
            tokens: t.tokens,
        });
        if let Some(due) = due {
            self.pay(due)?;
        }
        Ok(())
    }

    fn on_done(&mut self, now: Duration, d: JobDone) -> Result<(), SessionError> {
        let completion = u64::from(d.usage.completion_tokens);
        if completion < self.tokens || completion > u64::from(self.max_tokens) {
            return Err(SessionError::Protocol(format!(
                "done with {completion} completion tokens after {} streamed, max_tokens {}",
                self.tokens, self.max_tokens
            )));
        }
        if let Some(p) = self.paying.as_mut().filter(|p| p.meter.is_none()) {
            // Served for free: the channel carried nothing, the job ended cleanly.
            if p.state.job_open && p.clean {
                p.state.job_open = false;
                self.events.push_back(ClientEvent::Journal(p.state.clone()));
                self.journal_pending += 1;
            }
        } else if let Some(p) = self.paying.as_mut() {
            let (Some(q), Some(meter)) = (self.quote, p.meter.as_mut()) else {
                return Err(SessionError::Protocol("done before the quote".into()));
            };
            if d.usage.prompt_tokens != q.prompt_tokens {
                return Err(SessionError::Protocol(format!(
                    "done counts {} prompt tokens, the quote {}",
                    d.usage.prompt_tokens, q.prompt_tokens
                )));
            }
            let total = meter.finish(u64::from(q.prompt_tokens), completion);
            // A clean end: the final voucher's journal entry closes the job.
            p.state.job_open = false;
            let before = p.core.seq();
            if let Err(e) = self.pay(total) {
                if let Some(p) = self.paying.as_mut() {
                    p.state.job_open = true;
                }
                return Err(e);
            }
            let p = self.paying.as_mut().expect("paying");
            if p.core.seq() == before {
                self.events.push_back(ClientEvent::Journal(p.state.clone()));
                self.journal_pending += 1;
            }
        }
        self.tokens = completion;
        self.done = Some(d.clone());
        self.events.push_back(ClientEvent::Done(d));
        self.close(now);
        Ok(())
    }

    /// Signs a voucher up to `total` (journal first, then send).
    fn pay(&mut self, total: u64) -> Result<(), SessionError> {
        let Some(p) = self.paying.as_mut() else {
            return Ok(());
        };
        match p.core.pay_up_to(total) {
            Ok(Some(v)) => {
                p.state.paid = p.core.paid();
                p.state.seq = p.core.seq();
                p.state.last = Some(v);
                let state = p.state.clone();
                let m = self.voucher_message(&v);
                self.events.push_back(ClientEvent::Journal(state));
                self.journal_pending += 1;
                // A newer voucher supersedes one not yet sent.
                self.held.retain(|m| !matches!(m, Message::Voucher(_)));
                self.held.push_back(m);
                Ok(())
            }
            Ok(None) => Ok(()),
            Err(e) => Err(SessionError::Pay(e.to_string())),
        }
    }

    fn voucher_message(&self, v: &SignedVoucher) -> Message {
        Message::Voucher(payment(v, self.id))
    }

    fn send(&mut self, m: Message) {
        if self.journal_pending > 0 {
            self.held.push_back(m);
        } else {
            self.transmit.push_back(m);
        }
    }

    /// Ends the job with `error`: pays for what was received, reports the failure.
    fn fail(&mut self, now: Duration, error: SessionError) {
        if matches!(self.state, State::Closing | State::Finished) {
            return;
        }
        if let Some(owed) = self
            .paying
            .as_ref()
            .and_then(|p| Some(p.meter.as_ref()?.owed()))
        {
            // Whatever happened, what arrived is paid; a refusal to sign (the deposit) is
            // already the failure being reported.
            let _ = self.pay(owed);
        }
        self.error = Some(error.clone());
        self.events.push_back(ClientEvent::Failed(error));
        self.close(now);
    }

    fn close(&mut self, now: Duration) {
        self.state = State::Closing;
        self.deadline = Some(now + self.config.ack_timeout);
        if self.paying.is_none() {
            self.state = State::Finished;
            self.deadline = None;
        }
    }

    /// The shell wrote the last [`ClientEvent::Journal`] durably: what waited on it goes out.
    pub fn journalled(&mut self) {
        self.journal_pending = self.journal_pending.saturating_sub(1);
        if self.journal_pending == 0 {
            self.transmit.extend(self.held.drain(..));
        }
    }

    /// The worker ended its side of the stream (`reason` says how, for the error).
    pub fn handle_closed(&mut self, now: Duration, reason: &str) {
        match self.state {
            State::Finished => {}
            State::Closing => self.finish(),
            _ => {
                self.fail(now, SessionError::Closed(reason.into()));
                self.finish();
            }
        }
    }

    /// We stop the job (the caller went away): pays for what arrived, then closes.
    pub fn cancel(&mut self, now: Duration) {
        self.fail(now, SessionError::Cancelled);
    }

    fn finish(&mut self) {
        self.state = State::Finished;
        self.deadline = None;
    }

    /// The next deadline, if any: call [`Self::handle_timeout`] when it passes.
    pub fn poll_timeout(&self) -> Option<Duration> {
        self.deadline
    }

    /// Time passed; acts on an expired deadline.
    pub fn handle_timeout(&mut self, now: Duration) {
        if self.deadline.is_none_or(|d| now < d) {
            return;
        }
        match self.state {
            State::Requested | State::Streaming => {
                self.fail(now, SessionError::Timeout("job message"));
            }
            State::Closing => self.finish(),
            State::Finished => {}
        }
    }

    /// The next message to send.
    pub fn poll_transmit(&mut self) -> Option<Message> {
        self.transmit.pop_front()
    }

    /// The next event for the shell.
    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        self.events.pop_front()
    }

    /// Whether the job ended: `Done` or a failure (see [`Self::result`]) and, when paid,
    /// the final voucher acknowledged or given up on. Send what `poll_transmit` still
    /// holds, then close the stream.
    pub fn is_finished(&self) -> bool {
        self.state == State::Finished
    }

    /// Whether the job has ended (succeeded or failed), though the ack may still be due.
    pub fn has_ended(&self) -> bool {
        matches!(self.state, State::Closing | State::Finished)
    }

    /// Waiting for a journal write to be acknowledged.
    pub fn journal_pending(&self) -> bool {
        self.journal_pending > 0
    }

    /// `Done` (once received) or the failure.
    pub fn result(&self) -> Option<Result<&JobDone, &SessionError>> {
        match (&self.done, &self.error) {
            (Some(d), _) => Some(Ok(d)),
            (None, Some(e)) => Some(Err(e)),
            _ => None,
        }
    }

    /// Whose fault the failure is, when the job failed.
    pub fn fault(&self) -> Option<Fault> {
        self.error.as_ref().map(SessionError::fault)
    }

    /// The accepted quote.
    pub fn quote(&self) -> Option<&JobQuote> {
        self.quote.as_ref()
    }

    /// Completion tokens received (the final count after `Done`).
    pub fn tokens(&self) -> u64 {
        self.tokens
    }

    /// What this job costs so far at the quoted price, nanoTON (0 for a free job).
    pub fn job_cost(&self) -> u64 {
        self.paying
            .as_ref()
            .and_then(|p| Some(p.meter.as_ref()?.job_cost()))
            .unwrap_or(0)
    }

    /// The channel's state as signed so far.
    pub fn channel_state(&self) -> Option<&ClientChannelState> {
        self.paying.as_ref().map(|p| &p.state)
    }

    /// The channel paid through.
    pub fn channel(&self) -> Option<[u8; 32]> {
        self.paying.as_ref().map(|p| p.channel)
    }
}

/// The wire form of a signed voucher for job `id`.
pub fn payment(v: &SignedVoucher, id: JobId) -> Payment {
    Payment {
        id,
        cumulative: v.voucher.cumulative,
        seq: v.voucher.seq,
        signature: v.signature.to_vec(),
    }
}

/// The signed voucher a wire payment carries on `channel`; `None` when the signature is not
/// 64 bytes.
pub fn voucher_of(p: &Payment, channel: [u8; 32]) -> Option<SignedVoucher> {
    Some(SignedVoucher {
        voucher: Voucher {
            channel,
            cumulative: p.cumulative,
            seq: p.seq,
        },
        signature: p.signature.as_slice().try_into().ok()?,
    })
}
