//! cocoon-metrics: what a node or a gateway does and earns, in Prometheus text format.
//!
//! One [`prometheus_client`] registry per process ([`MetricsRegistry`]) holds every family:
//! rust-libp2p's own (`libp2p_*`: swarm, Kademlia, gossipsub, identify, relay, DCUtR, ping,
//! recorded by the p2p shell), inference under vLLM's names and labels (`vllm:*`, labelled by
//! `model_name`, so dashboards built for vLLM read a cocoon worker unchanged), and cocoon's own
//! (`cocoon_*`: money, market, trust, gateway). The recorders ([`NodeMetrics`],
//! [`GatewayMetrics`]) are cheap to clone and lock-free to update; the worker, the advertiser
//! and the gateway call them, and [`router`] serves `GET /metrics` (any other path is 404, any
//! other method 405) through whatever HTTP server the binary runs.
//!
//! A node's operators also get a picture: [`NodeMetrics::reading`] reads the counters back,
//! [`status`] derives rates, TTFT percentiles and a bounded history from the node's
//! readings, and [`dashboard`] serves them as JSON (`GET /api/status`) and as a page (`GET
//! /`) on the same listener.
//!
//! Nothing here reads the clock or does I/O: callers pass durations, amounts and times.

pub mod dashboard;
pub mod status;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// The content type of the Prometheus text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The registry being filled at start-up; [`Self::finish`] freezes it for serving.
pub struct MetricsRegistry {
    registry: Registry,
}

impl Default for MetricsRegistry {
    fn default() -> Self {
        Self::new()
    }
}

impl MetricsRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self {
            registry: Registry::default(),
        }
    }

    /// rust-libp2p's metric families (`libp2p_*`), for the swarm to record into.
    pub fn libp2p(&mut self) -> libp2p::metrics::Metrics {
        libp2p::metrics::Metrics::new(&mut self.registry)
    }

    /// A worker's families: inference, money, market and trust.
    pub fn node(&mut self) -> NodeMetrics {
        NodeMetrics::register(&mut self.registry)
    }

    /// A gateway's families.
    pub fn gateway(&mut self) -> GatewayMetrics {
        GatewayMetrics::register(&mut self.registry)
    }

    /// The registry, read-only from now on.
    pub fn finish(self) -> Exporter {
        Exporter {
            registry: Arc::new(self.registry),
        }
    }
}

/// Encodes the registry for a scrape; cheap to clone.
#[derive(Clone)]
pub struct Exporter {
    registry: Arc<Registry>,
}

impl Exporter {
    /// Every family in the text exposition format (OpenMetrics text, which Prometheus reads).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// `GET /metrics` from `exporter`; a caller merges its own routes (a dashboard) into it.
pub fn router(exporter: Exporter) -> axum::Router {
    axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let exporter = exporter.clone();
            async move { scrape(&exporter) }
        }),
    )
}

fn scrape(exporter: &Exporter) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        exporter.encode(),
    )
        .into_response()
}

/// vLLM's label for the model.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelLabel {
    /// The model id.
    pub model_name: String,
}

/// vLLM's labels for a finished request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FinishedLabel {
    /// The model id.
    pub model_name: String,
    /// `stop`, `length` or `abort` (vLLM's reasons).
    pub finished_reason: String,
}

/// A price of a model: per million prompt or completion tokens.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PriceLabel {
    /// The model id.
    pub model_name: String,
    /// `prompt` or `completion`.
    pub kind: String,
}

/// One label named `kind`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    /// What is counted.
    pub kind: String,
}

/// An advert's verdict: `result` is `admitted` or `rejected`, `reason` why.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AdvertLabel {
    /// `admitted` or `rejected`.
    pub result: String,
    /// The rejection reason (`ok` when admitted).
    pub reason: String,
}

/// A gateway request: `endpoint` and `status` code.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabel {
    /// The route, e.g. `/v1/chat/completions`.
    pub endpoint: String,
    /// The HTTP status code.
    pub status: u16,
}

