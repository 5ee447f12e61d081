//! End-to-end: real `cocoon` processes on loopback (bootstrap, worker, client).

use std::io::Read;
use std::time::{Duration, Instant};

use cocoon_inference::{
    ChatMessage, Engine, EngineConfig, GenerateRequest, ModelSource, Prompt, SamplingParams,
};
use cocoon_tests::{parse_json, spawn_node, streaming, LoopbackNet};

const PROMPT: &str = "What is the capital of France?";
const QUIC: &str = "/ip4/127.0.0.1/udp/0/quic-v1";

fn in_process(prompt: &str, sampling: SamplingParams) -> String {
    let path = cocoon_tests::model_path().unwrap();
    let engine = Engine::load(
        &ModelSource::from_path(&path).unwrap(),
        EngineConfig::default(),
    )
    .unwrap();
    let request = GenerateRequest {
        prompt: Prompt::Chat(vec![ChatMessage {
            role: "user".into(),
            content: prompt.into(),
        }]),
        sampling,
    };
    engine.generate_text(request).unwrap().0
}

#[test]
fn client_finds_worker_through_dht_and_gets_the_in_process_text() {
    let net = LoopbackNet::start("e2e", &[vec![]]).expect("start the network");
    let worker = &net.workers[0];

    // Greedy: the network's answer is exactly the in-process answer.
    let out = net
        .infer(&["--json", "--max-tokens", "48", "--seed", "7"], PROMPT)
        .unwrap();
    let json = parse_json(&out).unwrap();
    // The client was given only the bootstrap address: it found the worker in the DHT.
    assert_eq!(json["worker_peer"], worker.peer_id.as_str());
    assert!(json["providers_found"].as_u64().unwrap() >= 1);
    assert_ne!(json["client_peer"], worker.peer_id.as_str());
    assert_eq!(json["model"], "smollm2-135m-instruct-q4_1");
    let expected = in_process(
        PROMPT,
        SamplingParams {
            seed: 7,
            max_tokens: 48,
            ..Default::default()
        },
    );
    assert_eq!(json["text"], expected.as_str());
    assert!(expected.contains("Paris"), "{expected}");
    // The job ran over the attested channel; the worker has no TEE and says so.
    assert_eq!(json["attestation"], "dev-insecure");
    assert_eq!(json["measurement"].as_str().unwrap().len(), 96, "{json}");
    assert!(json["tcb_status"].is_null());
    for key in [
        "prompt_tokens",
        "completion_tokens",
        "ttft_ms",
        "tokens_per_s",
    ] {
        assert!(json[key].as_f64().unwrap() > 0.0, "{key}: {json}");
    }

    // Sampling: the seed travels with the job, so the text is the in-process text too.
    let out = net
        .infer(
            &[
                "--json",
                "--max-tokens",
                "24",
                "--temperature",
                "0.8",
                "--seed",
                "11",
            ],
            "Tell me a joke.",
        )
        .unwrap();
    let json = parse_json(&out).unwrap();
    let expected = in_process(
        "Tell me a joke.",
        SamplingParams {
            seed: 11,
            temperature: 0.8,
            max_tokens: 24,
            ..Default::default()
        },
    );
    assert_eq!(json["text"], expected.as_str());

    // Under the default policy the dev-evidence worker is refused before the prompt is sent,
    // with a clear way out; with the flag, every job warns.
    let out = net
        .infer_default_policy(&["--max-tokens", "4"], "Hello")
        .unwrap()
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("development evidence is insecure and refused")
            && stderr.contains("--insecure-dev-attestation"),
        "{stderr}"
    );
    let out = net.infer(&["--max-tokens", "4"], "Hello").unwrap();
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("INSECURE development attestation"),
        "{stderr}"
    );
}

#[test]
fn unknown_model_is_a_clear_error() {
    let net = LoopbackNet::start("unknown-model", &[vec![]]).expect("start the network");
    let out = net
        .infer(
            &["--model", "no-such-model", "--discovery-timeout", "3"],
            "hi",
        )
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no worker for model \"no-such-model\""),
        "{stderr}"
    );
}

