//! The node's market: the gossip market core (`cocoon-gossip`) driven by the network.
//!
//! [`MarketService::start`] takes the network's gossip stream and validates every advert
//! through [`Market::insert`] (signature, bounds, expiry, strictly growing seq, per-peer rate
//! limit), answering gossipsub with accept, reject (the sender is penalised) or ignore. It
//! also answers `/cocoon/market/1` streams with the live adverts it holds, so a newcomer
//! (a light client) learns the market at once instead of waiting for re-publication:
//! [`MarketService::sync_from`] is that newcomer's side.
//!
//! Every node runs it, workers and plain DHT nodes alike, so adverts cross nodes that serve
//! nothing themselves.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use cocoon_gossip::{Advert, Market, MarketConfig, Reputation, Selection, Weights};
use cocoon_p2p::frame::{FrameTransport, FramedStream};
use cocoon_p2p::limits::{GateLimits, StreamGate};
use cocoon_p2p::{GossipVerdict, Network, NetworkError, PeerId, MARKET_PROTOCOL};
use futures::StreamExt;

use crate::clock::{unix_now, unix_now_ms};

/// Tracing target of the per-advert propagation record (`debug`): enable it with
/// `RUST_LOG=info,cocoon::propagation=debug`.
pub const PROPAGATION_LOG: &str = "cocoon::propagation";

/// Most adverts one sync hands over or takes.
pub const MAX_SYNC_ADVERTS: usize = 4096;
/// Largest frame of the sync protocol (one advert).
const MAX_SYNC_FRAME: usize = cocoon_gossip::advert::MAX_ADVERT_BYTES;
/// Market syncs served at once: 32 in total, 2 per peer (a newcomer pulls once).
pub const SYNC_LIMITS: GateLimits = GateLimits {
    total: 32,
    per_peer: 2,
};
/// How long one sync may take to serve (4,096 adverts of at most 8 KiB).
pub const SYNC_SERVE_TIMEOUT: Duration = Duration::from_secs(30);

/// A shared market fed by gossip.
#[derive(Clone)]
pub struct MarketService {
    market: Arc<Mutex<Market>>,
    network: Network,
}

