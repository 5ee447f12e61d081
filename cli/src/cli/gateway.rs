//! `cocoon gateway`: the OpenAI HTTP API over the light client.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use cocoon_worker::config;
use cocoon_worker::daemon;

use super::*;

#[derive(Debug, Args)]
pub(crate) struct GatewayArgs {
    /// Address to serve on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub(crate) listen: std::net::SocketAddr,
    /// Bootstrap peers (multiaddrs with /p2p/<id>).
    #[arg(long, env = "COCOON_BOOTSTRAP", value_delimiter = ',')]
    pub(crate) bootstrap: Vec<String>,
    /// Also find peers on the LAN with mDNS.
    #[arg(long)]
    pub(crate) mdns: bool,
    /// Require `Authorization: Bearer KEY` on every request.
    #[arg(long = "api-key", env = "COCOON_GATEWAY_API_KEY")]
    pub(crate) gateway_key: Option<String>,
    /// Identity, payment journal and reputation [default: $COCOON_HOME/client].
    #[arg(long, env = "COCOON_CLIENT_DATA_DIR")]
    pub(crate) data_dir: Option<PathBuf>,
    /// Largest request body, bytes.
    #[arg(long, default_value_t = 1 << 20)]
    pub(crate) max_body: usize,
    /// Seconds a connection may take to send a request head (idle keep-alive included).
    #[arg(long, default_value_t = 15)]
    pub(crate) header_timeout: u64,
    /// Seconds a request body may take to arrive.
    #[arg(long, default_value_t = 30)]
    pub(crate) body_timeout: u64,
    /// Most connections open at once.
    #[arg(long, default_value_t = 1024)]
    pub(crate) max_connections: usize,
    /// Most connections open at once from one client address.
    #[arg(long, default_value_t = 64)]
    pub(crate) max_connections_per_address: usize,
    #[command(flatten)]
    pub(crate) pay: PayArgs,
    /// Most channels (so concurrent jobs) with one worker at a time.
    #[arg(long, default_value_t = 4)]
    pub(crate) channels_per_worker: usize,
    #[command(flatten)]
    pub(crate) trust: TrustArgs,
    #[command(flatten)]
    pub(crate) chain: ChainArgs,
    /// Serve Prometheus metrics (`/metrics`: requests by endpoint and status, latency,
    /// failovers, nanoTON paid) on this address, e.g. 127.0.0.1:9465. Off by default.
    #[arg(long, env = "COCOON_GATEWAY_METRICS")]
    pub(crate) metrics: Option<std::net::SocketAddr>,
}

pub(crate) async fn gateway(args: GatewayArgs) -> anyhow::Result<()> {
    let serve = cocoon_gateway::http::ServeConfig {
        header_timeout: Duration::from_secs(args.header_timeout),
        max_connections: args.max_connections,
        max_per_address: args.max_connections_per_address,
        ..Default::default()
    };
    serve.validate()?;
    anyhow::ensure!(args.body_timeout > 0, "--body-timeout must be at least 1");
    anyhow::ensure!(args.max_body > 0, "--max-body must be at least 1");
    let mut builder = cocoon_client::light::LightClient::builder()
        .mdns(args.mdns)
        .trust(args.trust.trust())
        .payments(cocoon_client::payments::PaymentConfig {
            channels_per_worker: args.channels_per_worker,
            ..args.pay.config()
        });
    if let Some(max) = args.pay.max_price {
        builder = builder.max_price_per_mtok(max);
    }
    for addr in config::parse_addrs("bootstrap", &args.bootstrap)? {
        builder = builder.bootstrap(addr);
    }
    if let Some(dir) = &args.data_dir {
        builder = builder.data_dir(dir);
    }
    if let Some(url) = &args.chain.url {
        builder = builder.chain(url, args.chain.api_key.clone());
    }
    let metrics = match args.metrics {
        Some(addr) => {
            let mut registry = cocoon_metrics::MetricsRegistry::new();
            let gateway = registry.gateway();
            let router = cocoon_metrics::router(registry.finish());
            let bound = serve_metrics(addr, router).await?;
            println!("metrics on http://{bound}/metrics");
            Some(gateway)
        }
        None => None,
    };
    let client = std::sync::Arc::new(builder.build().await?);
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let router = cocoon_gateway::router(
        client.clone(),
        cocoon_gateway::GatewayConfig {
            api_key: args.gateway_key,
            max_body: args.max_body,
            body_timeout: Duration::from_secs(args.body_timeout),
            metrics,
            ..Default::default()
        },
    );
    println!("gateway listening on http://{}", listener.local_addr()?);
    cocoon_gateway::http::serve(listener, router, serve, daemon::shutdown_signal()).await?;
    Ok(())
}
