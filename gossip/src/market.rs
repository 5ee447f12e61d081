//! The market core: the table of live adverts and the ranking of workers for a job.
//!
//! Sans-IO: every call takes `now` (Unix seconds); nothing reads a clock, a socket or a global
//! RNG, so the node and the simulator drive the same code. Ranking is deterministic: equal
//! inputs give equal order, ties broken by peer id.
//!
//! Admission ([`Market::insert`]): a per-source token bucket first (a flooding peer is
//! throttled before any signature is checked), then decode, signature, bounds and expiry
//! ([`SignedAdvert::open`]), then the sequence number, which must grow strictly per worker.
//! The table is bounded, with a share per source; when full, an advert only displaces the
//! one that expires soonest, and only if it outlives it.

use std::collections::{BTreeMap, HashMap};

use crate::advert::{Advert, AdvertError, SignedAdvert, Trust, Verified};
use crate::reputation::Reputation;

/// Market settings.
///
/// A source is the peer that delivered an advert, and in a gossip mesh each peer relays
/// about 1/D of every worker's adverts: the limits are sized for that. (The simulator
/// showed the earlier 2/s, burst 20, 64 per source dropping 43% of adverts at 500 workers;
/// see bench/sim.md.) 100 signature checks a second per source stay a few percent of a core.
#[derive(Clone, Debug)]
pub struct MarketConfig {
    /// Adverts held at most. Default: 10,000.
    pub max_adverts: usize,
    /// Adverts a source may deliver per second, sustained. Default: 100.
    pub rate_per_sec: u32,
    /// Burst a source may deliver at once. Default: 500.
    pub burst: u32,
    /// Most adverts held that arrived from one source: a quarter of the table. Default:
    /// 2,500.
    pub max_per_source: usize,
}

impl Default for MarketConfig {
    fn default() -> Self {
        Self {
            max_adverts: 10_000,
            rate_per_sec: 100,
            burst: 500,
            max_per_source: 2_500,
        }
    }
}

/// A held advert.
#[derive(Clone, Debug)]
pub struct Entry {
    /// As received (for forwarding and sync).
    pub signed: SignedAdvert,
    /// Its content.
    pub advert: Advert,
    /// Who delivered it.
    pub source: Vec<u8>,
    /// When.
    pub received_at: u64,
}

#[derive(Clone, Debug)]
struct Bucket {
    tokens: u32,
    at: u64,
}

/// What a job needs from a worker.
#[derive(Clone, Debug, Default)]
pub struct Selection {
    /// Model id.
    pub model: String,
    /// Estimated prompt tokens.
    pub prompt_tokens: u64,
    /// Tokens to generate at most.
    pub max_tokens: u64,
    /// Highest acceptable price per million tokens (prompt and completion), nanoTON.
    pub max_price_per_mtok: Option<u64>,
    /// Whether workers with development evidence are acceptable.
    pub accept_dev: bool,
    /// Workers to leave out (already tried).
    pub exclude: Vec<Vec<u8>>,
    /// Most candidates returned, best first; `None`: every eligible worker.
    pub limit: Option<usize>,
}

/// Weights of the ranking; lower score is better. Each term is normalised so 1.0 means
/// "as good as the best candidate" (cost, latency) or a fixed penalty.
#[derive(Clone, Debug)]
pub struct Weights {
    /// Estimated job cost relative to the cheapest candidate. Default: 1.0.
    pub cost: f64,
    /// Estimated job latency relative to the fastest candidate. Default: 1.0.
    pub latency: f64,
    /// Penalty for a worker with no free slot. Default: 2.0.
    pub full: f64,
    /// Penalty scaled by the share of busy slots. Default: 0.3.
    pub load: f64,
    /// Penalty for development evidence. Default: 0.5.
    pub dev: f64,
    /// Penalty scaled by (1 - the client's success estimate for the worker). Default: 3.0.
    pub unreliable: f64,
}

impl Default for Weights {
    fn default() -> Self {
        Self {
            cost: 1.0,
            latency: 1.0,
            full: 2.0,
            load: 0.3,
            dev: 0.5,
            unreliable: 3.0,
        }
    }
}

/// A ranked worker.
#[derive(Clone, Debug, PartialEq)]
pub struct Candidate {
    /// Its peer id bytes.
    pub peer_id: Vec<u8>,
    /// Lower is better.
    pub score: f64,
    /// Estimated cost of the job, nanoTON.
    pub est_cost: u64,
    /// Estimated time to finish the job, ms.
    pub est_latency_ms: f64,
    /// The advert.
    pub advert: Advert,
}

