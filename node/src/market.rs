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

use crate::attestation::{unix_now, unix_now_ms};

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
                    match market.insert(&message.data, &message.source.to_bytes(), now) {
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

/// The addresses an advert names (the worker's listen addresses when it signed it); ones
/// that do not parse are skipped.
pub fn advert_addrs(advert: &Advert) -> Vec<cocoon_p2p::Multiaddr> {
    advert
        .addrs
        .iter()
        .filter_map(|a| cocoon_p2p::Multiaddr::try_from(a.clone()).ok())
        .collect()
}
