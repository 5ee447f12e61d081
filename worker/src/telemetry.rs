//! What a node records about itself when it exports metrics (`cocoon node --metrics`).
//!
//! The binary builds the recorders ([`Telemetry`]) and serves them; the node fills them: the
//! swarm records libp2p's families, the worker its jobs and money as they happen, and
//! [`sample`] (one task per node) the gauges that describe a moment, once a second, and
//! hands the node's whole picture ([`cocoon_metrics::status::Snapshot`]) to the dashboard's
//! [`Board`], which keeps the history.

use std::collections::HashMap;
use std::time::Duration;

use cocoon_client::market::{MarketService, WorkerRow};
use cocoon_metrics::status::{
    Attestation, Board, Channels, Engine, MarketPrice, ModelPrice, Offer, Peers, Snapshot,
};
use cocoon_metrics::NodeMetrics;
use cocoon_p2p::{Network, Reachability};

use crate::worker::Worker;

/// How often [`sample`] reads the node.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(1);
/// Every how many samples the slower readings are refreshed: the channels' unsettled value
/// (a journal read) and the market's prices (a copy of the market table).
pub const SLOW_SAMPLES: u64 = 10;

/// The recorders a node fills when it exports metrics (the binary serves them).
pub struct Telemetry {
    /// rust-libp2p's families, recorded by the swarm.
    pub libp2p: libp2p::metrics::Metrics,
    /// Inference, money, market and trust.
    pub node: NodeMetrics,
    /// The dashboard's status and history.
    pub board: Board,
}

/// The reachability's one-word label (`cocoon_reachability{kind}`, the dashboard).
pub fn reachability_label(reachability: &Reachability) -> &'static str {
    match reachability {
        Reachability::Public { .. } => "public",
        Reachability::Mapped { .. } => "mapped",
        Reachability::Relayed { .. } => "relayed",
        Reachability::Local => "local",
        _ => "unknown",
    }
}

/// The other workers' prices for each model, from the market's live adverts (`rows`,
/// [`WorkerRow::all`]), leaving out the worker `own` (this node's peer id).
pub fn market_prices(rows: &[WorkerRow], own: &str) -> HashMap<String, MarketPrice> {
    let mut offers: HashMap<&str, Vec<Offer>> = HashMap::new();
    for row in rows.iter().filter(|r| r.peer.as_deref() != Some(own)) {
        for model in &row.models {
            offers.entry(model).or_default().push(Offer {
                prompt_per_mtok: row.price_prompt_per_mtok,
                completion_per_mtok: row.price_completion_per_mtok,
            });
        }
    }
    offers
        .into_iter()
        .filter_map(|(model, offers)| Some((model.to_string(), MarketPrice::of(&offers)?)))
        .collect()
}

/// What the slower readings found last (the channels go straight to the gauges).
#[derive(Default)]
struct Slow {
    market: HashMap<String, MarketPrice>,
    market_workers: u64,
}

/// Every second, the gauges that describe a moment (what each engine runs and holds, the
/// price, reachability, the evidence's remaining life) and the node's snapshot for `board`;
/// every [`SLOW_SAMPLES`], the channels' unsettled value (a journal read, off the runtime's
/// threads) and the market's prices. `worker` is `None` on a node that serves no model.
pub async fn sample(
    worker: Option<Worker>,
    network: Network,
    market: MarketService,
    metrics: NodeMetrics,
    board: Board,
) {
    let own = network.peer_id().to_string();
    let mut slow = Slow::default();
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for n in 0u64.. {
        tick.tick().await;
        if n % SLOW_SAMPLES == 0 {
            refresh(&mut slow, worker.as_ref(), &market, &metrics, &own).await;
        }
        let state = network.state();
        metrics.set_reachability(reachability_label(&state.reachability));
        let mut engine = Engine::default();
        let mut models = Vec::new();
        let mut attestation = None;
        if let Some(worker) = &worker {
            let price = worker.price();
            for (id, e) in worker.engines() {
                let (running, kv) = (e.active(), e.kv_cache_usage());
                metrics.set_engine(id, running, kv);
                metrics.set_price(id, price.prompt_per_mtok, price.completion_per_mtok);
                engine.running += u64::try_from(running).unwrap_or(u64::MAX);
                engine.kv_cache_usage = engine.kv_cache_usage.max(kv);
                models.push(ModelPrice {
                    model: id.clone(),
                    prompt_per_mtok: price.prompt_per_mtok,
                    completion_per_mtok: price.completion_per_mtok,
                    market: slow.market.get(id).copied(),
                });
            }
            models.sort_by(|a, b| a.model.cmp(&b.model));
            let credentials = worker.attester().current();
            let now = i64::try_from(cocoon_client::clock::unix_now()).unwrap_or(i64::MAX);
            let expires = i64::try_from(credentials.expires_at).unwrap_or(i64::MAX);
            let kind = worker.attester().kind().as_str();
            metrics.set_evidence(kind, expires.saturating_sub(now));
            attestation = Some(Attestation {
                kind: kind.to_string(),
                expires_in_s: expires.saturating_sub(now),
                measurement: credentials.measurement.map(hex::encode).unwrap_or_default(),
            });
        }
        let reading = metrics.reading();
        engine.waiting = reading.waiting;
        board.update(
            cocoon_client::clock::unix_now_ms(),
            Snapshot {
                peer_id: own.clone(),
                totals: reading.totals,
                ttft: reading.ttft,
                engine,
                channels: Channels {
                    open: reading.open_channels,
                    unsettled_nanoton: reading.unsettled_nanoton,
                    chain_transactions: reading.chain_transactions,
                },
                models,
                peers: Peers {
                    connected: u64::try_from(state.connected_peers).unwrap_or(u64::MAX),
                    routing_table: u64::try_from(state.routing_peers).unwrap_or(u64::MAX),
                    reachability: reachability_label(&state.reachability).to_string(),
                    reachability_detail: state.reachability.to_string(),
                    dht_server: state.dht_server,
                    market_workers: slow.market_workers,
                },
                attestation,
            },
        );
    }
}