/// Time to first token assumed for a worker the client has never used, ms.
pub const DEFAULT_TTFT_MS: f64 = 500.0;
/// Smallest cost used when comparing prices, nanoTON.
const COST_FLOOR: f64 = 1e-3;
/// Largest relative cost counted in a score.
const MAX_COST_RATIO: f64 = 100.0;

/// Decode speed assumed when no eligible worker has measured one yet, tokens/s.
pub const DEFAULT_TOKENS_PER_S: f64 = 20.0;

/// The table of live adverts.
#[derive(Debug, Default)]
pub struct Market {
    config: MarketConfig,
    entries: BTreeMap<Vec<u8>, Entry>,
    /// Highest seq seen per worker, kept after expiry so replays stay stale.
    seqs: HashMap<Vec<u8>, (u64, u64)>,
    buckets: HashMap<Vec<u8>, Bucket>,
    /// Entries held per delivering source (kept in step with `entries`).
    per_source: HashMap<Vec<u8>, usize>,
}

impl Market {
    /// An empty market.
    pub fn new(config: MarketConfig) -> Self {
        Self {
            config,
            ..Default::default()
        }
    }

    /// Admits an advert delivered by `source` (peer id bytes) at `now`. On success returns
    /// the advert (to be forwarded); errors say whether to penalise the sender.
    pub fn insert(&mut self, bytes: &[u8], source: &[u8], now: u64) -> Result<Advert, AdvertError> {
        self.take_token(source, now)?;
        self.admit(bytes, source, now, true)
    }

    /// Admits an advert that arrived in a market sync from `source` (or our own): no rate
    /// limit and no per-source share (a sync hands over a whole table), every other check.
    pub fn insert_synced(
        &mut self,
        bytes: &[u8],
        source: &[u8],
        now: u64,
    ) -> Result<Advert, AdvertError> {
        self.admit(bytes, source, now, false)
    }

    /// [`Market::insert`] for an advert whose signature was checked already (the
    /// simulator hands one advert to many markets): rate limit, bounds, expiry, sequence and
    /// table rules as for any other.
    pub fn insert_verified(
        &mut self,
        verified: &Verified,
        source: &[u8],
        now: u64,
    ) -> Result<(), AdvertError> {
        self.take_token(source, now)?;
        verified.advert().check(now)?;
        self.admit_open(
            verified.signed().clone(),
            verified.advert().clone(),
            source,
            now,
            true,
        )
        .map(drop)
    }

    fn admit(
        &mut self,
        bytes: &[u8],
        source: &[u8],
        now: u64,
        metered: bool,
    ) -> Result<Advert, AdvertError> {
        let (signed, advert) = SignedAdvert::open(bytes, now)?;
        self.admit_open(signed, advert, source, now, metered)
    }

    fn admit_open(
        &mut self,
        signed: SignedAdvert,
        advert: Advert,
        source: &[u8],
        now: u64,
        metered: bool,
    ) -> Result<Advert, AdvertError> {
        let peer = advert.peer_id();
        if let Some(&(have, _)) = self.seqs.get(&peer) {
            if advert.seq <= have {
                return Err(AdvertError::Stale {
                    got: advert.seq,
                    have,
                });
            }
        }
        let replacing = self.entries.contains_key(&peer);
        if !replacing {
            let from_source = self.per_source.get(source).copied().unwrap_or(0);
            if metered && from_source >= self.config.max_per_source {
                return Err(AdvertError::RateLimited);
            }
            if self.entries.len() >= self.config.max_adverts {
                self.prune(now);
            }
            if self.entries.len() >= self.config.max_adverts && !self.evict_for(&advert) {
                return Err(AdvertError::RateLimited);
            }
        }
        self.seqs
            .insert(peer.clone(), (advert.seq, advert.expires_at));
        self.remove_entry(&peer);
        match self.per_source.get_mut(source) {
            Some(n) => *n += 1,
            None => {
                self.per_source.insert(source.to_vec(), 1);
            }
        }
        self.entries.insert(
            peer,
            Entry {
                signed,
                advert: advert.clone(),
                source: source.to_vec(),
                received_at: now,
            },
        );
        Ok(advert)
    }

    fn remove_entry(&mut self, peer: &[u8]) {
        if let Some(e) = self.entries.remove(peer) {
            if let Some(n) = self.per_source.get_mut(&e.source) {
                *n -= 1;
                if *n == 0 {
                    self.per_source.remove(&e.source);
                }
            }
        }
    }

