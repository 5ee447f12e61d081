//! The node's picture for its dashboard and `cocoon status`: what it does now, and a bounded
//! history of it.
//!
//! The node samples itself about once a second into a [`Snapshot`] (cumulative counters,
//! gauges, its price and the market's, peers, attestation) and hands it to its [`Board`].
//! The board derives what a reader wants from counters (rates over the last
//! [`HistoryConfig::rate_window_ms`], TTFT percentiles estimated from histogram buckets) and
//! keeps one [`Point`] per [`HistoryConfig::interval_ms`] in a ring of
//! [`HistoryConfig::capacity`] points, allocated once, so history does not depend on a page
//! being open and its memory is fixed (the default: one point per 10 s for 24 h, 8,640
//! points, about 1.5 MiB). [`Board::report`] is what `GET /api/status` serves as JSON
//! ([`Report`]).
//!
//! Like the rest of the crate nothing here reads the clock: callers pass unix milliseconds.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

/// The version of the JSON shape ([`Report::version`]); a change that removes or renames a
/// field bumps it.
pub const REPORT_VERSION: u32 = 1;

/// nanoTON in one TON.
pub const NANOTON_PER_TON: u64 = 1_000_000_000;

/// Cumulative counters of a node since it started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    /// Jobs finished (any reason: stop, length, abort).
    pub jobs: u64,
    /// Prompt tokens processed.
    pub prompt_tokens: u64,
    /// Tokens generated.
    pub generation_tokens: u64,
    /// Requests refused because every slot was taken.
    pub busy_refusals: u64,
    /// Value delivered to paying clients, nanoTON.
    pub billed_nanoton: u64,
    /// Value covered by vouchers received and journalled, nanoTON.
    pub vouchered_nanoton: u64,
    /// Value closed on chain, nanoTON.
    pub settled_nanoton: u64,
}

/// A histogram's buckets: finite upper bounds and the observations in each bucket.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Buckets {
    /// Upper bounds, increasing, finite (seconds for TTFT).
    pub bounds: Vec<f64>,
    /// Observations per bucket (not cumulative): `counts[i]` lie in `(bounds[i-1],
    /// bounds[i]]`, and the last, one more than the bounds, above the highest bound.
    pub counts: Vec<u64>,
}

impl Buckets {
    /// Empty buckets with these upper bounds (non-finite ones are dropped, the rest sorted).
    pub fn new(bounds: impl IntoIterator<Item = f64>) -> Self {
        let mut bounds: Vec<f64> = bounds.into_iter().filter(|b| b.is_finite()).collect();
        bounds.sort_by(f64::total_cmp);
        bounds.dedup();
        let counts = vec![0; bounds.len() + 1];
        Self { bounds, counts }
    }

    /// The bucket index a value falls into.
    pub fn index(&self, value: f64) -> usize {
        self.bounds.partition_point(|b| *b < value)
    }

    /// Observations in all.
    pub fn count(&self) -> u64 {
        self.counts.iter().fold(0u64, |a, c| a.saturating_add(*c))
    }

    /// The observations made after `earlier` (the same histogram read before): bucket by
    /// bucket, saturating (a reset reads as nothing new). Buckets of another shape give
    /// `self` unchanged.
    pub fn since(&self, earlier: &Buckets) -> Buckets {
        if earlier.bounds != self.bounds || earlier.counts.len() != self.counts.len() {
            return self.clone();
        }
        Buckets {
            bounds: self.bounds.clone(),
            counts: self
                .counts
                .iter()
                .zip(&earlier.counts)
                .map(|(now, then)| now.saturating_sub(*then))
                .collect(),
        }
    }

