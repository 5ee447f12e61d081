//! The two sessions against each other through [`Pair`], an in-memory discrete-event
//! harness (quinn-proto's `tests/util.rs` is the model): a stream per job whose messages
//! can be delivered, delayed, cut off, and either side killed and restarted from its
//! journal; plus the attacks each rule exists for.

use std::collections::VecDeque;
use std::time::Duration;

use cocoon_ledger::channel::{job_cost, WorkerChannel, WorkerState};
use cocoon_ledger::journal::ChannelTerms;
use ed25519_dalek::SigningKey;
use proptest::prelude::*;

use super::*;
use crate::message::*;

const DEPOSIT: u64 = 10_000_000;
/// nanoTON per million tokens: 1,000 per prompt token, 3,000 per completion token.
const PRICE: JobPrice = JobPrice {
    prompt_per_mtok: 1_000_000_000,
    completion_per_mtok: 3_000_000_000,
};
/// About three completion tokens of credit: stalls happen.
const CREDIT: u64 = 10_000;

fn client_key() -> SigningKey {
    SigningKey::from_bytes(&[7; 32])
}

fn worker_key() -> [u8; 32] {
    SigningKey::from_bytes(&[9; 32]).verifying_key().to_bytes()
}

fn terms() -> ChannelTerms {
    ChannelTerms {
        channel_id: 42,
        client_key: client_key().verifying_key().to_bytes(),
        worker_key: worker_key(),
        client_address: [1; 32],
        worker_payout: [2; 32],
        challenge_period: 3600,
        worker_timeout: 86_400,
    }
}

fn channel() -> [u8; 32] {
    terms().address().unwrap()
}

fn payment_terms() -> PaymentTerms {
    let t = terms();
    PaymentTerms {
        channel: channel(),
        channel_id: t.channel_id,
        client_key: t.client_key,
        client_address: t.client_address,
        challenge_period: t.challenge_period,
        worker_timeout: t.worker_timeout,
        deposit: DEPOSIT,
        max_price: PRICE,
    }
}

fn ctx() -> AdmitContext {
    AdmitContext {
        price: PRICE,
        worker_key: worker_key(),
        payout: [2; 32],
        peer_key: Some(client_key().verifying_key().to_bytes()),
        payments: true,
    }
}

fn request(id: JobId, max_tokens: u32, paid: bool) -> JobRequest {
    JobRequest {
        id,
        model: "m".into(),
        input: JobInput::Prompt("a prompt of forty bytes, more or less...".into()),
        sampling: Sampling {
            max_tokens,
            ..Default::default()
        },
        continuation: None,
        payment: paid.then(|| Box::new(payment_terms())),
    }
}

fn fresh_client_state() -> ClientChannelState {
    ClientChannelState {
        deposit: DEPOSIT,
        paid: 0,
        seq: 0,
        last: None,
        job_open: false,
    }
}

fn fresh_worker_channel() -> WorkerChannel {
    WorkerChannel::new(channel(), DEPOSIT, client_key().verifying_key(), CREDIT)
}

fn client_config() -> ClientConfig {
    ClientConfig {
        pay_every: 3,
        ..Default::default()
    }
}

const PROMPT_TOKENS: u32 = 10;

/// One job's stream between the two sides.
struct Stream {
    client: ClientSession,
    worker: Option<WorkerSession>,
    to_worker: VecDeque<Message>,
    to_client: VecDeque<Message>,
    /// The generation's script: tokens left to produce.
    left: u32,
    sampled: u32,
    /// Value the client received in this job (prompt at the quote, then chunks, then the
    /// tokens `Done` adds).
    received: u64,
    recv_tokens: u64,
    signed_before: u64,
    cut: bool,
    /// Completion tokens the worker put on the wire, and whether any chunk went out (the
    /// prompt is billed with the first).
    sent_tokens: u64,
    sent_any: bool,
}