    fn take_token(&mut self, source: &[u8], now: u64) -> Result<(), AdvertError> {
        let (burst, rate) = (self.config.burst, self.config.rate_per_sec);
        if !self.buckets.contains_key(source) {
            self.buckets.insert(
                source.to_vec(),
                Bucket {
                    tokens: burst,
                    at: now,
                },
            );
        }
        let bucket = self.buckets.get_mut(source).expect("inserted above");
        let refill = now.saturating_sub(bucket.at).saturating_mul(rate as u64);
        if refill > 0 {
            bucket.tokens = (bucket.tokens as u64)
                .saturating_add(refill)
                .min(burst as u64) as u32;
            bucket.at = now;
        }
        if bucket.tokens == 0 {
            return Err(AdvertError::RateLimited);
        }
        bucket.tokens -= 1;
        Ok(())
    }

    /// Makes room by evicting the advert expiring soonest, if it expires before `incoming`.
    fn evict_for(&mut self, incoming: &Advert) -> bool {
        let victim = self
            .entries
            .iter()
            .min_by_key(|(peer, e)| (e.advert.expires_at, (*peer).clone()))
            .filter(|(_, e)| e.advert.expires_at < incoming.expires_at)
            .map(|(peer, _)| peer.clone());
        match victim {
            Some(peer) => {
                self.remove_entry(&peer);
                true
            }
            None => false,
        }
    }

    /// Drops expired adverts (and forgets rate buckets and seqs that no longer matter).
    pub fn prune(&mut self, now: u64) {
        let expired: Vec<Vec<u8>> = self
            .entries
            .iter()
            .filter(|(_, e)| e.advert.expires_at <= now)
            .map(|(peer, _)| peer.clone())
            .collect();
        for peer in expired {
            self.remove_entry(&peer);
        }
        let burst = self.config.burst as u64;
        let rate = self.config.rate_per_sec.max(1) as u64;
        self.buckets
            .retain(|_, b| now.saturating_sub(b.at) < burst.div_ceil(rate) + 1);
        // A seq whose advert expired long ago cannot be replayed (the advert is expired too).
        self.seqs
            .retain(|_, (_, expires)| expires.saturating_add(60) > now);
    }

    /// Live adverts at `now`, by peer id.
    pub fn live(&self, now: u64) -> impl Iterator<Item = &Entry> {
        self.entries
            .values()
            .filter(move |e| e.advert.expires_at > now)
    }

    /// The live advert of one worker.
    pub fn get(&self, peer_id: &[u8], now: u64) -> Option<&Advert> {
        self.entries
            .get(peer_id)
            .map(|e| &e.advert)
            .filter(|a| a.expires_at > now)
    }

