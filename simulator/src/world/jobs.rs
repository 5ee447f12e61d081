//! Jobs: clients asking for work, the attempts on workers, failover, and payment through
//! the real job sessions.
//!
//! Each online client asks for jobs at the scenario's diurnal rate (`Ev::Arrival`, by
//! thinning). Its gateway's market ranks the workers with the client's reputation record;
//! with nothing in the market, a provider lookup (see `dht`) supplies candidates. Each
//! attempt connects to one candidate (`Ev::AtWorker`) and runs through the real client and
//! worker sessions ([`crate::session`]: quote checks, billing, credit, vouchers), which say
//! how and when it ends (`Ev::Done`, `Ev::Fail`); a failure scores the worker and fails
//! over to the next candidate. A job's payment channel comes from its client's pool with
//! that worker (a new one when none has room) and goes back after the attempt. Jobs in
//! flight live in a [`Slab`]; events carry the job's key and the attempt's generation, so
//! events of a finished attempt are dropped. What all this adds up to is in [`Ledger`] and
//! [`Outcomes`].

use std::collections::{BTreeMap, HashMap};

use cocoon_gossip::{Price, Selection, Weights};
use rand::Rng;

use super::{key_from, Behaviour, Ev, Worker, World};
use crate::engine::{pick, Micros, MS, SEC};
use crate::kad::{Node, Purpose};
use crate::scenario::Scenario;
use crate::session::{self as jobsession, Chan};
use crate::slab::Slab;

/// Money, counted on both sides.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Ledger {
    /// Billed by workers for tokens delivered (their meters), nanoTON.
    pub billed: u64,
    /// Signed by clients (their channel cores).
    pub paid: u64,
    /// Accepted by workers (their channel cores).
    pub earned: u64,
    /// Signed but not yet delivered (the worker was down).
    pub pending: u64,
    /// Vouchers signed.
    pub vouchers: u64,
    /// Channels opened.
    pub channels: u64,
    /// Attempts whose worker held text waiting for a voucher.
    pub credit_stalls: u64,
    /// Time workers held text waiting for vouchers, in all, ms.
    pub stall_ms: f64,
    /// Attempts ended with `PaymentRequired` (a deposit ran out).
    pub payment_required: u64,
    /// Quotes the clients' sessions refused.
    pub quotes_refused: u64,
}

/// Job outcomes.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Outcomes {
    /// Jobs created.
    pub created: u64,
    /// Finished with an answer.
    pub completed: u64,
    /// Ended without one.
    pub failed: u64,
    /// Failed for want of any candidate.
    pub no_worker: u64,
    /// Attempts that failed over to another worker.
    pub failovers: u64,
    /// Attempts refused busy or too dear.
    pub busy: u64,
    /// Attempts on dead workers.
    pub unreachable: u64,
    /// Attempts on workers that went silent.
    pub stalled: u64,
    /// Wrong answers the client's check caught.
    pub wrong_detected: u64,
    /// Wrong answers accepted.
    pub wrong_accepted: u64,
}

/// Why the current attempt ends, if it fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cause {
    /// Could not connect (dead worker): reputation penalty.
    Unreachable,
    /// Accepted and went silent: penalty.
    Stalled,
    /// Busy or too dear: no penalty.
    Busy,
    /// The client's session refused the quote (more than the worker may ask): penalty.
    Refused,
    /// The job stopped for want of payment (the deposit ran out): no penalty.
    Unpaid,
}

/// A job in flight: the client's request, its candidates and the current attempt.
pub(super) struct Job {
    /// Stamps the events of the current attempt: a fresh number (from one counter for all
    /// jobs, so never reused) when the job is made, at every attempt and when its worker
    /// dies; an event with another stamp is stale.
    gen: u32,
    client: u32,
    model: u16,
    /// Prompt tokens.
    prompt: u32,
    /// Tokens the model will produce in all (it stops before `max_tokens`).
    target: u32,
    /// Tokens received so far (over all attempts).
    delivered: u32,
    created: Micros,
    /// When the client received its first text.
    first_token: Option<Micros>,
    /// Candidates: (worker, price ceiling).
    candidates: Vec<(u32, Price)>,
    /// The candidate tried now.
    attempt: usize,
    /// Waiting for a provider lookup (nothing in the market).
    lookup_pending: bool,
    // The current attempt.
    worker: u32,
    /// Round trip between the client and the worker.
    rtt: Micros,
    started: Micros,
    price: Price,
    cause: Cause,
    /// The worker answers wrongly.
    wrong: bool,
    /// The attempt's payment channel (taken from the pool), its state before the attempt
    /// and the attempt's inputs: a worker dying mid-job re-runs the sessions up to then.
    paying: Option<Box<Paying>>,
}

