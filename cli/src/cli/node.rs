//! `cocoon node`: a DHT node, and a worker when it serves models.

use std::path::PathBuf;

use clap::Args;
use cocoon_worker::config::{FileConfig, NodeConfig, Overrides};
use cocoon_worker::daemon;

use super::*;

#[derive(Debug, Args)]
pub(crate) struct NodeArgs {
    /// TOML config file; flags and environment override it.
    #[arg(long, env = "COCOON_CONFIG")]
    pub(crate) config: Option<PathBuf>,
    /// Data directory holding the node identity [default: $COCOON_HOME/node, or the user
    /// data dir]/cocoon.
    #[arg(long, env = "COCOON_DATA_DIR")]
    pub(crate) data_dir: Option<PathBuf>,
    /// Listen multiaddr; repeat for several [default: QUIC and TCP on 0.0.0.0, any port].
    #[arg(long, env = "COCOON_LISTEN", value_delimiter = ',')]
    pub(crate) listen: Vec<String>,
    /// Bootstrap peer multiaddr (best with /p2p/<peer id>); repeat for several. None starts a
    /// new network.
    #[arg(long, env = "COCOON_BOOTSTRAP", value_delimiter = ',')]
    pub(crate) bootstrap: Vec<String>,
    /// Address to advertise to other peers (e.g. behind a port forward); repeatable.
    #[arg(
        long = "external-addr",
        env = "COCOON_EXTERNAL_ADDR",
        value_delimiter = ','
    )]
    pub(crate) external_addr: Vec<String>,
    /// Model to serve: a .gguf file, a safetensors directory, or a known name (see `cocoon
    /// model list`); repeatable. Without one the node only routes the DHT.
    #[arg(long, env = "COCOON_MODEL", value_delimiter = ',')]
    pub(crate) model: Vec<String>,
    /// Inference device: auto, cpu or cuda [default: auto].
    #[arg(long, env = "COCOON_DEVICE")]
    pub(crate) device: Option<String>,
    /// Jobs run at once per model; more are answered `busy` [default: 8].
    #[arg(long, env = "COCOON_MAX_CONCURRENT")]
    pub(crate) max_concurrent: Option<usize>,
    /// Do not discover peers on the LAN with mDNS (on by default).
    #[arg(long)]
    pub(crate) no_mdns: bool,
    /// DHT mode: auto (answer DHT queries once a peer confirms this node can be dialled
    /// directly) or server (always) [default: auto; server without --bootstrap].
    #[arg(long, env = "COCOON_DHT")]
    pub(crate) dht: Option<String>,
    /// Offer relay reservations to nodes behind NAT: auto (once this node's public address
    /// is confirmed), on or off [default: auto].
    #[arg(long, env = "COCOON_RELAY")]
    pub(crate) relay: Option<String>,
    /// Bytes one circuit through this node's relay may carry [default: 131072, enough for
    /// hole punching; raise it (and --relay-max-circuit-secs) to carry jobs for your own
    /// workers].
    #[arg(long)]
    pub(crate) relay_max_circuit_bytes: Option<u64>,
    /// Seconds one circuit through this node's relay may last [default: 120].
    #[arg(long)]
    pub(crate) relay_max_circuit_secs: Option<u64>,
    /// Relay reservations to keep while this node cannot be dialled directly [default: 2].
    #[arg(long)]
    pub(crate) relays: Option<usize>,
    /// Do not ask the router for a port mapping (UPnP IGD; on by default).
    #[arg(long)]
    pub(crate) no_upnp: bool,
    /// For models on candle's runtime (not GGUF Q4_1/Q8_0 llamas, which run on cocoon's own
    /// batched kernels): keep small quantized models on candle's quantized kernels instead of
    /// converting them to f32 at load (faster; 8-bit activations can change greedy answers).
    #[arg(long)]
    pub(crate) keep_quantized: bool,
    /// Evidence to present: auto (TDX if this machine can produce quotes, else insecure dev
    /// evidence), tdx (refuse to start without it) or dev-insecure [default: auto].
    #[arg(long, env = "COCOON_ATTESTATION")]
    pub(crate) attestation: Option<String>,
    /// A fixed price instead of the dynamic policy: nanoTON per million prompt tokens and
    /// per million completion tokens, e.g. `--price 1000,3000`.
    #[arg(long, env = "COCOON_PRICE", value_parser = parse_price)]
    pub(crate) price: Option<(u64, u64)>,
    /// Serve Prometheus metrics (`/metrics`: inference under vLLM's names, earnings,
    /// libp2p) and the operator's dashboard (`/`, its JSON at `/api/status`, read by `cocoon
    /// status`) on this address, e.g. 127.0.0.1:9464. Off by default.
    #[arg(long, env = "COCOON_METRICS")]
    pub(crate) metrics: Option<std::net::SocketAddr>,
    #[command(flatten)]
    pub(crate) chain: ChainArgs,
}

pub(crate) fn parse_price(s: &str) -> Result<(u64, u64), String> {
    let (a, b) = s
        .split_once(',')
        .ok_or("expected PROMPT,COMPLETION (nanoTON per million tokens)")?;
    let n = |x: &str| x.trim().parse::<u64>().map_err(|e| format!("{x:?}: {e}"));
    Ok((n(a)?, n(b)?))
}

pub(crate) async fn node(args: NodeArgs) -> anyhow::Result<()> {
    let file = match &args.config {
        Some(path) => FileConfig::load(path)?,
        None => FileConfig::default(),
    };
    let config = NodeConfig::merge(
        file,
        Overrides {
            data_dir: args.data_dir,
            listen: args.listen,
            bootstrap: args.bootstrap,
            external_addresses: args.external_addr,
            mdns: args.no_mdns.then_some(false),
            dht: args.dht,
            relay: args.relay,
            relay_max_circuit_bytes: args.relay_max_circuit_bytes,
            relay_max_circuit_secs: args.relay_max_circuit_secs,
            relays: args.relays,
            upnp: args.no_upnp.then_some(false),
            models: args.model,
            device: args.device,
            max_concurrent: args.max_concurrent,
            keep_quantized: args.keep_quantized.then_some(true),
            attestation: args.attestation,
            fixed_price: args.price,
            chain: args.chain.url,
            chain_api_key: args.chain.api_key,
        },
    )?;
    let telemetry = match args.metrics {
        Some(addr) => {
            let mut registry = cocoon_metrics::MetricsRegistry::new();
            let board = cocoon_metrics::status::Board::new(
                Default::default(),
                cocoon_client::clock::unix_now_ms(),
            );
            let telemetry = daemon::Telemetry {
                libp2p: registry.libp2p(),
                node: registry.node(),
                board: board.clone(),
            };
            // `/metrics`, and the dashboard (`/`, `/api/status`) on the same listener.
            let router = cocoon_metrics::router(registry.finish())
                .merge(cocoon_metrics::dashboard::router(board));
            let bound = serve_metrics(addr, router).await?;
            println!("{}http://{bound}/metrics", daemon::METRICS_LINE);
            Some(telemetry)
        }
        None => None,
    };
    // A spinner per model while it loads, on a terminal only.
    daemon::run_with(
        config,
        daemon::shutdown_signal(),
        &progress::Bars::stderr(false),
        telemetry,
    )
    .await?;
    Ok(())
}
