//! Adverts over real gossipsub between three in-process nodes on loopback QUIC: a hub that
//! validates and forwards, a publisher that also sends forgeries, and an observer. Valid
//! adverts travel; forged, oversize and replayed ones are dropped at the first honest node.

use std::time::Duration;

use cocoon_client::clock::unix_now;
use cocoon_client::market::MarketService;
use cocoon_gossip::advert::{Advert, Hardware, ModelOffer, Price, Trust};
use cocoon_p2p::{DhtMode, Network, NetworkConfig, NetworkError};
use ed25519_dalek::SigningKey;
use libp2p::identity::Keypair;

const T: Duration = Duration::from_secs(20);

fn config(bootstrap: Vec<cocoon_p2p::Multiaddr>) -> NetworkConfig {
    NetworkConfig {
        listen: vec!["/ip4/127.0.0.1/udp/0/quic-v1".parse().unwrap()],
        bootstrap,
        mdns: false,
        dht_mode: DhtMode::Server,
        gossip_heartbeat: Duration::from_millis(200),
        ..Default::default()
    }
}

fn advert(key: &SigningKey, seq: u64, completion: u64) -> Advert {
    let now = unix_now();
    Advert {
        public_key: key.verifying_key().to_bytes(),
        enclave_key: [5; 32],
        trust: Trust::DevInsecure,
        measurement: vec![1; 48],
        models: vec![ModelOffer {
            id: "m".into(),
            quantization: "Q4_1".into(),
            context_length: 2048,
        }],
        hardware: Hardware::Cpu { threads: 2 },
        max_concurrent: 2,
        free_slots: 2,
        queued: 0,
        tokens_per_s: 10.0,
        price: Price {
            prompt_per_mtok: 1,
            completion_per_mtok: completion,
        },
        min_deposit: 0,
        payout: None,
        expected_uptime_secs: 60,
        addrs: vec![],
        seq,
        issued_at: now,
        expires_at: now + 60,
    }
}

/// Publishes until some peer subscribes.
async fn publish(net: &Network, bytes: Vec<u8>) {
    let deadline = tokio::time::Instant::now() + T;
    loop {
        match net.publish(bytes.clone()).await {
            Ok(()) => return,
            Err(NetworkError::Publish(_)) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => panic!("publish: {e}"),
        }
    }
}

async fn wait_for(market: &MarketService, what: &str, ok: impl Fn(&[Advert]) -> bool) {
    let deadline = tokio::time::Instant::now() + T;
    while !ok(&market.adverts()) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}: {:?}",
            market.adverts()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_adverts_travel_and_forgeries_do_not() {
    let hub = Network::start(Keypair::generate_ed25519(), config(vec![])).unwrap();
    hub.wait_for("listening", T, |s| !s.listen_addrs.is_empty())
        .await
        .unwrap();
    let hub_addr = hub.state().listen_addrs[0].clone();
    let hub_market = MarketService::start(&hub, Default::default()).unwrap();
    // The publisher runs no market: it gossips raw bytes, good and bad.
    let publisher =
        Network::start(Keypair::generate_ed25519(), config(vec![hub_addr.clone()])).unwrap();
    let observer = Network::start(Keypair::generate_ed25519(), config(vec![hub_addr])).unwrap();
    let observer_market = MarketService::start(&observer, Default::default()).unwrap();

    let worker = SigningKey::from_bytes(&[7; 32]);
    let good = advert(&worker, 10, 3000);
    publish(&publisher, good.sign(&worker).unwrap().encode().unwrap()).await;
    for market in [&hub_market, &observer_market] {
        wait_for(market, "the valid advert", |a| {
            a.len() == 1 && a[0].seq == 10
        })
        .await;
    }

    // A forgery: another key signs an advert naming the worker's key (say, a lower price).
    let mut forged = advert(&worker, 11, 1).sign(&worker).unwrap();
    let thief = SigningKey::from_bytes(&[8; 32]);
    forged.signature = advert(&thief, 11, 1).sign(&thief).unwrap().signature;
    publish(&publisher, forged.encode().unwrap()).await;
    // Garbage, and a replay of an older seq.
    publish(&publisher, vec![0xff; 300]).await;
    publish(
        &publisher,
        advert(&worker, 9, 5)
            .sign(&worker)
            .unwrap()
            .encode()
            .unwrap(),
    )
    .await;
    // Then a valid update, which must arrive after them.
    let update = advert(&worker, 12, 2500);
    publish(&publisher, update.sign(&worker).unwrap().encode().unwrap()).await;
    for market in [&hub_market, &observer_market] {
        wait_for(market, "the update", |a| a.len() == 1 && a[0].seq == 12).await;
        let held = market.adverts();
        assert_eq!(
            held[0].price.completion_per_mtok, 2500,
            "never the forged price"
        );
    }

    // A newcomer that missed the gossip gets the table by sync from the hub.
    let late = Network::start(
        Keypair::generate_ed25519(),
        NetworkConfig {
            dht_mode: DhtMode::Client,
            ..config(vec![hub.state().listen_addrs[0].clone()])
        },
    )
    .unwrap();
    let late_market = MarketService::start(&late, Default::default()).unwrap();
    let added = late_market.sync_from(hub.peer_id(), T).await.unwrap();
    assert_eq!(added, 1);
    assert_eq!(late_market.adverts()[0].seq, 12);

    for n in [late, observer, publisher, hub] {
        n.shutdown().await;
    }
}