impl Stream {
    /// The stream breaks: nothing in flight arrives, nothing more is sent.
    fn sever(&mut self) {
        self.cut = true;
        self.to_worker.clear();
        self.to_client.clear();
    }

    fn sent_value(&self) -> u64 {
        if !self.sent_any {
            return 0;
        }
        job_cost(
            PRICE.prompt_per_mtok,
            PRICE.completion_per_mtok,
            PROMPT_TOKENS.into(),
            self.sent_tokens,
        )
    }
}

/// The two sides of one channel, their journals, and the current job's stream.
struct Pair {
    now: Duration,
    client_journal: ClientChannelState,
    worker_journal: Option<WorkerState>,
    /// The worker's channel core between jobs (lost when it crashes).
    worker_core: Option<WorkerChannel>,
    stream: Option<Stream>,
    next_id: JobId,
    /// Value the worker put on the wire in earlier jobs since it last restarted, and its
    /// journalled delivery then.
    sent_since_restart: u64,
    delivered_at_restart: u64,
    jobs_done: u32,
}

impl Pair {
    fn new() -> Self {
        Self {
            now: Duration::ZERO,
            client_journal: fresh_client_state(),
            worker_journal: None,
            worker_core: Some(fresh_worker_channel()),
            stream: None,
            next_id: 1,
            sent_since_restart: 0,
            delivered_at_restart: 0,
            jobs_done: 0,
        }
    }

    fn start_job(&mut self, tokens: u32) {
        let id = self.next_id;
        self.next_id += 1;
        let req = request(id, 20, true);
        let client = ClientSession::new(
            client_config(),
            self.now,
            req,
            Some(ClientPayment {
                channel: channel(),
                key: client_key(),
                state: self.client_journal.clone(),
            }),
        );
        self.stream = Some(Stream {
            client,
            worker: None,
            to_worker: VecDeque::new(),
            to_client: VecDeque::new(),
            left: tokens.min(20),
            sampled: 0,
            received: 0,
            recv_tokens: 0,
            signed_before: self.client_journal.paid,
            cut: false,
            sent_tokens: 0,
            sent_any: false,
        });
        self.drain();
    }

    /// Moves journal writes and transmits out of both sessions.
    fn drain(&mut self) {
        let Some(s) = self.stream.as_mut() else {
            return;
        };
        loop {
            let mut progress = false;
            while let Some(e) = s.client.poll_event() {
                progress = true;
                match e {
                    ClientEvent::Journal(state) => {
                        assert!(state.paid >= self.client_journal.paid, "client regressed");
                        self.client_journal = state;
                        s.client.journalled();
                    }
                    ClientEvent::Quote(q) => {
                        s.received += job_cost(
                            q.price.prompt_per_mtok,
                            q.price.completion_per_mtok,
                            q.prompt_tokens.into(),
                            0,
                        );
                    }
                    ClientEvent::Text { tokens, .. } => {
                        s.recv_tokens += u64::from(tokens);
                        s.received += job_cost(0, PRICE.completion_per_mtok, 0, tokens.into());
                    }
                    ClientEvent::Done(d) => {
                        // Tokens without text (end of sequence) are billed with `Done`.
                        let extra = u64::from(d.usage.completion_tokens) - s.recv_tokens;
                        s.received += job_cost(0, PRICE.completion_per_mtok, 0, extra);
                    }
                    ClientEvent::Failed(_) => {}
                }
            }
            while let Some(m) = s.client.poll_transmit() {
                progress = true;
                if !s.cut {
                    s.to_worker.push_back(m);
                }
            }
            if let Some(w) = s.worker.as_mut() {
                while let Some(e) = w.poll_event() {
                    progress = true;
                    match e {
                        WorkerEvent::Journal(state) => {
                            self.worker_journal = Some(state);
                            w.journalled(self.now);
                        }
                        WorkerEvent::Stop => s.left = 0,
                    }
                }
                while let Some(m) = w.poll_transmit() {
                    progress = true;
                    if let Message::Token(t) = &m {
                        s.sent_any = true;
                        s.sent_tokens += u64::from(t.tokens);
                    }
                    if !s.cut {
                        s.to_client.push_back(m);
                    }
                }
            }
            if !progress {
                break;
            }
        }
        self.check();
        self.end_job_if_over();
    }

