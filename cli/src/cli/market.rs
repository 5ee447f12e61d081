//! `cocoon market`: the live worker adverts the network knows.

use std::time::Duration;

use clap::Args;
use cocoon_client::market::WorkerRow;
use cocoon_worker::config;

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
    let adverts = market.adverts();
    network.shutdown().await;
    let rows = WorkerRow::all(&adverts, cocoon_client::clock::unix_now());
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
            r.peer.as_deref().unwrap_or("?"),
            r.models.join(","),
            r.attestation,
            format!("{}/{}", r.free_slots, r.max_concurrent),
            r.tokens_per_s,
            r.price_prompt_per_mtok,
            r.price_completion_per_mtok,
        );
    }
    println!(
        "{} adverts; prices in nanoTON per million tokens",
        rows.len()
    );
    Ok(())
}
