//! `cocoon market`: the live worker adverts the network knows.

use std::time::Duration;

use clap::Args;
use cocoon_node::attestation;
use cocoon_node::config;

use super::*;

#[derive(Debug, Args)]
pub(crate) struct MarketArgs {
    /// Bootstrap peer multiaddr (with /p2p/<id>); repeatable.
    #[arg(long, env = "COCOON_BOOTSTRAP", value_delimiter = ',', required = true)]
    pub(crate) bootstrap: Vec<String>,
    /// Also listen to gossip for this many seconds before printing.
    #[arg(long, default_value_t = 0)]
    pub(crate) wait: u64,
    /// Print JSON (one array of adverts).
    #[arg(long)]
    pub(crate) json: bool,
}

pub(crate) async fn market(args: MarketArgs) -> anyhow::Result<()> {
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
