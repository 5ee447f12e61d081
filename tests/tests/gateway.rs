//! `cocoon gateway` against real workers, spoken to in plain HTTP/1.1: model listing, chat
//! and text completions with and without streaming, the audit fields, and every class of bad
//! request answered with OpenAI's error JSON while the gateway keeps serving.

use std::io::{Read, Write};
use std::net::TcpStream;

use cocoon_tests::{Gateway, LoopbackNet};
use serde_json::{json, Value};

const MODEL: &str = "smollm2-135m-instruct-q4_1";

/// One request to the gateway; returns (status, lowercased head, body).
fn call(
    gw: &Gateway,
    method: &str,
    path: &str,
    body: &[u8],
    auth: Option<&str>,
) -> (u16, String, String) {
    call_at(&gw.addr, method, path, body, auth)
}

/// [`call`] to the gateway at `addr`.
fn call_at(
    addr: &str,
    method: &str,
    path: &str,
    body: &[u8],
    auth: Option<&str>,
) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    let auth = auth.map_or(String::new(), |k| format!("Authorization: Bearer {k}\r\n"));
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{auth}Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .unwrap();
    let _ = s.write_all(body);
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let raw = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, head.to_lowercase(), dechunk(head, body))
}

fn post(gw: &Gateway, path: &str, body: Value) -> (u16, String, String) {
    call(gw, "POST", path, body.to_string().as_bytes(), None)
}

/// Undoes `Transfer-Encoding: chunked`.
fn dechunk(head: &str, body: &str) -> String {
    if !head.to_lowercase().contains("transfer-encoding: chunked") {
        return body.to_string();
    }
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&after[..n]);
        rest = &after[n + 2..];
    }
    out
}

fn error_code(body: &str) -> String {
    let v: Value = serde_json::from_str(body).unwrap_or_else(|_| panic!("not JSON: {body}"));
    v["error"]["code"].as_str().unwrap().to_string()
}