    /// The `q`-quantile (0 ≤ q ≤ 1) estimated as Prometheus's `histogram_quantile` does:
    /// the bucket holding the rank, interpolated linearly within it (from 0 for the first
    /// bucket); a rank above the highest bound is that bound. `None` without observations,
    /// for a `q` outside [0, 1] or buckets without bounds.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.count();
        if total == 0 || !(0.0..=1.0).contains(&q) || self.bounds.is_empty() {
            return None;
        }
        let rank = q * total as f64;
        let mut below = 0u64;
        for (i, count) in self.counts.iter().enumerate() {
            let cumulative = below.saturating_add(*count);
            if *count > 0 && cumulative as f64 >= rank {
                let Some(&upper) = self.bounds.get(i) else {
                    return self.bounds.last().copied();
                };
                let lower = if i == 0 { 0.0 } else { self.bounds[i - 1] };
                let within = (rank - below as f64) / *count as f64;
                return Some(lower + (upper - lower) * within.clamp(0.0, 1.0));
            }
            below = cumulative;
        }
        self.bounds.last().copied()
    }

    /// p50, p90 and p99.
    pub fn percentiles(&self) -> Percentiles {
        Percentiles {
            count: self.count(),
            p50_s: self.quantile(0.5),
            p90_s: self.quantile(0.9),
            p99_s: self.quantile(0.99),
        }
    }
}

/// Three quantiles of a latency, estimated from histogram buckets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    /// Observations they come from.
    pub count: u64,
    /// Median, seconds (`null` without observations).
    pub p50_s: Option<f64>,
    /// 90th percentile, seconds.
    pub p90_s: Option<f64>,
    /// 99th percentile, seconds.
    pub p99_s: Option<f64>,
}

/// The per-second rate of a counter between two readings `(unix ms, value)`; 0 when no time
/// passed (or the clock went back), and a counter that went down (a reset) counts as 0.
pub fn rate(earlier: (u64, u64), later: (u64, u64)) -> f64 {
    let dt_ms = later.0.saturating_sub(earlier.0);
    if dt_ms == 0 {
        return 0.0;
    }
    later.1.saturating_sub(earlier.1) as f64 * 1000.0 / dt_ms as f64
}

/// `nanoton` as TON in decimal, without trailing zeros: `3400` → `0.0000034`, `2 * 10^9` →
/// `2`.
pub fn ton(nanoton: u64) -> String {
    let whole = nanoton / NANOTON_PER_TON;
    let frac = nanoton % NANOTON_PER_TON;
    if frac == 0 {
        return whole.to_string();
    }
    let frac = format!("{frac:09}");
    format!("{whole}.{}", frac.trim_end_matches('0'))
}

/// A fixed-capacity ring: pushing onto a full ring drops the oldest. Its storage is
/// allocated once, at [`Ring::new`].
#[derive(Clone, Debug)]
pub struct Ring<T> {
    items: VecDeque<T>,
    capacity: usize,
}

impl<T> Ring<T> {
    /// An empty ring of `capacity` items (at least one).
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Self {
            items: VecDeque::with_capacity(capacity),
            capacity,
        }
    }

    /// Appends `item`, dropping the oldest when full.
    pub fn push(&mut self, item: T) {
        if self.items.len() == self.capacity {
            self.items.pop_front();
        }
        self.items.push_back(item);
    }

    /// Items held, oldest first.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = &T> + ExactSizeIterator {
        self.items.iter()
    }

    /// The newest item.
    pub fn last(&self) -> Option<&T> {
        self.items.back()
    }

    /// The oldest item.
    pub fn first(&self) -> Option<&T> {
        self.items.front()
    }

    /// Drops the oldest item.
    pub fn pop_first(&mut self) -> Option<T> {
        self.items.pop_front()
    }

    /// Items held.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The most it holds.
    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

/// One worker's advertised price for a model, per million tokens, nanoTON.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Offer {
    /// Per million prompt tokens.
    pub prompt_per_mtok: u64,
    /// Per million completion tokens.
    pub completion_per_mtok: u64,
}

/// What the market asks for a model: the other workers' advertised prices.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MarketPrice {
    /// Workers advertising the model (this node not counted).
    pub workers: usize,
    /// The cheapest price per million prompt tokens.
    pub cheapest_prompt_per_mtok: u64,
    /// The cheapest price per million completion tokens.
    pub cheapest_completion_per_mtok: u64,
    /// The median price per million prompt tokens (of an even number: the mean of the two
    /// middle ones, rounded down).
    pub median_prompt_per_mtok: u64,
    /// The median price per million completion tokens.
    pub median_completion_per_mtok: u64,
}

