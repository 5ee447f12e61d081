//! The `cocoon` subcommands, one module each; this one holds the flags and helpers several
//! share (payment, trust, chain, sampling and account flags, JSON output).

pub(crate) mod attest;
pub(crate) mod demo;
pub(crate) mod gateway;
pub(crate) mod infer;
pub(crate) mod market;
pub(crate) mod model;
pub(crate) mod node;
pub(crate) mod progress;
pub(crate) mod status;
pub(crate) mod wallet;

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use cocoon_client::infer as client;
use cocoon_client::trust;
use cocoon_p2p::job::Sampling;
use cocoon_p2p::{DhtMode, Network, NetworkConfig};
use cocoon_worker::accounts;

pub(crate) use attest::*;
pub(crate) use demo::*;
pub(crate) use gateway::*;
pub(crate) use infer::*;
pub(crate) use market::*;
pub(crate) use model::*;
pub(crate) use node::*;
pub(crate) use status::*;
pub(crate) use wallet::*;

/// How a client pays.
#[derive(Debug, Args)]
pub(crate) struct PayArgs {
    /// Pay every this many completion tokens.
    #[arg(long, default_value_t = 16)]
    pub(crate) pay_every: u32,
    /// Deposit of a new payment channel, nanoTON.
    #[arg(long, default_value_t = 1_000_000_000)]
    pub(crate) deposit: u64,
    /// Highest price accepted, nanoTON per million tokens (prompt and completion).
    #[arg(long)]
    pub(crate) max_price: Option<u64>,
}

impl PayArgs {
    pub(crate) fn config(&self) -> cocoon_client::payments::PaymentConfig {
        cocoon_client::payments::PaymentConfig {
            pay_every: self.pay_every,
            deposit: self.deposit,
            ..Default::default()
        }
    }
}

/// Which account a money command acts on.
#[derive(Debug, Args)]
pub(crate) struct AccountArgs {
    /// The data dir holding the identity and the payment journal [default:
    /// $COCOON_HOME/client; give a node's data dir for a worker].
    #[arg(long)]
    pub(crate) data_dir: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) chain: ChainArgs,
    /// Print JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

impl AccountArgs {
    pub(crate) fn dir(&self) -> PathBuf {
        self.data_dir
            .clone()
            .unwrap_or_else(|| cocoon_client::cocoon_home().join("client"))
    }

    pub(crate) fn chain(
        &self,
        key: &ed25519_dalek::SigningKey,
    ) -> anyhow::Result<Option<std::sync::Arc<cocoon_ton::client::ChannelClient>>> {
        Ok(match &self.chain.url {
            Some(url) => Some(cocoon_client::chain::connect(
                url,
                self.chain.api_key.clone(),
                key,
            )?),
            None => None,
        })
    }

    pub(crate) fn need_chain(
        &self,
        key: &ed25519_dalek::SigningKey,
    ) -> anyhow::Result<std::sync::Arc<cocoon_ton::client::ChannelClient>> {
        self.chain(key)?
            .ok_or_else(|| accounts::AccountError::NoChain.into())
    }
}

#[derive(Debug, Args)]
pub(crate) struct TrustArgs {
    /// Accept workers with INSECURE development attestation (no TEE): for local testing only;
    /// a warning is printed on every job.
    #[arg(long)]
    pub(crate) insecure_dev_attestation: bool,
    /// Trust policy file (TOML: allowed_mrtd, allowed_rtmrs, accepted_tcb_statuses, ...)
    /// [default: allowlists nothing].
    #[arg(long, env = "COCOON_POLICY")]
    pub(crate) policy: Option<PathBuf>,
    /// Directory of cached DCAP collateral [default: $COCOON_HOME/collateral].
    #[arg(long, env = "COCOON_COLLATERAL_DIR")]
    pub(crate) collateral_dir: Option<PathBuf>,
    /// PCCS URL to fetch DCAP collateral from when it is not attached or cached.
    #[arg(long, env = "COCOON_PCCS_URL")]
    pub(crate) pccs_url: Option<String>,
}

impl TrustArgs {
    pub(crate) fn trust(&self) -> trust::ClientTrust {
        trust::ClientTrust {
            policy_file: self.policy.clone(),
            insecure_dev: self.insecure_dev_attestation,
            collateral_dir: self.collateral_dir.clone(),
            pccs_url: self.pccs_url.clone(),
        }
    }
}

/// Where payments go on chain.
#[derive(Debug, Args)]
pub(crate) struct ChainArgs {
    /// TON HTTP API endpoint (toncenter v2 style, e.g. a testnet or mainnet toncenter URL,
    /// or a local chain's `http://127.0.0.1:PORT`); `local` makes `cocoon node` start a local
    /// chain of its own (the TVM emulator, needs Node.js). Without it payments stay
    /// off-chain.
    #[arg(long = "chain", env = "COCOON_CHAIN")]
    pub(crate) url: Option<String>,
    /// API key for the endpoint.
    #[arg(long = "chain-api-key", env = "COCOON_CHAIN_API_KEY")]
    pub(crate) api_key: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct SamplingArgs {
    /// Most tokens to generate.
    #[arg(long, default_value_t = 256)]
    pub(crate) max_tokens: u32,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    pub(crate) temperature: f64,
    /// Nucleus sampling threshold in (0, 1].
    #[arg(long)]
    pub(crate) top_p: Option<f64>,
    /// Sample from the k most likely tokens only.
    #[arg(long)]
    pub(crate) top_k: Option<u32>,
    /// Sampler seed.
    #[arg(long, default_value_t = 0)]
    pub(crate) seed: u64,
    /// Stop before this string; repeatable.
    #[arg(long)]
    pub(crate) stop: Vec<String>,
}

impl SamplingArgs {
    pub(crate) fn sampling(&self) -> Sampling {
        Sampling {
            seed: self.seed,
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: self.top_k,
            max_tokens: self.max_tokens,
            stop: self.stop.clone(),
        }
    }
}

/// Binds `addr` and serves `router` (metrics, a dashboard) there with the gateway's hardened
/// HTTP loop, in the background; returns the bound address (for `:0`).
pub(crate) async fn serve_metrics(
    addr: std::net::SocketAddr,
    router: axum::Router,
) -> anyhow::Result<std::net::SocketAddr> {
    use anyhow::Context;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot serve metrics on {addr}"))?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        let serve = cocoon_gateway::http::serve(
            listener,
            router,
            Default::default(),
            std::future::pending(),
        );
        if let Err(e) = serve.await {
            tracing::error!("metrics endpoint stopped: {e}");
        }
    });
    Ok(bound)
}

pub(crate) fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string(value)?);
    Ok(())
}

/// Starts a light client (DHT client mode, QUIC on any port) and fills its market from the
/// bootstrap peers.
pub(crate) async fn join_as_client(
    keypair: libp2p::identity::Keypair,
    bootstrap: Vec<libp2p::Multiaddr>,
    mdns: bool,
) -> anyhow::Result<(Network, cocoon_client::market::MarketService)> {
    let peers = client::peers_of(&bootstrap);
    let network = Network::start(
        keypair,
        NetworkConfig {
            listen: vec!["/ip4/0.0.0.0/udp/0/quic-v1".parse()?],
            bootstrap,
            mdns,
            dht_mode: DhtMode::Client,
            ..Default::default()
        },
    )?;
    let market = client::join_market(&network, &peers, Duration::from_secs(10)).await?;
    Ok((network, market))
}
