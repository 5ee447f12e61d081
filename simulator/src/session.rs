//! One job attempt through the real job sessions (`cocoon_job::session`), on a modelled
//! link.
//!
//! The world decides who talks to whom and when a worker dies; this module runs the two
//! sans-IO cores a real client and worker run, [`ClientSession`] and [`WorkerSession`],
//! against each other with messages that take the link's one-way delay, a worker that
//! produces a token every `per_token` after `prefill` (pausing, as a real engine does,
//! while its session holds a chunk for want of credit), and journals written at once. What
//! comes out is what the cores decided: when the client saw its first text and its end,
//! how many tokens it received, whether the job ended with `Done`, `PaymentRequired`, a
//! refused quote or a deposit the client cannot pay, how long the worker stalled waiting
//! for vouchers, and both sides' channel states. The billing rules, the voucher schedule and
//! the credit limit are the cores', never the simulator's.

use std::collections::VecDeque;
use std::time::Duration;

use cocoon_job::session::{
    admit_request, ClientChannelState, ClientConfig, ClientEvent, ClientPayment, ClientSession,
    Fault, SessionError, WorkerConfig, WorkerEvent, WorkerSession,
};
use cocoon_job::{JobInput, JobPrice, JobRequest, Message, PaymentTerms, Sampling};
use cocoon_ledger::channel::WorkerChannel;
use ed25519_dalek::SigningKey;

use crate::engine::Micros;

/// A payment channel between a client and a worker: each side's state as it journals it.
#[derive(Clone)]
pub struct Chan {
    /// The channel's id (stands for the contract's address).
    pub id: [u8; 32],
    /// The client's voucher key.
    pub key: SigningKey,
    /// The client's journal.
    pub client: ClientChannelState,
    /// The worker's core (restored from its journal after a crash, which is the same:
    /// every change it acts on is journalled first).
    pub worker: WorkerChannel,
}

impl Chan {
    /// A fresh channel with `deposit`, extending `credit` on the worker's side.
    pub fn new(id: [u8; 32], key: SigningKey, deposit: u64, credit: u64) -> Self {
        let worker = WorkerChannel::new(id, deposit, key.verifying_key(), credit);
        Self {
            id,
            key,
            client: ClientChannelState {
                deposit,
                paid: 0,
                seq: 0,
                last: None,
                job_open: false,
            },
            worker,
        }
    }

    /// What the client can still promise.
    pub fn remaining(&self) -> u64 {
        self.client.deposit.saturating_sub(self.client.paid)
    }
}

/// One attempt's inputs.
#[derive(Clone, Copy, Debug)]
pub struct Attempt {
    /// The worker's price.
    pub price: JobPrice,
    /// The price it quotes (an overcharging worker quotes more than it may).
    pub quoted: JobPrice,
    /// The client's ceiling.
    pub ceiling: JobPrice,
    /// Prompt tokens (a continuation's included).
    pub prompt: u32,
    /// Tokens the model will produce.
    pub tokens: u32,
    /// The client's `max_tokens` for this attempt.
    pub max_tokens: u32,
    /// One-way delay of the link.
    pub one_way: Micros,
    /// Prompt processing time.
    pub prefill: Micros,
    /// Time per generated token.
    pub per_token: Micros,
    /// Pay every this many tokens.
    pub pay_every: u32,
    /// The worker dies this long after the request reached it.
    pub cut: Option<Micros>,
}

/// How an attempt ended, as the client saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// `Done`.
    Done,
    /// The worker's admission refused the price (above the client's ceiling).
    TooDear,
    /// The worker stopped for want of a voucher, or the deposit ran out on either side.
    PaymentRequired,
    /// The client refused the worker's quote (an overcharging worker).
    QuoteRefused,
    /// The worker died: the client hears nothing more.
    Cut,
    /// Any other failure the cores reported.
    Failed,
}

/// What an attempt did (times from the request's arrival at the worker).
#[derive(Clone, Copy, Debug)]
pub struct Outcome {
    /// How it ended.
    pub end: End,
    /// When the client saw the end (`Done` or the failure); for [`End::Cut`], the cut.
    pub at: Micros,
    /// When the first text reached the client.
    pub first_text: Option<Micros>,
    /// Completion tokens the client received (billed chunks, `Done`'s count when done).
    pub tokens: u32,
    /// Time the worker held text waiting for a voucher.
    pub stalled: Micros,
    /// Vouchers the client signed.
    pub vouchers: u32,
    /// What the job cost at the quote, as the client's session counted it.
    pub cost: u64,
}