/// A gateway endpoint.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabel {
    /// The route.
    pub endpoint: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn family<L: Clone + std::hash::Hash + Eq>(buckets: fn() -> Histogram) -> HistogramFamily<L> {
    Family::new_with_constructor(buckets)
}

/// vLLM's time-to-first-token bucket bounds, seconds.
pub const TTFT_BUCKETS: [f64; 19] = [
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0,
];

fn ttft_buckets() -> Histogram {
    Histogram::new(TTFT_BUCKETS)
}

/// The chain transaction kinds [`NodeMetrics::chain`] counts.
pub const CHAIN_KINDS: [&str; 4] = ["worker_close", "challenge", "finalize", "anchor"];

/// vLLM's inter-token latency buckets, seconds.
fn itl_buckets() -> Histogram {
    Histogram::new([
        0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
        20.0, 40.0, 80.0,
    ])
}

/// vLLM's request latency buckets (end to end, queue), seconds.
fn latency_buckets() -> Histogram {
    Histogram::new([
        0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0,
        240.0, 480.0, 960.0, 1920.0, 7680.0,
    ])
}

/// Gateway request latency buckets, seconds.
fn http_buckets() -> Histogram {
    Histogram::new([
        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
    ])
}

/// A job's timings and counts, reported once it ends ([`NodeMetrics::finished`]).
#[derive(Clone, Debug, Default)]
pub struct JobRecord {
    /// From the request's arrival to the generation's start (admission, channel, prompt
    /// rendering and tokenising), seconds.
    pub queue_s: f64,
    /// From arrival to the first text, seconds; `None` when no text came.
    pub ttft_s: Option<f64>,
    /// The gaps between successive pieces of text, seconds.
    pub inter_token_s: Vec<f64>,
    /// From arrival to the end, seconds.
    pub e2e_s: f64,
    /// Prompt tokens processed.
    pub prompt_tokens: u64,
    /// Tokens generated.
    pub generation_tokens: u64,
    /// `stop`, `length`, or `abort` (cancelled, failed, refused after the start).
    pub finished_reason: &'static str,
}

/// What [`NodeMetrics::reading`] reads back: the node's totals over every model.
/// (prometheus-client's families and histograms cannot be read back whole, so the recorder
/// keeps these beside them.)
struct Tally {
    jobs: AtomicU64,
    prompt_tokens: AtomicU64,
    generation_tokens: AtomicU64,
    busy: AtomicU64,
    waiting: AtomicI64,
    /// Per bucket of [`TTFT_BUCKETS`], the last above them all.
    ttft: [AtomicU64; TTFT_BUCKETS.len() + 1],
}