/// A running attempt's payment.
struct Paying {
    /// (client, worker): the pool it goes back to.
    key: (u32, u32),
    /// `None` for a free job.
    before: Option<Chan>,
    /// After the attempt.
    after: Option<Chan>,
    attempt: jobsession::Attempt,
    outcome: jobsession::Outcome,
}

/// The jobs' state.
pub(super) struct Jobs {
    /// Jobs in flight.
    pub(super) in_flight: Slab<Job>,
    /// The last generation given to a job.
    gen: u32,
    /// Free payment channels per (client, worker); a job takes one for its attempt.
    pub(super) channels: BTreeMap<(u32, u32), Vec<Chan>>,
    /// Workers by their advert's peer id.
    worker_by_peer: HashMap<Vec<u8>, u32>,
    /// The peak arrival rate per client, per second (arrivals are thinned from it).
    lambda_max: f64,
}

impl Jobs {
    /// No job yet, no channel.
    pub(super) fn new(sc: &Scenario, workers: &[Worker]) -> Self {
        let day_rate = sc.clients.jobs_per_hour / 3600.0;
        Self {
            in_flight: Slab::new(),
            gen: 0,
            channels: BTreeMap::new(),
            worker_by_peer: workers
                .iter()
                .enumerate()
                .map(|(i, w)| (w.peer.clone(), i as u32))
                .collect(),
            lambda_max: day_rate * (1.0 + sc.clients.diurnal_amplitude),
        }
    }
}

/// The wire price of a market price, times `factor`.
fn job_price(p: Price, factor: f64) -> cocoon_job::JobPrice {
    let scale = |x: u64| (x as f64 * factor).round().min(u64::MAX as f64) as u64;
    cocoon_job::JobPrice {
        prompt_per_mtok: scale(p.prompt_per_mtok),
        completion_per_mtok: scale(p.completion_per_mtok),
    }
}

impl World {
    /// Jobs per second per online client at `at`: the diurnal curve.
    fn rate(&self, at: Micros) -> f64 {
        let c = &self.sc.clients;
        let hours = at as f64 / 3600e6;
        let phase = 2.0 * std::f64::consts::PI * (hours - c.peak_hour + 6.0) / 24.0;
        c.jobs_per_hour / 3600.0 * (1.0 + c.diurnal_amplitude * phase.sin())
    }

    /// Client `c`'s next job request (from its session `epoch`), if before the end.
    pub(super) fn schedule_arrival(&mut self, c: u32, epoch: u32) {
        if self.jobs.lambda_max <= 0.0 {
            return;
        }
        // Thinning: candidate arrivals at the peak rate, kept with rate(t) / peak.
        let mut t = self.eng.now();
        loop {
            let gap = -self.eng.rng.random::<f64>().max(1e-12).ln() / self.jobs.lambda_max;
            t += (gap * SEC as f64) as Micros;
            if t > self.sc.duration_secs * SEC {
                return;
            }
            if self.eng.rng.random::<f64>() * self.jobs.lambda_max <= self.rate(t) {
                break;
            }
        }
        self.eng.at(t, Ev::Arrival { client: c, epoch });
    }

    /// Client `c`'s gateway: the mesh node it is attached to if still up, else a random
    /// online one of its region (of another region when none is up).
    fn attach(&mut self, c: u32) -> Option<Node> {
        let node = self.clients[c as usize].node;
        if let Some(a) = self.clients[c as usize].attached {
            if self.nodes.online[a as usize] {
                return Some(a);
            }
        }
        let r = self.nodes.region[node as usize] as usize;
        let pool = if self.gossip.mesh_online[r].is_empty() {
            self.gossip.mesh_online.iter().find(|v| !v.is_empty())?
        } else {
            &self.gossip.mesh_online[r]
        };
        let a = pool[self.eng.rng.random_range(0..pool.len())];
        self.clients[c as usize].attached = Some(a);
        Some(a)
    }

