//! `cocoon status`: a running node's picture in the terminal (jobs, tokens, TTFT, earnings,
//! price against the market's, peers, channels, attestation), read from the JSON its
//! dashboard serves (`GET /api/status` on the `cocoon node --metrics` listener).

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use cocoon_metrics::dashboard::STATUS_PATH;
use cocoon_metrics::status::{ton, Report, REPORT_VERSION};

/// How long `cocoon status` waits for the node.
const TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Args)]
pub(crate) struct StatusArgs {
    /// The node's metrics listener (`cocoon node --metrics ADDR`): its address or a URL on
    /// it, e.g. the `metrics: http://ADDR/metrics` line the node prints.
    #[arg(long, env = "COCOON_METRICS", default_value = "http://127.0.0.1:9464")]
    pub(crate) metrics: String,
    /// Print the node's JSON (`/api/status`: the status and its history) instead.
    #[arg(long)]
    pub(crate) json: bool,
}

/// The status URL on the listener `metrics` names: `127.0.0.1:9464`,
/// `http://127.0.0.1:9464/`, `http://127.0.0.1:9464/metrics` → `http://127.0.0.1:9464/api/status`.
pub(crate) fn status_url(metrics: &str) -> anyhow::Result<String> {
    let given = metrics.trim();
    let url = if given.contains("://") {
        given.to_string()
    } else {
        format!("http://{given}")
    };
    let Some((scheme, rest)) = url.split_once("://") else {
        bail!("{given:?} is not an address or URL");
    };
    if scheme != "http" && scheme != "https" {
        bail!("{given:?}: the metrics listener speaks http, not {scheme}");
    }
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    if host.is_empty() {
        bail!("{given:?} names no host");
    }
    let path = path.trim_end_matches('/');
    let path = ["metrics", "api/status"]
        .iter()
        .find_map(|known| path.strip_suffix(known))
        .unwrap_or(path)
        .trim_end_matches('/');
    let prefix = if path.is_empty() {
        String::new()
    } else {
        format!("/{path}")
    };
    Ok(format!("{scheme}://{host}{prefix}{STATUS_PATH}"))
}

pub(crate) async fn show_status(args: StatusArgs) -> anyhow::Result<()> {
    let url = status_url(&args.metrics)?;
    // The terminal view needs no history.
    let request = if args.json {
        url.clone()
    } else {
        format!("{url}?last=0")
    };
    let client = reqwest::Client::builder()
        .timeout(TIMEOUT)
        .connect_timeout(TIMEOUT)
        .build()?;
    let response = client.get(&request).send().await.map_err(|e| {
        let why = if e.is_connect() {
            "nothing answers there"
        } else if e.is_timeout() {
            "no answer in time"
        } else {
            "the request failed"
        };
        anyhow::anyhow!(
            "cannot read the node's status at {url}: {why} ({e}). Is a node running with \
             `cocoon node --metrics ADDR`? Pass that address with --metrics."
        )
    })?;
    let code = response.status();
    let body = response
        .text()
        .await
        .with_context(|| format!("reading the answer of {url}"))?;
    if !code.is_success() {
        let excerpt: String = body.chars().take(200).collect();
        bail!("{url} answered {code}: {excerpt} (is it a cocoon node's --metrics listener?)");
    }
    let report: Report = serde_json::from_str(&body)
        .with_context(|| format!("{url} did not answer with a cocoon node's status"))?;
    if report.version != REPORT_VERSION {
        tracing::warn!(
            "the node's status is version {}, this cocoon reads version {REPORT_VERSION}",
            report.version
        );
    }
    if args.json {
        println!("{body}");
    } else {
        print!("{}", render(&report));
    }
    Ok(())
}

fn secs(s: Option<f64>) -> String {
    match s {
        None => "-".into(),
        Some(s) if s < 1.0 => format!("{:.0} ms", s * 1000.0),
        Some(s) => format!("{s:.2} s"),
    }
}

fn duration(s: i64) -> String {
    if s <= 0 {
        return "expired".into();
    }
    let (d, h, m, sec) = (s / 86_400, s % 86_400 / 3_600, s % 3_600 / 60, s % 60);
    if d > 0 {
        format!("{d} d {h} h")
    } else if h > 0 {
        format!("{h} h {m:02} min")
    } else if m > 0 {
        format!("{m} min {sec:02} s")
    } else {
        format!("{sec} s")
    }
}