/// The slower readings: the channels' unsettled value and the market.
async fn refresh(
    slow: &mut Slow,
    worker: Option<&Worker>,
    market: &MarketService,
    metrics: &NodeMetrics,
    own: &str,
) {
    if let Some(ledger) = worker.and_then(Worker::payments) {
        let journal = ledger.journal().clone();
        let open = tokio::task::spawn_blocking(move || {
            let channels = journal.worker_channels()?;
            let mut open = 0;
            let mut unsettled = 0u64;
            for (channel, record) in channels {
                let paid = record.state.best.map_or(0, |b| b.voucher.cumulative);
                if paid > 0 && journal.close_sent(&channel)?.is_none() {
                    open += 1;
                    unsettled = unsettled.saturating_add(paid);
                }
            }
            Ok::<_, cocoon_ledger::journal::JournalError>((open, unsettled))
        })
        .await;
        if let Ok(Ok((open, unsettled))) = open {
            metrics.set_channels(open, unsettled);
        }
    }
    let adverts = market.adverts();
    let relayed = adverts
        .iter()
        .filter(|a| {
            let addrs = cocoon_client::market::advert_addrs(a);
            !addrs.is_empty() && addrs.iter().all(cocoon_p2p::reach::is_relayed)
        })
        .count();
    metrics.set_market_workers(adverts.len().saturating_sub(relayed), relayed);
    slow.market_workers = u64::try_from(adverts.len()).unwrap_or(u64::MAX);
    let rows = WorkerRow::all(&adverts, cocoon_client::clock::unix_now());
    slow.market = market_prices(&rows, own);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(peer: &str, models: &[&str], prompt: u64, completion: u64) -> WorkerRow {
        WorkerRow {
            peer: Some(peer.to_string()),
            models: models.iter().map(|m| m.to_string()).collect(),
            attestation: "dev-insecure",
            measurement: String::new(),
            hardware: String::new(),
            free_slots: 1,
            max_concurrent: 1,
            tokens_per_s: 10.0,
            price_prompt_per_mtok: prompt,
            price_completion_per_mtok: completion,
            min_deposit: 0,
            seq: 1,
            expires_in_s: 60,
        }
    }

    #[test]
    fn the_market_price_leaves_this_node_out_and_goes_by_model() {
        let rows = vec![
            row("me", &["a"], 1, 1),
            row("x", &["a", "b"], 100, 300),
            row("y", &["a"], 200, 100),
            row("z", &["a"], 400, 500),
        ];
        let prices = market_prices(&rows, "me");
        let a = prices["a"];
        assert_eq!(a.workers, 3);
        assert_eq!(
            (a.cheapest_prompt_per_mtok, a.cheapest_completion_per_mtok),
            (100, 100)
        );
        assert_eq!(
            (a.median_prompt_per_mtok, a.median_completion_per_mtok),
            (200, 300)
        );
        assert_eq!(prices["b"].workers, 1);
        assert!(
            market_prices(&rows[..1], "me").is_empty(),
            "alone: no market"
        );
    }
}