#[test]
fn worker_killed_mid_stream_gives_a_clear_error_not_a_hang() {
    let mut net = LoopbackNet::start("kill", &[vec![]]).expect("start the network");
    let cmd = net
        .infer_command(
            &[
                "--max-tokens",
                "2000",
                "--temperature",
                "1.0",
                "--seed",
                "1",
            ],
            "Write a very long story about a dragon.",
        )
        .unwrap();
    // Wait for streamed text, then kill the worker hard.
    let (mut client, _stdout, _) = streaming(cmd, 20);
    net.workers[0].kill();
    let killed = Instant::now();
    let deadline = killed + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = client.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "client still hangs 60 s after the worker died"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let stderr = stderr_of(&mut client);
    // The only worker is gone: the job fails, saying what was received and who was tried.
    assert!(!status.success());
    assert!(
        stderr.contains("every worker failed") && stderr.contains("characters received"),
        "stderr: {stderr}"
    );
    eprintln!(
        "client noticed the dead worker after {:?}",
        killed.elapsed()
    );
}

#[test]
fn busy_past_the_limit_and_the_slot_frees_when_the_client_dies() {
    let net = LoopbackNet::start("busy", &[vec!["--max-concurrent".into(), "1".into()]])
        .expect("start the network");
    // Client A holds the only slot with a long generation.
    let mut a = net
        .infer_command(
            &["--max-tokens", "2000", "--temperature", "1.0"],
            "Write a very long story about a cat.",
        )
        .unwrap()
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 64];
    let n = a.stdout.as_mut().unwrap().read(&mut buf).unwrap();
    assert!(n > 0, "client A got no text");

    // Client B is refused with `busy`, and the error names the worker it tried.
    let out = net.infer(&["--max-tokens", "4"], "Hello").unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("Busy") && stderr.contains(&net.workers[0].peer_id),
        "{stderr}"
    );

    // A dies; the worker notices the dead stream, cancels A's generation and frees the slot.
    let _ = a.kill();
    let _ = a.wait();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = net
            .infer(&["--json", "--max-tokens", "4"], "Hello")
            .unwrap();
        if out.status.success() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "slot never freed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn the_tcp_fallback_carries_the_same_job() {
    let net =
        LoopbackNet::start_on("tcp", "/ip4/127.0.0.1/tcp/0", &[vec![]]).expect("start the network");
    assert!(
        net.bootstrap_addr().contains("/tcp/"),
        "{}",
        net.bootstrap_addr()
    );
    let out = net
        .infer(&["--json", "--max-tokens", "16"], PROMPT)
        .unwrap();
    let json = parse_json(&out).unwrap();
    assert_eq!(json["worker_peer"], net.workers[0].peer_id.as_str());
    assert!(json["text"].as_str().unwrap().contains("Paris"), "{json}");
}

#[test]
fn mdns_finds_a_worker_on_the_lan_without_bootstrap() {
    let bin = cocoon_tests::cocoon_bin().unwrap();
    let model = cocoon_tests::model_path().unwrap();
    let dir = cocoon_tests::scratch("mdns").unwrap();
    // A worker with mDNS on (the default) and no bootstrap: a network of its own.
    let model_args = ["--model".to_string(), model.display().to_string()];
    let worker = spawn_node(dir.path(), "w", QUIC, &model_args).unwrap();
    let out = std::process::Command::new(&bin)
        .args(["infer", "--mdns", "--insecure-dev-attestation", "--json"])
        .args(["--max-tokens", "12", PROMPT])
        .env("COCOON_CLIENT_DATA_DIR", dir.path().join("client"))
        .output()
        .unwrap();
    let json = parse_json(&out).unwrap();
    assert_eq!(json["worker_peer"], worker.peer_id.as_str());
    // Found without a bootstrap peer, its advert fetched from itself: paid like any other.
    assert!(json["paid_nanoton"].as_u64().unwrap() > 0, "{json}");
}