/// Why a market sync failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SyncError {
    /// The stream could not be opened.
    #[error(transparent)]
    Network(#[from] NetworkError),
    /// The stream broke.
    #[error("market sync: {0}")]
    Frame(#[from] cocoon_p2p::frame::FrameError),
}

impl MarketService {
    /// Starts validating gossip and serving syncs on `network`.
    pub fn start(network: &Network, config: MarketConfig) -> Result<Self, NetworkError> {
        Self::start_with_metrics(network, config, None)
    }

    /// [`Self::start`], counting each gossiped advert's verdict into `metrics`.
    pub fn start_with_metrics(
        network: &Network,
        config: MarketConfig,
        metrics: Option<cocoon_metrics::NodeMetrics>,
    ) -> Result<Self, NetworkError> {
        let service = Self {
            market: Arc::new(Mutex::new(Market::new(config))),
            network: network.clone(),
        };
        let mut gossip = network.take_gossip()?;
        let intake = service.clone();
        tokio::spawn(async move {
            let mut pruned_at = 0;
            while let Some(message) = gossip.recv().await {
                let now = unix_now();
                let verdict = {
                    let mut market = intake.market.lock().expect("market lock");
                    if now != pruned_at {
                        market.prune(now);
                        pruned_at = now;
                    }
                    let inserted = market.insert(&message.data, &message.source.to_bytes(), now);
                    if let Some(m) = &metrics {
                        m.advert(inserted.as_ref().err().map(|e| e.reason()));
                    }
                    match inserted {
                        Ok(advert) => {
                            // An advert's seq is its publication time in ms: this is its
                            // propagation delay (the calibration bench reads it).
                            tracing::debug!(
                                target: PROPAGATION_LOG,
                                delay_ms = unix_now_ms().saturating_sub(advert.seq),
                                seq = advert.seq,
                                direct = advert.peer_id() == message.source.to_bytes(),
                                "advert admitted"
                            );
                            GossipVerdict::Accept
                        }
                        Err(e) if e.is_misbehaviour() => {
                            tracing::info!(source = %message.source, "advert rejected: {e}");
                            GossipVerdict::Reject
                        }
                        Err(e) => {
                            tracing::debug!(source = %message.source, "advert ignored: {e}");
                            GossipVerdict::Ignore
                        }
                    }
                };
                if intake
                    .network
                    .report_gossip(message, verdict)
                    .await
                    .is_err()
                {
                    break;
                }
            }
        });
        let mut incoming = network.accept(MARKET_PROTOCOL)?;
        let server = service.clone();
        let gate = StreamGate::new(SYNC_LIMITS);
        tokio::spawn(async move {
            while let Some((peer, stream)) = incoming.next().await {
                // Bounded per peer and in total; over them the stream is dropped unread.
                let Some(ticket) = gate.enter(peer) else {
                    tracing::debug!(%peer, "market sync refused: too many at once");
                    continue;
                };
                let server = server.clone();
                tokio::spawn(async move {
                    let served =
                        tokio::time::timeout(SYNC_SERVE_TIMEOUT, server.serve_sync(stream));
                    match served.await {
                        Ok(Err(e)) => tracing::debug!(%peer, "market sync: {e}"),
                        Err(_) => tracing::debug!(%peer, "market sync: too slow a reader"),
                        Ok(Ok(())) => {}
                    }
                    drop(ticket);
                });
            }
        });
        Ok(service)
    }

    async fn serve_sync(&self, stream: cocoon_p2p::Stream) -> Result<(), SyncError> {
        let adverts: Vec<Vec<u8>> = {
            let market = self.market.lock().expect("market lock");
            market
                .live(unix_now())
                .take(MAX_SYNC_ADVERTS)
                .filter_map(|e| e.signed.encode().ok())
                .collect()
        };
        let mut framed = FramedStream::new(stream, MAX_SYNC_FRAME);
        for a in adverts {
            framed.send_frame(&a).await?;
        }
        framed.close().await?;
        Ok(())
    }

    /// Pulls `peer`'s live adverts into our market; returns how many were new.
    pub async fn sync_from(&self, peer: PeerId, timeout: Duration) -> Result<usize, SyncError> {
        let run = async {
            let stream = self
                .network
                .open_stream(peer, MARKET_PROTOCOL, timeout)
                .await?;
            let mut framed = FramedStream::new(stream, MAX_SYNC_FRAME);
            let mut added = 0;
            for _ in 0..MAX_SYNC_ADVERTS {
                let Some(frame) = framed.recv_frame().await? else {
                    break;
                };
                let mut market = self.market.lock().expect("market lock");
                match market.insert_synced(&frame, &peer.to_bytes(), unix_now()) {
                    Ok(_) => added += 1,
                    Err(e) => tracing::debug!(%peer, "synced advert refused: {e}"),
                }
            }
            Ok::<_, SyncError>(added)
        };
        tokio::time::timeout(timeout, run)
            .await
            .map_err(|_| NetworkError::Timeout("market sync", timeout))?
    }

    /// Adds our own advert (as a sync would: it is ours).
    pub fn insert_own(&self, bytes: &[u8]) -> Result<Advert, cocoon_gossip::AdvertError> {
        let mut market = self.market.lock().expect("market lock");
        market.insert_synced(bytes, &self.network.peer_id().to_bytes(), unix_now())
    }

    /// Live adverts now.
    pub fn adverts(&self) -> Vec<Advert> {
        let market = self.market.lock().expect("market lock");
        market.live(unix_now()).map(|e| e.advert.clone()).collect()
    }

    /// Ranks workers for a job.
    pub fn select(
        &self,
        job: &Selection,
        reputation: &Reputation,
        weights: &Weights,
    ) -> Vec<cocoon_gossip::Candidate> {
        let market = self.market.lock().expect("market lock");
        market.select(job, reputation, weights, unix_now())
    }
}

/// The libp2p peer id of an advert.
pub fn advert_peer(advert: &Advert) -> Option<PeerId> {
    PeerId::from_bytes(&advert.peer_id()).ok()
}

/// One worker of the market as `cocoon market` prints it (`--json`: these field names).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct WorkerRow {
    /// The worker's peer id (absent when the advert's key makes none).
    pub peer: Option<String>,
    /// The model ids it serves.
    pub models: Vec<String>,
    /// `tdx` or `dev-insecure`.
    pub attestation: &'static str,
    /// The measured image, hex.
    pub measurement: String,
    /// "cpu (N threads)" or "GPU name (N MiB)".
    pub hardware: String,
    /// Slots free now.
    pub free_slots: u32,
    /// Slots in all.
    pub max_concurrent: u32,
    /// Measured decode speed.
    pub tokens_per_s: f32,
    /// nanoTON per million prompt tokens.
    pub price_prompt_per_mtok: u64,
    /// nanoTON per million completion tokens.
    pub price_completion_per_mtok: u64,
    /// Smallest channel deposit it takes, nanoTON.
    pub min_deposit: u64,
    /// The advert's sequence number (ms since the epoch when it was made).
    pub seq: u64,
    /// Seconds until the advert expires.
    pub expires_in_s: u64,
}