impl MarketPrice {
    /// The market's price from `offers`; `None` when nobody else offers the model.
    pub fn of(offers: &[Offer]) -> Option<Self> {
        let prompt: Vec<u64> = offers.iter().map(|o| o.prompt_per_mtok).collect();
        let completion: Vec<u64> = offers.iter().map(|o| o.completion_per_mtok).collect();
        Some(Self {
            workers: offers.len(),
            cheapest_prompt_per_mtok: *prompt.iter().min()?,
            cheapest_completion_per_mtok: *completion.iter().min()?,
            median_prompt_per_mtok: median(prompt)?,
            median_completion_per_mtok: median(completion)?,
        })
    }
}

fn median(mut values: Vec<u64>) -> Option<u64> {
    values.sort_unstable();
    let n = values.len();
    let high = *values.get(n / 2)?;
    if n % 2 == 1 {
        return Some(high);
    }
    let low = values[n / 2 - 1];
    // The mean in u128: two u64 prices cannot overflow it.
    u64::try_from((u128::from(low) + u128::from(high)) / 2).ok()
}

/// A served model's price, and the market's for the same model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelPrice {
    /// The model id.
    pub model: String,
    /// This node's price per million prompt tokens, nanoTON.
    pub prompt_per_mtok: u64,
    /// This node's price per million completion tokens, nanoTON.
    pub completion_per_mtok: u64,
    /// The other workers' prices (`null` when nobody else advertises the model).
    pub market: Option<MarketPrice>,
}

/// What the engines do now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Engine {
    /// Requests generating.
    pub running: u64,
    /// Requests admitted and not generating yet.
    pub waiting: u64,
    /// The share of KV cache the running requests may fill (the fullest engine), 0..=1.
    pub kv_cache_usage: f64,
}

/// Payment channels and their settlement.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Channels {
    /// Channels with vouchers not yet settled.
    pub open: u64,
    /// Vouchered value not yet settled on chain, nanoTON.
    pub unsettled_nanoton: u64,
    /// Transactions sent to the chain, by kind (`worker_close`, `challenge`, `finalize`,
    /// `anchor`).
    pub chain_transactions: BTreeMap<String, u64>,
}

/// The node's place in the network.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peers {
    /// Peers with an open connection.
    pub connected: u64,
    /// Peers in the Kademlia routing table.
    pub routing_table: u64,
    /// How others reach it: `public`, `mapped`, `relayed`, `local` or `unknown`.
    pub reachability: String,
    /// The same in words, with the addresses or relays.
    pub reachability_detail: String,
    /// Whether it answers DHT queries.
    pub dht_server: bool,
    /// Workers in the market (live adverts, this node's own included).
    pub market_workers: u64,
}

/// The evidence a worker presents.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attestation {
    /// `tdx` or `dev-insecure`.
    pub kind: String,
    /// Seconds until it expires (it is renewed 15 min before).
    pub expires_in_s: i64,
    /// The measurement it reports, hex (MRTD for TDX).
    pub measurement: String,
}

/// One reading of a node, taken by the node (about once a second).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// The node's peer id.
    pub peer_id: String,
    /// Cumulative counters.
    pub totals: Totals,
    /// Time to first token of every job since the start, seconds.
    pub ttft: Buckets,
    /// What the engines do now.
    pub engine: Engine,
    /// Payment channels.
    pub channels: Channels,
    /// Served models with their prices (empty on a node that serves none).
    pub models: Vec<ModelPrice>,
    /// Network.
    pub peers: Peers,
    /// The worker's evidence (`null` on a node that serves no model).
    pub attestation: Option<Attestation>,
}

/// Rates over the last [`HistoryConfig::rate_window_ms`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Rates {
    /// The window they cover, seconds (shorter just after the start).
    pub window_s: f64,
    /// Jobs finished per second.
    pub jobs_per_s: f64,
    /// Prompt tokens per second.
    pub prompt_tokens_per_s: f64,
    /// Generated tokens per second.
    pub generation_tokens_per_s: f64,
    /// Billed nanoTON per second.
    pub billed_nanoton_per_s: f64,
}