fn plural(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// The report as the terminal shows it.
pub(crate) fn render(report: &Report) -> String {
    let mut out = String::new();
    let Some(s) = &report.status else {
        out.push_str("the node has not taken its first reading yet: try again in a second\n");
        return out;
    };
    // Writing into a String cannot fail.
    let mut line = |key: &str, value: String| {
        let _ = writeln!(out, "{key:<13}{value}");
    };
    line(
        "node",
        format!(
            "{}, up {}",
            s.peer_id,
            duration(i64::try_from(s.uptime_s).unwrap_or(i64::MAX))
        ),
    );
    let t = &s.totals;
    if s.models.is_empty() {
        line("models", "none (a DHT node)".into());
    } else {
        line(
            "jobs",
            format!(
                "{} finished, {} running, {} waiting, {}; {:.2} jobs/s now",
                t.jobs,
                s.engine.running,
                s.engine.waiting,
                plural(t.busy_refusals, "busy refusal", "busy refusals"),
                s.rates.jobs_per_s
            ),
        );
        line(
            "tokens",
            format!(
                "{} prompt, {} generated; {:.1} generated tok/s now; KV cache {:.0}%",
                t.prompt_tokens,
                t.generation_tokens,
                s.rates.generation_tokens_per_s,
                s.engine.kv_cache_usage * 100.0
            ),
        );
        line(
            "TTFT",
            format!(
                "p50 {}, p90 {}, p99 {} (over {})",
                secs(s.ttft.p50_s),
                secs(s.ttft.p90_s),
                secs(s.ttft.p99_s),
                plural(s.ttft.count, "job", "jobs")
            ),
        );
        line(
            "earnings",
            format!(
                "billed {} TON ({} nanoTON), vouchered {} TON, settled {} TON",
                ton(t.billed_nanoton),
                t.billed_nanoton,
                ton(t.vouchered_nanoton),
                ton(t.settled_nanoton)
            ),
        );
        let txs = if s.channels.chain_transactions.is_empty() {
            "none".to_string()
        } else {
            s.channels
                .chain_transactions
                .iter()
                .map(|(k, n)| format!("{k} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        line(
            "channels",
            format!(
                "{} open, {} TON unsettled; chain transactions: {txs}",
                s.channels.open,
                ton(s.channels.unsettled_nanoton)
            ),
        );
        for m in &s.models {
            let market = match &m.market {
                None => "no other worker advertises it".to_string(),
                Some(mk) => format!(
                    "market cheapest {} / {}, median {} / {} ({})",
                    mk.cheapest_prompt_per_mtok,
                    mk.cheapest_completion_per_mtok,
                    mk.median_prompt_per_mtok,
                    mk.median_completion_per_mtok,
                    plural(
                        u64::try_from(mk.workers).unwrap_or(u64::MAX),
                        "worker",
                        "workers"
                    )
                ),
            };
            line(
                "price",
                format!(
                    "{}: {} / {} nanoTON per million prompt / completion tokens; {market}",
                    m.model, m.prompt_per_mtok, m.completion_per_mtok
                ),
            );
        }
    }
    let p = &s.peers;
    line(
        "peers",
        format!(
            "{} connected, {} in the routing table, DHT {}; {} in the market",
            p.connected,
            p.routing_table,
            if p.dht_server { "server" } else { "client" },
            plural(p.market_workers, "worker", "workers")
        ),
    );
    line("reachability", p.reachability_detail.clone());
    if let Some(a) = &s.attestation {
        let measurement = if a.measurement.is_empty() {
            String::new()
        } else {
            format!(", measurement {}", a.measurement)
        };
        line(
            "attestation",
            format!(
                "{}, expires in {}{measurement}",
                a.kind,
                duration(a.expires_in_s)
            ),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use cocoon_metrics::status::{
        Attestation, Board, Buckets, HistoryConfig, HistoryQuery, MarketPrice, ModelPrice,
        Snapshot, Totals,
    };

    #[test]
    fn the_status_url_comes_from_an_address_or_any_url_on_the_listener() {
        for given in [
            "127.0.0.1:9464",
            "http://127.0.0.1:9464",
            "http://127.0.0.1:9464/",
            "http://127.0.0.1:9464/metrics",
            " http://127.0.0.1:9464/api/status ",
        ] {
            assert_eq!(
                status_url(given).unwrap(),
                "http://127.0.0.1:9464/api/status",
                "{given}"
            );
        }
        assert_eq!(
            status_url("https://proxy.example/node1/metrics").unwrap(),
            "https://proxy.example/node1/api/status"
        );
        assert!(status_url("ftp://x/").is_err());
        assert!(status_url("http:///metrics").is_err());
    }

    #[test]
    fn the_terminal_view_shows_jobs_money_price_peers_and_attestation() {
        let board = Board::new(HistoryConfig::default(), 0);
        let mut ttft = Buckets::new(cocoon_metrics::TTFT_BUCKETS);
        ttft.counts[5] = 1;
        board.update(
            3_723_000,
            Snapshot {
                peer_id: "12D3KooWtest".into(),
                totals: Totals {
                    jobs: 1,
                    prompt_tokens: 12,
                    generation_tokens: 6,
                    billed_nanoton: 3_400,
                    vouchered_nanoton: 3_400,
                    ..Default::default()
                },
                ttft,
                engine: Default::default(),
                channels: Default::default(),
                models: vec![ModelPrice {
                    model: "m".into(),
                    prompt_per_mtok: 1000,
                    completion_per_mtok: 3000,
                    market: MarketPrice::of(&[]),
                }],
                peers: Default::default(),
                attestation: Some(Attestation {
                    kind: "dev-insecure".into(),
                    expires_in_s: 3_000,
                    measurement: String::new(),
                }),
            },
        );
        let text = render(&board.report(&HistoryQuery::default()));
        for want in [
            "12D3KooWtest, up 1 h 02 min",
            "1 finished, 0 running",
            "12 prompt, 6 generated",
            "p50 50 ms",
            "(over 1 job)",
            "billed 0.0000034 TON (3400 nanoTON)",
            "m: 1000 / 3000 nanoTON",
            "no other worker advertises it",
            "dev-insecure, expires in 50 min 00 s",
        ] {
            assert!(text.contains(want), "{want:?} in\n{text}");
        }
        let empty = Board::new(HistoryConfig::default(), 0);
        assert!(render(&empty.report(&HistoryQuery::default())).contains("first reading"));
    }
}