    fn check(&self) {
        // The worker never streams more than it holds durably plus its credit.
        let paid = self
            .worker_journal
            .as_ref()
            .and_then(|j| j.best)
            .map_or(0, |b| b.voucher.cumulative);
        let current = self.stream.as_ref().map_or(0, Stream::sent_value);
        let streamed = self.delivered_at_restart + self.sent_since_restart + current;
        assert!(
            streamed <= paid + CREDIT,
            "worker streamed {streamed} with {paid} paid and {CREDIT} credit"
        );
        assert!(self.client_journal.paid <= DEPOSIT);
        if let Some(s) = &self.stream {
            // The client never signs more than it received plus one credit window.
            let signed = self.client_journal.paid - s.signed_before;
            assert!(
                signed <= s.received + CREDIT + 1,
                "client signed {signed} for {} received",
                s.received
            );
        }
    }

    fn end_job_if_over(&mut self) {
        let over = self.stream.as_ref().is_some_and(|s| {
            s.client.is_finished()
                && s.worker.as_ref().is_none_or(WorkerSession::is_finished)
                && s.to_worker.is_empty()
                && s.to_client.is_empty()
        });
        if over {
            let s = self.stream.take().expect("stream");
            self.sent_since_restart += s.sent_value();
            if let Some(w) = s.worker {
                self.worker_core = w.into_channel();
            }
            self.jobs_done += 1;
        }
    }

    fn deliver_to_worker(&mut self) {
        let Some(s) = self.stream.as_mut() else {
            return;
        };
        let Some(m) = s.to_worker.pop_front() else {
            // The client's shell closes its side once its session has ended.
            if s.client.has_ended() && !s.cut {
                if let Some(w) = s.worker.as_mut() {
                    w.handle_closed();
                }
                self.drain();
            }
            return;
        };
        match (&mut s.worker, m) {
            (None, Message::Request(req)) => {
                let admission = admit(&req, &ctx()).expect("admitted");
                assert!(matches!(admission, Admission::Paid { .. }));
                let core = self.worker_core.take().expect("one job at a time");
                let mut w = WorkerSession::new(WorkerConfig::default(), &req, PRICE, Some(core));
                w.started(PROMPT_TOKENS);
                s.worker = Some(w);
            }
            (Some(w), m) => w.handle(self.now, m),
            (None, m) => panic!("{m:?} before the request"),
        }
        self.drain();
    }

    fn deliver_to_client(&mut self) {
        let Some(s) = self.stream.as_mut() else {
            return;
        };
        if let Some(m) = s.to_client.pop_front() {
            s.client.handle(self.now, m);
        } else if s.worker.as_ref().is_some_and(WorkerSession::is_finished) {
            s.client.handle_closed(self.now, "closed");
        }
        self.drain();
    }

    fn generate(&mut self) {
        let Some(s) = self.stream.as_mut() else {
            return;
        };
        let Some(w) = s.worker.as_mut() else { return };
        if !w.wants_text() {
            return;
        }
        if s.left == 0 {
            w.finished(self.now, s.sampled, Timings::default(), FinishReason::Stop);
        } else {
            s.left -= 1;
            s.sampled += 1;
            // Every third token produces no text yet: its bill rides with the next chunk.
            let text = if s.sampled % 3 == 0 { "" } else { "ab" };
            w.text(self.now, text.into(), s.sampled);
        }
        self.drain();
    }

