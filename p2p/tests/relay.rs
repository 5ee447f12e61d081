//! A node that others cannot dial directly is reached through a relay and then directly:
//! real swarms in one process on loopback QUIC (the network-namespace tests in `tests/` put
//! real NATs in between).

use std::time::Duration;

use cocoon_p2p::frame::{FrameTransport, FramedStream};
use cocoon_p2p::reach::is_relayed;
use cocoon_p2p::{DhtMode, Network, NetworkConfig, Reachability, RelayServe};
use futures::StreamExt;
use libp2p::identity::Keypair;

const T: Duration = Duration::from_secs(20);

async fn start(config: NetworkConfig) -> Network {
    let net = Network::start(Keypair::generate_ed25519(), config).unwrap();
    net.wait_for("listening", T, |s| !s.listen_addrs.is_empty())
        .await
        .unwrap();
    net
}

fn base() -> NetworkConfig {
    NetworkConfig {
        listen: vec!["/ip4/127.0.0.1/udp/0/quic-v1".parse().unwrap()],
        mdns: false,
        upnp: false,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relayed_worker_is_reached_through_its_relay_then_directly() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let relay = start(NetworkConfig {
        dht_mode: DhtMode::Server,
        relay_server: RelayServe::On,
        ..base()
    })
    .await;
    let relay_addr = relay.state().listen_addrs[0].clone();
    let worker = start(NetworkConfig {
        dht_mode: DhtMode::Auto,
        bootstrap: vec![relay_addr.clone()],
        relays: 1,
        ..base()
    })
    .await;
    // It reserves on the relay and publishes the relayed address, which no DHT mode follows.
    let state = worker
        .wait_for("a relay reservation", T, |s| {
            matches!(s.reachability, Reachability::Relayed { .. })
                && s.shareable.iter().any(is_relayed)
        })
        .await
        .unwrap();
    assert_eq!(
        state.reachability,
        Reachability::Relayed {
            relays: vec![relay.peer_id()]
        }
    );
    let circuit: Vec<_> = state.shareable.into_iter().filter(is_relayed).collect();
    assert!(
        circuit
            .iter()
            .all(|a| a.to_string().contains(&relay.peer_id().to_string())),
        "{circuit:?}"
    );

    let mut incoming = worker.accept_jobs().unwrap();
    let server = tokio::spawn(async move {
        let (peer, stream) = incoming.next().await.unwrap();
        let mut framed = FramedStream::new(stream, 1024);
        let frame = framed.recv_frame().await.unwrap().unwrap();
        framed.send_frame(&frame).await.unwrap();
        framed.close().await.unwrap();
        peer
    });

    // A client that knows only the worker's relayed address (as from its advert).
    let client = start(NetworkConfig {
        dht_mode: DhtMode::Client,
        bootstrap: vec![relay_addr],
        ..base()
    })
    .await;
    client
        .wait_for("the relay", T, |s| s.connected_peers > 0)
        .await
        .unwrap();
    let stream = client
        .open_job_stream_at(worker.peer_id(), circuit, T)
        .await
        .unwrap();
    let paths = client.paths(worker.peer_id()).await.unwrap();
    assert!(
        !paths.is_empty() && paths.iter().all(|a| !is_relayed(a)),
        "{paths:?}"
    );
    let mut framed = FramedStream::new(stream, 1024);
    framed.send_frame(b"through the hole").await.unwrap();
    assert_eq!(
        framed.recv_frame().await.unwrap().unwrap(),
        b"through the hole"
    );
    assert_eq!(server.await.unwrap(), client.peer_id());
    for n in [client, worker, relay] {
        n.shutdown().await;
    }
}