impl WorkerRow {
    /// The row for `advert` at unix time `now`.
    pub fn of(advert: &Advert, now: u64) -> Self {
        Self {
            peer: advert_peer(advert).map(|p| p.to_string()),
            models: advert.models.iter().map(|m| m.id.clone()).collect(),
            attestation: match advert.trust {
                cocoon_gossip::Trust::Tdx => "tdx",
                cocoon_gossip::Trust::DevInsecure => "dev-insecure",
            },
            measurement: hex::encode(&advert.measurement),
            hardware: match &advert.hardware {
                cocoon_gossip::Hardware::Cpu { threads } => format!("cpu ({threads} threads)"),
                cocoon_gossip::Hardware::Gpu { name, vram_mib } => {
                    format!("{name} ({vram_mib} MiB)")
                }
            },
            free_slots: advert.free_slots,
            max_concurrent: advert.max_concurrent,
            tokens_per_s: advert.tokens_per_s,
            price_prompt_per_mtok: advert.price.prompt_per_mtok,
            price_completion_per_mtok: advert.price.completion_per_mtok,
            min_deposit: advert.min_deposit,
            seq: advert.seq,
            expires_in_s: advert.expires_at.saturating_sub(now),
        }
    }

    /// Rows for `adverts`, cheapest completion price first (ties by key).
    pub fn all(adverts: &[Advert], now: u64) -> Vec<Self> {
        let mut sorted: Vec<&Advert> = adverts.iter().collect();
        sorted.sort_by(|a, b| {
            a.price
                .completion_per_mtok
                .cmp(&b.price.completion_per_mtok)
                .then(a.public_key.cmp(&b.public_key))
        });
        sorted.into_iter().map(|a| Self::of(a, now)).collect()
    }
}

/// One model on offer, from the [`WorkerRow`]s that serve it (`/v1/models`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelRow {
    /// The model id.
    pub id: String,
    /// The cheapest price per million prompt tokens, nanoTON.
    pub cheapest_prompt_per_mtok: u64,
    /// The cheapest price per million completion tokens, nanoTON.
    pub cheapest_completion_per_mtok: u64,
    /// Workers that serve it.
    pub workers: usize,
}

impl ModelRow {
    /// The models `workers` offer, by id.
    pub fn all(workers: &[WorkerRow]) -> Vec<Self> {
        let mut by_id: std::collections::BTreeMap<&str, ModelRow> = Default::default();
        for w in workers {
            for id in &w.models {
                let row = by_id.entry(id).or_insert_with(|| ModelRow {
                    id: id.clone(),
                    cheapest_prompt_per_mtok: u64::MAX,
                    cheapest_completion_per_mtok: u64::MAX,
                    workers: 0,
                });
                row.cheapest_prompt_per_mtok =
                    row.cheapest_prompt_per_mtok.min(w.price_prompt_per_mtok);
                row.cheapest_completion_per_mtok = row
                    .cheapest_completion_per_mtok
                    .min(w.price_completion_per_mtok);
                row.workers += 1;
            }
        }
        by_id.into_values().collect()
    }
}

/// The addresses an advert names (the worker's listen addresses when it signed it); ones
/// that do not parse are skipped.
pub fn advert_addrs(advert: &Advert) -> Vec<cocoon_p2p::Multiaddr> {
    advert
        .addrs
        .iter()
        .filter_map(|a| cocoon_p2p::Multiaddr::try_from(a.clone()).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(models: &[&str], prompt: u64, completion: u64) -> WorkerRow {
        WorkerRow {
            peer: None,
            models: models.iter().map(|m| m.to_string()).collect(),
            attestation: "dev-insecure",
            measurement: String::new(),
            hardware: String::new(),
            free_slots: 1,
            max_concurrent: 1,
            tokens_per_s: 1.0,
            price_prompt_per_mtok: prompt,
            price_completion_per_mtok: completion,
            min_deposit: 0,
            seq: 0,
            expires_in_s: 0,
        }
    }

    /// `/v1/models` reads the same rows as `cocoon market`: the cheapest price of each
    /// model and how many workers serve it.
    #[test]
    fn models_are_summed_from_the_worker_rows() {
        let rows = [
            row(&["a", "b"], 10, 30),
            row(&["a"], 5, 40),
            row(&["c"], 1, 1),
        ];
        let models = ModelRow::all(&rows);
        let ids: Vec<_> = models.iter().map(|m| m.id.as_str()).collect();
        assert_eq!(ids, ["a", "b", "c"]);
        assert_eq!(
            (
                models[0].cheapest_prompt_per_mtok,
                models[0].cheapest_completion_per_mtok,
                models[0].workers
            ),
            (5, 30, 2)
        );
        assert_eq!(models[1].workers, 1);
    }
}