    fn tick(&mut self, secs: u64) {
        self.now += Duration::from_secs(secs);
        if let Some(s) = self.stream.as_mut() {
            s.client.handle_timeout(self.now);
            if let Some(w) = s.worker.as_mut() {
                w.handle_timeout(self.now);
            }
        }
        self.drain();
    }

    /// The stream breaks: both sides see it end.
    fn cut(&mut self) {
        let Some(s) = self.stream.as_mut() else {
            return;
        };
        s.sever();
        s.client.handle_closed(self.now, "cut");
        if let Some(w) = s.worker.as_mut() {
            w.handle_closed();
        }
        self.drain();
    }

    fn crash_client(&mut self) {
        let Some(s) = self.stream.as_mut() else {
            return;
        };
        // The process is gone: its session with it; the worker sees the stream end.
        s.sever();
        let w = s.worker.take();
        self.sent_since_restart += s.sent_value();
        self.stream = None;
        if let Some(mut w) = w {
            w.handle_closed();
            while let Some(e) = w.poll_event() {
                if let WorkerEvent::Journal(state) = e {
                    self.worker_journal = Some(state);
                    w.journalled(self.now);
                }
            }
            self.worker_core = w.into_channel();
        }
    }

    fn crash_worker(&mut self) {
        if let Some(s) = self.stream.as_mut() {
            s.sever();
            s.worker = None;
            s.sent_tokens = 0;
            s.sent_any = false;
            s.client.handle_closed(self.now, "worker killed");
        }
        let core = fresh_worker_channel();
        self.worker_core = Some(match &self.worker_journal {
            Some(j) => core.restore(j.clone()),
            None => core,
        });
        self.delivered_at_restart = self.worker_journal.as_ref().map_or(0, |j| j.delivered);
        self.sent_since_restart = 0;
        self.drain();
        // A stream whose worker is gone ends once the client has finished.
        if let Some(s) = &self.stream {
            if s.client.is_finished() || s.client.has_ended() {
                self.stream = None;
                self.jobs_done += 1;
            }
        }
    }

    /// Runs the current job to its end with nothing lost.
    fn run_to_end(&mut self) {
        for _ in 0..10_000 {
            if self.stream.is_none() {
                return;
            }
            let before = self.stream.as_ref().map(|s| {
                (
                    s.to_worker.len(),
                    s.to_client.len(),
                    s.left,
                    s.worker.is_some(),
                )
            });
            self.deliver_to_worker();
            self.deliver_to_client();
            self.generate();
            let after = self.stream.as_ref().map(|s| {
                (
                    s.to_worker.len(),
                    s.to_client.len(),
                    s.left,
                    s.worker.is_some(),
                )
            });
            if before == after {
                self.tick(1);
            }
        }
        panic!("the job never ended");
    }
}

#[derive(Clone, Debug)]
enum Step {
    Start(u32),
    ToWorker,
    ToClient,
    Generate,
    Tick(u64),
    Cut,
    CrashClient,
    CrashWorker,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        2 => (0u32..25).prop_map(Step::Start),
        6 => Just(Step::ToWorker),
        6 => Just(Step::ToClient),
        6 => Just(Step::Generate),
        1 => (1u64..15).prop_map(Step::Tick),
        1 => Just(Step::Cut),
        1 => Just(Step::CrashClient),
        1 => Just(Step::CrashWorker),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Whatever the interleaving, delays, broken streams and crashes of either side: the
    /// client never signs more than it received plus one credit window, the worker never
    /// streams more than it holds paid plus its credit, and after a clean job both agree
    /// on the channel's total from their journals.
    #[test]
    fn both_sides_agree_whatever_happens(steps in proptest::collection::vec(step(), 1..120)) {
        let mut pair = Pair::new();
        for s in steps {
            match s {
                Step::Start(n) if pair.stream.is_none() => pair.start_job(n),
                Step::Start(_) => {}
                Step::ToWorker => pair.deliver_to_worker(),
                Step::ToClient => pair.deliver_to_client(),
                Step::Generate => pair.generate(),
                Step::Tick(t) => pair.tick(t),
                Step::Cut => pair.cut(),
                Step::CrashClient => pair.crash_client(),
                Step::CrashWorker => pair.crash_worker(),
            }
        }
        pair.run_to_end();
        // One clean job: the quote carries the worker's view, the client pays what the
        // worker delivered and resends a voucher the worker missed.
        pair.start_job(5);
        pair.run_to_end();
        let w = pair.worker_journal.clone().expect("the worker journalled");
        let paid = w.best.map_or(0, |b| b.voucher.cumulative);
        prop_assert_eq!(paid, pair.client_journal.paid);
        prop_assert!(w.delivered <= paid);
        prop_assert!(!pair.client_journal.job_open);
        let core = pair.worker_core.as_ref().expect("core");
        prop_assert_eq!(core.paid(), paid);
    }
}