    /// Client `c` asks for a job: its gateway's market ranks the workers (with the
    /// client's reputation record); with no candidate, a provider lookup.
    pub(super) fn on_arrival(&mut self, c: u32, epoch: u32) {
        let cl = &self.clients[c as usize];
        if cl.epoch != epoch || !self.nodes.online[cl.node as usize] {
            return;
        }
        self.schedule_arrival(c, epoch);
        let model = pick(&mut self.eng.rng, &self.models.shares) as u16;
        let cfg = &self.sc.clients;
        let (prompts, outputs, shares) = (cfg.prompt_tokens, cfg.max_tokens, cfg.completion_share);
        let prompt = self.eng.sample(&prompts).round().clamp(1.0, 1e6) as u32;
        let max_tokens = self.eng.sample(&outputs).round().clamp(1.0, 1e5) as u32;
        let share = self.eng.sample(&shares).clamp(0.0, 1.0);
        let target = ((max_tokens as f64 * share).round() as u32).clamp(1, max_tokens);
        let gen = self.next_job_gen();
        let job = Job {
            gen,
            client: c,
            model,
            prompt,
            target,
            delivered: 0,
            created: self.eng.now(),
            first_token: None,
            candidates: Vec::new(),
            attempt: 0,
            lookup_pending: false,
            worker: 0,
            rtt: 0,
            started: 0,
            price: Price::default(),
            cause: Cause::Busy,
            wrong: false,
            paying: None,
        };
        let idx = self.jobs.in_flight.insert(job);
        self.outcomes.created += 1;
        self.metrics.current.jobs_started += 1;
        let Some(gateway) = self.attach(c) else {
            self.outcomes.no_worker += 1;
            self.finish_job(idx, false);
            return;
        };
        let slot = self.gossip.mesh.slot(gateway).expect("a mesh member");
        let selection = Selection {
            model: self.models.names[model as usize].clone(),
            prompt_tokens: prompt as u64,
            max_tokens: max_tokens as u64,
            max_price_per_mtok: None,
            accept_dev: false,
            exclude: Vec::new(),
            limit: Some(self.sc.clients.max_attempts),
        };
        let now_s = self.now_secs();
        let ranked = self.gossip.markets[slot].select(
            &selection,
            &self.clients[c as usize].reputation,
            &Weights::default(),
            now_s,
        );
        let slack = self.sc.clients.price_slack;
        let candidates: Vec<(u32, Price)> = ranked
            .iter()
            .filter_map(|cand| {
                let w = *self.jobs.worker_by_peer.get(&cand.peer_id)?;
                Some((w, cand.advert.price.with_slack(slack)))
            })
            .collect();
        if candidates.is_empty() {
            // Nothing in the market: the DHT's provider records are the fallback.
            let node = self.clients[c as usize].node;
            self.jobs.in_flight[idx].lookup_pending = true;
            let key = self.models.keys[model as usize];
            self.start_lookup(node, key, Purpose::FindProviders(model));
            return;
        }
        self.jobs.in_flight[idx].candidates = candidates;
        self.start_attempt(idx);
    }

    /// A provider lookup for client `c` ended: its waiting jobs for `model` try the
    /// providers found, at their current advertised price (the node syncs their adverts).
    pub(super) fn providers_found(&mut self, c: u32, model: u16, holders: Vec<Node>) {
        let mut found: Vec<u32> = Vec::new();
        for h in holders {
            if let Some(records) = self.dht.providers.get(&h) {
                for &(m, w) in records {
                    if m == model && !found.contains(&w) {
                        found.push(w);
                    }
                }
            }
        }
        found.truncate(self.sc.clients.max_attempts);
        let slack = self.sc.clients.price_slack;
        let waiting: Vec<u32> = self
            .jobs
            .in_flight
            .iter()
            .filter(|(_, job)| job.lookup_pending && job.client == c && job.model == model)
            .map(|(j, _)| j)
            .collect();
        for j in waiting {
            self.jobs.in_flight[j].lookup_pending = false;
            if found.is_empty() {
                self.outcomes.no_worker += 1;
                self.finish_job(j, false);
                continue;
            }
            self.jobs.in_flight[j].candidates = found
                .iter()
                .map(|&w| (w, self.workers[w as usize].price.price().with_slack(slack)))
                .collect();
            self.start_attempt(j);
        }
    }

