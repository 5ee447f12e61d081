//! Benchmark: what it costs to reach a worker behind NAT, with the real `cocoon` binary in
//! network namespaces ([`cocoon_tests::netns`]).
//!
//! `cargo bench -p cocoon-tests --bench reachability` (or `bench/reachability.sh`). For every
//! pair of client and worker placements (public, or behind a full-cone, port-restricted or
//! symmetric router) one network is built: a public bootstrap node that relays with libp2p's
//! default limits (a stranger's relay: it carries the hole-punching handshake, not a job), the
//! worker's host and the client's host. Once the worker says how it is reachable (`public at`,
//! `relayed through`, `mapped by the router`) and its advert is out, `cocoon infer --json
//! --max-tokens 8` (paid) runs from the client `COCOON_BENCH_TRIES` times (default 20), each
//! with a fresh client data dir: a new identity, so a new connection and, where the worker is
//! relayed, hole punching anew every time. Each infer is killed after 90 s. Then a worker
//! behind routers that offer UPnP (miniupnpd), from a public client.
//!
//! Links: 40 ms one way and 1% loss on every uplink (netem) when the kernel has netem, clean
//! links otherwise; the table says which.
//!
//! The table goes to `target/bench-reachability.md`.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use cocoon_tests::median;
use cocoon_tests::netns::{Link, Nat, Net, NetBuilder, RouterSpec};
use cocoon_worker::launch::NodeProcess;

const PORT: u16 = 4001;
const PROMPT: &str = "The capital of France is";
/// Every infer is killed after this.
const INFER_LIMIT: Duration = Duration::from_secs(90);
/// How long the worker may take to say how it is reachable.
const REACH_LIMIT: Duration = Duration::from_secs(60);
/// The advert with the new address goes out within the advertiser's change gap.
const ADVERT_WAIT: Duration = Duration::from_secs(4);
/// The links when the kernel has netem.
const DELAY: Duration = Duration::from_millis(40);
const LOSS_PERCENT: f64 = 1.0;

/// Where a node sits.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Side {
    Public,
    Behind(Nat, bool),
}

impl Side {
    fn label(self) -> String {
        match self {
            Side::Public => "public".into(),
            Side::Behind(nat, upnp) => {
                let nat = match nat {
                    Nat::FullCone => "full cone",
                    Nat::PortRestricted => "port-restricted",
                    Nat::Symmetric => "symmetric",
                };
                if upnp {
                    format!("{nat} + UPnP")
                } else {
                    nat.into()
                }
            }
        }
    }

    /// The reachability line a worker here should reach.
    fn expected(self) -> &'static str {
        match self {
            Side::Public | Side::Behind(Nat::FullCone, false) => "public at",
            Side::Behind(_, true) => "mapped by the router",
            Side::Behind(_, false) => "relayed through",
        }
    }

    /// Adds host `host` here (behind router `router` when not public).
    fn add(self, b: NetBuilder, host: &str, router: &str, link: Link) -> NetBuilder {
        match self {
            Side::Public => b.public_with_link(host, link),
            Side::Behind(nat, upnp) => b
                .router(router, RouterSpec::new(nat).upnp(upnp).link(link))
                .home(host, router),
        }
    }
}

/// One infer's outcome.
enum Try {
    Ok {
        direct: bool,
        connect_ms: f64,
        ttft_ms: f64,
        wall_ms: f64,
    },
    Failed {
        error: String,
        wall_ms: f64,
    },
}

/// One row of the table.
struct Row {
    client: Side,
    worker: Side,
    /// What the worker said before the tries (`relayed through`, …) and after how long.
    reach: Option<(String, f64)>,
    tries: Vec<Try>,
    /// A setup failure (no tries then).
    setup_error: Option<String>,
}