impl Default for Tally {
    fn default() -> Self {
        Self {
            jobs: AtomicU64::new(0),
            prompt_tokens: AtomicU64::new(0),
            generation_tokens: AtomicU64::new(0),
            busy: AtomicU64::new(0),
            waiting: AtomicI64::new(0),
            ttft: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

/// A node's counters and gauges read back ([`NodeMetrics::reading`]), over every model.
#[derive(Clone, Debug, PartialEq)]
pub struct Reading {
    /// Cumulative counters.
    pub totals: status::Totals,
    /// Time to first token of every job, seconds.
    pub ttft: status::Buckets,
    /// Requests admitted and not generating yet.
    pub waiting: u64,
    /// Channels with unsettled vouchers.
    pub open_channels: u64,
    /// Their unsettled value, nanoTON.
    pub unsettled_nanoton: u64,
    /// Chain transactions sent, by kind (the kinds sent at least once).
    pub chain_transactions: BTreeMap<String, u64>,
}

/// A worker's recorder: inference under vLLM's names, money, market and trust.
#[derive(Clone)]
pub struct NodeMetrics {
    tally: Arc<Tally>,
    running: Family<ModelLabel, Gauge>,
    waiting: Family<ModelLabel, Gauge>,
    kv_cache: Family<ModelLabel, Gauge<f64, std::sync::atomic::AtomicU64>>,
    prompt_tokens: Family<ModelLabel, Counter>,
    generation_tokens: Family<ModelLabel, Counter>,
    ttft: HistogramFamily<ModelLabel>,
    itl: HistogramFamily<ModelLabel>,
    e2e: HistogramFamily<ModelLabel>,
    queue: HistogramFamily<ModelLabel>,
    success: Family<FinishedLabel, Counter>,
    busy: Family<ModelLabel, Counter>,
    billed: Counter,
    vouchered: Counter,
    settled: Counter,
    open_channels: Gauge,
    unsettled: Gauge,
    chain_transactions: Family<KindLabel, Counter>,
    price: Family<PriceLabel, Gauge>,
    adverts: Family<AdvertLabel, Counter>,
    market_workers: Family<KindLabel, Gauge>,
    reachability: Family<KindLabel, Gauge>,
    evidence_expiry: Family<KindLabel, Gauge>,
}

impl std::fmt::Debug for NodeMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeMetrics").finish_non_exhaustive()
    }
}

impl NodeMetrics {
    fn register(r: &mut Registry) -> Self {
        let m = Self {
            tally: Arc::default(),
            running: Family::default(),
            waiting: Family::default(),
            kv_cache: Family::default(),
            prompt_tokens: Family::default(),
            generation_tokens: Family::default(),
            ttft: family(ttft_buckets),
            itl: family(itl_buckets),
            e2e: family(latency_buckets),
            queue: family(latency_buckets),
            success: Family::default(),
            busy: Family::default(),
            billed: Counter::default(),
            vouchered: Counter::default(),
            settled: Counter::default(),
            open_channels: Gauge::default(),
            unsettled: Gauge::default(),
            chain_transactions: Family::default(),
            price: Family::default(),
            adverts: Family::default(),
            market_workers: Family::default(),
            reachability: Family::default(),
            evidence_expiry: Family::default(),
        };
        r.register(
            "vllm:num_requests_running",
            "Requests generating now",
            m.running.clone(),
        );
        r.register(
            "vllm:num_requests_waiting",
            "Requests admitted and not generating yet (payment channel, prompt rendering)",
            m.waiting.clone(),
        );
        r.register(
            "vllm:kv_cache_usage_perc",
            "KV cache positions the running requests may fill, 1 = all",
            m.kv_cache.clone(),
        );
        r.register(
            "vllm:prompt_tokens",
            "Prompt tokens processed",
            m.prompt_tokens.clone(),
        );
        r.register(
            "vllm:generation_tokens",
            "Tokens generated",
            m.generation_tokens.clone(),
        );
        r.register(
            "vllm:time_to_first_token_seconds",
            "From a request's arrival to its first text",
            m.ttft.clone(),
        );
        r.register(
            "vllm:inter_token_latency_seconds",
            "Between successive pieces of a request's text",
            m.itl.clone(),
        );
        r.register(
            "vllm:e2e_request_latency_seconds",
            "From a request's arrival to its end",
            m.e2e.clone(),
        );
        r.register(
            "vllm:request_queue_time_seconds",
            "From a request's arrival to its generation's start",
            m.queue.clone(),
        );
        r.register(
            "vllm:request_success",
            "Finished requests by reason (stop, length, abort)",
            m.success.clone(),
        );
        r.register(
            "cocoon_busy_refusals",
            "Requests refused because every slot was taken",
            m.busy.clone(),
        );
        r.register(
            "cocoon_billed_nanoton",
            "Value delivered to paying clients (their jobs' cost), nanoTON",
            m.billed.clone(),
        );
        r.register(
            "cocoon_vouchered_nanoton",
            "Value covered by vouchers received and journalled, nanoTON",
            m.vouchered.clone(),
        );
        r.register(
            "cocoon_settled_nanoton",
            "Value closed on chain (worker_close), nanoTON",
            m.settled.clone(),
        );
        r.register(
            "cocoon_open_channels",
            "Payment channels with vouchers not yet settled",
            m.open_channels.clone(),
        );
        r.register(
            "cocoon_unsettled_nanoton",
            "Vouchered value not yet settled on chain, nanoTON",
            m.unsettled.clone(),
        );
        r.register(
            "cocoon_chain_transactions",
            "Transactions sent to the chain by kind (worker_close, challenge, finalize, anchor)",
            m.chain_transactions.clone(),
        );
        r.register(
            "cocoon_price_nanoton_per_mtok",
            "The current price, nanoTON per million tokens",
            m.price.clone(),
        );
        r.register(
            "cocoon_adverts",
            "Gossiped adverts by verdict and reason",
            m.adverts.clone(),
        );
        r.register(
            "cocoon_market_workers",
            "Workers in the market by how they are reached (direct, relayed)",
            m.market_workers.clone(),
        );
        r.register(
            "cocoon_reachability",
            "How others reach this node: 1 for its state (public, mapped, relayed, local, unknown)",
            m.reachability.clone(),
        );
        r.register(
            "cocoon_evidence_expires_in_seconds",
            "Time until the attestation evidence expires, by kind (tdx, dev-insecure)",
            m.evidence_expiry.clone(),
        );
        m
    }

