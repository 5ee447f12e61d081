//! A worker's dashboard after one paid job: its JSON (`/api/status`) and `cocoon status`
//! agree with what the client saw, bad requests are refused, and the page itself, opened in
//! headless Chromium, shows the job, its tokens and its earnings, draws its charts and
//! loads nothing from elsewhere; a screenshot lands in `target/dashboard.png` (copy it to
//! `docs/dashboard.png` to refresh the README's).
//!
//! Chromium and chromedriver come from Debian (`apt-get install -y chromium
//! chromium-driver`; `.ci/run` installs them); without them the browser test fails saying
//! so.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use cocoon_tests::browser::Browser;
use cocoon_tests::{cocoon_bin, parse_json, LoopbackNet};
use serde_json::Value;

/// One HTTP/1.1 exchange: the status code and the body.
fn http(base: &str, request_line: &str) -> Result<(u16, String)> {
    let host = base
        .strip_prefix("http://")
        .and_then(|r| r.split('/').next())
        .context("an http URL")?;
    let mut stream = TcpStream::connect(host).context("connect to the metrics listener")?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "{request_line}\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )?;
    let mut text = String::new();
    stream.read_to_string(&mut text)?;
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("a status line")?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// nanoTON as the page and `cocoon status` print TON.
fn ton(nano: u64) -> String {
    let frac = format!("{:09}", nano % 1_000_000_000);
    let frac = frac.trim_end_matches('0');
    if frac.is_empty() {
        format!("{}", nano / 1_000_000_000)
    } else {
        format!("{}.{frac}", nano / 1_000_000_000)
    }
}

/// The worker's price: nanoTON per million prompt and completion tokens.
const PRICE: &str = "20000000,60000000";

/// A paid job's counts as the client saw them.
struct Job {
    prompt_tokens: u64,
    completion_tokens: u64,
    paid: u64,
}

/// A network whose worker serves `--metrics`, one paid job run on it, and the listener's
/// root URL (`http://ADDR/`).
fn network_with_one_paid_job(name: &str) -> Result<(LoopbackNet, String, Job)> {
    // About $0.06 and $0.18 per million tokens at $3 a TON.
    let worker_flags: Vec<String> = ["--metrics", "127.0.0.1:0", "--price", PRICE]
        .map(String::from)
        .to_vec();
    let net = LoopbackNet::start(name, &[worker_flags])?;
    let metrics = net.workers[0]
        .metrics
        .clone()
        .context("the worker printed its metrics URL")?;
    let root = metrics
        .strip_suffix("metrics")
        .context("the metrics URL ends in /metrics")?
        .to_string();
    let out = net.infer(&["--json", "--max-tokens", "8"], "The capital of France is")?;
    let json = parse_json(&out)?;
    let field = |k: &str| json[k].as_u64().with_context(|| format!("{k} in {json}"));
    let job = Job {
        prompt_tokens: field("prompt_tokens")?,
        completion_tokens: field("completion_tokens")?,
        paid: field("paid_nanoton")?,
    };
    ensure!(
        job.paid > 0 && job.completion_tokens > 0,
        "a paid job: {json}"
    );
    Ok((net, root, job))
}

/// Polls `/api/status` until the node's reading includes the job (it samples every second).
fn status_with_the_job(root: &str) -> Result<Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (code, body) = http(root, "GET /api/status HTTP/1.1")?;
        ensure!(code == 200, "GET /api/status: {code} {body}");
        let report: Value = serde_json::from_str(&body)?;
        if report["status"]["totals"]["jobs"] == 1 {
            return Ok(report);
        }
        ensure!(
            Instant::now() < deadline,
            "the job never reached the status: {report}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn the_status_json_and_cocoon_status_show_a_paid_job() -> Result<()> {
    let (_net, root, job) = network_with_one_paid_job("dash-api")?;
    let report = status_with_the_job(&root)?;
    let s = &report["status"];
    assert_eq!(report["version"], 1);
    assert_eq!(s["totals"]["prompt_tokens"], job.prompt_tokens);
    assert_eq!(s["totals"]["generation_tokens"], job.completion_tokens);
    assert_eq!(s["totals"]["billed_nanoton"], job.paid);
    assert_eq!(s["totals"]["vouchered_nanoton"], job.paid);
    assert_eq!(s["ttft"]["count"], 1);
    assert!(s["ttft"]["p50_s"].as_f64().is_some_and(|t| t > 0.0), "{s}");
    assert_eq!(s["models"][0]["completion_per_mtok"], 60_000_000);
    assert_eq!(
        s["models"][0]["market"],
        Value::Null,
        "no other worker advertises the model"
    );
    assert_eq!(s["attestation"]["kind"], "dev-insecure");
    assert!(s["attestation"]["expires_in_s"].as_i64().unwrap_or(0) > 0);
    assert!(s["peers"]["connected"].as_u64().unwrap_or(0) >= 1, "{s}");
    assert!(!report["history"]["points"].as_array().unwrap().is_empty());

    // The page and its assets; every bad request is refused and the listener lives on.
    let (code, page) = http(&root, "GET / HTTP/1.1")?;
    assert_eq!(code, 200);
    assert!(page.contains("dashboard.js"));
    assert_eq!(http(&root, "GET /dashboard.js HTTP/1.1")?.0, 200);
    assert_eq!(http(&root, "GET /nope HTTP/1.1")?.0, 404);
    assert_eq!(http(&root, "POST / HTTP/1.1")?.0, 405);
    assert_eq!(http(&root, "DELETE /api/status HTTP/1.1")?.0, 405);
    let (code, body) = http(&root, "GET /api/status?since=soon HTTP/1.1")?;
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("since"), "{body}");
    assert_eq!(http(&root, "GARBAGE")?.0, 400);
    assert_eq!(http(&root, "GET /api/status HTTP/1.1")?.0, 200);

    // `cocoon status` reads the same, as text and as JSON.
    let bin = cocoon_bin()?;
    let out = Command::new(&bin)
        .args(["status", "--metrics", &format!("{root}metrics")])
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for want in [
        "1 finished".to_string(),
        format!(
            "{} prompt, {} generated",
            job.prompt_tokens, job.completion_tokens
        ),
        format!("billed {} TON ({} nanoTON)", ton(job.paid), job.paid),
        "20000000 / 60000000 nanoTON".to_string(),
        "dev-insecure, expires in".to_string(),
    ] {
        assert!(text.contains(&want), "{want:?} in:\n{text}");
    }
    let out = Command::new(&bin)
        .args(["status", "--json", "--metrics", root.trim_end_matches('/')])
        .output()?;
    assert!(out.status.success());
    let json: Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(json["status"]["totals"]["billed_nanoton"], job.paid);

    // Nothing listening: a clear error, not a hang.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let out = Command::new(&bin)
        .args(["status", "--metrics", &closed.to_string()])
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("nothing answers there"), "{err}");
    Ok(())
}