/// A whole job on a quiet link.
#[test]
fn a_clean_paid_job_pays_exactly_its_cost() {
    let mut pair = Pair::new();
    pair.start_job(7);
    pair.run_to_end();
    let cost = job_cost(
        PRICE.prompt_per_mtok,
        PRICE.completion_per_mtok,
        PROMPT_TOKENS.into(),
        7,
    );
    assert_eq!(pair.client_journal.paid, cost);
    assert!(!pair.client_journal.job_open);
    let w = pair.worker_journal.unwrap();
    assert_eq!(w.delivered, cost);
    assert_eq!(w.best.unwrap().voucher.cumulative, cost);
}

/// Runs a client session against scripted worker messages; returns it.
fn client_against(
    req: JobRequest,
    state: ClientChannelState,
    script: Vec<Message>,
) -> ClientSession {
    let paid = req.payment.is_some();
    let mut c = ClientSession::new(
        client_config(),
        Duration::ZERO,
        req,
        paid.then(|| ClientPayment {
            channel: channel(),
            key: client_key(),
            state,
        }),
    );
    for m in script {
        while let Some(e) = c.poll_event() {
            if matches!(e, ClientEvent::Journal(_)) {
                c.journalled();
            }
        }
        c.handle(Duration::from_secs(1), m);
    }
    while let Some(e) = c.poll_event() {
        if matches!(e, ClientEvent::Journal(_)) {
            c.journalled();
        }
    }
    c
}

fn quote(id: JobId) -> JobQuote {
    JobQuote {
        id,
        prompt_tokens: PROMPT_TOKENS,
        price: PRICE,
        channel_paid: 0,
        channel_seq: 0,
        channel_delivered: 0,
        credit_limit: CREDIT,
    }
}

fn token(id: JobId, index: u32, text: &str, tokens: u32) -> Message {
    Message::Token(TokenChunk {
        id,
        index,
        text: text.into(),
        tokens,
    })
}

fn assert_refused_by_worker_fault(c: &ClientSession) {
    assert!(c.has_ended());
    assert_eq!(c.fault(), Some(Fault::Worker), "{:?}", c.result());
}