fn main() -> Result<()> {
    let tries = cocoon_tests::env_or("COCOON_BENCH_TRIES", 20).max(1);
    // Build the binary and fetch the model before any timing.
    cocoon_tests::cocoon_bin()?;
    cocoon_tests::model_path()?;
    let started = Instant::now();

    let shaped = Link::delay(DELAY).with_loss(LOSS_PERCENT);
    let (link, links_note) = match NetBuilder::new().public_with_link("probe", shaped).build() {
        Ok(_) => (
            shaped,
            format!(
                "links: {} ms one way, {LOSS_PERCENT}% loss",
                DELAY.as_millis()
            ),
        ),
        Err(e) if format!("{e:#}").contains("netem") => {
            eprintln!("no netem: {e:#}");
            (
                Link::default(),
                "links: no netem in this kernel (no added delay/loss)".to_string(),
            )
        }
        Err(e) => return Err(e.context("building a probe network with netem")),
    };
    eprintln!("{links_note}");

    let kinds = [
        Side::Public,
        Side::Behind(Nat::FullCone, false),
        Side::Behind(Nat::PortRestricted, false),
        Side::Behind(Nat::Symmetric, false),
    ];
    let mut cells: Vec<(Side, Side)> = Vec::new();
    for worker in kinds {
        for client in kinds {
            cells.push((client, worker));
        }
    }
    for nat in [Nat::PortRestricted, Nat::Symmetric] {
        cells.push((Side::Public, Side::Behind(nat, true)));
    }

    // `COCOON_BENCH_ONLY="symmetric → port-restricted, public → public"`: only these rows.
    if let Ok(only) = std::env::var("COCOON_BENCH_ONLY") {
        let wanted: Vec<&str> = only.split(',').map(str::trim).collect();
        cells.retain(|(c, w)| wanted.contains(&row_name(*c, *w).as_str()));
    }

    let mut rows = Vec::new();
    for (i, &(client, worker)) in cells.iter().enumerate() {
        eprintln!(
            "[{}/{}] client {} → worker {} ({:.0} s so far)",
            i + 1,
            cells.len(),
            client.label(),
            worker.label(),
            started.elapsed().as_secs_f64()
        );
        let row = cell(client, worker, link, tries);
        eprintln!("    {}", render(&row));
        rows.push(row);
    }
    let minutes = started.elapsed().as_secs_f64() / 60.0;

    let mut md = format!(
        "Real `cocoon` processes in network namespaces (tests/src/netns.rs): a public bootstrap \
         node relaying with libp2p's default limits, the worker's and the client's hosts; \
         `cocoon infer --json --max-tokens 8` (paid), {tries} tries per row, each a fresh \
         client identity (a new connection, hole punching anew); each killed after {} s. \
         {links_note}. Whole run: {minutes:.1} min.\n\n",
        INFER_LIMIT.as_secs()
    );
    md += "| client → worker | worker reachable (after) | done | direct / relayed | \
           hole punching | connect ms (1st / median) | TTFT ms (1st / median) | \
           command ms (1st / median) | failures |\n\
           |---|---|---:|---:|---|---:|---:|---:|---|\n";
    for row in &rows {
        md += &render(row);
        md.push('\n');
    }
    md += "\nColumns: *worker reachable*: the worker's reachability line before the tries \
           (public: AutoNAT confirmed its address; relayed: it holds a relay reservation and \
           is reached through hole punching; mapped: the router's UPnP mapping was \
           confirmed) and how long after its process started (model load included) it logged so. *Hole punching*: direct \
           connections among the tries to a worker reachable only through the relay (the job \
           never runs over a stranger's relay); n/a where the client dials the worker \
           directly. *connect*: dial, relay and hole punching as the client reports it \
           (`connect_ms`); *TTFT*: from the request to the first text; *command*: the whole \
           `cocoon infer` process (start, DHT lookup, connect, channel, job). 1st: the first \
           try of the row; medians over the successful tries. *Failures*: count, the error's \
           first line (peer ids shortened) and the median time to fail.\n";
    println!("{md}");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target");
    std::fs::create_dir_all(&root)?;
    let out = root.join("bench-reachability.md");
    std::fs::write(&out, &md)?;
    eprintln!("table written to {}", out.display());
    Ok(())
}

/// `client → worker`, as the table names a row.
fn row_name(client: Side, worker: Side) -> String {
    format!("{} → {}", client.label(), worker.label())
}