    /// The job's next candidate: a connection (and the request) to it, or the job ends
    /// when none is left.
    fn start_attempt(&mut self, job: u32) {
        let j = &self.jobs.in_flight[job];
        let Some(&(w, _)) = j.candidates.get(j.attempt) else {
            self.finish_job(job, false);
            return;
        };
        let client_node = self.clients[j.client as usize].node;
        let worker_node = self.workers[w as usize].node;
        let (a, b) = (
            self.nodes.region[client_node as usize],
            self.nodes.region[worker_node as usize],
        );
        let rtt = self.links.delay_reliable(&mut self.eng.rng, a, b, 0)
            + self.links.delay_reliable(&mut self.eng.rng, b, a, 0);
        let gen = self.next_job_gen();
        let j = &mut self.jobs.in_flight[job];
        j.gen = gen;
        j.worker = w;
        j.rtt = rtt;
        if !self.nodes.online[worker_node as usize] {
            // Connecting to a dead worker: the client gives up after its open timeout.
            j.cause = Cause::Unreachable;
            let t = self.sc.clients.open_timeout_ms * MS;
            self.eng.after(t, Ev::Fail { job, gen });
            return;
        }
        // QUIC + attested Noise handshake, then the request: about 1.5 round trips.
        self.eng.after(rtt * 3 / 2, Ev::AtWorker { job, gen });
    }

    /// The request reaches the worker: refused (busy, too dear), swallowed (a worker that
    /// never serves), or run through the real sessions, which say when and how it ends.
    pub(super) fn on_at_worker(&mut self, job: u32, gen: u32) {
        let Some(j) = self.jobs.in_flight.get(job).filter(|j| j.gen == gen) else {
            return;
        };
        let w = j.worker as usize;
        let wk = &self.workers[w];
        let rtt = j.rtt;
        if !self.nodes.online[wk.node as usize] {
            let t = (self.sc.clients.open_timeout_ms * MS).saturating_sub(rtt * 3 / 2);
            self.jobs.in_flight[job].cause = Cause::Unreachable;
            self.eng.after(t, Ev::Fail { job, gen });
            return;
        }
        let ceiling = j.candidates[j.attempt].1;
        let price = wk.price.price();
        if wk.behaviour == Behaviour::NoServe {
            self.jobs.in_flight[job].cause = Cause::Stalled;
            let t = self.sc.clients.stall_timeout_ms * MS;
            self.eng.after(t, Ev::Fail { job, gen });
            return;
        }
        if wk.busy >= wk.slots {
            self.workers[w].refused += 1;
            self.refuse_busy(job, gen, rtt);
            return;
        }
        let wrong = matches!(wk.behaviour, Behaviour::WrongOutput { .. });
        let factor = match wk.behaviour {
            Behaviour::Overcharge { factor } => factor,
            _ => 1.0,
        };
        let remaining = j.target.saturating_sub(j.delivered).max(1);
        // A continuation re-reads the prompt plus what was generated.
        let prompt = j.prompt.saturating_add(j.delivered);
        let attempt = jobsession::Attempt {
            price: job_price(price, 1.0),
            quoted: job_price(price, factor),
            ceiling: job_price(ceiling, 1.0),
            prompt,
            tokens: remaining,
            max_tokens: remaining,
            one_way: rtt / 2,
            prefill: (prompt as f64 / wk.prefill_per_s * SEC as f64) as Micros,
            per_token: ((SEC as f64 / wk.tokens_per_s) as Micros).max(1),
            pay_every: self.sc.payments.pay_every,
            cut: None,
        };
        let key = (j.client, w as u32);
        let mut chan = (price != Price::default()).then(|| {
            let need = cocoon_ledger::channel::job_cost(
                ceiling.prompt_per_mtok,
                ceiling.completion_per_mtok,
                u64::from(prompt),
                u64::from(remaining),
            );
            self.take_chan(key, need)
        });
        let before = chan.clone();
        // The attempt through the real client and worker sessions.
        let outcome = jobsession::run(chan.as_mut(), &attempt);
        if outcome.end == jobsession::End::TooDear {
            if let Some(c) = before {
                self.put_chan(key, c);
            }
            self.refuse_busy(job, gen, rtt);
            return;
        }
        let wk = &mut self.workers[w];
        wk.busy += 1;
        wk.running.push(job);
        let now = self.eng.now();
        let j = &mut self.jobs.in_flight[job];
        j.started = now;
        j.price = price;
        j.wrong = wrong;
        if j.first_token.is_none() {
            j.first_token = outcome.first_text.map(|t| now + t);
        }
        let at = outcome.at;
        j.cause = match outcome.end {
            jobsession::End::Done => Cause::Busy,
            jobsession::End::QuoteRefused => Cause::Refused,
            jobsession::End::PaymentRequired => Cause::Unpaid,
            _ => Cause::Stalled,
        };
        let done = outcome.end == jobsession::End::Done;
        j.paying = Some(Box::new(Paying {
            key,
            before,
            after: chan,
            attempt,
            outcome,
        }));
        if done {
            self.eng.after(at, Ev::Done { job, gen });
        } else {
            self.eng.after(at, Ev::Fail { job, gen });
        }
    }