/// Hole 2: the client believed whatever the worker quoted.
#[test]
fn a_quote_beyond_the_ceiling_the_credit_bound_or_the_journal_is_refused() {
    let refused = |state: ClientChannelState, q: JobQuote| {
        let c = client_against(request(1, 20, true), state, vec![Message::Quote(q)]);
        assert_refused_by_worker_fault(&c);
        c
    };
    let mut dear = quote(1);
    dear.price.completion_per_mtok += 1;
    let c = refused(fresh_client_state(), dear);
    assert!(matches!(c.result(), Some(Err(SessionError::Quote(_)))));
    assert_eq!(
        c.channel_state().unwrap().paid,
        0,
        "nothing paid for a refused quote"
    );

    let mut greedy = quote(1);
    greedy.credit_limit = ClientConfig::default().max_credit + 1;
    refused(fresh_client_state(), greedy);

    // The journal says the last job ended cleanly at 5,000: the worker cannot have delivered
    // more, nor hold a voucher we never signed.
    let signed = ClientChannelState {
        paid: 5_000,
        seq: 3,
        ..fresh_client_state()
    };
    let mut inflated = quote(1);
    inflated.channel_delivered = 5_001;
    refused(signed.clone(), inflated);
    let mut forged = quote(1);
    forged.channel_paid = 6_000;
    forged.channel_seq = 9;
    refused(signed.clone(), forged);

    // After a job that did not end cleanly, one credit window more is the worker's due...
    let open = ClientChannelState {
        job_open: true,
        ..signed.clone()
    };
    let mut owed = quote(1);
    owed.channel_delivered = 5_000 + CREDIT;
    let c = client_against(
        request(1, 20, true),
        open.clone(),
        vec![Message::Quote(owed)],
    );
    assert!(!c.has_ended(), "{:?}", c.result());
    let due = 5_000 + CREDIT + job_cost(PRICE.prompt_per_mtok, 0, PROMPT_TOKENS.into(), 0);
    assert_eq!(c.channel_state().unwrap().paid, due);
    // ... and not a nanoTON beyond it.
    owed.channel_delivered += 1;
    refused(open, owed);

    // A prompt count no prompt of this size can have.
    let mut padded = quote(1);
    padded.prompt_tokens = prompt_token_bound(&request(1, 20, true)) as u32 + 1;
    refused(fresh_client_state(), padded);
}

/// A free worker may serve a job the client offered to pay for: no quote, nothing paid,
/// and the channel's journal ends clean.
#[test]
fn a_job_offered_payment_may_be_served_free() {
    let done = Message::Done(JobDone {
        id: 1,
        usage: Usage {
            prompt_tokens: 3,
            completion_tokens: 2,
        },
        timings: Timings::default(),
        finish_reason: FinishReason::Stop,
    });
    let c = client_against(
        request(1, 20, true),
        fresh_client_state(),
        vec![token(1, 0, "ab", 2), done],
    );
    assert!(matches!(c.result(), Some(Ok(_))), "{:?}", c.result());
    let state = c.channel_state().unwrap();
    assert_eq!((state.paid, state.job_open), (0, false));
    // A quote after the text is refused.
    let c = client_against(
        request(1, 20, true),
        fresh_client_state(),
        vec![token(1, 0, "ab", 2), Message::Quote(quote(1))],
    );
    assert_refused_by_worker_fault(&c);
}