/// Builds the network of one row and runs its tries; setup failures go into the row.
fn cell(client: Side, worker: Side, link: Link, tries: usize) -> Row {
    let mut row = Row {
        client,
        worker,
        reach: None,
        tries: Vec::new(),
        setup_error: None,
    };
    if let Err(e) = run_cell(&mut row, link, tries) {
        row.setup_error = Some(format!("{e:#}"));
    }
    row
}

fn run_cell(row: &mut Row, link: Link, tries: usize) -> Result<()> {
    let mut b = NetBuilder::new().public_with_link("boot", link);
    b = row.worker.add(b, "gpu", "rw", link);
    b = row.client.add(b, "cli", "rc", link);
    let net = b.build()?;
    let boot_host = net.host("boot")?;
    let boot_listen = format!("/ip4/{}/udp/{PORT}/quic-v1", boot_host.addr());
    let flags = [
        "--no-mdns".to_string(),
        "--external-addr".into(),
        boot_listen.clone(),
    ];
    let boot = boot_host.spawn_node(net.dir(), "boot", &boot_listen, &flags)?;
    let boot_addr = format!("{boot_listen}/p2p/{}", boot.peer_id);
    let spawned = (Instant::now(), now_of_day());
    let worker = start_worker(&net, &boot_addr)?;
    let (state, at, seen) = wait_reach(&worker, row.worker.expected(), spawned)?;
    row.reach = Some((state, at));
    std::thread::sleep(ADVERT_WAIT);
    for i in 0..tries {
        let t = infer(&net, &boot_addr, i)?;
        if let Try::Failed { error, .. } = &t {
            eprintln!("    try {}: {error}", i + 1);
        }
        row.tries.push(t);
    }
    // Say so when the worker's reachability changed during the tries.
    let later: Vec<String> = reach_lines(&worker)
        .iter()
        .skip(seen)
        .map(|(r, _)| r.split_whitespace().next().unwrap_or("?").to_string())
        .collect();
    if let (false, Some((state, _))) = (later.is_empty(), row.reach.as_mut()) {
        *state = format!("{state}, then {}", later.join(", "));
    }
    // Keep the logs of a row with failures: target/bench-reachability-logs/ROW/.
    if row.tries.iter().any(|t| matches!(t, Try::Failed { .. })) {
        keep_logs(&net, row)?;
    }
    Ok(())
}

/// Copies the nodes' logs and the failed clients' stderr of `row` out of its network's dir.
fn keep_logs(net: &Net, row: &Row) -> Result<()> {
    let slug: String = row_name(row.client, row.worker)
        .replace(" → ", "-to-")
        .replace(" + ", "-")
        .replace(' ', "-");
    let dest = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/bench-reachability-logs")
        .join(slug);
    std::fs::create_dir_all(&dest)?;
    for entry in std::fs::read_dir(net.dir())? {
        let path = entry?.path();
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        if name.ends_with(".log") || name.ends_with(".err") {
            std::fs::copy(&path, dest.join(&*name))?;
        }
    }
    eprintln!("    logs kept in {}", dest.display());
    Ok(())
}

/// A worker (default `auto` DHT mode and relay settings) on host `gpu`.
fn start_worker(net: &Net, boot: &str) -> Result<NodeProcess> {
    let model = cocoon_tests::model_path()?;
    let flags: Vec<String> = [
        "--no-mdns",
        "--bootstrap",
        boot,
        "--model",
        &model.display().to_string(),
        "--attestation",
        "dev-insecure",
    ]
    .map(String::from)
    .to_vec();
    net.host("gpu")?.spawn_node(
        net.dir(),
        "gpu",
        &format!("/ip4/0.0.0.0/udp/{PORT}/quic-v1"),
        &flags,
    )
}

/// Each of the worker's reachability log lines so far: what follows `reachability: `, and the
/// line's time of day (UTC seconds, from tracing's timestamp) when it has one.
fn reach_lines(worker: &NodeProcess) -> Vec<(String, Option<f64>)> {
    std::fs::read_to_string(&worker.log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (_, r) = l.split_once("reachability: ")?;
            Some((r.to_string(), time_of_day(l)))
        })
        .collect()
}