    fn model(model: &str) -> ModelLabel {
        ModelLabel {
            model_name: model.to_string(),
        }
    }

    /// A request for `model` arrived and waits for its generation.
    pub fn arrived(&self, model: &str) {
        self.waiting.get_or_create(&Self::model(model)).inc();
        self.tally.waiting.fetch_add(1, Ordering::Relaxed);
    }

    /// The request's generation started (or it was refused): it no longer waits.
    pub fn left_queue(&self, model: &str) {
        self.waiting.get_or_create(&Self::model(model)).dec();
        self.tally.waiting.fetch_sub(1, Ordering::Relaxed);
    }

    /// The node's counters and gauges now, over every model.
    pub fn reading(&self) -> Reading {
        let t = &self.tally;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut ttft = status::Buckets::new(TTFT_BUCKETS);
        for (count, bucket) in ttft.counts.iter_mut().zip(&t.ttft) {
            *count = get(bucket);
        }
        let chain_transactions = CHAIN_KINDS
            .iter()
            .filter_map(|kind| {
                let label = KindLabel {
                    kind: (*kind).into(),
                };
                let n = self.chain_transactions.get(&label)?.get();
                Some((kind.to_string(), n))
            })
            .collect();
        Reading {
            totals: status::Totals {
                jobs: get(&t.jobs),
                prompt_tokens: get(&t.prompt_tokens),
                generation_tokens: get(&t.generation_tokens),
                busy_refusals: get(&t.busy),
                billed_nanoton: self.billed.get(),
                vouchered_nanoton: self.vouchered.get(),
                settled_nanoton: self.settled.get(),
            },
            ttft,
            waiting: u64::try_from(t.waiting.load(Ordering::Relaxed)).unwrap_or(0),
            open_channels: u64::try_from(self.open_channels.get()).unwrap_or(0),
            unsettled_nanoton: u64::try_from(self.unsettled.get()).unwrap_or(0),
            chain_transactions,
        }
    }

    /// Sets what `model`'s engine runs now and the share of its KV cache held.
    pub fn set_engine(&self, model: &str, running: usize, kv_cache_usage: f64) {
        let label = Self::model(model);
        self.running
            .get_or_create(&label)
            .set(i64::try_from(running).unwrap_or(i64::MAX));
        self.kv_cache.get_or_create(&label).set(kv_cache_usage);
    }

    /// A request was refused because every slot was taken.
    pub fn busy(&self, model: &str) {
        self.busy.get_or_create(&Self::model(model)).inc();
        self.tally.busy.fetch_add(1, Ordering::Relaxed);
    }