    /// The worker answers `Busy` (or its admission finds the price above the ceiling).
    fn refuse_busy(&mut self, job: u32, gen: u32, rtt: Micros) {
        self.outcomes.busy += 1;
        self.metrics.current.busy_refusals += 1;
        self.jobs.in_flight[job].cause = Cause::Busy;
        self.eng.after(rtt / 2, Ev::Fail { job, gen });
    }

    /// A free channel with `need` left between a client and a worker, or a new one.
    fn take_chan(&mut self, key: (u32, u32), need: u64) -> Chan {
        let pool = self.jobs.channels.entry(key).or_default();
        if let Some(i) = pool.iter().position(|c| c.remaining() >= need) {
            return pool.swap_remove(i);
        }
        self.ledger.channels += 1;
        let c = key.0 as usize;
        if self.clients[c].key.is_none() {
            let k = key_from(&mut self.eng.rng);
            self.clients[c].key = Some(k);
        }
        let client_key = self.clients[c].key.clone().expect("set");
        let mut id = [0u8; 32];
        id[..4].copy_from_slice(&key.0.to_le_bytes());
        id[4..8].copy_from_slice(&key.1.to_le_bytes());
        id[8..16].copy_from_slice(&self.ledger.channels.to_le_bytes());
        let p = &self.sc.payments;
        Chan::new(id, client_key, p.deposit, p.credit_limit)
    }

    /// Puts a channel back in its pool.
    fn put_chan(&mut self, key: (u32, u32), chan: Chan) {
        self.jobs.channels.entry(key).or_default().push(chan);
    }

    /// Books an attempt's payment: its channel back to the pool, its counts; returns the
    /// completion tokens the client received.
    fn settle_attempt(&mut self, w: u32, p: Paying) -> u32 {
        let o = p.outcome;
        self.ledger.vouchers += u64::from(o.vouchers);
        if o.stalled > 0 {
            self.ledger.credit_stalls += 1;
            self.ledger.stall_ms += o.stalled as f64 / MS as f64;
        }
        match o.end {
            jobsession::End::PaymentRequired => self.ledger.payment_required += 1,
            jobsession::End::QuoteRefused => self.ledger.quotes_refused += 1,
            _ => {}
        }
        self.ledger.billed += o.cost;
        self.workers[w as usize].earned += o.cost;
        self.metrics.current.earned += o.cost;
        if let Some(c) = p.after {
            self.put_chan(p.key, c);
        }
        o.tokens
    }

    /// The client received the whole answer: it checks it and scores the worker.
    pub(super) fn on_done(&mut self, job: u32, gen: u32) {
        let Some(j) = self.jobs.in_flight.get(job).filter(|j| j.gen == gen) else {
            return;
        };
        let w = j.worker as usize;
        let remaining = j.target.saturating_sub(j.delivered);
        let wk = &mut self.workers[w];
        wk.busy = wk.busy.saturating_sub(1);
        wk.running.retain(|&x| x != job);
        wk.jobs += 1;
        let paying = self.jobs.in_flight[job].paying.take();
        if let Some(p) = paying {
            self.settle_attempt(w as u32, *p);
        }
        let j = &mut self.jobs.in_flight[job];
        j.delivered += remaining;
        // The event is the client's receipt of `Done`.
        let done_at = self.eng.now();
        let (created, first) = (j.created, j.first_token.unwrap_or(done_at));
        let c = j.client as usize;
        let wrong = j.wrong;
        let peer = self.workers[w].peer.clone();
        let now_s = self.now_secs();
        let total_ms = (done_at - created) as f64 / MS as f64;
        let ttft_ms = (first - created) as f64 / MS as f64;
        let tps = self.workers[w].tokens_per_s;
        let detected = match self.workers[w].behaviour {
            Behaviour::WrongOutput { detect } if wrong => self.eng.chance(detect),
            _ => false,
        };
        if wrong {
            if detected {
                self.outcomes.wrong_detected += 1;
                self.clients[c].reputation.failure(&peer, now_s);
            } else {
                self.outcomes.wrong_accepted += 1;
            }
        }
        if !detected {
            self.clients[c]
                .reputation
                .success(&peer, now_s, ttft_ms, tps, tps);
        }
        self.metrics.job_latency_ms.push(total_ms as f32);
        self.metrics.ttft_ms.push(ttft_ms as f32);
        self.finish_job(job, true);
    }