/// The page's text and a few facts about it, read in the browser.
const READ_PAGE: &str = r#"
const t = (id) => { const e = document.getElementById(id); return e ? e.textContent.trim() : null; };
return {
  jobs: t('jobs-total'), generated: t('tokens-generated'), prompt: t('tokens-prompt'),
  billed: t('earned-billed'), billed_nano: t('earned-billed-nano'),
  vouchered: t('earned-vouchered'), ttft: t('ttft-p50'), state: t('state'),
  attestation: t('attest-kind'),
  prices: document.getElementById('prices').innerText,
  lines: document.querySelectorAll('svg path.line, svg circle').length,
  ttft_lines: document.querySelectorAll('#chart-ttft path.line, #chart-ttft circle').length,
  resources: performance.getEntriesByType('resource').map((e) => e.name),
  height: document.documentElement.scrollHeight,
  frame: window.outerHeight - window.innerHeight,
  text: document.body.innerText,
};
"#;

#[test]
fn the_dashboard_shows_a_paid_job_in_chromium() -> Result<()> {
    // Fail at once, before the network, when there is no browser.
    let browser = Browser::start(1280, 1000)?;
    let (_net, root, job) = network_with_one_paid_job("dash-page")?;
    browser.open(&root)?;
    // The page refreshes every 2 s; the node samples every second and keeps a history
    // point every 10 s, the first after the job carrying its TTFT to the chart.
    let deadline = Instant::now() + Duration::from_secs(40);
    let page = loop {
        let page = browser.eval(READ_PAGE)?;
        if page["jobs"] == "1" && page["ttft"] != "–" && page["ttft_lines"].as_u64() > Some(0) {
            break page;
        }
        ensure!(
            Instant::now() < deadline,
            "the page never showed the job: {page:#}"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    let text = page["text"].as_str().unwrap_or_default();
    assert_eq!(
        page["generated"],
        job.completion_tokens.to_string(),
        "{text}"
    );
    assert_eq!(page["prompt"], job.prompt_tokens.to_string(), "{text}");
    assert_eq!(page["billed"], ton(job.paid), "{text}");
    assert_eq!(page["billed_nano"], job.paid.to_string(), "{text}");
    assert_eq!(page["vouchered"], ton(job.paid), "{text}");
    assert_eq!(page["state"], "live");
    assert!(
        page["ttft"].as_str().unwrap_or("").ends_with(" ms")
            || page["ttft"].as_str().unwrap_or("").ends_with(" s")
    );
    assert!(page["attestation"]
        .as_str()
        .unwrap_or("")
        .starts_with("dev-insecure"));
    let prices = page["prices"].as_str().unwrap_or_default();
    assert!(prices.contains("20,000,000 / 60,000,000"), "{prices}");
    // innerText is as shown: the headings are in capitals.
    let shown = text.to_lowercase();
    for heading in [
        "earned (billed)",
        "time to first token",
        "peers",
        "attestation",
    ] {
        assert!(shown.contains(heading), "{heading:?} in {text}");
    }
    // Everything the page loaded came from the node itself.
    for url in page["resources"].as_array().context("resource list")? {
        let url = url.as_str().unwrap_or_default();
        assert!(url.starts_with(&root), "the page loaded {url}");
    }

    // The whole page in the screenshot.
    let height = page["height"].as_u64().unwrap_or(1000) + page["frame"].as_u64().unwrap_or(0);
    let height = height.clamp(600, 4000);
    browser.resize(1280, u32::try_from(height).unwrap_or(1000))?;
    std::thread::sleep(Duration::from_millis(300));
    let shot = target_dir()?.join("dashboard.png");
    browser.save_screenshot(&shot)?;
    let bytes = std::fs::metadata(&shot)?.len();
    ensure!(bytes > 10_000, "a real screenshot, not {bytes} bytes");
    println!("screenshot: {} ({bytes} bytes)", shot.display());
    Ok(())
}

/// The target dir this test runs from (`target/<profile>/deps/<exe>` → `target`).
fn target_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    exe.ancestors()
        .nth(3)
        .map(PathBuf::from)
        .context("the test executable is not under a target dir")
}