/// Tokens per chunk the simulated engine releases (a real one releases one; grouping keeps
/// a million-node run affordable without changing what is billed).
pub const CHUNK_TOKENS: u32 = 4;

fn dur(t: Micros) -> Duration {
    Duration::from_micros(t)
}

/// Runs one attempt through both sessions, paid through `chan` (free without one), and
/// leaves both sides' journalled states in it.
pub fn run(mut chan: Option<&mut Chan>, a: &Attempt) -> Outcome {
    let request = JobRequest {
        id: 1,
        model: String::new(),
        // The client bounds the quoted prompt by what it sent: a prompt of that size.
        input: JobInput::Prompt(" ".repeat(a.prompt as usize)),
        sampling: Sampling {
            max_tokens: a.max_tokens.max(1),
            ..Default::default()
        },
        continuation: None,
        payment: chan.as_ref().map(|chan| {
            Box::new(PaymentTerms {
                channel: chan.id,
                channel_id: 0,
                client_key: chan.key.verifying_key().to_bytes(),
                client_address: [0; 32],
                challenge_period: 0,
                worker_timeout: 0,
                deposit: chan.client.deposit,
                max_price: a.ceiling,
            })
        }),
    };
    let mut out = Outcome {
        end: End::Done,
        at: 0,
        first_text: None,
        tokens: 0,
        stalled: 0,
        vouchers: 0,
        cost: 0,
    };
    // An honest worker's admission checks its price against the ceiling; an overcharging
    // one skips it (and its quote says more than its price).
    let charged = if chan.is_some() {
        a.price
    } else {
        JobPrice::default()
    };
    if a.quoted == a.price && admit_request(&request, charged).is_err() {
        out.end = End::TooDear;
        return out;
    }
    let config = ClientConfig {
        pay_every: a.pay_every,
        ..Default::default()
    };
    // The client sent its request one link delay before the worker got it (time 0).
    let origin = a.one_way;
    let at = |t: Micros| dur(t + origin);
    let mut client = ClientSession::new(
        config,
        dur(0),
        request.clone(),
        chan.as_ref().map(|chan| ClientPayment {
            channel: chan.id,
            key: chan.key.clone(),
            state: chan.client.clone(),
        }),
    );
    let (price, core) = match chan.as_ref() {
        Some(chan) => (a.quoted, Some(chan.worker.clone())),
        None => (JobPrice::default(), None),
    };
    let mut worker = WorkerSession::new(WorkerConfig::default(), &request, price, core);
    worker.started(a.prompt);
    let mut to_client: VecDeque<(Micros, Message)> = VecDeque::new();
    // `None`: the client closed its side.
    let mut to_worker: VecDeque<(Micros, Option<Message>)> = VecDeque::new();
    let mut now: Micros = 0;
    let mut produced = 0u32;
    let mut next_token = a.prefill + a.per_token * u64::from(CHUNK_TOKENS.min(a.tokens));
    let mut held_since: Option<Micros> = None;
    let mut ended_at: Option<Micros> = None;
    // The worker's channel as it last journalled it (what a restart finds).
    let before = chan.as_ref().map(|c| c.worker.clone());
    let mut journalled = before.as_ref().map(WorkerChannel::state);
    let mut generating = true;
    let mut client_closed = false;
    let text = "x".repeat(CHUNK_TOKENS as usize);
    // The job is journalled open before the request goes; the request itself is the
    // message that reached the worker at time 0.
    while let Some(e) = client.poll_event() {
        if let (ClientEvent::Journal(state), Some(chan)) = (e, chan.as_deref_mut()) {
            chan.client = state;
            client.journalled();
        }
    }
    while client.poll_transmit().is_some() {}
    loop {
        // Outputs of both sides.
        loop {
            let mut progress = false;
            while let Some(e) = client.poll_event() {
                progress = true;
                match e {
                    ClientEvent::Journal(state) => {
                        if let Some(chan) = chan.as_deref_mut() {
                            if state.seq > chan.client.seq {
                                out.vouchers += 1;
                            }
                            chan.client = state;
                        }
                        client.journalled();
                    }
                    ClientEvent::Text { .. } => {
                        out.first_text.get_or_insert(now);
                    }
                    ClientEvent::Done(_) | ClientEvent::Failed(_) => {
                        ended_at.get_or_insert(now);
                    }
                    ClientEvent::Quote(_) => {}
                }
            }
            while let Some(m) = client.poll_transmit() {
                progress = true;
                to_worker.push_back((now + a.one_way, Some(m)));
            }
            while let Some(e) = worker.poll_event() {
                progress = true;
                match e {
                    WorkerEvent::Journal(state) => {
                        journalled = Some(state);
                        worker.journalled(at(now));
                    }
                    WorkerEvent::Stop => generating = false,
                }
            }
            while let Some(m) = worker.poll_transmit() {
                progress = true;
                to_client.push_back((now + a.one_way, m));
            }
            if !progress {
                break;
            }
        }
        // Credit stalls: the worker holds text while its session wants none.
        match (
            held_since,
            generating && !worker.wants_text() && produced < a.tokens,
        ) {
            (None, true) => held_since = Some(now),
            (Some(t), false) => {
                out.stalled += now - t;
                held_since = None;
            }
            _ => {}
        }
        if client.has_ended() && !client_closed && !client.journal_pending() {
            client_closed = true;
            // The client closes its side once its last voucher is out.
            to_worker.push_back((now + a.one_way, None));
        }
        if client.is_finished() || (worker.is_finished() && client.has_ended()) {
            break;
        }
        // The next thing to happen.
        let token_at = (generating && worker.wants_text()).then_some(next_token.max(now));
        let candidates = [
            token_at,
            to_worker.front().map(|(t, _)| *t),
            to_client.front().map(|(t, _)| *t),
            worker
                .poll_timeout()
                .map(|d| micros(d).saturating_sub(origin)),
            client
                .poll_timeout()
                .map(|d| micros(d).saturating_sub(origin)),
        ];
        let Some(t) = candidates.into_iter().flatten().min() else {
            break;
        };
        if let Some(cut) = a.cut.filter(|&c| c <= t) {
            out.end = End::Cut;
            out.at = cut;
            if let Some(since) = held_since {
                out.stalled += cut - since;
            }
            // The client pays for what it received (journalled; the worker never sees it
            // in this job), the worker restarts from its journal.
            client.handle_closed(at(cut), "the worker died");
            while let Some(e) = client.poll_event() {
                if let (ClientEvent::Journal(state), Some(chan)) = (e, chan.as_deref_mut()) {
                    if state.seq > chan.client.seq {
                        out.vouchers += 1;
                    }
                    chan.client = state;
                    client.journalled();
                }
            }
            if let (Some(chan), Some(before), Some(state)) = (chan, before, journalled) {
                chan.worker = before.restore(state);
            }
            out.tokens = u32::try_from(client.tokens()).unwrap_or(u32::MAX);
            out.cost = client.job_cost();
            return out;
        }
        now = t.max(now);
        if token_at == Some(t) {
            let n = CHUNK_TOKENS.min(a.tokens - produced);
            produced += n;
            next_token = now + a.per_token * u64::from(CHUNK_TOKENS.min(a.tokens - produced));
            worker.text(at(now), text[..n as usize].to_string(), produced);
            if produced >= a.tokens {
                let timings = cocoon_job::Timings::default();
                worker.finished(at(now), produced, timings, cocoon_job::FinishReason::Stop);
                generating = false;
            }
        } else if to_worker.front().is_some_and(|(at_, _)| *at_ == t) {
            match to_worker.pop_front().expect("front").1 {
                None => worker.handle_closed(),
                Some(m) => worker.handle(at(now), m),
            }
        } else if to_client.front().is_some_and(|(at_, _)| *at_ == t) {
            let (_, m) = to_client.pop_front().expect("front");
            client.handle(at(now), m);
        } else {
            worker.handle_timeout(at(now));
            client.handle_timeout(at(now));
        }
        if worker.is_finished() && to_client.is_empty() && !client.has_ended() {
            client.handle_closed(at(now), "the worker ended the stream");
        }
    }
    out.at = ended_at.unwrap_or(now);
    out.end = match client.result() {
        Some(Ok(_)) => End::Done,
        Some(Err(SessionError::Quote(_))) => End::QuoteRefused,
        Some(Err(e)) if e.fault() == Fault::Funds => End::PaymentRequired,
        _ => End::Failed,
    };
    out.tokens = u32::try_from(client.tokens()).unwrap_or(u32::MAX);
    out.cost = client.job_cost();
    if let (Some(chan), Some(c)) = (chan, worker.into_channel()) {
        chan.worker = c;
    }
    out
}