    /// The attempt failed: the client scores the worker, then fails over to the next
    /// candidate, or the job ends.
    pub(super) fn on_fail(&mut self, job: u32, gen: u32) {
        let Some(j) = self.jobs.in_flight.get(job).filter(|j| j.gen == gen) else {
            return;
        };
        let (w, cause, c) = (j.worker, j.cause, j.client as usize);
        let peer = self.workers[w as usize].peer.clone();
        let now_s = self.now_secs();
        // An attempt the sessions ended (a refused quote, no payment): the worker is free
        // again and the client keeps what it received.
        if let Some(p) = self.jobs.in_flight[job].paying.take() {
            let wk = &mut self.workers[w as usize];
            if let Some(i) = wk.running.iter().position(|&x| x == job) {
                wk.running.swap_remove(i);
                wk.busy = wk.busy.saturating_sub(1);
            }
            let received = self.settle_attempt(w, *p);
            let j = &mut self.jobs.in_flight[job];
            j.delivered = j.delivered.saturating_add(received);
        }
        match cause {
            Cause::Busy | Cause::Unpaid => {}
            Cause::Refused => self.clients[c].reputation.failure(&peer, now_s),
            Cause::Unreachable => {
                self.outcomes.unreachable += 1;
                self.clients[c].reputation.failure(&peer, now_s);
            }
            Cause::Stalled => {
                self.outcomes.stalled += 1;
                self.clients[c].reputation.failure(&peer, now_s);
            }
        }
        let j = &mut self.jobs.in_flight[job];
        j.attempt += 1;
        if j.attempt < j.candidates.len() && j.delivered < j.target {
            self.outcomes.failovers += 1;
            self.start_attempt(job);
        } else if j.delivered >= j.target {
            self.finish_job(job, true);
        } else {
            self.finish_job(job, false);
        }
    }

    /// The job ends (`ok`: with an answer) and leaves the slab.
    fn finish_job(&mut self, job: u32, ok: bool) {
        if self.jobs.in_flight.remove(job).is_none() {
            return;
        }
        if ok {
            self.outcomes.completed += 1;
            self.metrics.current.jobs_completed += 1;
        } else {
            self.outcomes.failed += 1;
            self.metrics.current.jobs_failed += 1;
        }
    }

    /// Worker `w` died: its running jobs stall (clients notice after their stall
    /// timeout), and each attempt's sessions run again to the moment of death.
    pub(super) fn worker_died(&mut self, w: u32) {
        // Its running jobs stall: clients notice after their stall timeout.
        let running = std::mem::take(&mut self.workers[w as usize].running);
        self.workers[w as usize].busy = 0;
        let stall = self.sc.clients.stall_timeout_ms * MS;
        for job in running {
            let gen = self.next_job_gen();
            let j = &mut self.jobs.in_flight[job];
            let ran = self.eng.now().saturating_sub(j.started);
            j.gen = gen;
            j.cause = Cause::Stalled;
            // The sessions again from the attempt's start, the worker dying at `ran`:
            // what each side journalled by then is what stays.
            let received = match j.paying.take() {
                Some(mut p) => {
                    let mut chan = p.before.clone();
                    p.attempt.cut = Some(ran);
                    p.outcome = jobsession::run(chan.as_mut(), &p.attempt);
                    p.after = chan;
                    self.settle_attempt(w, *p)
                }
                None => 0,
            };
            self.jobs.in_flight[job].delivered += received;
            self.eng.after(stall, Ev::Fail { job, gen });
        }
    }

    /// A generation no job has had.
    fn next_job_gen(&mut self) -> u32 {
        self.jobs.gen = self.jobs.gen.wrapping_add(1);
        self.jobs.gen
    }
}