impl Rates {
    fn between(earlier: (u64, &Totals), later: (u64, &Totals)) -> Self {
        let r = |f: fn(&Totals) -> u64| rate((earlier.0, f(earlier.1)), (later.0, f(later.1)));
        Self {
            window_s: later.0.saturating_sub(earlier.0) as f64 / 1000.0,
            jobs_per_s: r(|t| t.jobs),
            prompt_tokens_per_s: r(|t| t.prompt_tokens),
            generation_tokens_per_s: r(|t| t.generation_tokens),
            billed_nanoton_per_s: r(|t| t.billed_nanoton),
        }
    }
}

/// The node now: its latest [`Snapshot`] with what is derived from it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// When the snapshot was taken, unix ms.
    pub at_ms: u64,
    /// Seconds since the node started.
    pub uptime_s: u64,
    /// The node's peer id.
    pub peer_id: String,
    /// Cumulative counters.
    pub totals: Totals,
    /// Current rates.
    pub rates: Rates,
    /// Time to first token over every job since the start.
    pub ttft: Percentiles,
    /// What the engines do now.
    pub engine: Engine,
    /// Payment channels.
    pub channels: Channels,
    /// Served models, this node's prices and the market's.
    pub models: Vec<ModelPrice>,
    /// Network.
    pub peers: Peers,
    /// The worker's evidence.
    pub attestation: Option<Attestation>,
}

/// One point of the history: counters at the time and what happened since the previous
/// point.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Point {
    /// Unix ms.
    pub t_ms: u64,
    /// Cumulative billed value, nanoTON.
    pub billed_nanoton: u64,
    /// Cumulative vouchered value, nanoTON.
    pub vouchered_nanoton: u64,
    /// Cumulative settled value, nanoTON.
    pub settled_nanoton: u64,
    /// Unsettled value now, nanoTON.
    pub unsettled_nanoton: u64,
    /// Jobs finished, cumulative.
    pub jobs: u64,
    /// Tokens generated, cumulative.
    pub generation_tokens: u64,
    /// Jobs per second since the previous point.
    pub jobs_per_s: f64,
    /// Prompt tokens per second since the previous point.
    pub prompt_tokens_per_s: f64,
    /// Generated tokens per second since the previous point.
    pub generation_tokens_per_s: f64,
    /// TTFT of the jobs since the previous point (`null`s when none ended).
    pub ttft: Percentiles,
    /// Requests generating at the time.
    pub running: u64,
    /// Connected peers at the time.
    pub connected_peers: u64,
}

/// The history kept by a [`Board`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct History {
    /// The time between points, ms.
    pub interval_ms: u64,
    /// The most points kept.
    pub capacity: usize,
    /// Points, oldest first (those the request asked for).
    pub points: Vec<Point>,
}

/// `GET /api/status`: the node now and its history.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// [`REPORT_VERSION`].
    pub version: u32,
    /// When the node started, unix ms.
    pub started_ms: u64,
    /// The node now (`null` until its first snapshot, a second after it starts).
    pub status: Option<Status>,
    /// Its history.
    pub history: History,
}

/// How much a [`Board`] keeps and how it derives rates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HistoryConfig {
    /// The time between history points, ms (default 10 s).
    pub interval_ms: u64,
    /// History points kept (default 8,640: 24 h at one per 10 s; a point is about 180
    /// bytes, so about 1.5 MiB).
    pub capacity: usize,
    /// The window of [`Status::rates`], ms (default 10 s).
    pub rate_window_ms: u64,
    /// Snapshots kept for the rates (default 64; more than the window holds at one per
    /// second).
    pub rate_samples: usize,
}

impl Default for HistoryConfig {
    fn default() -> Self {
        Self {
            interval_ms: 10_000,
            capacity: 8_640,
            rate_window_ms: 10_000,
            rate_samples: 64,
        }
    }
}

