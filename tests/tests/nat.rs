//! GPUs at home: the real `cocoon` binary across routers that translate addresses, each
//! host in its own network namespace ([`cocoon_tests::netns`]). A worker behind a home router
//! reserves a slot on a public relay, advertises the relayed address, and clients (public, or
//! behind another home router) reach it through the relay and then directly, by hole punching.
//! Where hole punching cannot work (symmetric NAT on both sides) the client fails with a clear
//! error, or runs the job over a relay whose operator allows it.
//!
//! Needs root (namespaces, nftables): CI runs as root and `.ci/run` installs nftables.

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use cocoon_tests::netns::{Host, Nat, Net, NetBuilder, RouterSpec};
use cocoon_tests::{model_path, parse_json};
use cocoon_worker::launch::NodeProcess;

const PORT: u16 = 4001;
const PROMPT: &str = "The capital of France is";

/// The bootstrap node on a public host: a DHT server at a fixed address, which it vouches for
/// (`--external-addr`), so it relays from the start (with `relay_flags`).
fn start_bootstrap(net: &Net, host: &Host, relay_flags: &[&str]) -> Result<(NodeProcess, String)> {
    let addr = format!("/ip4/{}/udp/{PORT}/quic-v1", host.addr());
    let mut flags = vec![
        "--no-mdns".to_string(),
        "--external-addr".into(),
        addr.clone(),
    ];
    flags.extend(relay_flags.iter().map(|s| s.to_string()));
    let node = host.spawn_node(net.dir(), "boot", &addr, &flags)?;
    let full = format!("{addr}/p2p/{}", node.peer_id);
    Ok((node, full))
}

/// A worker (the default `auto` DHT mode and relay settings) on `host`, bootstrapped by `boot`.
fn start_worker(net: &Net, host: &Host, boot: &str) -> Result<NodeProcess> {
    let model = model_path()?;
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
    host.spawn_node(
        net.dir(),
        host.name(),
        &format!("/ip4/0.0.0.0/udp/{PORT}/quic-v1"),
        &flags,
    )
}

