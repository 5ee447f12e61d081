//! The `cocoon` command line: parses the flags, sets up logging and dispatches to
//! [`cli`], one module per subcommand, which call the libraries; see `cocoon --help`.

// The doc comments on flags are the `--help` text, written for a terminal (`/p2p/<id>`).
#![allow(rustdoc::invalid_html_tags)]

mod cli;

use clap::{Parser, Subcommand};
use cocoon_worker::accounts;
use cocoon_worker::config;

use cli::*;

/// cocoon: an open, serverless network for confidential AI inference.
#[derive(Debug, Parser)]
#[command(name = "cocoon", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run a node: a worker when it serves a model, otherwise a DHT node.
    Node(NodeArgs),
    /// Run one job on the network and stream the answer to stdout.
    Infer(InferArgs),
    /// Run a whole network on loopback (bootstrap, workers, client) and one job on it.
    Demo(DemoArgs),
    /// Manage models.
    #[command(subcommand)]
    Model(ModelCmd),
    /// Show the market: the live worker adverts the network knows, with prices and capacity.
    Market(MarketArgs),
    /// Attestation tools: verify a quote offline, check this machine.
    #[command(subcommand)]
    Attest(AttestCmd),
    /// Serve the OpenAI HTTP API (/v1/models, /v1/chat/completions, /v1/completions)
    /// backed by the network.
    Gateway(GatewayArgs),
    /// The node's TON wallet (its identity key, wallet v4r2).
    #[command(subcommand)]
    Wallet(WalletCmd),
    /// Payment channels: list, open, top up, close.
    #[command(subcommand)]
    Channel(ChannelCmd),
    /// The worker's ledger: settle its channels on chain now.
    #[command(subcommand)]
    Ledger(LedgerCmd),
    /// A running node's status (jobs, tokens, TTFT, earnings, price against the market's,
    /// peers, channels, attestation), read from its `--metrics` listener.
    Status(StatusArgs),
}

fn init_logging(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Cmd::Node(args) => {
            init_logging("info,libp2p_mdns=warn");
            runtime.block_on(node(args))
        }
        Cmd::Infer(args) => {
            init_logging("warn");
            runtime.block_on(infer(args))
        }
        Cmd::Demo(args) => {
            // The demo's stdout is a transcript: what the user must see it says itself
            // (the insecure dev attestation, where the node logs are). Logs only for errors.
            init_logging("error");
            runtime.block_on(run_demo(args))
        }
        Cmd::Model(cmd) => {
            init_logging("info");
            model(cmd)
        }
        Cmd::Market(args) => {
            init_logging("warn");
            runtime.block_on(market(args))
        }
        Cmd::Gateway(args) => {
            init_logging("warn");
            runtime.block_on(gateway(args))
        }
        Cmd::Wallet(cmd) => {
            init_logging("warn");
            runtime.block_on(wallet_cmd(cmd))
        }
        Cmd::Channel(cmd) => {
            init_logging("warn");
            runtime.block_on(channel_cmd(cmd))
        }
        Cmd::Ledger(LedgerCmd::Settle(args)) => {
            init_logging("warn");
            runtime.block_on(async {
                let dir = args
                    .data_dir
                    .clone()
                    .unwrap_or_else(config::default_data_dir);
                let key = accounts::key(&dir)?;
                let done = accounts::settle(&dir, &key, args.need_chain(&key)?).await?;
                if args.json {
                    return print_json(&done);
                }
                for s in &done {
                    println!("{} {} {} nanoTON", s.action, s.channel, s.amount);
                }
                if done.is_empty() {
                    println!("nothing to settle");
                }
                Ok(())
            })
        }
        Cmd::Attest(cmd) => {
            init_logging("warn");
            runtime.block_on(attest(cmd))
        }
        Cmd::Status(args) => {
            init_logging("warn");
            runtime.block_on(show_status(args))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed_and_defaults_parse() {
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from([
            "cocoon",
            "infer",
            "--bootstrap",
            "/ip4/127.0.0.1/udp/1/quic-v1",
            "hi",
        ])
        .unwrap();
        match cli.command {
            Cmd::Infer(a) => {
                assert_eq!(a.model, cocoon_worker::models::SMOLLM2.id);
                assert_eq!(a.sampling.max_tokens, 256);
                assert_eq!(a.sampling.temperature, 0.0);
            }
            other => panic!("{other:?}"),
        }
        let cli = Cli::try_parse_from(["cocoon", "status"]).unwrap();
        match cli.command {
            Cmd::Status(a) => {
                assert!(!a.json);
                // The default, unless COCOON_METRICS says otherwise.
                if std::env::var_os("COCOON_METRICS").is_none() {
                    assert_eq!(a.metrics, "http://127.0.0.1:9464");
                }
            }
            other => panic!("{other:?}"),
        }
        let cli = Cli::try_parse_from(["cocoon", "demo"]).unwrap();
        assert!(matches!(
            cli.command,
            Cmd::Demo(DemoArgs { workers: 2, .. })
        ));
    }
}
