//! `cocoon node`: a DHT node, and a worker when it has models.
//!
//! Start-up order: identity → network (prints peer id and listen addresses) → models loaded
//! into engines → provider records announced → `ready`. The lines on stdout are a small
//! stable interface ([`PEER_LINE`], [`LISTEN_LINE`], [`READY_LINE`]) that `cocoon demo`, the
//! end-to-end tests and scripts read; logs go to stderr.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use cocoon_inference as inference;
use cocoon_p2p::job::JobConfig;
use cocoon_p2p::{identity, Network, NetworkError};

use crate::config::NodeConfig;
use crate::models::{self, ModelError};
use crate::progress::Progress;
use crate::worker::Worker;
use cocoon_client::market::MarketService;

/// Stdout line prefix giving the node's peer id.
pub const PEER_LINE: &str = "peer id: ";
/// Stdout line prefix giving the metrics endpoint (`cocoon node --metrics`): its URL.
pub const METRICS_LINE: &str = "metrics: ";
/// Stdout line prefix saying how others reach the node, printed at start and on each change.
pub const REACH_LINE: &str = "reachability: ";
/// Stdout line prefix giving one full listen multiaddr (with `/p2p/<id>`).
pub const LISTEN_LINE: &str = "listening on: ";
/// Stdout line prefix naming a served model.
pub const SERVING_LINE: &str = "serving: ";
/// Stdout line prefix naming the evidence kind a worker presents (`tdx`, `dev-insecure`).
pub const ATTESTATION_LINE: &str = "attestation: ";
/// Stdout line prefix giving a worker's payout wallet (`0:<hex>`).
pub const PAYOUT_LINE: &str = "payout: ";
/// Stdout line prefix naming the chain a worker settles on when it runs its own
/// (`--chain local`): `local <url>`.
pub const CHAIN_LINE: &str = "chain: ";
/// Stdout line prefix for an on-chain settlement action (`worker_close|challenge|finalize
/// CHANNEL AMOUNT`).
pub const SETTLED_LINE: &str = "settled: ";
/// How often a worker with a chain checks whether a channel is due for settlement.
pub const SETTLE_EVERY: Duration = Duration::from_secs(30);
/// Stdout line printed once the node is up (and its models announced).
pub const READY_LINE: &str = "ready";

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// Identity key trouble.
    #[error(transparent)]
    Identity(#[from] identity::IdentityError),
    /// Network trouble.
    #[error(transparent)]
    Network(#[from] NetworkError),
    /// A model could not be found.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// A model could not be loaded.
    #[error("cannot load model {id} from {path}: {source}")]
    Load {
        /// Model id.
        id: String,
        /// Its path.
        path: String,
        /// Why.
        source: inference::LoadError,
    },
    /// Attestation could not be set up.
    #[error(transparent)]
    Attestation(#[from] cocoon_client::trust::AttestationSetupError),
    /// Two models with the same id.
    #[error("model id {0} is given twice")]
    DuplicateModel(String),
    /// The payment journal could not be opened.
    #[error(transparent)]
    Payments(#[from] cocoon_client::payments::PaymentError),
    /// The worker's advert would be invalid: it would never be used.
    #[error(transparent)]
    Advert(#[from] crate::advertiser::AdvertCheckError),
}

pub use crate::telemetry::Telemetry;

/// Runs a node until `shutdown` completes, printing the stdout interface lines; `progress`
/// shows each model while it loads (give [`Silent`](crate::progress::Silent) for none).
pub async fn run(
    config: NodeConfig,
    shutdown: impl Future<Output = ()>,
    progress: &dyn Progress,
) -> Result<(), NodeError> {
    run_with(config, shutdown, progress, None).await
}

/// [`run`], recording into `telemetry`.
pub async fn run_with(
    config: NodeConfig,
    shutdown: impl Future<Output = ()>,
    progress: &dyn Progress,
    telemetry: Option<Telemetry>,
) -> Result<(), NodeError> {
    let (p2p_metrics, metrics, board) = match telemetry {
        Some(t) => (Some(t.libp2p), Some(t.node), Some(t.board)),
        None => (None, None, None),
    };
    let keypair = identity::load_or_create(&config.data_dir)?;
    let signing_key = crate::advertiser::signing_key(&keypair);
    // A worker's payment journal is opened (and checked) before anything slow starts: a
    // damaged one stops the node now, not after its models have loaded. The channel's
    // worker key is the node's identity key; payouts go to the wallet of the same key.
    let worker_ledger = match &signing_key {
        Some(key) if !config.models.is_empty() => {
            let wallet = cocoon_ton::wallet::account_of(key)
                .map_err(|e| cocoon_client::payments::PaymentError::Terms(e.to_string()))?;
            let ledger = tokio::task::block_in_place(|| {
                crate::payments::WorkerLedger::open(
                    &config.data_dir.join(cocoon_client::payments::JOURNAL_FILE),
                    key.verifying_key().to_bytes(),
                    wallet,
                    config.payments.credit_limit,
                )
            })?;
            Some((ledger, wallet))
        }
        _ => None,
    };
    let network = Network::start_with_metrics(keypair, config.network.clone(), p2p_metrics)?;
    // Every node validates and forwards adverts and answers market syncs.
    let market = MarketService::start_with_metrics(&network, Default::default(), metrics.clone())?;
    println!("{PEER_LINE}{}", network.peer_id());
    if !config.network.listen.is_empty() {
        network
            .wait_for("listening", Duration::from_secs(10), |s| {
                !s.listen_addrs.is_empty()
            })
            .await?;
        // Give listeners on other interfaces a moment to report too.
        tokio::time::sleep(Duration::from_millis(100)).await;
        for addr in network.state().listen_addrs {
            println!("{LISTEN_LINE}{addr}");
        }
    }
    // How others reach us (public, mapped, relayed, local), now and whenever it changes.
    let mut state = network.subscribe();
    tokio::spawn(async move {
        let mut last = None;
        loop {
            let now = state.borrow_and_update().reachability.clone();
            if last.as_ref() != Some(&now) {
                println!("{REACH_LINE}{now}");
                last = Some(now);
            }
            if state.changed().await.is_err() {
                return;
            }
        }
    });

    let mut engines = HashMap::new();
    for spec in &config.models {
        let resolved = models::resolve(spec, None)?;
        let source = inference::ModelSource::from_path(&resolved.path).map_err(|source| {
            NodeError::Load {
                id: resolved.id.clone(),
                path: resolved.path.display().to_string(),
                source,
            }
        })?;
        let engine_config = inference::EngineConfig {
            device: config.device,
            max_concurrent: config.max_concurrent,
            dequantize_max_f32_bytes: if config.keep_quantized {
                0
            } else {
                inference::EngineConfig::default().dequantize_max_f32_bytes
            },
            ..Default::default()
        };
        progress.phase(&format!(
            "loading {} from {}",
            resolved.id,
            resolved.path.display()
        ));
        let loaded =
            tokio::task::block_in_place(|| inference::Engine::load(&source, engine_config));
        progress.finish();
        let engine = loaded.map_err(|source| NodeError::Load {
            id: resolved.id.clone(),
            path: resolved.path.display().to_string(),
            source,
        })?;
        let info = engine.info();
        println!(
            "{SERVING_LINE}{} ({}, {} file run as {} on {}, {} jobs at once)",
            resolved.id,
            info.name,
            info.quantization,
            info.runtime_weights,
            info.device,
            config.max_concurrent
        );
        if engines.insert(resolved.id.clone(), engine).is_some() {
            return Err(NodeError::DuplicateModel(resolved.id));
        }
    }

    let mut settler = None;
    let mut local_chain = None;
    let mut sampled = None;
    let serve = if engines.is_empty() {
        None
    } else {
        if !config.network.bootstrap.is_empty() {
            // Announcing to nobody is wasted; wait briefly for the routing table to fill.
            // The network re-announces on the first routing update in any case.
            let _ = network
                .wait_for("DHT peers", Duration::from_secs(10), |s| {
                    s.routing_peers > 0
                })
                .await;
        }
        let peer_id = network.peer_id();
        let settings = config.attestation.clone();
        let (attester, why_dev) = tokio::task::block_in_place(|| {
            crate::attestation::worker_attester(&settings, peer_id)
        })?;
        let measurement = attester
            .current()
            .measurement
            .map(hex::encode)
            .unwrap_or_default();
        match why_dev {
            None => println!("{ATTESTATION_LINE}tdx (MRTD {measurement})"),
            Some(why) => {
                println!("{ATTESTATION_LINE}dev-insecure ({why})");
                tracing::warn!(
                    "this worker cannot prove what it runs ({why}); it presents INSECURE \
                     development evidence, which clients refuse unless started with \
                     --insecure-dev-attestation"
                );
            }
        }
        tokio::spawn(rotate(attester.clone()));
        let mut worker = Worker::new(engines, JobConfig::default(), attester, peer_id);
        let mut payout = None;
        if let (Some(key), Some((mut ledger, wallet))) = (&signing_key, worker_ledger) {
            if let Some((url, api_key)) = &config.chain {
                let url = match url.as_str() {
                    "local" => {
                        // A chain of this node's own: the TVM emulator as a child process,
                        // its state kept in the data dir, stopped with the node.
                        let chain = start_local_chain(&config.data_dir).await?;
                        let url = chain.http().base_url().to_string();
                        println!("{CHAIN_LINE}local {url}");
                        local_chain = Some(chain);
                        url
                    }
                    url => url.to_string(),
                };
                ledger =
                    ledger.with_chain(cocoon_client::chain::connect(&url, api_key.clone(), key)?);
            }
            println!("{PAYOUT_LINE}0:{}", hex::encode(wallet));
            payout = Some(wallet);
            let ledger = std::sync::Arc::new(ledger);
            if config.chain.is_some() {
                settler = Some(crate::settlement::Settler::spawn_with_metrics(
                    ledger.clone(),
                    config.settle.clone(),
                    SETTLE_EVERY,
                    metrics.clone(),
                ));
            }
            worker = worker.with_payments(ledger, config.payments.voucher_timeout);
        }
        if let Ok(core) = cocoon_gossip::PriceCore::new(config.price.clone()) {
            worker.set_price(cocoon_client::payments::job_price(core.price()));
        }
        if let Some(m) = &metrics {
            worker = worker.with_metrics(m.clone());
        }
        for id in worker.model_ids() {
            network.provide(id).await?;
        }
        match signing_key {
            Some(key) => {
                let advertiser = crate::advertiser::AdvertiserConfig {
                    price: config.price.clone(),
                    max_concurrent: u32::try_from(config.max_concurrent).unwrap_or(u32::MAX),
                    payout,
                    ..Default::default()
                };
                crate::advertiser::check_first(
                    &worker,
                    &network.state().shareable,
                    &key,
                    &advertiser,
                    cocoon_client::clock::unix_now(),
                )?;
                tokio::spawn(crate::advertiser::run(
                    worker.clone(),
                    network.clone(),
                    market.clone(),
                    key,
                    advertiser,
                ));
            }
            None => tracing::warn!("the identity is not ed25519: no adverts"),
        }
        sampled = Some(worker.clone());
        Some(tokio::spawn(worker.serve(network.clone())))
    };
    if let (Some(metrics), Some(board)) = (metrics, board) {
        tokio::spawn(crate::telemetry::sample(
            sampled,
            network.clone(),
            market.clone(),
            metrics,
            board,
        ));
    }
    println!("{READY_LINE}");

    shutdown.await;
    tracing::info!("shutting down");
    network.shutdown().await;
    if let Some(settler) = settler {
        // No more jobs: the settlement owner runs its final pass, after any under way.
        let report = settler.shutdown().await;
        for s in report.settled {
            println!("{SETTLED_LINE}{} {} {}", s.action, s.channel, s.amount);
        }
        if let Some(a) = report.anchored {
            println!(
                "{SETTLED_LINE}anchor {} {}",
                hex::encode(a.root),
                a.last + 1 - a.first
            );
        }
    }
    if let Some(task) = serve {
        task.abort();
    }
    drop(local_chain);
    Ok(())
}

/// Starts a local chain for `--chain local`, its state in `data_dir/localchain.json`.
async fn start_local_chain(
    data_dir: &std::path::Path,
) -> Result<cocoon_ton::LocalChain, NodeError> {
    use cocoon_ton::{npm, LocalChain, LocalChainConfig};
    let err = |e: String| NodeError::Payments(cocoon_client::payments::PaymentError::Chain(e));
    let dir = LocalChain::locate_contract_dir().map_err(|e| err(e.to_string()))?;
    let d = dir.clone();
    tokio::task::spawn_blocking(move || npm::install(&d))
        .await
        .map_err(|e| err(e.to_string()))?
        .map_err(|e| err(e.to_string()))?;
    let mut config = LocalChainConfig::new(dir);
    config.state = Some(data_dir.join("localchain.json"));
    LocalChain::start(config)
        .await
        .map_err(|e| err(e.to_string()))
}

/// Renews the enclave key and its evidence before they expire.
async fn rotate(attester: std::sync::Arc<cocoon_p2p::attest::attester::Attester>) {
    let mut tick = tokio::time::interval(Duration::from_secs(30));
    loop {
        tick.tick().await;
        let a = attester.clone();
        let now = cocoon_client::clock::unix_now();
        match tokio::task::spawn_blocking(move || a.rotate_if_due(now)).await {
            Ok(Ok(true)) => tracing::info!("enclave key and evidence rotated"),
            Ok(Ok(false)) => {}
            Ok(Err(e)) => tracing::error!("cannot renew attestation evidence: {e}"),
            Err(e) => tracing::error!("attestation renewal task failed: {e}"),
        }
    }
}

/// Completes on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