/// Hole 3: token counts from the wire are bounded and never overflow.
#[test]
fn counts_from_the_wire_are_bounded_and_checked() {
    // A chunk billing more tokens than its bytes can hold.
    let c = client_against(
        request(1, 20, true),
        fresh_client_state(),
        vec![Message::Quote(quote(1)), token(1, 0, "ab", 3)],
    );
    assert_refused_by_worker_fault(&c);
    assert_eq!(c.tokens(), 0, "the bad chunk is neither shown nor paid");
    // Past max_tokens.
    let long = "x".repeat(30);
    let c = client_against(
        request(1, 20, true),
        fresh_client_state(),
        vec![Message::Quote(quote(1)), token(1, 0, &long, 21)],
    );
    assert_refused_by_worker_fault(&c);
    // u32::MAX everywhere: no overflow, a clear refusal.
    let c = client_against(
        request(1, u32::MAX, false),
        fresh_client_state(),
        vec![token(1, 0, "ab", 2), token(1, 1, "ab", u32::MAX)],
    );
    assert_refused_by_worker_fault(&c);
    let c = client_against(
        request(1, 20, false),
        fresh_client_state(),
        vec![Message::Done(JobDone {
            id: 1,
            usage: Usage {
                prompt_tokens: u32::MAX,
                completion_tokens: u32::MAX,
            },
            timings: Timings::default(),
            finish_reason: FinishReason::Stop,
        })],
    );
    assert_refused_by_worker_fault(&c);
    // Done whose counts disagree with the quote or the chunks.
    let done = |prompt, completion| {
        Message::Done(JobDone {
            id: 1,
            usage: Usage {
                prompt_tokens: prompt,
                completion_tokens: completion,
            },
            timings: Timings::default(),
            finish_reason: FinishReason::Stop,
        })
    };
    let c = client_against(
        request(1, 20, true),
        fresh_client_state(),
        vec![
            Message::Quote(quote(1)),
            token(1, 0, "abcd", 4),
            done(PROMPT_TOKENS, 3),
        ],
    );
    assert_refused_by_worker_fault(&c);
    let c = client_against(
        request(1, 20, true),
        fresh_client_state(),
        vec![Message::Quote(quote(1)), done(PROMPT_TOKENS + 1, 0)],
    );
    assert_refused_by_worker_fault(&c);
    // What arrived before a refusal is paid: prompt and four tokens.
    let c = client_against(
        request(1, 20, true),
        fresh_client_state(),
        vec![
            Message::Quote(quote(1)),
            token(1, 0, "abcd", 4),
            done(PROMPT_TOKENS, 3),
        ],
    );
    let want = job_cost(
        PRICE.prompt_per_mtok,
        PRICE.completion_per_mtok,
        PROMPT_TOKENS.into(),
        4,
    );
    assert_eq!(c.channel_state().unwrap().paid, want);
    assert!(c.channel_state().unwrap().job_open, "not a clean end");
}

/// The worker bills a chunk at most for the tokens it can hold; the rest rides with the
/// next chunk or `Done`, so an honest worker never trips the client's check.
#[test]
fn the_worker_carries_tokens_a_chunk_cannot_hold() {
    let req = request(1, 20, false);
    let mut w = WorkerSession::new(WorkerConfig::default(), &req, JobPrice::default(), None);
    w.started(4);
    w.text(Duration::ZERO, "".into(), 2);
    w.text(Duration::ZERO, "a".into(), 3);
    w.text(Duration::ZERO, "abcdef".into(), 4);
    w.finished(Duration::ZERO, 6, Timings::default(), FinishReason::Stop);
    let sent: Vec<Message> = std::iter::from_fn(|| w.poll_transmit()).collect();
    let tokens: Vec<u32> = sent
        .iter()
        .filter_map(|m| match m {
            Message::Token(t) => Some(t.tokens),
            _ => None,
        })
        .collect();
    assert_eq!(tokens, vec![0, 1, 3]);
    let Some(Message::Done(d)) = sent.last() else {
        panic!("{sent:?}")
    };
    assert_eq!(d.usage.completion_tokens, 6);
    assert!(w.is_finished());
    // The engine claiming more than max_tokens is billed max_tokens.
    let mut w = WorkerSession::new(
        WorkerConfig::default(),
        &request(1, 5, false),
        JobPrice::default(),
        None,
    );
    w.started(1);
    w.text(Duration::ZERO, "abcdefghij".into(), 50);
    w.finished(Duration::ZERO, 50, Timings::default(), FinishReason::Length);
    let sent: Vec<Message> = std::iter::from_fn(|| w.poll_transmit()).collect();
    assert!(matches!(&sent[0], Message::Token(t) if t.tokens == 5));
    assert!(matches!(&sent[1], Message::Done(d) if d.usage.completion_tokens == 5));
}

