//! Three real swarms in one process on loopback QUIC: bootstrap, worker, light client.

use std::time::Duration;

use cocoon_p2p::frame::{FrameTransport, FramedStream};
use cocoon_p2p::{DhtMode, Multiaddr, Network, NetworkConfig, NetworkError, PeerId};
use futures::StreamExt;
use libp2p::identity::Keypair;

const T: Duration = Duration::from_secs(15);

fn config(bootstrap: Vec<Multiaddr>, dht_mode: DhtMode) -> NetworkConfig {
    NetworkConfig {
        listen: vec!["/ip4/127.0.0.1/udp/0/quic-v1".parse().unwrap()],
        bootstrap,
        mdns: false,
        dht_mode,
        ..Default::default()
    }
}

async fn start(bootstrap: Vec<Multiaddr>, mode: DhtMode) -> Network {
    let net = Network::start(Keypair::generate_ed25519(), config(bootstrap, mode)).unwrap();
    net.wait_for("listening", T, |s| !s.listen_addrs.is_empty())
        .await
        .unwrap();
    net
}

async fn find(client: &Network, model: &str) -> Vec<PeerId> {
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let found = client.find_providers(model).await.unwrap_or_default();
        if !found.is_empty() || tokio::time::Instant::now() > deadline {
            return found;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_finds_the_provider_through_the_dht_and_opens_a_job_stream() {
    let boot = start(vec![], DhtMode::Server).await;
    let boot_addr = boot.state().listen_addrs[0].clone();
    let worker = start(vec![boot_addr.clone()], DhtMode::Server).await;
    worker
        .wait_for("DHT peers", T, |s| s.routing_peers > 0)
        .await
        .unwrap();
    let mut incoming = worker.accept_jobs().unwrap();
    assert!(matches!(
        worker.accept_jobs(),
        Err(NetworkError::AlreadyAccepting)
    ));
    worker.provide("model-a").await.unwrap();

    // The client knows only the bootstrap node.
    let client = start(vec![boot_addr], DhtMode::Client).await;
    assert_eq!(find(&client, "model-a").await, vec![worker.peer_id()]);
    assert!(client.find_providers("model-b").await.unwrap().is_empty());

    // An echo over /cocoon/job/1.
    let server = tokio::spawn(async move {
        let (peer, stream) = incoming.next().await.unwrap();
        let mut framed = FramedStream::new(stream, 1024);
        let frame = framed.recv_frame().await.unwrap().unwrap();
        framed.send_frame(&frame).await.unwrap();
        framed.close().await.unwrap();
        peer
    });
    let stream = client.open_job_stream(worker.peer_id(), T).await.unwrap();
    let mut framed = FramedStream::new(stream, 1024);
    framed.send_frame(b"hello worker").await.unwrap();
    assert_eq!(framed.recv_frame().await.unwrap().unwrap(), b"hello worker");
    assert!(framed.recv_frame().await.unwrap().is_none());
    assert_eq!(server.await.unwrap(), client.peer_id());

    for n in [client, worker, boot] {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connecting_to_an_unknown_peer_fails_cleanly() {
    let boot = start(vec![], DhtMode::Server).await;
    let client = start(vec![boot.state().listen_addrs[0].clone()], DhtMode::Client).await;
    let nobody = Keypair::generate_ed25519().public().to_peer_id();
    let result = tokio::time::timeout(T, client.connect(nobody))
        .await
        .expect("no hang");
    assert!(result.is_err(), "{result:?}");
    let err = client.open_job_stream(nobody, T).await.unwrap_err();
    assert!(
        !matches!(err, NetworkError::Timeout(..)),
        "a clear error, not a timeout: {err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_probe_lookup_reports_the_closest_peers_and_what_it_cost() {
    let boot = start(vec![], DhtMode::Server).await;
    let boot_addr = boot.state().listen_addrs[0].clone();
    let mut servers = Vec::new();
    for _ in 0..4 {
        servers.push(start(vec![boot_addr.clone()], DhtMode::Server).await);
    }
    let probe = start(vec![boot_addr], DhtMode::Server).await;
    probe
        .wait_for("DHT peers", T, |s| s.routing_peers > 0)
        .await
        .unwrap();
    // The lookup of a server's own id finds that server first.
    let target = servers[2].peer_id();
    let report = tokio::time::timeout(T, probe.probe_lookup(target.to_bytes()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(report.closest.first(), Some(&target), "{report:?}");
    assert!(report.requests >= 1 && report.successes >= 1, "{report:?}");
    assert!(report.successes + report.failures <= report.requests);
    assert!(report.known >= 1);
    assert!(matches!(report.hops, 1 | 2), "{report:?}");
    assert!(report.duration > Duration::ZERO);
}

/// A port already taken is refused with the operating system's reason, for TCP and QUIC.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_port_is_refused_with_its_cause() {
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    for addr in [
        format!("/ip4/127.0.0.1/tcp/{}", tcp.local_addr().unwrap().port()),
        format!(
            "/ip4/127.0.0.1/udp/{}/quic-v1",
            udp.local_addr().unwrap().port()
        ),
    ] {
        let config = NetworkConfig {
            listen: vec![addr.parse().unwrap()],
            mdns: false,
            ..Default::default()
        };
        let err = Network::start(Keypair::generate_ed25519(), config)
            .err()
            .unwrap_or_else(|| panic!("listened on the taken {addr}"));
        let text = err.to_string();
        assert!(matches!(err, NetworkError::Listen { .. }), "{text}");
        assert!(text.contains(&addr), "{text}");
        assert!(
            text.to_lowercase().contains("address already in use"),
            "{text}"
        );
    }
}