fn micros(d: Duration) -> Micros {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attempt(tokens: u32) -> Attempt {
        Attempt {
            price: JobPrice {
                prompt_per_mtok: 1_000_000_000,
                completion_per_mtok: 3_000_000_000,
            },
            quoted: JobPrice {
                prompt_per_mtok: 1_000_000_000,
                completion_per_mtok: 3_000_000_000,
            },
            ceiling: JobPrice {
                prompt_per_mtok: 2_000_000_000,
                completion_per_mtok: 4_000_000_000,
            },
            prompt: 20,
            tokens,
            max_tokens: 100,
            one_way: 50_000,
            prefill: 10_000,
            per_token: 1_000,
            pay_every: 16,
            cut: None,
        }
    }

    fn chan(deposit: u64, credit: u64) -> Chan {
        Chan::new([5; 32], SigningKey::from_bytes(&[6; 32]), deposit, credit)
    }

    #[test]
    fn a_whole_job_is_paid_to_the_nanoton_on_both_sides() {
        let mut c = chan(1_000_000_000, 1_000_000);
        let out = run(Some(&mut c), &attempt(50));
        assert_eq!(out.end, End::Done);
        assert_eq!(out.tokens, 50);
        let cost = 20 * 1_000 + 50 * 3_000;
        assert_eq!(out.cost, cost);
        assert_eq!(c.client.paid, cost);
        assert_eq!(c.worker.paid(), cost);
        assert_eq!(c.worker.state().delivered, cost);
        assert_eq!(out.stalled, 0, "a roomy credit never stalls");
        // The first text one link delay after the worker's first chunk.
        assert_eq!(out.first_text, Some(10_000 + 4_000 + 50_000));
    }

    #[test]
    fn a_free_job_runs_the_same_sessions_without_a_channel() {
        let out = run(None, &attempt(9));
        assert_eq!((out.end, out.tokens, out.cost), (End::Done, 9, 0));
    }

    #[test]
    fn a_tight_credit_stalls_the_stream_by_round_trips() {
        let mut roomy = chan(1_000_000_000, 1_000_000);
        let mut tight = chan(1_000_000_000, 30_000);
        let fast = run(Some(&mut roomy), &attempt(100));
        let slow = run(Some(&mut tight), &attempt(100));
        assert_eq!(slow.end, End::Done);
        assert!(slow.stalled > 0 && slow.at > fast.at, "{slow:?} {fast:?}");
        assert_eq!(tight.client.paid, roomy.client.paid, "the same bill");
    }

    #[test]
    fn a_deposit_that_runs_out_ends_the_job_with_payment_required() {
        let mut c = chan(100_000, 1_000_000);
        let out = run(Some(&mut c), &attempt(100));
        assert_eq!(out.end, End::PaymentRequired);
        assert!(out.tokens < 100);
        assert!(c.client.paid <= 100_000 && c.worker.state().delivered <= 100_000);
    }

    #[test]
    fn an_overcharging_quote_is_refused_and_nothing_is_paid() {
        let mut c = chan(1_000_000_000, 1_000_000);
        let mut a = attempt(50);
        a.quoted.completion_per_mtok = 5_000_000_000;
        let out = run(Some(&mut c), &a);
        assert_eq!(out.end, End::QuoteRefused);
        assert_eq!((out.tokens, c.client.paid), (0, 0));
    }

    #[test]
    fn a_cut_leaves_what_both_journalled_and_the_next_job_settles_it() {
        let mut c = chan(1_000_000_000, 1_000_000);
        let mut a = attempt(100);
        a.cut = Some(10_000 + 50_000);
        let out = run(Some(&mut c), &a);
        assert_eq!(out.end, End::Cut);
        assert!(c.client.job_open);
        let next = run(Some(&mut c), &attempt(10));
        assert_eq!(next.end, End::Done);
        assert_eq!(c.client.paid, c.worker.paid());
        assert!(c.worker.state().delivered <= c.worker.paid());
    }
}