/// Hole 1: a channel is bound to the peer that uses it.
#[test]
fn a_channel_runs_only_its_own_clients_jobs() {
    let req = request(1, 20, true);
    assert!(matches!(admit(&req, &ctx()), Ok(Admission::Paid { .. })));
    let stranger = AdmitContext {
        peer_key: Some(SigningKey::from_bytes(&[3; 32]).verifying_key().to_bytes()),
        ..ctx()
    };
    let e = admit(&req, &stranger).unwrap_err();
    assert_eq!(e.code, ErrorCode::PaymentRequired);
    let anonymous = AdmitContext {
        peer_key: None,
        ..ctx()
    };
    assert_eq!(
        admit(&req, &anonymous).unwrap_err().code,
        ErrorCode::PaymentRequired
    );
    // A channel that pays another worker.
    let mut elsewhere = req.clone();
    elsewhere.payment.as_mut().unwrap().channel_id += 1;
    assert_eq!(
        admit(&elsewhere, &ctx()).unwrap_err().code,
        ErrorCode::PaymentRequired
    );
    // Price and bounds.
    let mut cheap = req.clone();
    cheap.payment.as_mut().unwrap().max_price.prompt_per_mtok -= 1;
    assert_eq!(
        admit(&cheap, &ctx()).unwrap_err().code,
        ErrorCode::PriceTooHigh
    );
    let mut bad = req.clone();
    bad.sampling.stop = vec![String::new()];
    assert_eq!(admit(&bad, &ctx()).unwrap_err().code, ErrorCode::BadRequest);
    let free = AdmitContext {
        price: JobPrice::default(),
        ..ctx()
    };
    assert_eq!(admit(&request(1, 5, false), &free), Ok(Admission::Free));
    assert_eq!(
        admit(&request(1, 5, false), &ctx()).unwrap_err().code,
        ErrorCode::PaymentRequired
    );
}

/// Past its credit the worker holds the chunk until a journalled voucher comes, and ends
/// the job with `PaymentRequired` when none does.
#[test]
fn the_worker_holds_text_past_its_credit_then_gives_up() {
    let req = request(1, 20, true);
    let mut w = WorkerSession::new(
        WorkerConfig::default(),
        &req,
        PRICE,
        Some(fresh_worker_channel()),
    );
    w.started(PROMPT_TOKENS);
    let mut sampled = 0;
    while w.wants_text() {
        sampled += 1;
        w.text(Duration::ZERO, "ab".into(), sampled);
    }
    let sent: Vec<Message> = std::iter::from_fn(|| w.poll_transmit()).collect();
    let streamed: u32 = sent
        .iter()
        .filter_map(|m| match m {
            Message::Token(t) => Some(t.tokens),
            _ => None,
        })
        .sum();
    let cost = job_cost(
        PRICE.prompt_per_mtok,
        PRICE.completion_per_mtok,
        PROMPT_TOKENS.into(),
        streamed.into(),
    );
    assert!(cost <= CREDIT, "{cost} streamed unpaid");
    assert_eq!(
        w.poll_timeout(),
        Some(WorkerConfig::default().voucher_timeout)
    );
    // A voucher that is not journalled yet does not release the chunk.
    let mut client = cocoon_ledger::channel::ClientChannel::new(channel(), DEPOSIT, client_key());
    let v = client.pay_up_to(cost + 5_000).unwrap().unwrap();
    w.handle(
        Duration::from_secs(1),
        Message::Voucher(client::payment(&v, 1)),
    );
    assert!(w.poll_transmit().is_none());
    assert!(matches!(w.poll_event(), Some(WorkerEvent::Journal(_))));
    w.journalled(Duration::from_secs(1));
    assert!(matches!(w.poll_transmit(), Some(Message::Token(_))));
    while w.wants_text() {
        sampled += 1;
        w.text(Duration::from_secs(2), "ab".into(), sampled);
    }
    w.handle_timeout(Duration::from_secs(20));
    let last = std::iter::from_fn(|| w.poll_transmit()).last();
    assert!(
        matches!(
            last,
            Some(Message::Error(JobFailure {
                code: ErrorCode::PaymentRequired,
                ..
            }))
        ),
        "{last:?}"
    );
    assert!(matches!(w.poll_event(), Some(WorkerEvent::Stop)));
}
