//! Benchmark: what the OpenAI gateway adds over the library call.
//!
//! `cargo bench -p cocoon-tests --bench gateway` (or `bench/gateway.sh`). One network on
//! loopback (a bootstrap node and one worker, real processes), one `LightClient` in this
//! process and one `cocoon gateway` process on the same network. The same prompt, greedy, runs
//! alternately through the library (`LightClient::infer`, a Stream) and through the gateway
//! (`POST /v1/chat/completions` with `stream: true`, read as server-sent events over plain
//! HTTP/1.1), so noise hits both alike; the table shows medians. TTFT: request sent → first
//! text. tok/s: completion tokens after the first over the time after it.
//!
//! Environment: `COCOON_BENCH_RUNS` (default 5), `COCOON_BENCH_TOKENS` (default 48). Written
//! to `target/bench-gateway.md`.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Instant;

use cocoon_client::infer::InferRequest;
use cocoon_client::light::{Event, LightClient};
use cocoon_client::trust::ClientTrust;
use cocoon_p2p::job::{ChatMessage, JobInput, Sampling};
use cocoon_tests::LoopbackNet;
use futures::StreamExt;
use serde_json::{json, Value};

const MODEL: &str = "smollm2-135m-instruct-q4_1";
const PROMPT: &str = "Write a long story about a lighthouse keeper and a storm.";

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// (ttft ms, tok/s)
fn rate(start: Instant, first: Instant, end: Instant, tokens: u64) -> (f64, f64) {
    let decode = end.duration_since(first).as_secs_f64();
    let tps = if decode > 0.0 {
        tokens.saturating_sub(1) as f64 / decode
    } else {
        0.0
    };
    (first.duration_since(start).as_secs_f64() * 1e3, tps)
}

async fn library(client: &LightClient, tokens: u32) -> (f64, f64) {
    let request = InferRequest {
        model: MODEL.into(),
        input: JobInput::Chat(vec![ChatMessage {
            role: "user".into(),
            content: PROMPT.into(),
        }]),
        sampling: Sampling {
            max_tokens: tokens,
            ..Default::default()
        },
    };
    let start = Instant::now();
    let mut first = None;
    let mut stream = Box::pin(client.infer(request));
    while let Some(event) = stream.next().await {
        match event.expect("library job") {
            Event::Text(_) => {
                first.get_or_insert_with(Instant::now);
            }
            Event::Done(o) => {
                let end = Instant::now();
                return rate(start, first.unwrap_or(end), end, o.completion_tokens as u64);
            }
            other => panic!("an event this bench does not know: {other:?}"),
        }
    }
    panic!("the stream ended without an outcome")
}

fn gateway(addr: &str, tokens: u32) -> (f64, f64) {
    let body = json!({"model": MODEL, "messages": [{"role": "user", "content": PROMPT}],
                      "max_tokens": tokens, "temperature": 0, "seed": 0, "stream": true})
    .to_string();
    let start = Instant::now();
    let mut s = TcpStream::connect(addr).unwrap();
    write!(
        s,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let (mut first, mut completion) = (None, 0);
    for line in BufReader::new(s).lines() {
        let line = line.unwrap();
        let Some(data) = line.strip_prefix("data: ") else {
            continue;
        };
        if data == "[DONE]" {
            break;
        }
        let v: Value = serde_json::from_str(data).unwrap();
        if v["choices"][0]["delta"]["content"]
            .as_str()
            .is_some_and(|t| !t.is_empty())
        {
            first.get_or_insert_with(Instant::now);
        }
        if let Some(n) = v["usage"]["completion_tokens"].as_u64() {
            completion = n;
        }
    }
    let end = Instant::now();
    rate(start, first.unwrap_or(end), end, completion)
}

fn main() {
    let env = |k: &str, d: u32| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let (runs, tokens) = (env("COCOON_BENCH_RUNS", 5), env("COCOON_BENCH_TOKENS", 48));
    let net = LoopbackNet::start("bench-gateway", &[vec![]]).unwrap();
    let gw = cocoon_tests::Gateway::start(&net, "gateway", &[]).unwrap();
    let addr = gw.addr.clone();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let client = rt
        .block_on(
            LightClient::builder()
                .bootstrap(net.bootstrap_addr().parse().unwrap())
                .data_dir(net.dir.path().join("library"))
                .trust(ClientTrust {
                    insecure_dev: true,
                    ..Default::default()
                })
                .build(),
        )
        .unwrap();
    // Warm both paths (channels opened, connections up), then measure alternately.
    rt.block_on(library(&client, 4));
    gateway(&addr, 4);
    let (mut lib, mut gwy) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        lib.push(rt.block_on(library(&client, tokens)));
        gwy.push(gateway(&addr, tokens));
    }
    drop(gw);
    let col = |v: &[(f64, f64)], f: fn(&(f64, f64)) -> f64| median(v.iter().map(f).collect());
    let (lt, ls) = (col(&lib, |x| x.0), col(&lib, |x| x.1));
    let (gt, gs) = (col(&gwy, |x| x.0), col(&gwy, |x| x.1));
    let table = format!(
        "| SmolLM2-135M Q4_1, {tokens} tokens, greedy, median of {runs} | library (`LightClient::infer`) | gateway (SSE over HTTP) | gateway overhead |\n\
         |---|---:|---:|---:|\n\
         | time to first token (ms) | {lt:.1} | {gt:.1} | {:+.1} ms ({:+.1}%) |\n\
         | decode (tok/s) | {ls:.1} | {gs:.1} | {:+.1}% |\n",
        gt - lt,
        100.0 * (gt - lt) / lt,
        100.0 * (gs - ls) / ls,
    );
    print!("{table}");
    std::fs::write(
        concat!(env!("CARGO_MANIFEST_DIR"), "/../target/bench-gateway.md"),
        &table,
    )
    .unwrap();
    rt.block_on(client.shutdown());
}