/// Which history points a reader wants (`GET /api/status?since=MS&last=N`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HistoryQuery {
    /// Only points after this unix ms.
    pub since_ms: Option<u64>,
    /// At most this many, the newest.
    pub last: Option<usize>,
}

/// Why a query string was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum QueryError {
    /// A parameter's value is not a non-negative integer.
    #[error("{name}={value:?} is not a non-negative integer")]
    NotANumber {
        /// The parameter.
        name: &'static str,
        /// Its value as given.
        value: String,
    },
}

impl HistoryQuery {
    /// Parses `since=MS&last=N` (either, both or neither); other parameters are ignored.
    pub fn parse(query: Option<&str>) -> Result<Self, QueryError> {
        let mut out = Self::default();
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let number = |name: &'static str| {
                value.parse::<u64>().map_err(|_| QueryError::NotANumber {
                    name,
                    value: value.chars().take(64).collect(),
                })
            };
            match key {
                "since" => out.since_ms = Some(number("since")?),
                "last" => {
                    out.last = Some(usize::try_from(number("last")?).unwrap_or(usize::MAX));
                }
                _ => {}
            }
        }
        Ok(out)
    }
}

/// Where a point's interval started: the counters then.
#[derive(Clone, Debug)]
struct Mark {
    t_ms: u64,
    totals: Totals,
    ttft: Buckets,
}

struct BoardState {
    config: HistoryConfig,
    started_ms: u64,
    status: Option<Status>,
    recent: Ring<(u64, Totals)>,
    history: Ring<Point>,
    mark: Option<Mark>,
}

impl BoardState {
    fn update(&mut self, now_ms: u64, snapshot: Snapshot) {
        // Rates over the window: from the oldest reading still inside it to this one.
        self.recent.push((now_ms, snapshot.totals));
        while self.recent.len() > 1
            && self
                .recent
                .first()
                .is_some_and(|(t, _)| t.saturating_add(self.config.rate_window_ms) < now_ms)
        {
            self.recent.pop_first();
        }
        let rates = match self.recent.first() {
            Some((t, totals)) => Rates::between((*t, totals), (now_ms, &snapshot.totals)),
            None => Rates::default(),
        };
        let due = match &self.mark {
            None => true,
            Some(m) => now_ms >= m.t_ms.saturating_add(self.config.interval_ms) || now_ms < m.t_ms,
        };
        if due {
            let (since, interval_ttft) = match &self.mark {
                Some(m) => (
                    Rates::between((m.t_ms, &m.totals), (now_ms, &snapshot.totals)),
                    snapshot.ttft.since(&m.ttft),
                ),
                // The first point covers the node's life so far.
                None => (
                    Rates::between(
                        (self.started_ms, &Totals::default()),
                        (now_ms, &snapshot.totals),
                    ),
                    snapshot.ttft.clone(),
                ),
            };
            let t = &snapshot.totals;
            self.history.push(Point {
                t_ms: now_ms,
                billed_nanoton: t.billed_nanoton,
                vouchered_nanoton: t.vouchered_nanoton,
                settled_nanoton: t.settled_nanoton,
                unsettled_nanoton: snapshot.channels.unsettled_nanoton,
                jobs: t.jobs,
                generation_tokens: t.generation_tokens,
                jobs_per_s: since.jobs_per_s,
                prompt_tokens_per_s: since.prompt_tokens_per_s,
                generation_tokens_per_s: since.generation_tokens_per_s,
                ttft: interval_ttft.percentiles(),
                running: snapshot.engine.running,
                connected_peers: snapshot.peers.connected,
            });
            self.mark = Some(Mark {
                t_ms: now_ms,
                totals: snapshot.totals,
                ttft: snapshot.ttft.clone(),
            });
        }
        self.status = Some(Status {
            at_ms: now_ms,
            uptime_s: now_ms.saturating_sub(self.started_ms) / 1000,
            peer_id: snapshot.peer_id,
            totals: snapshot.totals,
            rates,
            ttft: snapshot.ttft.percentiles(),
            engine: snapshot.engine,
            channels: snapshot.channels,
            models: snapshot.models,
            peers: snapshot.peers,
            attestation: snapshot.attestation,
        });
    }

