//! Faults heal themselves (issue 19): a running gateway keeps reaching a worker that
//! restarted with the same identity on a new port, and reaches a worker that joined through
//! another worker after the bootstrap node died. Before, the first answered `503 no address
//! known for peer` for over 90 s (it kept dialling the old address), and the second was never
//! reachable (its advert expired at the gateway, then 404).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use cocoon_tests::{Gateway, LoopbackNet};
use serde_json::{json, Value};

const MODEL: &str = "smollm2-135m-instruct-q4_1";

/// One chat job through the gateway: (status, body).
fn job(gw: &Gateway) -> (u16, Value) {
    let body = json!({"model": MODEL, "max_tokens": 2, "temperature": 0,
                      "messages": [{"role": "user", "content": "Say hi"}]})
    .to_string();
    let mut s = TcpStream::connect(&gw.addr).unwrap();
    write!(
        s,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut raw = String::new();
    let _ = s.read_to_string(&mut raw);
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

/// Runs jobs until one is served by `worker`; how long that took, or the last answer.
fn served_by(gw: &Gateway, worker: &str, within: Duration) -> Result<Duration, String> {
    let start = Instant::now();
    let mut last = String::new();
    while start.elapsed() < within {
        let (status, v) = job(gw);
        if status == 200 && v["cocoon"]["worker"] == worker {
            return Ok(start.elapsed());
        }
        last = format!("{status} {v}");
        std::thread::sleep(Duration::from_millis(250));
    }
    Err(last)
}

#[test]
fn a_running_gateway_follows_workers_that_move_and_join_after_the_bootstrap_died() {
    let mut net = LoopbackNet::start("heal", &[vec![]]).expect("start the network");
    let gw = Gateway::start(&net, "gw", &[]).unwrap();
    let w0 = net.workers[0].peer_id.clone();
    served_by(&gw, &w0, Duration::from_secs(60)).expect("the first job");

    // The worker restarts with its identity on a new port.
    let old = net.workers[0].quic_addr().unwrap().to_string();
    net.workers[0].kill();
    net.restart_worker(0, &[]).unwrap();
    let new = net.workers[0].quic_addr().unwrap().to_string();
    assert_ne!(old, new, "a new port");
    let took = served_by(&gw, &w0, Duration::from_secs(45)).unwrap_or_else(|last| {
        let log = std::fs::read_to_string(net.dir.path().join("gw.log")).unwrap_or_default();
        let _ = std::fs::write("/tmp/heal-gw.log", &log);
        let _ = std::fs::copy(net.dir.path().join("boot.log"), "/tmp/heal-boot.log");
        let tail: String = log
            .lines()
            .filter(|l| {
                [
                    "PRUNE",
                    "prune",
                    "backoff",
                    "reject",
                    "Removing",
                    "score",
                    "ignored",
                    "admitted",
                    "disconnected",
                    "Connection closed",
                    "Connection established",
                ]
                .iter()
                .any(|k| l.contains(k))
            })
            .rev()
            .take(40)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n");
        panic!("the moved worker is unreachable: {last}\nnew address {new}\ngateway log:\n{tail}")
    });
    eprintln!("the moved worker served again after {took:?}");

    // The bootstrap node dies; a cheaper worker joins through the first one.
    net.bootstrap.kill();
    net.add_worker_via(&new, &["--price".into(), "1,1".into()])
        .unwrap();
    let w1 = net.workers[1].peer_id.clone();
    let took = served_by(&gw, &w1, Duration::from_secs(60)).unwrap_or_else(|last| {
        panic!("the worker that joined through a peer is unreachable: {last}")
    });
    eprintln!("the worker that joined through a peer served after {took:?}");
}
