//! `cocoon demo`: a whole network on loopback and one paid job on it.

use std::io::Write;

use anyhow::Context;
use clap::Args;

use super::*;

#[derive(Debug, Args)]
pub(crate) struct DemoArgs {
    /// Worker processes to start.
    #[arg(long, default_value_t = 2)]
    pub(crate) workers: usize,
    /// The question to ask.
    #[arg(long, default_value = "What is the capital of France?")]
    pub(crate) prompt: String,
    #[command(flatten)]
    pub(crate) sampling: SamplingArgs,
    /// Print one JSON object at the end instead of streaming text.
    #[arg(long)]
    pub(crate) json: bool,
}

pub(crate) async fn run_demo(args: DemoArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.workers >= 1, "--workers must be at least 1");
    let json = args.json;
    let options = cocoon_worker::demo::DemoOptions {
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
    let report = cocoon_worker::demo::run(
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
