//! `cocoon infer`: one job on the network, the answer streamed to stdout.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use cocoon_client::infer::{self as client, ClientConfig, InferRequest};
use cocoon_p2p::identity;
use cocoon_p2p::job::{ChatMessage, JobInput};
use cocoon_worker::config;
use cocoon_worker::models;

use super::*;

#[derive(Debug, Args)]
pub(crate) struct InferArgs {
    /// Bootstrap peer multiaddr; repeatable.
    #[arg(long, env = "COCOON_BOOTSTRAP", value_delimiter = ',')]
    pub(crate) bootstrap: Vec<String>,
    /// Model id to run.
    #[arg(long, default_value = models::SMOLLM2.id)]
    pub(crate) model: String,
    /// Send the prompt as raw text for completion instead of as a chat message.
    #[arg(long)]
    pub(crate) raw: bool,
    /// A system message before the prompt (chat only).
    #[arg(long)]
    pub(crate) system: Option<String>,
    #[command(flatten)]
    pub(crate) sampling: SamplingArgs,
    /// Print one JSON object at the end instead of streaming text.
    #[arg(long)]
    pub(crate) json: bool,
    /// The client's identity, payment journal and reputation record (default:
    /// `$COCOON_HOME/client`). The identity key also signs the client's vouchers.
    #[arg(long, env = "COCOON_CLIENT_DATA_DIR")]
    pub(crate) data_dir: Option<PathBuf>,
    /// Also find peers on the LAN with mDNS.
    #[arg(long)]
    pub(crate) mdns: bool,
    #[command(flatten)]
    pub(crate) pay: PayArgs,
    #[command(flatten)]
    pub(crate) chain: ChainArgs,
    /// Seconds to search the DHT for a worker.
    #[arg(long, default_value_t = 20)]
    pub(crate) discovery_timeout: u64,
    #[command(flatten)]
    pub(crate) trust: TrustArgs,
    /// The prompt.
    pub(crate) prompt: String,
}

pub(crate) async fn infer(args: InferArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        !args.bootstrap.is_empty() || args.mdns,
        "give --bootstrap MULTIADDR (or --mdns) so the client can find the network"
    );
    let data_dir = args
        .data_dir
        .clone()
        .unwrap_or_else(|| cocoon_client::cocoon_home().join("client"));
    let keypair = identity::load_or_create(&data_dir)?;
    let key = cocoon_worker::advertiser::signing_key(&keypair)
        .context("the client identity is not an ed25519 key")?;
    let ledger = tokio::task::block_in_place(|| {
        cocoon_client::payments::ClientLedger::open(
            &data_dir.join(cocoon_client::payments::JOURNAL_FILE),
            key.clone(),
            cocoon_ton::wallet::account_of(&key)
                .map_err(|e| cocoon_client::payments::PaymentError::Terms(e.to_string()))?,
            args.pay.config(),
        )
    })?;
    let ledger = match &args.chain.url {
        Some(url) => ledger.with_chain(cocoon_client::chain::connect(
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