#[test]
fn sigterm_stops_a_node_cleanly() {
    let dir = cocoon_tests::scratch("sigterm").unwrap();
    let mut node = spawn_node(dir.path(), "n", QUIC, &["--no-mdns".to_string()]).unwrap();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &node.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let exit = loop {
        if let Some(exit) = node.try_wait() {
            break exit;
        }
        assert!(Instant::now() < deadline, "node ignored SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(exit.success(), "exit status {exit}");
    let log = std::fs::read_to_string(&node.log).unwrap();
    assert!(log.contains("shutting down"), "{log}");
}

/// Everything a finished child wrote to its piped stderr.
fn stderr_of(child: &mut std::process::Child) -> String {
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .expect("stderr is piped")
        .read_to_string(&mut stderr)
        .unwrap();
    stderr
}

/// Which worker logged the start of a job.
fn serving_worker(net: &LoopbackNet) -> Option<usize> {
    net.workers
        .iter()
        .position(|w| std::fs::read_to_string(&w.log).is_ok_and(|log| log.contains("job started")))
}

#[test]
fn a_worker_dying_mid_stream_is_resumed_on_another_as_one_answer() {
    let mut net = LoopbackNet::start("failover", &[vec![], vec![]]).expect("start the network");
    const STORY: &str = "Write a long story about a lighthouse keeper.";
    const TOKENS: u32 = 96;
    let cmd = net
        .infer_command(&["--max-tokens", &TOKENS.to_string()], STORY)
        .unwrap();
    let (mut client, mut stdout, seen) = streaming(cmd, 40);
    let serving = serving_worker(&net).expect("a worker logged the job");
    net.workers[serving].kill();
    let mut rest = Vec::new();
    stdout.read_to_end(&mut rest).unwrap();
    let status = client.wait().unwrap();
    let stderr = stderr_of(&mut client);
    assert!(status.success(), "{stderr}");
    assert!(stderr.contains("failed over from"), "{stderr}");
    let answer = String::from_utf8([seen, rest].concat()).unwrap();
    let answer = answer.trim_end_matches('\n');
    // Greedy: the stitched answer is the uninterrupted one; nothing repeated, nothing lost.
    let whole = in_process(
        STORY,
        SamplingParams {
            max_tokens: TOKENS,
            ..Default::default()
        },
    );
    let n = answer.len().min(whole.len());
    assert!(n > 60, "too short: {answer:?}");
    assert_eq!(&answer[..n], &whole[..n], "stitched answer differs");
}

#[test]
fn the_market_lists_workers_and_max_price_picks_the_cheap_one() {
    let price = |p: &str| vec!["--price".to_string(), p.to_string()];
    let net = LoopbackNet::start("market", &[price("1000,3000"), price("50000,90000")])
        .expect("start the network");
    let (cheap, dear) = (&net.workers[0].peer_id, &net.workers[1].peer_id);
    // Adverts reach the bootstrap node by gossip; a newcomer gets them by sync.
    let deadline = Instant::now() + Duration::from_secs(60);
    let rows = loop {
        let out = std::process::Command::new(cocoon_tests::cocoon_bin().unwrap())
            .args(["market", "--json", "--bootstrap", &net.bootstrap_addr()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        if rows.as_array().unwrap().len() == 2 || Instant::now() > deadline {
            break rows;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 2, "{rows:?}");
    let row = |peer: &str| rows.iter().find(|r| r["peer"] == peer).unwrap().clone();
    assert_eq!(row(cheap)["price_completion_per_mtok"], 3000);
    assert_eq!(row(dear)["price_prompt_per_mtok"], 50000);
    assert_eq!(row(cheap)["attestation"], "dev-insecure");
    assert_eq!(row(cheap)["max_concurrent"], 8);

    // Ranked by the market: the cheap worker serves, and the answer says at what price.
    let out = net
        .infer(&["--json", "--max-tokens", "8"], "Hello")
        .unwrap();
    let json = parse_json(&out).unwrap();
    assert_eq!(json["source"], "market");
    assert_eq!(json["worker_peer"], cheap.as_str());
    assert_eq!(json["price_completion_per_mtok"], 3000);
    assert!(json["cost_nanoton"].as_u64().is_some());
    // Paid through a payment channel with that worker, at least one nanoTON (rounded up).
    assert!(json["paid_nanoton"].as_u64().unwrap() >= 1, "{json}");
    assert_eq!(json["channel"].as_str().map(str::len), Some(64), "{json}");
    // A price cap above only the cheap worker's price still gets it; below both, a clear error.
    let out = net
        .infer(
            &["--json", "--max-tokens", "8", "--max-price", "5000"],
            "Hello",
        )
        .unwrap();
    assert_eq!(parse_json(&out).unwrap()["worker_peer"], cheap.as_str());
    let out = net
        .infer(&["--max-tokens", "8", "--max-price", "10"], "Hello")
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("at or below 10 nanoTON"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