    /// A request for `model` ended.
    pub fn finished(&self, model: &str, job: &JobRecord) {
        let label = Self::model(model);
        self.prompt_tokens
            .get_or_create(&label)
            .inc_by(job.prompt_tokens);
        self.generation_tokens
            .get_or_create(&label)
            .inc_by(job.generation_tokens);
        self.queue.get_or_create(&label).observe(job.queue_s);
        if let Some(ttft) = job.ttft_s {
            self.ttft.get_or_create(&label).observe(ttft);
            // The same bucket as the histogram's: the first bound at or above the value.
            let i = TTFT_BUCKETS.partition_point(|b| *b < ttft);
            if let Some(bucket) = self.tally.ttft.get(i) {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        let t = &self.tally;
        t.jobs.fetch_add(1, Ordering::Relaxed);
        t.prompt_tokens
            .fetch_add(job.prompt_tokens, Ordering::Relaxed);
        t.generation_tokens
            .fetch_add(job.generation_tokens, Ordering::Relaxed);
        let itl = self.itl.get_or_create(&label);
        for gap in &job.inter_token_s {
            itl.observe(*gap);
        }
        self.e2e.get_or_create(&label).observe(job.e2e_s);
        self.success
            .get_or_create(&FinishedLabel {
                model_name: model.to_string(),
                finished_reason: job.finished_reason.to_string(),
            })
            .inc();
    }

    /// A paid job delivered `billed` and received vouchers for `vouchered`, nanoTON.
    pub fn paid(&self, billed: u64, vouchered: u64) {
        self.billed.inc_by(billed);
        self.vouchered.inc_by(vouchered);
    }

    /// A `worker_close` settled `amount` nanoTON on chain.
    pub fn settled(&self, amount: u64) {
        self.settled.inc_by(amount);
    }

    /// A transaction of `kind` (`worker_close`, `challenge`, `finalize`, `anchor`) was sent.
    pub fn chain(&self, kind: &str) {
        self.chain_transactions
            .get_or_create(&KindLabel { kind: kind.into() })
            .inc();
    }

    /// Channels with unsettled vouchers, and their unsettled value.
    pub fn set_channels(&self, open: usize, unsettled: u64) {
        self.open_channels
            .set(i64::try_from(open).unwrap_or(i64::MAX));
        self.unsettled
            .set(i64::try_from(unsettled).unwrap_or(i64::MAX));
    }

    /// `model`'s price now, nanoTON per million prompt and completion tokens.
    pub fn set_price(&self, model: &str, prompt: u64, completion: u64) {
        for (kind, v) in [("prompt", prompt), ("completion", completion)] {
            self.price
                .get_or_create(&PriceLabel {
                    model_name: model.to_string(),
                    kind: kind.into(),
                })
                .set(i64::try_from(v).unwrap_or(i64::MAX));
        }
    }

    /// A gossiped advert was admitted (`reason` = `None`) or rejected for `reason`.
    pub fn advert(&self, reason: Option<&str>) {
        let (result, reason) = match reason {
            None => ("admitted", "ok"),
            Some(r) => ("rejected", r),
        };
        self.adverts
            .get_or_create(&AdvertLabel {
                result: result.into(),
                reason: reason.into(),
            })
            .inc();
    }

    /// Workers in the market reached directly and through relays.
    pub fn set_market_workers(&self, direct: usize, relayed: usize) {
        for (kind, n) in [("direct", direct), ("relayed", relayed)] {
            self.market_workers
                .get_or_create(&KindLabel { kind: kind.into() })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    /// This node's reachability (`public`, `mapped`, `relayed`, `local`, `unknown`).
    pub fn set_reachability(&self, state: &str) {
        for s in ["public", "mapped", "relayed", "local", "unknown"] {
            self.reachability
                .get_or_create(&KindLabel { kind: s.into() })
                .set(i64::from(s == state));
        }
    }

    /// The evidence presented (`tdx`, `dev-insecure`) and seconds until it expires.
    pub fn set_evidence(&self, kind: &str, expires_in_s: i64) {
        self.evidence_expiry
            .get_or_create(&KindLabel { kind: kind.into() })
            .set(expires_in_s);
    }
}

/// A gateway's recorder: requests by endpoint and status, latency, failovers, payments.
#[derive(Clone)]
pub struct GatewayMetrics {
    requests: Family<RequestLabel, Counter>,
    latency: HistogramFamily<EndpointLabel>,
    failovers: Counter,
    paid: Counter,
}

impl std::fmt::Debug for GatewayMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayMetrics").finish_non_exhaustive()
    }
}

impl GatewayMetrics {
    fn register(r: &mut Registry) -> Self {
        let m = Self {
            requests: Family::default(),
            latency: family(http_buckets),
            failovers: Counter::default(),
            paid: Counter::default(),
        };
        r.register(
            "cocoon_gateway_requests",
            "HTTP requests by endpoint and status",
            m.requests.clone(),
        );
        r.register(
            "cocoon_gateway_request_duration_seconds",
            "From a request's arrival to its response's end",
            m.latency.clone(),
        );
        r.register(
            "cocoon_gateway_failovers",
            "Jobs moved to another worker mid-answer or before the start",
            m.failovers.clone(),
        );
        r.register(
            "cocoon_gateway_paid_nanoton",
            "Value paid to workers for the gateway's jobs, nanoTON",
            m.paid.clone(),
        );
        m
    }

    /// A request to `endpoint` was answered `status` after `seconds`.
    pub fn request(&self, endpoint: &str, status: u16, seconds: f64) {
        self.requests
            .get_or_create(&RequestLabel {
                endpoint: endpoint.into(),
                status,
            })
            .inc();
        self.latency
            .get_or_create(&EndpointLabel {
                endpoint: endpoint.into(),
            })
            .observe(seconds);
    }

    /// A job failed over `failovers` times and paid `nanoton`.
    pub fn job(&self, failovers: u64, nanoton: u64) {
        self.failovers.inc_by(failovers);
        self.paid.inc_by(nanoton);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line<'a>(text: &'a str, prefix: &str) -> &'a str {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix:?} in:\n{text}"))
    }

    #[test]
    fn a_jobs_record_lands_under_vllms_names() {
        let mut registry = MetricsRegistry::new();
        let node = registry.node();
        let exporter = registry.finish();
        node.arrived("m");
        node.left_queue("m");
        node.set_engine("m", 1, 0.25);
        node.finished(
            "m",
            &JobRecord {
                queue_s: 0.002,
                ttft_s: Some(0.05),
                inter_token_s: vec![0.01, 0.02, 0.03],
                e2e_s: 0.2,
                prompt_tokens: 12,
                generation_tokens: 4,
                finished_reason: "length",
            },
        );
        node.busy("m");
        node.paid(3400, 3000);
        node.set_price("m", 1000, 3000);
        node.chain("worker_close");
        node.set_channels(2, 3000);
        node.arrived("m");
        let reading = node.reading();
        assert_eq!(
            reading.totals,
            status::Totals {
                jobs: 1,
                prompt_tokens: 12,
                generation_tokens: 4,
                busy_refusals: 1,
                billed_nanoton: 3400,
                vouchered_nanoton: 3000,
                settled_nanoton: 0,
            }
        );
        assert_eq!(reading.waiting, 1);
        assert_eq!(
            (reading.open_channels, reading.unsettled_nanoton),
            (2, 3000)
        );
        assert_eq!(
            reading.chain_transactions.into_iter().collect::<Vec<_>>(),
            vec![("worker_close".to_string(), 1)]
        );
        // The read-back TTFT lands in the histogram's bucket: (0.04, 0.06].
        assert_eq!(reading.ttft.count(), 1);
        assert_eq!(reading.ttft.counts[reading.ttft.index(0.05)], 1);
        assert_eq!(reading.ttft.bounds[reading.ttft.index(0.05)], 0.06);
        node.left_queue("m");
        let text = exporter.encode();
        for want in [
            r#"vllm:num_requests_waiting{model_name="m"} 0"#,
            r#"vllm:num_requests_running{model_name="m"} 1"#,
            r#"vllm:kv_cache_usage_perc{model_name="m"} 0.25"#,
            r#"vllm:prompt_tokens_total{model_name="m"} 12"#,
            r#"vllm:generation_tokens_total{model_name="m"} 4"#,
            r#"vllm:time_to_first_token_seconds_count{model_name="m"} 1"#,
            r#"vllm:inter_token_latency_seconds_count{model_name="m"} 3"#,
            r#"vllm:e2e_request_latency_seconds_count{model_name="m"} 1"#,
            r#"vllm:request_queue_time_seconds_count{model_name="m"} 1"#,
            r#"vllm:request_success_total{model_name="m",finished_reason="length"} 1"#,
            r#"cocoon_busy_refusals_total{model_name="m"} 1"#,
            "cocoon_billed_nanoton_total 3400",
            "cocoon_vouchered_nanoton_total 3000",
            r#"cocoon_price_nanoton_per_mtok{model_name="m",kind="completion"} 3000"#,
        ] {
            assert_eq!(line(&text, want.split(' ').next().unwrap()), want);
        }
        // The TTFT landed in vLLM's 0.06 s bucket, not below.
        assert_eq!(
            line(
                &text,
                r#"vllm:time_to_first_token_seconds_bucket{le="0.04",model_name="m"}"#
            ),
            r#"vllm:time_to_first_token_seconds_bucket{le="0.04",model_name="m"} 0"#
        );
        assert_eq!(
            line(
                &text,
                r#"vllm:time_to_first_token_seconds_bucket{le="0.06",model_name="m"}"#
            ),
            r#"vllm:time_to_first_token_seconds_bucket{le="0.06",model_name="m"} 1"#
        );
    }

    #[test]
    fn libp2p_and_gateway_families_share_the_registry() {
        let mut registry = MetricsRegistry::new();
        let _p2p = registry.libp2p();
        let gateway = registry.gateway();
        let exporter = registry.finish();
        gateway.request("/v1/chat/completions", 200, 0.3);
        gateway.request("/v1/chat/completions", 400, 0.001);
        gateway.job(1, 500);
        let text = exporter.encode();
        assert!(text.contains(
            r#"cocoon_gateway_requests_total{endpoint="/v1/chat/completions",status="400"} 1"#
        ));
        assert!(text.contains("cocoon_gateway_failovers_total 1"));
        assert!(text.contains("cocoon_gateway_paid_nanoton_total 500"));
        assert!(text.contains("# TYPE libp2p_"), "{text}");
        assert!(text.ends_with("# EOF\n"));
    }

    #[tokio::test]
    async fn the_endpoint_serves_metrics_and_refuses_the_rest() {
        use axum::body::Body;
        use axum::http::Request;
        use tower::ServiceExt;
        let mut registry = MetricsRegistry::new();
        let node = registry.node();
        node.busy("m");
        let app = router(registry.finish());
        let get = |uri: &str| Request::get(uri).body(Body::empty()).unwrap();
        let ok = app.clone().oneshot(get("/metrics")).await.unwrap();
        assert_eq!(ok.status(), StatusCode::OK);
        assert_eq!(ok.headers()[header::CONTENT_TYPE], CONTENT_TYPE);
        let missing = app.clone().oneshot(get("/nope")).await.unwrap();
        assert_eq!(missing.status(), StatusCode::NOT_FOUND);
        let post = Request::post("/metrics").body(Body::empty()).unwrap();
        let refused = app.oneshot(post).await.unwrap();
        assert_eq!(refused.status(), StatusCode::METHOD_NOT_ALLOWED);
    }
}