    /// Number of adverts held (live or not yet pruned).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Ranks live workers for `job`, best first (at most `job.limit`). Costs one pass over
    /// the table and clones only the adverts returned.
    pub fn select(
        &self,
        job: &Selection,
        reputation: &Reputation,
        weights: &Weights,
        now: u64,
    ) -> Vec<Candidate> {
        let eligible: Vec<(&[u8], &Advert)> = self
            .entries
            .iter()
            .map(|(peer, e)| (peer.as_slice(), &e.advert))
            .filter(|(_, a)| a.expires_at > now)
            .filter(|(_, a)| a.serves(&job.model))
            .filter(|(_, a)| job.accept_dev || a.trust != Trust::DevInsecure)
            .filter(|(_, a)| {
                job.max_price_per_mtok.is_none_or(|max| {
                    a.price.prompt_per_mtok <= max && a.price.completion_per_mtok <= max
                })
            })
            .filter(|(peer, _)| !job.exclude.iter().any(|x| x == peer))
            .collect();
        // A worker that has not measured its speed yet (0) is assumed as fast as the median
        // measured one, so newcomers get jobs and a measurement.
        let mut measured: Vec<f64> = eligible
            .iter()
            .map(|(_, a)| a.tokens_per_s as f64)
            .filter(|s| *s > 0.0)
            .collect();
        measured.sort_by(f64::total_cmp);
        let assumed = measured
            .get(measured.len() / 2)
            .copied()
            .unwrap_or(DEFAULT_TOKENS_PER_S);
        // (fixed part of the score, unrounded cost, latency) per eligible worker.
        let raw: Vec<(f64, f64, f64)> = eligible
            .iter()
            .map(|(peer, a)| {
                let record = reputation.get(peer);
                let ttft = record.and_then(|r| r.ttft_ms).unwrap_or(DEFAULT_TTFT_MS);
                let ratio = record
                    .and_then(|r| r.speed_ratio)
                    .unwrap_or(1.0)
                    .clamp(0.1, 1.5);
                let advertised = if a.tokens_per_s > 0.0 {
                    a.tokens_per_s as f64
                } else {
                    assumed
                };
                let speed = (advertised * ratio).max(0.1);
                let latency = ttft + job.max_tokens as f64 / speed * 1e3;
                let busy = 1.0 - a.free_slots as f64 / a.max_concurrent as f64;
                let reliability = Reputation::estimate(record, now);
                let penalty = if a.free_slots == 0 { 1.0 } else { 0.0 };
                let dev = if a.trust == Trust::DevInsecure {
                    1.0
                } else {
                    0.0
                };
                let fixed_score = weights.full * penalty
                    + weights.load * busy
                    + weights.dev * dev
                    + weights.unreliable * (1.0 - reliability);
                // Unrounded, so small jobs still rank by price (both may round to 1).
                let cost = (a.price.prompt_per_mtok as f64 * job.prompt_tokens as f64
                    + a.price.completion_per_mtok as f64 * job.max_tokens as f64)
                    / 1e6;
                (fixed_score, cost, latency)
            })
            .collect();
        let min_cost = raw.iter().map(|r| r.1).fold(f64::INFINITY, f64::min);
        let min_latency = raw
            .iter()
            .map(|r| r.2)
            .fold(f64::INFINITY, f64::min)
            .max(1.0);
        let mut scored: Vec<(f64, usize)> = raw
            .iter()
            .enumerate()
            .map(|(i, (fixed, cost, latency))| {
                // Relative cost, with a floor of a thousandth of a nanoTON so free workers do
                // not divide by zero, and a cap so price cannot drown every other signal.
                let relative = ((cost + COST_FLOOR) / (min_cost + COST_FLOOR)).min(MAX_COST_RATIO);
                (
                    fixed + weights.cost * relative + weights.latency * latency / min_latency,
                    i,
                )
            })
            .collect();
        let order = |a: &(f64, usize), b: &(f64, usize)| {
            a.0.total_cmp(&b.0)
                .then_with(|| eligible[a.1].0.cmp(eligible[b.1].0))
        };
        let limit = job.limit.unwrap_or(usize::MAX).min(scored.len());
        if limit < scored.len() {
            if limit == 0 {
                return Vec::new();
            }
            scored.select_nth_unstable_by(limit - 1, order);
            scored.truncate(limit);
        }
        scored.sort_by(order);
        scored
            .into_iter()
            .map(|(score, i)| {
                let (peer, a) = eligible[i];
                Candidate {
                    peer_id: peer.to_vec(),
                    score,
                    est_cost: a.price.cost(job.prompt_tokens, job.max_tokens),
                    est_latency_ms: raw[i].2,
                    advert: a.clone(),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::advert::tests::{advert, key};
    use crate::advert::Price;

    fn bytes(a: &Advert, seed: u8) -> Vec<u8> {
        a.sign(&key(seed)).unwrap().encode().unwrap()
    }

    /// Regression: the refill saturated but the sum did not, so a source heard from again
    /// after a long silence (or at a fast rate) overflowed the bucket and panicked.
    #[test]
    fn a_long_silence_refills_the_bucket_without_overflow() {
        let mut m = Market::new(MarketConfig {
            rate_per_sec: u32::MAX,
            ..Default::default()
        });
        assert!(m.insert(b"not an advert", b"src", 0).is_err());
        assert!(matches!(
            m.insert(b"not an advert", b"src", u64::MAX),
            Err(AdvertError::Malformed(_))
        ));
    }

    #[test]
    fn sequence_must_grow_and_expired_adverts_are_not_selected() {
        let mut m = Market::new(MarketConfig::default());
        let k = key(1);
        m.insert(&bytes(&advert(&k, 5, 1000), 1), b"src", 1000)
            .unwrap();
        let stale = m.insert(&bytes(&advert(&k, 5, 1000), 1), b"src", 1000);
        assert_eq!(stale, Err(AdvertError::Stale { got: 5, have: 5 }));
        assert!(matches!(
            m.insert(&bytes(&advert(&k, 4, 1001), 1), b"src", 1001),
            Err(AdvertError::Stale { .. })
        ));
        m.insert(&bytes(&advert(&k, 6, 1002), 1), b"src", 1002)
            .unwrap();
        let job = Selection {
            model: "smollm2".into(),
            max_tokens: 10,
            accept_dev: true,
            ..Default::default()
        };
        let rep = Reputation::default();
        assert_eq!(m.select(&job, &rep, &Weights::default(), 1100).len(), 1);
        assert!(m.select(&job, &rep, &Weights::default(), 1122).is_empty());
        // Dev workers are not candidates for a client that refuses dev evidence.
        let strict = Selection {
            accept_dev: false,
            ..job
        };
        assert!(m
            .select(&strict, &rep, &Weights::default(), 1100)
            .is_empty());
    }

    #[test]
    fn cheaper_and_faster_wins_and_max_price_filters() {
        let mut m = Market::new(MarketConfig::default());
        let (cheap, dear) = (key(1), key(2));
        let mut a = advert(&cheap, 1, 1000);
        a.price = Price {
            prompt_per_mtok: 100,
            completion_per_mtok: 100,
        };
        let mut b = advert(&dear, 1, 1000);
        b.price = Price {
            prompt_per_mtok: 10_000,
            completion_per_mtok: 10_000,
        };
        m.insert(&bytes(&a, 1), b"s", 1000).unwrap();
        m.insert(&bytes(&b, 2), b"s", 1000).unwrap();
        let job = Selection {
            model: "smollm2".into(),
            prompt_tokens: 100,
            max_tokens: 100,
            accept_dev: true,
            ..Default::default()
        };
        let rep = Reputation::default();
        let ranked = m.select(&job, &rep, &Weights::default(), 1000);
        assert_eq!(ranked[0].peer_id, a.peer_id());
        // A tiny job costs 1 nanoTON (rounded up) on both, yet the cheaper still ranks first.
        let tiny = Selection {
            prompt_tokens: 3,
            max_tokens: 8,
            ..job.clone()
        };
        let ranked = m.select(&tiny, &rep, &Weights::default(), 1000);
        assert_eq!((ranked[0].est_cost, ranked[1].est_cost), (1, 1));
        assert_eq!(ranked[0].peer_id, a.peer_id());
        let capped = Selection {
            max_price_per_mtok: Some(1_000),
            ..job.clone()
        };
        let ranked = m.select(&capped, &rep, &Weights::default(), 1000);
        assert_eq!(ranked.len(), 1);
        let excluded = Selection {
            exclude: vec![a.peer_id()],
            ..job
        };
        assert_eq!(
            m.select(&excluded, &rep, &Weights::default(), 1000)[0].peer_id,
            b.peer_id()
        );
    }

    #[test]
    fn an_unmeasured_newcomer_is_ranked_like_a_typical_worker() {
        let mut m = Market::new(MarketConfig::default());
        let (old, new) = (key(1), key(2));
        let measured = advert(&old, 1, 1000);
        let mut fresh = advert(&new, 1, 1000);
        fresh.tokens_per_s = 0.0;
        m.insert(&bytes(&measured, 1), b"s", 1000).unwrap();
        m.insert(&bytes(&fresh, 2), b"s", 1000).unwrap();
        let job = Selection {
            model: "smollm2".into(),
            max_tokens: 100,
            accept_dev: true,
            ..Default::default()
        };
        let ranked = m.select(&job, &Reputation::default(), &Weights::default(), 1000);
        assert_eq!(ranked.len(), 2);
        assert!(
            (ranked[0].score - ranked[1].score).abs() < 1e-9,
            "{ranked:?}"
        );
    }

    #[test]
    fn a_source_share_frees_when_its_adverts_expire_or_move() {
        let mut m = Market::new(MarketConfig {
            max_per_source: 2,
            ..Default::default()
        });
        m.insert(&bytes(&advert(&key(1), 1, 1000), 1), b"s", 1000)
            .unwrap();
        m.insert(&bytes(&advert(&key(2), 1, 1000), 2), b"s", 1000)
            .unwrap();
        assert_eq!(
            m.insert(&bytes(&advert(&key(3), 1, 1000), 3), b"s", 1000),
            Err(AdvertError::RateLimited)
        );
        // Worker 1's next advert arrives through another peer: the share of "s" drops.
        m.insert(&bytes(&advert(&key(1), 2, 1000), 1), b"t", 1000)
            .unwrap();
        m.insert(&bytes(&advert(&key(3), 1, 1000), 3), b"s", 1000)
            .unwrap();
        // Everything expires; the share is free again.
        m.prune(1200);
        assert!(m.is_empty());
        m.insert(&bytes(&advert(&key(4), 1, 1200), 4), b"s", 1200)
            .unwrap();
        m.insert(&bytes(&advert(&key(5), 1, 1200), 5), b"s", 1200)
            .unwrap();
    }

    #[test]
    fn a_verified_advert_feeds_many_markets_under_the_same_rules() {
        let k = key(9);
        let wire = bytes(&advert(&k, 3, 1000), 9);
        let verified = SignedAdvert::verified(&wire).unwrap();
        let (mut a, mut b) = (Market::default(), Market::default());
        a.insert_verified(&verified, b"s", 1000).unwrap();
        b.insert_verified(&verified, b"s", 1000).unwrap();
        assert_eq!(
            a.get(&verified.advert().peer_id(), 1000),
            Some(verified.advert())
        );
        assert_eq!(
            a.insert_verified(&verified, b"s", 1000),
            Err(AdvertError::Stale { got: 3, have: 3 })
        );
        // Expiry is judged at admission, and a forged signature never becomes `Verified`.
        let mut late = Market::default();
        assert!(matches!(
            late.insert_verified(&verified, b"s", 5000),
            Err(AdvertError::Expiry(_))
        ));
        let mut forged = SignedAdvert::decode(&wire).unwrap();
        forged.signature[0] ^= 1;
        assert_eq!(
            SignedAdvert::verified(&forged.encode().unwrap()).unwrap_err(),
            AdvertError::BadSignature
        );
    }

    #[test]
    fn a_flood_from_one_peer_is_throttled_and_evicts_no_honest_advert() {
        let mut m = Market::new(MarketConfig {
            max_adverts: 50,
            rate_per_sec: 2,
            burst: 20,
            max_per_source: 64,
        });
        let honest = key(200);
        m.insert(&bytes(&advert(&honest, 1, 1000), 200), b"honest", 1000)
            .unwrap();
        let mut accepted = 0;
        for i in 0..150u8 {
            let k = key(i);
            if m.insert(&bytes(&advert(&k, 1, 1000), i), b"flooder", 1000)
                .is_ok()
            {
                accepted += 1;
            }
        }
        assert_eq!(accepted, 20, "the burst");
        assert!(m.get(&advert(&honest, 1, 1000).peer_id(), 1000).is_some());
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use crate::advert::tests::{advert, key};
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Random arrivals (worker, seq, issue time, lifetime) then a selection at a random time.
        #[test]
        fn expired_never_selected_lower_seq_never_wins_ranking_is_stable(
            arrivals in proptest::collection::vec((0u8..6, 0u64..20, 0u64..500, 1u64..300), 1..40),
            at in 0u64..900,
        ) {
            let mut m = Market::new(MarketConfig::default());
            let mut best: HashMap<u8, u64> = HashMap::new();
            let mut t = 1_000;
            for (w, seq, dt, ttl) in arrivals {
                t += dt / 10;
                let mut a = advert(&key(w), seq, t);
                a.expires_at = t + ttl;
                let bytes = a.sign(&key(w)).unwrap().encode().unwrap();
                let before = m.get(&a.peer_id(), t).map(|x| x.seq);
                match m.insert(&bytes, &[w], t) {
                    Ok(_) => {
                        // Accepted only above every seq seen for this worker.
                        prop_assert!(best.get(&w).is_none_or(|&b| seq > b));
                        best.insert(w, seq);
                    }
                    Err(AdvertError::Stale { .. }) => {
                        prop_assert_eq!(m.get(&a.peer_id(), t).map(|x| x.seq), before);
                    }
                    Err(_) => {}
                }
            }
            let now = 1_000 + at;
            let job = Selection { model: "smollm2".into(), max_tokens: 16, accept_dev: true, ..Default::default() };
            let rep = Reputation::default();
            let ranked = m.select(&job, &rep, &Weights::default(), now);
            for c in &ranked {
                prop_assert!(c.advert.expires_at > now, "expired advert selected");
            }
            let again = m.select(&job, &rep, &Weights::default(), now);
            prop_assert_eq!(&ranked, &again);
            // A limit returns the head of the full ranking.
            for limit in 0..=ranked.len() {
                let top = m.select(&Selection { limit: Some(limit), ..job.clone() }, &rep, &Weights::default(), now);
                prop_assert_eq!(&top[..], &ranked[..limit]);
            }
        }
    }
}