#[test]
fn the_gateway_speaks_openai_and_survives_bad_requests() {
    let net = LoopbackNet::start("gateway", &[vec![]]).expect("start the network");
    let gw = Gateway::start(&net, "gw", &[]).unwrap();

    let (status, _, body) = call(&gw, "GET", "/v1/models", b"", None);
    assert_eq!(status, 200, "{body}");
    let models: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(models["data"][0]["id"], MODEL, "{models}");
    assert!(
        models["data"][0]["price"]["completion_per_mtok_nanoton"]
            .as_u64()
            .unwrap()
            > 0
    );

    // A chat completion, audited.
    let chat = json!({"model": MODEL, "messages": [{"role": "user", "content": "Say hi"}],
                      "max_tokens": 8, "temperature": 0, "seed": 1});
    let (status, head, body) = post(&gw, "/v1/chat/completions", chat.clone());
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["object"], "chat.completion");
    let content = v["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(!content.is_empty());
    assert!(v["usage"]["completion_tokens"].as_u64().unwrap() >= 1);
    assert_eq!(v["cocoon"]["worker"], net.workers[0].peer_id.as_str());
    assert_eq!(v["cocoon"]["attestation"], "dev-insecure");
    assert!(v["cocoon"]["paid_nanoton"].as_u64().unwrap() > 0);
    assert!(head.contains(&format!(
        "x-cocoon-worker: {}",
        net.workers[0].peer_id.to_lowercase()
    )));

    // The same, streamed: chunks, then usage + audit, then [DONE]; greedy gives the same text.
    let mut streamed = chat.clone();
    streamed["stream"] = json!(true);
    let (status, head, body) = post(&gw, "/v1/chat/completions", streamed);
    assert_eq!(status, 200);
    assert!(head.contains("text/event-stream"), "{head}");
    let events: Vec<&str> = body
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .collect();
    assert_eq!(events.last(), Some(&"[DONE]"), "{body}");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert!(chunks
        .iter()
        .all(|c| c["object"] == "chat.completion.chunk"));
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(
        text, content,
        "streaming and not give the same greedy answer"
    );
    let last = chunks.last().unwrap();
    assert!(last["choices"][0]["finish_reason"].is_string());
    assert!(last["usage"]["total_tokens"].as_u64().unwrap() > 0);
    assert!(last["cocoon"]["paid_nanoton"].as_u64().unwrap() > 0);

    // A text completion.
    let (status, _, body) = post(
        &gw,
        "/v1/completions",
        json!({"model": MODEL, "prompt": "The capital of France is", "max_tokens": 4, "temperature": 0}),
    );
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["object"], "text_completion");
    assert!(!v["choices"][0]["text"].as_str().unwrap().is_empty());

    // Bad requests: clear errors with the right status, and the gateway keeps serving.
    let (status, _, body) = call(&gw, "POST", "/v1/chat/completions", b"{not json", None);
    assert_eq!((status, error_code(&body)), (400, "invalid_request".into()));
    let mut wrong = chat.clone();
    wrong["temperature"] = json!("hot");
    let (status, _, body) = post(&gw, "/v1/chat/completions", wrong);
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("temperature"), "{body}");
    let mut unknown = chat.clone();
    unknown["model"] = json!("gpt-9");
    let (status, _, body) = post(&gw, "/v1/chat/completions", unknown);
    assert_eq!((status, error_code(&body)), (404, "model_not_found".into()));
    let mut empty = chat.clone();
    empty["messages"] = json!([]);
    assert_eq!(post(&gw, "/v1/chat/completions", empty).0, 400);
    let huge = vec![b'x'; 2 << 20];
    let (status, _, body) = call(&gw, "POST", "/v1/completions", &huge, None);
    assert_eq!(
        (status, error_code(&body)),
        (413, "request_too_large".into())
    );
    let (status, _, body) = call(&gw, "GET", "/v2/nothing", b"", None);
    assert_eq!((status, error_code(&body)), (404, "not_found".into()));
    client_mistakes_are_400s(&gw, &chat);

    assert_eq!(
        post(&gw, "/v1/chat/completions", chat.clone()).0,
        200,
        "still serving"
    );

    // The README's curl examples, as written (but for the port).
    readme_curl_examples_work(&gw);

    // Concurrent jobs on the one worker (two slots) each get a payment channel of their own.
    let jobs: Vec<_> = (0..2)
        .map(|i| {
            let gw = gw.addr.clone();
            let mut body = chat.clone();
            body["seed"] = json!(i);
            std::thread::spawn(move || {
                call_at(
                    &gw,
                    "POST",
                    "/v1/chat/completions",
                    body.to_string().as_bytes(),
                    None,
                )
            })
        })
        .collect();
    let channels: std::collections::BTreeSet<String> = jobs
        .into_iter()
        .map(|j| {
            let (status, _, body) = j.join().unwrap();
            assert_eq!(status, 200, "{body}");
            let v: Value = serde_json::from_str(&body).unwrap();
            v["cocoon"]["channel"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(channels.len(), 2, "one channel per concurrent job");

    // A client whose channel deposit cannot cover the job: 402, OpenAI's quota error.
    let poor = Gateway::start(&net, "gw-poor", &["--deposit", "100"]).unwrap();
    let (status, _, body) = post(&poor, "/v1/chat/completions", chat.clone());
    assert_eq!(
        (status, error_code(&body)),
        (402, "payment_required".into())
    );
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"]["type"], "insufficient_quota");
    assert!(body.contains("deposit"), "{body}");

    // A body the gateway accepts but one job frame cannot carry: 413 up front, not a 503
    // after a worker was tried.
    let big = Gateway::start(&net, "gw-big", &["--max-body", "4194304"]).unwrap();
    let prompt = "a".repeat(1_100_000);
    let (status, _, body) = post(
        &big,
        "/v1/completions",
        json!({"model": MODEL, "prompt": prompt, "max_tokens": 4}),
    );
    assert_eq!(
        (status, error_code(&body)),
        (413, "request_too_large".into()),
        "{body}"
    );
    assert!(body.contains("1048576"), "{body}");

    // With an API key: refused without it, served with it.
    let locked = Gateway::start(&net, "gw-locked", &["--api-key", "s3cret"]).unwrap();
    let (status, _, body) = call(&locked, "GET", "/v1/models", b"", None);
    assert_eq!((status, error_code(&body)), (401, "invalid_api_key".into()));
    assert_eq!(
        call(&locked, "GET", "/v1/models", b"", Some("s3cret")).0,
        200
    );

    // The only worker dies: the model is still in the market, but nobody serves it: 503.
    let mut net = net;
    net.workers[0].kill();
    let (status, _, body) = post(&gw, "/v1/chat/completions", chat.clone());
    assert_eq!(
        (status, error_code(&body)),
        (503, "no_worker_available".into()),
        "{body}"
    );
    assert_eq!(
        call(&gw, "GET", "/v1/models", b"", None).0,
        200,
        "still serving"
    );
}

/// Issue 19: every error is OpenAI's JSON, and what the caller got wrong is a 400 (checked
/// before a worker is chosen, or refused by the worker with OpenAI's code), never a 503
/// blaming the network. Before, these were an empty 405, an empty 400 and 503
/// `no_worker_available` for each mistake.
fn client_mistakes_are_400s(gw: &Gateway, chat: &Value) {
    let (status, head, body) = call(gw, "GET", "/v1/chat/completions", b"", None);
    assert_eq!(
        (status, error_code(&body)),
        (405, "method_not_allowed".into())
    );
    assert!(head.contains("allow: post"), "{head}");
    // A request line hyper cannot parse.
    let mut s = TcpStream::connect(&gw.addr).unwrap();
    s.write_all(b"NOT A REQUEST\r\n\r\n").unwrap();
    let mut raw = String::new();
    let _ = s.read_to_string(&mut raw);
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 400"), "{raw}");
    assert_eq!(error_code(body), "bad_request");
    let with = |f: &dyn Fn(&mut Value)| {
        let mut body = chat.clone();
        f(&mut body);
        post(gw, "/v1/chat/completions", body)
    };
    for (what, (status, _, body)) in [
        ("an empty stop string", with(&|b| b["stop"] = json!(""))),
        (
            "17 stop strings",
            with(&|b| b["stop"] = json!(vec!["x"; 17])),
        ),
        (
            "a 300-byte stop string",
            with(&|b| b["stop"] = json!("s".repeat(300))),
        ),
    ] {
        assert_eq!(
            (status, error_code(&body)),
            (400, "invalid_request".into()),
            "{what}: {body}"
        );
    }
    let (status, _, body) = post(
        gw,
        "/v1/completions",
        json!({"model": MODEL, "prompt": "", "max_tokens": 4}),
    );
    assert_eq!(
        (status, error_code(&body)),
        (400, "invalid_request".into()),
        "{body}"
    );
    // Longer than the model's context: the worker says so, and so does the gateway, also
    // for a streamed request (before any 200).
    let long = "word ".repeat(9000);
    for stream in [false, true] {
        let (status, head, body) = with(&|b| {
            b["messages"] = json!([{"role": "user", "content": long}]);
            b["stream"] = json!(stream);
        });
        assert_eq!(
            (status, error_code(&body)),
            (400, "context_length_exceeded".into()),
            "stream {stream}: {body}"
        );
        assert!(body.contains("context"), "{body}");
        assert!(!head.contains("text/event-stream"));
    }
}

/// Runs each `curl` command of the README's gateway section with `sh`, pointed at `gw`.
fn readme_curl_examples_work(gw: &Gateway) {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let joined = readme.replace("\\\n", " ");
    let commands: Vec<String> = joined
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("curl ") && l.contains("localhost:8080/v1/"))
        .map(|l| l.replace("localhost:8080", &gw.addr))
        .collect();
    assert_eq!(commands.len(), 3, "the README shows three curl examples");
    for command in &commands {
        let out = std::process::Command::new("sh")
            .args(["-c", command])
            .output()
            .expect("sh runs (and curl is installed)");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{command}: {out:?}");
        if command.contains("\"stream\":true") {
            assert!(
                stdout.trim_end().ends_with("data: [DONE]"),
                "{command}: {stdout}"
            );
            assert!(stdout.contains("chat.completion.chunk"), "{stdout}");
        } else if command.contains("/v1/models") {
            let v: Value = serde_json::from_str(&stdout).unwrap();
            assert_eq!(v["data"][0]["id"], MODEL, "{stdout}");
        } else {
            let v: Value = serde_json::from_str(&stdout).unwrap();
            assert_eq!(v["object"], "chat.completion", "{stdout}");
            assert!(
                v["choices"][0]["message"]["content"].is_string(),
                "{stdout}"
            );
        }
    }
}

/// Hole 4: a client that hangs up mid-answer stops the job: the gateway drops the job's
/// stream, the light client cancels (the worker sees its stream end and drops the
/// generation, is paid for what arrived) and the pooled channel is free. The worker runs
/// one job at a time and the gateway has one channel per worker: before, the abandoned
/// generation ran on to its `max_tokens` holding both, and the next request waited for it.
#[test]
fn a_client_that_hangs_up_stops_the_job_and_frees_its_channel() {
    let net = LoopbackNet::start("gw-hangup", &[vec!["--max-concurrent".into(), "1".into()]])
        .expect("start the network");
    let gw = Gateway::start(&net, "gw-hangup", &["--channels-per-worker", "1"]).unwrap();
    let long = json!({"model": MODEL, "stream": true, "max_tokens": 4000, "temperature": 0,
                      "messages": [{"role": "user", "content": "Tell a very long story."}]})
    .to_string();
    let mut s = TcpStream::connect(&gw.addr).unwrap();
    write!(
        s,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{long}",
        long.len()
    )
    .unwrap();
    // Read until the answer's text flows, then hang up.
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains("\"content\":\"") || seen.len() < 600 {
        let n = s.read(&mut buf).unwrap();
        assert!(
            n > 0,
            "the stream ended early: {}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&buf[..n]);
    }
    drop(s);
    let hung_up = std::time::Instant::now();
    let short = json!({"model": MODEL, "max_tokens": 8, "temperature": 0,
                       "messages": [{"role": "user", "content": "Say hi"}]});
    let (status, body) = loop {
        let (status, _, body) = post(&gw, "/v1/chat/completions", short.clone());
        // The worker's slot frees a moment after its stream ends; never a whole answer later.
        if status == 200 || hung_up.elapsed() > std::time::Duration::from_secs(10) {
            break (status, body);
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    assert_eq!(status, 200, "{body}");
    // Before, the second job waited for the first's channel until its 4,000 tokens were
    // done (minutes in a debug build); now it runs at once.
    let waited = hung_up.elapsed();
    assert!(waited < std::time::Duration::from_secs(20), "{waited:?}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert!(v["cocoon"]["paid_nanoton"].as_u64().unwrap() > 0);
}

/// `cocoon gateway --metrics`: requests by endpoint and status, their latency, and what the
/// jobs paid, as the caller saw them.
#[test]
fn the_gateway_counts_requests_and_payments_on_its_metrics_endpoint() {
    let net = LoopbackNet::start("gateway-metrics", &[vec![]]).expect("start the network");
    let gw = Gateway::start(&net, "gw", &["--metrics", "127.0.0.1:0"]).unwrap();
    let url = gw
        .metrics
        .clone()
        .expect("the gateway printed its metrics URL");
    let metrics_addr = url
        .strip_prefix("http://")
        .and_then(|r| r.strip_suffix("/metrics"))
        .expect("http://ADDR/metrics")
        .to_string();
    let chat = json!({"model": MODEL, "messages": [{"role": "user", "content": "Say hi"}],
                      "max_tokens": 6, "temperature": 0, "seed": 1});
    let (status, head, body) = post(&gw, "/v1/chat/completions", chat);
    assert_eq!(status, 200, "{body}");
    let paid: u64 = head
        .lines()
        .find_map(|l| l.strip_prefix("x-cocoon-paid-nanoton: "))
        .expect("the paid header")
        .trim()
        .parse()
        .unwrap();
    assert!(paid > 0);
    assert_eq!(call(&gw, "GET", "/nope", b"", None).0, 404);
    let (status, _, text) = call_at(&metrics_addr, "GET", "/metrics", b"", None);
    assert_eq!(status, 200);
    for want in [
        r#"cocoon_gateway_requests_total{endpoint="/v1/chat/completions",status="200"} 1"#
            .to_string(),
        r#"cocoon_gateway_requests_total{endpoint="other",status="404"} 1"#.to_string(),
        r#"cocoon_gateway_request_duration_seconds_count{endpoint="/v1/chat/completions"} 1"#
            .to_string(),
        format!("cocoon_gateway_paid_nanoton_total {paid}"),
        "cocoon_gateway_failovers_total 0".to_string(),
    ] {
        assert!(text.lines().any(|l| l == want), "no {want:?} in:\n{text}");
    }
}