    fn report(&self, query: &HistoryQuery) -> Report {
        let since = query.since_ms;
        let newer = self
            .history
            .iter()
            .rev()
            .take_while(|p| since.is_none_or(|s| p.t_ms > s))
            .count();
        let take = query.last.map_or(newer, |l| newer.min(l));
        let skip = self.history.len() - take;
        Report {
            version: REPORT_VERSION,
            started_ms: self.started_ms,
            status: self.status.clone(),
            history: History {
                interval_ms: self.config.interval_ms,
                capacity: self.history.capacity(),
                points: self.history.iter().skip(skip).cloned().collect(),
            },
        }
    }
}

/// The node's status and history, shared between the node's sampler (which
/// [`update`](Self::update)s it) and the HTTP handlers (which [`report`](Self::report) it);
/// cheap to clone.
#[derive(Clone)]
pub struct Board {
    state: Arc<Mutex<BoardState>>,
}

impl Board {
    /// An empty board for a node that started at `started_ms` (unix ms).
    pub fn new(config: HistoryConfig, started_ms: u64) -> Self {
        Self {
            state: Arc::new(Mutex::new(BoardState {
                config,
                started_ms,
                status: None,
                recent: Ring::new(config.rate_samples),
                history: Ring::new(config.capacity),
                mark: None,
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, BoardState> {
        // A panic elsewhere while holding the lock leaves consistent data: take it anyway.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes the node's reading at `now_ms`: the status now, and a history point when one
    /// is due.
    pub fn update(&self, now_ms: u64, snapshot: Snapshot) {
        self.lock().update(now_ms, snapshot);
    }

    /// The status and the history points `query` asks for.
    pub fn report(&self, query: &HistoryQuery) -> Report {
        self.lock().report(query)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn buckets(bounds: &[f64], counts: &[u64]) -> Buckets {
        Buckets {
            bounds: bounds.to_vec(),
            counts: counts.to_vec(),
        }
    }

    #[test]
    fn quantiles_interpolate_within_the_bucket_as_prometheus_does() {
        // 10 observations: 4 in (0, 0.1], 4 in (0.1, 0.5], 2 in (0.5, 1].
        let b = buckets(&[0.1, 0.5, 1.0], &[4, 4, 2, 0]);
        assert_eq!(b.count(), 10);
        // Rank 5 is the first of the second bucket's four: a quarter of the way in.
        let p50 = b.quantile(0.5).unwrap();
        assert!((p50 - 0.2).abs() < 1e-12, "{p50}");
        // Rank 9 is halfway through the third bucket.
        let p90 = b.quantile(0.9).unwrap();
        assert!((p90 - 0.75).abs() < 1e-12, "{p90}");
        assert_eq!(b.quantile(1.0), Some(1.0));
        assert_eq!(b.quantile(0.0), Some(0.0));
        // One observation in the first bucket: the median is halfway to its bound.
        let one = buckets(&[0.04, 0.06], &[0, 1, 0]);
        assert_eq!(one.quantile(0.5), Some(0.05));
        let p99 = one.quantile(0.99).unwrap();
        assert!((p99 - 0.0598).abs() < 1e-12, "{p99}");
    }

    #[test]
    fn quantiles_of_nothing_or_nonsense_are_none_and_overflow_is_the_top_bound() {
        assert_eq!(Buckets::new([0.1, 1.0]).quantile(0.5), None);
        let b = buckets(&[0.1, 1.0], &[0, 0, 3]);
        assert_eq!(b.quantile(0.5), Some(1.0), "above every bound");
        assert_eq!(b.quantile(1.5), None);
        assert_eq!(b.quantile(f64::NAN), None);
        assert_eq!(buckets(&[], &[5]).quantile(0.5), None);
        let p = Buckets::new([0.1]).percentiles();
        assert_eq!((p.count, p.p50_s, p.p99_s), (0, None, None));
    }

    #[test]
    fn buckets_index_values_and_subtract_an_earlier_reading() {
        let mut b = Buckets::new([1.0, f64::INFINITY, 0.5, f64::NAN]);
        assert_eq!(b.bounds, vec![0.5, 1.0]);
        assert_eq!(b.index(0.5), 0, "a bound's own value is in its bucket");
        assert_eq!(b.index(0.7), 1);
        assert_eq!(b.index(9.0), 2);
        let before = b.clone();
        b.counts[1] += 2;
        assert_eq!(b.since(&before).counts, vec![0, 2, 0]);
        // A reset reads as nothing new; another shape as the whole.
        assert_eq!(before.since(&b).counts, vec![0, 0, 0]);
        assert_eq!(b.since(&Buckets::new([2.0])), b);
    }

    #[test]
    fn rates_are_per_second_and_never_negative() {
        assert_eq!(rate((1_000, 10), (3_000, 30)), 10.0);
        assert_eq!(rate((1_000, 10), (1_000, 30)), 0.0, "no time passed");
        assert_eq!(rate((3_000, 10), (1_000, 30)), 0.0, "the clock went back");
        assert_eq!(rate((1_000, 30), (2_000, 10)), 0.0, "a reset");
        assert!(rate((0, 0), (500, u64::MAX)) > 3.6e19, "no overflow");
    }

    #[test]
    fn ton_prints_decimals_without_trailing_zeros() {
        assert_eq!(ton(0), "0");
        assert_eq!(ton(3_400), "0.0000034");
        assert_eq!(ton(1), "0.000000001");
        assert_eq!(ton(2_000_000_000), "2");
        assert_eq!(ton(1_500_000_000), "1.5");
        assert_eq!(ton(u64::MAX), "18446744073.709551615");
    }

    #[test]
    fn the_ring_keeps_the_newest_within_its_capacity() {
        let mut ring = Ring::new(3);
        for i in 0..10 {
            ring.push(i);
            assert!(ring.len() <= 3);
        }
        assert_eq!(ring.iter().copied().collect::<Vec<_>>(), vec![7, 8, 9]);
        assert_eq!((ring.first(), ring.last()), (Some(&7), Some(&9)));
        assert_eq!(ring.capacity(), 3);
        let mut tiny: Ring<u8> = Ring::new(0);
        tiny.push(1);
        tiny.push(2);
        assert_eq!(tiny.iter().copied().collect::<Vec<_>>(), vec![2]);
    }

    #[test]
    fn the_market_price_is_the_cheapest_and_the_median_of_the_others() {
        assert_eq!(MarketPrice::of(&[]), None);
        let offer = |p, c| Offer {
            prompt_per_mtok: p,
            completion_per_mtok: c,
        };
        let odd = MarketPrice::of(&[offer(5, 50), offer(1, 30), offer(3, 10)]).unwrap();
        assert_eq!(odd.workers, 3);
        assert_eq!(
            (
                odd.cheapest_prompt_per_mtok,
                odd.cheapest_completion_per_mtok
            ),
            (1, 10)
        );
        assert_eq!(
            (odd.median_prompt_per_mtok, odd.median_completion_per_mtok),
            (3, 30)
        );
        let even = MarketPrice::of(&[offer(u64::MAX, 4), offer(u64::MAX - 2, 1)]).unwrap();
        assert_eq!(even.median_prompt_per_mtok, u64::MAX - 1, "no overflow");
        assert_eq!(even.median_completion_per_mtok, 2, "rounded down");
    }

    #[test]
    fn queries_parse_and_bad_numbers_are_refused() {
        assert_eq!(HistoryQuery::parse(None), Ok(HistoryQuery::default()));
        assert_eq!(
            HistoryQuery::parse(Some("since=12&last=3&x=y")),
            Ok(HistoryQuery {
                since_ms: Some(12),
                last: Some(3)
            })
        );
        assert!(HistoryQuery::parse(Some("since=abc")).is_err());
        assert!(HistoryQuery::parse(Some("last=-1")).is_err());
        assert!(HistoryQuery::parse(Some("since")).is_err());
    }

    fn snapshot(jobs: u64, tokens: u64, billed: u64, ttft: &[u64]) -> Snapshot {
        Snapshot {
            peer_id: "p".into(),
            totals: Totals {
                jobs,
                generation_tokens: tokens,
                billed_nanoton: billed,
                ..Default::default()
            },
            ttft: buckets(&[0.1, 1.0], ttft),
            engine: Engine::default(),
            channels: Channels::default(),
            models: vec![],
            peers: Peers::default(),
            attestation: None,
        }
    }

    #[test]
    fn the_board_derives_rates_and_keeps_one_point_per_interval_within_capacity() {
        let config = HistoryConfig {
            interval_ms: 10_000,
            capacity: 5,
            rate_window_ms: 10_000,
            rate_samples: 64,
        };
        let board = Board::new(config, 0);
        let empty = board.report(&HistoryQuery::default());
        assert_eq!((empty.status, empty.history.points.len()), (None, 0));
        // One reading a second for 100 s: a job and 20 tokens every second from t = 50 s.
        for s in 1..=100u64 {
            let done = s.saturating_sub(50);
            board.update(
                s * 1000,
                snapshot(done, 20 * done, 100 * done, &[done, 0, 0]),
            );
        }
        let report = board.report(&HistoryQuery::default());
        let status = report.status.unwrap();
        assert_eq!((status.at_ms, status.uptime_s), (100_000, 100));
        assert_eq!(status.totals.jobs, 50);
        assert_eq!(status.rates.window_s, 10.0);
        assert_eq!(status.rates.jobs_per_s, 1.0);
        assert_eq!(status.rates.generation_tokens_per_s, 20.0);
        assert_eq!(status.rates.billed_nanoton_per_s, 100.0);
        assert_eq!(status.ttft.count, 50);
        assert_eq!(status.ttft.p50_s, Some(0.05));
        // Points at 1, 11, ..., 91 s: the 5 newest are kept.
        let points = &report.history.points;
        assert_eq!(
            points.iter().map(|p| p.t_ms / 1000).collect::<Vec<_>>(),
            vec![51, 61, 71, 81, 91]
        );
        assert_eq!(report.history.capacity, 5);
        // From 51 s to 61 s: 10 jobs in 10 s; TTFT of those 10 alone.
        assert_eq!(points[1].jobs_per_s, 1.0);
        assert_eq!(points[1].ttft.count, 10);
        assert_eq!(points[1].jobs, 11);
        // The page's follow-up asks only for what is new.
        let newer = board.report(&HistoryQuery {
            since_ms: Some(71_000),
            last: None,
        });
        assert_eq!(newer.history.points.len(), 2);
        let last = board.report(&HistoryQuery {
            since_ms: None,
            last: Some(1),
        });
        assert_eq!(last.history.points[0].t_ms, 91_000);
        let none = board.report(&HistoryQuery {
            since_ms: Some(u64::MAX),
            last: None,
        });
        assert!(none.history.points.is_empty());
    }

    #[test]
    fn a_clock_that_goes_back_starts_a_new_point_and_nothing_breaks() {
        let board = Board::new(HistoryConfig::default(), 50_000);
        board.update(60_000, snapshot(1, 5, 10, &[1, 0, 0]));
        board.update(40_000, snapshot(2, 9, 20, &[2, 0, 0]));
        let report = board.report(&HistoryQuery::default());
        assert_eq!(report.history.points.len(), 2);
        assert_eq!(report.history.points[1].jobs_per_s, 0.0);
        let status = report.status.unwrap();
        assert_eq!(status.uptime_s, 0);
        assert_eq!(status.rates.jobs_per_s, 0.0);
    }

    #[test]
    fn the_report_round_trips_through_json() {
        let board = Board::new(HistoryConfig::default(), 0);
        board.update(1_000, snapshot(1, 6, 3_400, &[0, 1, 0]));
        let report = board.report(&HistoryQuery::default());
        let json = serde_json::to_string(&report).unwrap();
        let back: Report = serde_json::from_str(&json).unwrap();
        assert_eq!(back, report);
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(value["status"]["totals"]["billed_nanoton"], 3_400);
        assert_eq!(value["history"]["points"][0]["jobs"], 1);
    }
}