/// The UTC time of day, in seconds, of a tracing line (`2026-01-02T03:04:05.678901Z  INFO …`,
/// perhaps with ANSI colours).
fn time_of_day(line: &str) -> Option<f64> {
    let mut plain = String::new();
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ … final byte in @..~
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) && c != '[' {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    let stamp = plain.split_whitespace().next()?.strip_suffix('Z')?;
    let (_, time) = stamp.split_once('T')?;
    let mut parts = time.split(':');
    let h: f64 = parts.next()?.parse().ok()?;
    let m: f64 = parts.next()?.parse().ok()?;
    let s: f64 = parts.next()?.parse().ok()?;
    Some(h * 3600.0 + m * 60.0 + s)
}

/// The UTC time of day now, in seconds.
fn now_of_day() -> f64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    since.as_secs_f64() % 86_400.0
}

/// Waits for `expected` in the worker's reachability lines; on timeout takes its latest one.
/// Returns the state (`public`, `relayed`, `mapped`, …), how many seconds after `start` (the
/// worker process's start, as an [`Instant`] and a UTC time of day) it was logged, and how many
/// reachability lines there were up to that one.
fn wait_reach(
    worker: &NodeProcess,
    expected: &str,
    start: (Instant, f64),
) -> Result<(String, f64, usize)> {
    loop {
        let lines = reach_lines(worker);
        let found = lines.iter().position(|(r, _)| r.starts_with(expected));
        let waited = start.0.elapsed();
        let pick = match found {
            Some(i) => Some(i),
            None if waited > REACH_LIMIT && !lines.is_empty() => Some(lines.len() - 1),
            None => None,
        };
        if let Some(i) = pick {
            let (r, at) = &lines[i];
            let state = r.split_whitespace().next().unwrap_or("?").to_string();
            let after = at.map_or(waited.as_secs_f64(), |at| {
                (at - start.1).rem_euclid(86_400.0)
            });
            return Ok((state, after, i + 1));
        }
        if waited > REACH_LIMIT {
            bail!("the worker logged no reachability within {REACH_LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One `cocoon infer --json` from host `cli` with a fresh data dir, killed after
/// [`INFER_LIMIT`].
fn infer(net: &Net, boot: &str, i: usize) -> Result<Try> {
    let host = net.host("cli")?;
    let data = net.dir().join(format!("client-{i}"));
    let out_path = net.dir().join(format!("client-{i}.out"));
    let err_path = net.dir().join(format!("client-{i}.err"));
    let mut cmd = host.infer_command(boot, &["--json", "--max-tokens", "8"], PROMPT, &data)?;
    let started = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path)?)
        .stderr(std::fs::File::create(&err_path)?)
        .spawn()
        .context("starting cocoon infer")?;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        if started.elapsed() > INFER_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let wall_ms = started.elapsed().as_secs_f64() * 1e3;
    let stdout = std::fs::read_to_string(&out_path).unwrap_or_default();
    let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
    let Some(status) = status else {
        return Ok(Try::Failed {
            error: format!("killed after {} s", INFER_LIMIT.as_secs()),
            wall_ms,
        });
    };
    if !status.success() {
        return Ok(Try::Failed {
            error: first_error(&stderr, status),
            wall_ms,
        });
    }
    let json: serde_json::Value = match stdout.lines().last().map(serde_json::from_str) {
        Some(Ok(json)) => json,
        _ => {
            return Ok(Try::Failed {
                error: format!("no JSON on stdout: {}", shorten(&stdout)),
                wall_ms,
            })
        }
    };
    let num = |k: &str| json[k].as_f64().unwrap_or(f64::NAN);
    Ok(Try::Ok {
        direct: json["path"] == "direct",
        connect_ms: num("connect_ms"),
        ttft_ms: num("ttft_ms"),
        wall_ms,
    })
}

/// The `Error: …` line of a failed command (else its last line), shortened.
fn first_error(stderr: &str, status: std::process::ExitStatus) -> String {
    let line = stderr
        .lines()
        .find_map(|l| l.strip_prefix("Error: "))
        .or_else(|| stderr.lines().rev().find(|l| !l.trim().is_empty()))
        .map(str::to_string)
        .unwrap_or_else(|| format!("exited with {status}, no output"));
    shorten(&line)
}

/// One line: peer ids as `12D3…abcd`, at most 300 characters, no table pipes.
fn shorten(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text.lines().next().unwrap_or("").trim();
    while let Some(at) = rest.find("12D3KooW") {
        out.push_str(&rest[..at]);
        let id_len = rest[at..]
            .find(|c: char| !c.is_ascii_alphanumeric())
            .unwrap_or(rest.len() - at);
        let id = &rest[at..at + id_len];
        out.push_str("12D3…");
        out.push_str(&id[id.len().saturating_sub(4)..]);
        rest = &rest[at + id_len..];
    }
    out.push_str(rest);
    let mut out = out.replace('|', "/");
    if out.chars().count() > 300 {
        out = out.chars().take(299).collect::<String>() + "…";
    }
    out
}

/// `first / median` of the successful tries' `f` (`digits` decimals); `✗` for a failed first try.
fn first_median(row: &Row, digits: usize, f: impl Fn(&Try) -> Option<f64>) -> String {
    let first = row
        .tries
        .first()
        .and_then(&f)
        .map_or("✗".to_string(), |v| format!("{v:.digits$}"));
    let all: Vec<f64> = row.tries.iter().filter_map(&f).collect();
    if all.is_empty() {
        return "-".into();
    }
    format!("{first} / {:.digits$}", median(all))
}

fn render(row: &Row) -> String {
    let name = row_name(row.client, row.worker);
    let reach = row.reach.as_ref().map_or("-".to_string(), |(state, secs)| {
        format!("{state} ({secs:.1} s)")
    });
    if let Some(e) = &row.setup_error {
        return format!(
            "| {name} | {reach} | 0/0 | - | - | - | - | - | setup failed: {} |",
            shorten(e)
        );
    }
    let total = row.tries.len();
    let ok = row
        .tries
        .iter()
        .filter(|t| matches!(t, Try::Ok { .. }))
        .count();
    let direct = row
        .tries
        .iter()
        .filter(|t| matches!(t, Try::Ok { direct: true, .. }))
        .count();
    let punch = match row.reach.as_ref().map(|(s, _)| s.as_str()) {
        Some("relayed") => format!(
            "{direct}/{total} ({:.0}%)",
            direct as f64 * 100.0 / total as f64
        ),
        _ => "n/a (direct dial)".into(),
    };
    let connect = first_median(row, 1, |t| match t {
        Try::Ok { connect_ms, .. } => Some(*connect_ms),
        Try::Failed { .. } => None,
    });
    let ttft = first_median(row, 0, |t| match t {
        Try::Ok { ttft_ms, .. } => Some(*ttft_ms),
        Try::Failed { .. } => None,
    });
    let wall = first_median(row, 0, |t| match t {
        Try::Ok { wall_ms, .. } => Some(*wall_ms),
        Try::Failed { .. } => None,
    });
    // Distinct errors, most frequent first, with the median time to fail.
    let mut errors: Vec<(String, Vec<f64>)> = Vec::new();
    for t in &row.tries {
        if let Try::Failed { error, wall_ms } = t {
            match errors.iter_mut().find(|(e, _)| e == error) {
                Some((_, walls)) => walls.push(*wall_ms),
                None => errors.push((error.clone(), vec![*wall_ms])),
            }
        }
    }
    errors.sort_by_key(|(_, walls)| std::cmp::Reverse(walls.len()));
    let failures = if errors.is_empty() {
        "-".to_string()
    } else {
        errors
            .iter()
            .map(|(e, walls)| {
                format!(
                    "{}× {e} (after {:.1} s)",
                    walls.len(),
                    median(walls.clone()) / 1e3
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
    };
    format!(
        "| {name} | {reach} | {ok}/{total} | {direct} / {} | {punch} | {connect} | {ttft} | \
         {wall} | {failures} |",
        ok - direct
    )
}
