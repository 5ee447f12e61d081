//! A worker's `/metrics` after two paid jobs: the counters and histogram counts match what
//! the client saw, rust-libp2p's families are there, and a bad request is a 4xx.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use cocoon_tests::{parse_json, LoopbackNet};

/// One HTTP/1.1 exchange: the status code and the body.
fn http(url: &str, request_line: &str) -> (u16, String) {
    let rest = url.strip_prefix("http://").expect("an http URL");
    let (host, _) = rest.split_once('/').expect("a path");
    let mut stream = TcpStream::connect(host).expect("connect to the metrics endpoint");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "{request_line}\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// The value of the sample named exactly `name` (with its labels).
fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no sample {name} in:\n{text}"))
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn metrics_after_two_paid_jobs_match_what_the_client_saw() {
    let worker_flags: Vec<String> = ["--metrics", "127.0.0.1:0", "--price", "1000,3000"]
        .map(String::from)
        .to_vec();
    let net = LoopbackNet::start("metrics", &[worker_flags]).expect("start the network");
    let url = net.workers[0]
        .metrics
        .clone()
        .expect("the worker printed its metrics URL");
    let (mut prompt, mut generated, mut paid) = (0.0, 0.0, 0.0);
    for prompt_text in ["The capital of France is", "Two plus two is"] {
        let out = net
            .infer(&["--json", "--max-tokens", "6"], prompt_text)
            .expect("run cocoon infer");
        let json = parse_json(&out).expect("a paid job");
        // The first text comes before the end (before, the client stamped it when the
        // attempt returned, so its TTFT was the whole job's time).
        let (ttft, total) = (
            json["ttft_ms"].as_f64().unwrap(),
            json["total_ms"].as_f64().unwrap(),
        );
        assert!(ttft < total - 1.0, "TTFT {ttft} ms of a {total} ms job");
        prompt += json["prompt_tokens"].as_f64().unwrap();
        generated += json["completion_tokens"].as_f64().unwrap();
        paid += json["paid_nanoton"].as_f64().unwrap();
    }
    assert!(paid > 0.0);
    let (status, text) = http(&url, "GET /metrics HTTP/1.1");
    assert_eq!(status, 200);
    let model = r#"{model_name="smollm2-135m-instruct-q4_1"}"#;
    assert_eq!(
        sample(&text, &format!("vllm:prompt_tokens_total{model}")),
        prompt
    );
    assert_eq!(
        sample(&text, &format!("vllm:generation_tokens_total{model}")),
        generated
    );
    for histogram in [
        "vllm:time_to_first_token_seconds_count",
        "vllm:e2e_request_latency_seconds_count",
        "vllm:request_queue_time_seconds_count",
    ] {
        assert_eq!(
            sample(&text, &format!("{histogram}{model}")),
            2.0,
            "{histogram}"
        );
    }
    // Each piece of text after the first is one inter-token gap.
    let gaps = sample(
        &text,
        &format!("vllm:inter_token_latency_seconds_count{model}"),
    );
    assert!(
        gaps >= 1.0 && gaps <= generated - 2.0,
        "{gaps} gaps for {generated} tokens"
    );
    let finished: f64 = text
        .lines()
        .filter(|l| l.starts_with("vllm:request_success_total{"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum();
    assert_eq!(finished, 2.0);
    assert_eq!(sample(&text, "cocoon_billed_nanoton_total"), paid);
    assert_eq!(sample(&text, "cocoon_vouchered_nanoton_total"), paid);
    assert_eq!(
        sample(
            &text,
            r#"cocoon_price_nanoton_per_mtok{model_name="smollm2-135m-instruct-q4_1",kind="completion"}"#
        ),
        3000.0
    );
    let expiry = r#"cocoon_evidence_expires_in_seconds{kind="dev-insecure"}"#;
    assert!(sample(&text, expiry) > 0.0, "the evidence is valid");
    // The worker's own advert, with direct (loopback) addresses.
    assert_eq!(
        sample(&text, r#"cocoon_market_workers{kind="direct"}"#),
        1.0
    );
    assert_eq!(
        sample(&text, r#"cocoon_market_workers{kind="relayed"}"#),
        0.0
    );
    assert!(
        text.contains("libp2p_swarm_connections_established_total"),
        "libp2p families"
    );
    assert!(text.contains("# TYPE libp2p_kad"), "Kademlia's family");

    // Anything else is refused, and the endpoint still answers after.
    assert_eq!(http(&url, "GET /nope HTTP/1.1").0, 404);
    assert_eq!(http(&url, "POST /metrics HTTP/1.1").0, 405);
    assert_eq!(http(&url, "GARBAGE").0, 400);
    assert_eq!(http(&url, "GET /metrics HTTP/1.1").0, 200);
}