/// Waits until `node`'s log holds a line containing `needle`.
fn wait_log(node: &NodeProcess, needle: &str, timeout: Duration) -> Result<String> {
    let deadline = Instant::now() + timeout;
    loop {
        let log = std::fs::read_to_string(&node.log).unwrap_or_default();
        if let Some(line) = log.lines().find(|l| l.contains(needle)) {
            return Ok(line.to_string());
        }
        if Instant::now() > deadline {
            bail!(
                "no {needle:?} in {} within {timeout:?}; its log ends:\n{}",
                node.log.display(),
                tail(&log)
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// Runs `cocoon infer --json` on `host`, killed after `limit` (it must never hang).
fn infer(net: &Net, host: &Host, boot: &str, limit: Duration) -> Result<(Output, Duration)> {
    let data = net.dir().join(format!("client-{}", host.name()));
    let mut cmd = host.infer_command(boot, &["--json", "--max-tokens", "8"], PROMPT, &data)?;
    let started = Instant::now();
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("starting cocoon infer")?;
    loop {
        if child.try_wait()?.is_some() {
            return Ok((child.wait_with_output()?, started.elapsed()));
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output()?;
            bail!(
                "cocoon infer on {} hung for {limit:?}; stderr:\n{}",
                host.name(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A successful job's JSON, with a readable failure otherwise.
fn success(out: &Output, what: &str, logs: &[&Path]) -> Result<serde_json::Value> {
    if !out.status.success() {
        let mut text = format!(
            "{what}: cocoon infer failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        for log in logs {
            let body = std::fs::read_to_string(log).unwrap_or_default();
            text.push_str(&format!("\n--- {}:\n{}", log.display(), tail(&body)));
        }
        bail!(text);
    }
    parse_json(out)
}

fn home_router(nat: Nat) -> RouterSpec {
    RouterSpec::new(nat)
}

#[test]
fn a_worker_behind_a_home_router_serves_public_and_home_clients_directly() -> Result<()> {
    let net = NetBuilder::new()
        .public("boot")
        .public("alice")
        .router("r1", home_router(Nat::PortRestricted))
        .home("gpu", "r1")
        .router("r2", home_router(Nat::PortRestricted))
        .home("bob", "r2")
        .build()?;
    let (_boot, boot_addr) = start_bootstrap(&net, net.host("boot")?, &[])?;
    let worker = start_worker(&net, net.host("gpu")?, &boot_addr)?;
    // Its private address leads nowhere from outside: it takes a slot on the relay.
    wait_log(
        &worker,
        "reachability: relayed through",
        Duration::from_secs(60),
    )?;
    // The advert with the relayed address goes out within the advertiser's change gap.
    std::thread::sleep(Duration::from_secs(4));

    for client in ["alice", "bob"] {
        let (out, took) = infer(
            &net,
            net.host(client)?,
            &boot_addr,
            Duration::from_secs(120),
        )?;
        let json = success(&out, client, &[&worker.log])?;
        assert_eq!(json["worker_peer"], worker.peer_id.as_str(), "{client}");
        assert_eq!(
            json["path"], "direct",
            "{client}: the job runs on the hole-punched connection"
        );
        assert!(
            json["paid_nanoton"].as_u64().unwrap_or(0) > 0,
            "{client}: a paid job"
        );
        eprintln!(
            "{client} → worker behind NAT: connect {:.0} ms, ttft {:.0} ms, whole command {took:?}",
            json["connect_ms"].as_f64().unwrap_or(f64::NAN),
            json["ttft_ms"].as_f64().unwrap_or(f64::NAN),
        );
    }
    Ok(())
}

#[test]
fn symmetric_nat_on_both_sides_fails_clearly_unless_the_relay_allows_jobs() -> Result<()> {
    for generous in [false, true] {
        let net = NetBuilder::new()
            .public("boot")
            .router("r1", home_router(Nat::Symmetric))
            .home("gpu", "r1")
            .router("r2", home_router(Nat::Symmetric))
            .home("carol", "r2")
            .build()?;
        // A relay for strangers (libp2p's limits: 128 KiB, 2 min per circuit) carries the
        // hole-punching handshake only; an operator's own relay may carry jobs.
        let generous_flags = [
            "--relay-max-circuit-bytes",
            "67108864",
            "--relay-max-circuit-secs",
            "3600",
        ];
        let flags: &[&str] = if generous { &generous_flags } else { &[] };
        let (boot, boot_addr) = start_bootstrap(&net, net.host("boot")?, flags)?;
        let worker = start_worker(&net, net.host("gpu")?, &boot_addr)?;
        wait_log(
            &worker,
            "reachability: relayed through",
            Duration::from_secs(60),
        )?;
        std::thread::sleep(Duration::from_secs(4));
        let (out, took) = infer(
            &net,
            net.host("carol")?,
            &boot_addr,
            Duration::from_secs(120),
        )?;
        if generous {
            let json = success(&out, "carol", &[&worker.log])?;
            assert_eq!(json["worker_peer"], worker.peer_id.as_str());
            assert_eq!(
                json["path"], "relayed",
                "no hole through two symmetric NATs"
            );
        } else {
            ensure!(
                !out.status.success(),
                "a job across two symmetric NATs over a stranger's relay succeeded: {}",
                String::from_utf8_lossy(&out.stdout)
            );
            let stderr = String::from_utf8_lossy(&out.stderr);
            for needle in [
                "cannot reach",
                "hole punching",
                &boot.peer_id,
                "no room for a job",
            ] {
                assert!(
                    stderr.contains(needle),
                    "the error should name {needle:?}: {stderr}"
                );
            }
            eprintln!("symmetric both sides: failed clearly after {took:?}");
        }
    }
    Ok(())
}

/// The market rows `cocoon market --json` shows from `host`.
fn market(net: &Net, host: &Host, boot: &str) -> Result<Vec<serde_json::Value>> {
    let bin = cocoon_tests::cocoon_bin()?;
    let out = host
        .command(&bin, ["market", "--json", "--bootstrap", boot])
        .env("COCOON_CLIENT_DATA_DIR", net.dir().join("market"))
        .output()?;
    ensure!(
        out.status.success(),
        "cocoon market: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(parse_json(&out)?.as_array().cloned().unwrap_or_default())
}

/// The advert sequence number of `peer` in the market seen from `host`, once listed.
fn advert_seq(net: &Net, host: &Host, boot: &str, peer: &str) -> Result<Option<u64>> {
    Ok(market(net, host, boot)?
        .iter()
        .find(|r| r["peer"] == peer)
        .and_then(|r| r["seq"].as_u64()))
}

#[test]
fn a_worker_cut_off_mid_answer_is_replaced_then_returns_and_its_channel_agrees() -> Result<()> {
    use std::io::Read;
    let net = NetBuilder::new()
        .public("boot")
        .public("alice")
        .public("gpu2")
        .router("r1", home_router(Nat::PortRestricted))
        .home("gpu1", "r1")
        .build()?;
    let (_boot, boot_addr) = start_bootstrap(&net, net.host("boot")?, &[])?;
    let model = model_path()?.display().to_string();
    let worker = |name: &str, price: &str| -> Result<NodeProcess> {
        let host = net.host(name)?;
        let flags: Vec<String> = [
            "--no-mdns",
            "--bootstrap",
            &boot_addr,
            "--model",
            &model,
            "--attestation",
            "dev-insecure",
            "--price",
            price,
        ]
        .map(String::from)
        .to_vec();
        host.spawn_node(
            net.dir(),
            name,
            &format!("/ip4/0.0.0.0/udp/{PORT}/quic-v1"),
            &flags,
        )
    };
    // The cheap worker is at home; the dear one is public.
    let gpu1 = worker("gpu1", "1000,3000")?;
    let gpu2 = worker("gpu2", "50000,90000")?;
    wait_log(
        &gpu1,
        "reachability: relayed through",
        Duration::from_secs(60),
    )?;
    wait_log(&gpu2, "reachability: public at", Duration::from_secs(60))?;
    let alice = net.host("alice")?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while market(&net, alice, &boot_addr)?.len() < 2 {
        ensure!(Instant::now() < deadline, "both workers never listed");
        std::thread::sleep(Duration::from_millis(500));
    }
    std::thread::sleep(Duration::from_secs(3));

    // A long answer from the cheap worker; its router loses the uplink mid-answer.
    let data = net.dir().join("alice-client");
    let cmd = alice.infer_command(
        &boot_addr,
        &["--max-tokens", "300"],
        "Write a long story about a lighthouse keeper.",
        &data,
    )?;
    let (mut client, mut stdout, _seen) = cocoon_tests::streaming(cmd, 40);
    ensure!(
        std::fs::read_to_string(&gpu1.log)?.contains("job started"),
        "the cheap worker behind NAT should serve first"
    );
    let seq_before = advert_seq(&net, alice, &boot_addr, &gpu1.peer_id)?;
    let r1 = net.router("r1")?;
    r1.set_uplink(false)?;
    let cut = Instant::now();
    let mut rest = Vec::new();
    stdout.read_to_end(&mut rest)?;
    let status = client.wait()?;
    let mut stderr = String::new();
    client
        .stderr
        .take()
        .context("piped stderr")?
        .read_to_string(&mut stderr)?;
    ensure!(status.success(), "the client did not complete: {stderr}");
    ensure!(stderr.contains("failed over from"), "{stderr}");
    ensure!(
        std::fs::read_to_string(&gpu2.log)?.contains("job started"),
        "the public worker finished the answer"
    );
    eprintln!(
        "answer completed on the other worker {:?} after the cut",
        cut.elapsed()
    );

    // Healed: the worker is back in the market within one advert interval (30 s).
    r1.set_uplink(true)?;
    let healed = Instant::now();
    loop {
        let seq = advert_seq(&net, alice, &boot_addr, &gpu1.peer_id)?;
        if seq.is_some() && seq > seq_before {
            break;
        }
        ensure!(
            healed.elapsed() < Duration::from_secs(30),
            "no new advert from the healed worker within 30 s; its log ends:\n{}",
            tail(&std::fs::read_to_string(&gpu1.log)?)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    eprintln!(
        "worker back in the market {:?} after the heal",
        healed.elapsed()
    );

    // Its channel agrees: the next job on it (only the cheap worker is under this price)
    // settles what the cut job left open, and both sides accept the quote.
    let mut cmd = alice.infer_command(
        &boot_addr,
        &["--json", "--max-tokens", "8", "--max-price", "5000"],
        PROMPT,
        &data,
    )?;
    let out = cmd.output()?;
    let json = success(&out, "alice after the heal", &[&gpu1.log])?;
    assert_eq!(json["worker_peer"], gpu1.peer_id.as_str());
    assert!(json["paid_nanoton"].as_u64().unwrap_or(0) > 0);
    Ok(())
}

#[test]
fn a_worker_behind_a_upnp_router_is_mapped_and_dialled_directly() -> Result<()> {
    // The worst router for hole punching, but it offers UPnP IGD (miniupnpd).
    let net = NetBuilder::new()
        .public("boot")
        .public("alice")
        .router("r1", home_router(Nat::Symmetric).upnp(true))
        .home("gpu", "r1")
        .build()?;
    let (_boot, boot_addr) = start_bootstrap(&net, net.host("boot")?, &[])?;
    let worker = start_worker(&net, net.host("gpu")?, &boot_addr)?;
    let line = wait_log(
        &worker,
        "reachability: mapped by the router",
        Duration::from_secs(60),
    )?;
    let wan = net.router("r1")?.wan_addr().to_string();
    assert!(
        line.contains(&wan),
        "mapped at the router's address {wan}: {line}"
    );
    std::thread::sleep(Duration::from_secs(4));
    let (out, _) = infer(
        &net,
        net.host("alice")?,
        &boot_addr,
        Duration::from_secs(120),
    )?;
    let json = success(&out, "alice", &[&worker.log])?;
    assert_eq!(json["worker_peer"], worker.peer_id.as_str());
    assert_eq!(json["path"], "direct");
    // Directly reachable: no relay slot held, and it answers DHT queries.
    let log = std::fs::read_to_string(&worker.log)?;
    let mapped_at = log.find("reachability: mapped").unwrap_or(0);
    assert!(
        !log[mapped_at..].contains("reachability: relayed"),
        "it went back to a relay"
    );
    Ok(())
}
