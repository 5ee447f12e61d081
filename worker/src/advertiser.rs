//! The worker's advert: built from its engines, load, measured speed, price and attestation,
//! signed with the node identity, and gossiped on change and periodically.
//!
//! Every second the price core ([`PriceCore`]) sees the load (busy slots, jobs refused as
//! busy). A new advert goes out when the price, the free slots or the enclave key changed
//! (at most one every [`MIN_GAP`]), and every [`AdvertiserConfig::interval`] regardless; it
//! expires after [`AdvertiserConfig::ttl_secs`], about twice the interval, so a dead worker
//! leaves the market within that. Sequence numbers are milliseconds since the epoch (and
//! strictly increasing), so they keep growing across restarts.
//!
//! Before the first advert goes out, [`check_first`] builds it and validates it as every
//! peer will: a worker whose advert is out of bounds would run but never be used, so the
//! node refuses to start instead.

use std::time::Duration;

use cocoon_gossip::price::PolicyError;
use cocoon_gossip::{
    Advert, AdvertError, Hardware, Load, ModelOffer, Price, PriceCore, PricePolicy, Schedule, Trust,
};
use cocoon_p2p::attest::EvidenceKind;
use cocoon_p2p::{Multiaddr, Network, NetworkError};
use ed25519_dalek::SigningKey;

use crate::worker::Worker;
use cocoon_client::clock::{unix_now, unix_now_ms};
use cocoon_client::market::MarketService;

/// Least time between two adverts caused by changes.
pub const MIN_GAP: Duration = Duration::from_secs(2);

/// Advert settings.
#[derive(Clone, Debug)]
pub struct AdvertiserConfig {
    /// Re-publication period. Default: 30 s.
    pub interval: Duration,
    /// Advert lifetime in seconds. Default: 75 (two periods and a margin).
    pub ttl_secs: u64,
    /// Pricing. Default: [`PricePolicy::default`] (dynamic).
    pub price: PricePolicy,
    /// Smallest channel deposit accepted, nanoTON. Default: 0.
    pub min_deposit: u64,
    /// Payout wallet announced for payment channels (basechain account id). Default: none
    /// (no payments taken).
    pub payout: Option<[u8; 32]>,
    /// Expected uptime announced, seconds. Default: 86,400.
    pub expected_uptime_secs: u64,
    /// Jobs per model at once (the engines' limit).
    pub max_concurrent: u32,
}

impl Default for AdvertiserConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(30),
            ttl_secs: 75,
            price: PricePolicy::default(),
            min_deposit: 0,
            payout: None,
            expected_uptime_secs: 86_400,
            max_concurrent: 2,
        }
    }
}

pub use cocoon_p2p::identity::signing_key;

/// The worker's slots and how many are busy now.
pub fn load(worker: &Worker, config: &AdvertiserConfig) -> (u32, u32) {
    let slots = config.max_concurrent * worker.engines().len().max(1) as u32;
    let busy: usize = worker.engines().values().map(|e| e.active()).sum();
    (slots, busy as u32)
}

/// Why a worker's adverts would not be valid.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdvertCheckError {
    /// The price policy is unusable.
    #[error(transparent)]
    Price(#[from] PolicyError),
    /// The advert fails the checks every peer runs.
    #[error(
        "this worker's advert would be refused by every peer ({0}), so the worker would \
         never be used; check --max-concurrent, --price and the models"
    )]
    Advert(#[from] AdvertError),
}

/// Builds the first advert `worker` would publish (listening on `addrs`, at the price
/// policy's starting price) and checks it as every peer does: field bounds and times at
/// `now`, signature, encoded size.
pub fn check_first(
    worker: &Worker,
    addrs: &[Multiaddr],
    key: &SigningKey,
    config: &AdvertiserConfig,
    now: u64,
) -> Result<(), AdvertCheckError> {
    let price = PriceCore::new(config.price.clone())?.price();
    let advert = build(
        worker,
        addrs,
        key,
        config,
        load(worker, config),
        price,
        now * 1000,
        now,
    );
    let bytes = advert.sign(key)?.encode()?;
    cocoon_gossip::SignedAdvert::open(&bytes, now)?;
    Ok(())
}

/// Builds the advert describing `worker`, listening on `addrs`, with `(slots, busy)` from
/// [`load`].
#[allow(clippy::too_many_arguments)]
pub fn build(
    worker: &Worker,
    addrs: &[Multiaddr],
    key: &SigningKey,
    config: &AdvertiserConfig,
    (slots, busy): (u32, u32),
    price: Price,
    seq: u64,
    now: u64,
) -> Advert {
    let credentials = worker.attester().current();
    let mut models: Vec<ModelOffer> = worker
        .engines()
        .iter()
        .map(|(id, engine)| {
            let info = engine.info();
            ModelOffer {
                id: id.clone(),
                quantization: info.quantization.clone(),
                context_length: info.context_length as u32,
            }
        })
        .collect();
    models.sort_by(|a, b| a.id.cmp(&b.id));
    let device = worker
        .engines()
        .values()
        .next()
        .map(|e| e.info().device.clone())
        .unwrap_or_default();
    let hardware = if device.to_lowercase().contains("cuda") {
        Hardware::Gpu {
            name: device,
            vram_mib: 0,
        }
    } else {
        Hardware::Cpu {
            threads: std::thread::available_parallelism()
                .map(|n| n.get() as u32)
                .unwrap_or(1),
        }
    };
    Advert {
        public_key: key.verifying_key().to_bytes(),
        enclave_key: credentials.key.public(),
        trust: match worker.attester().kind() {
            EvidenceKind::Tdx => Trust::Tdx,
            _ => Trust::DevInsecure,
        },
        measurement: credentials
            .measurement
            .map(|m| m.to_vec())
            .unwrap_or_default(),
        models,
        hardware,
        max_concurrent: slots,
        free_slots: slots.saturating_sub(busy),
        queued: 0,
        tokens_per_s: worker.stats().tokens_per_s() as f32,
        price,
        min_deposit: config.min_deposit,
        payout: config.payout,
        expected_uptime_secs: config.expected_uptime_secs,
        addrs: addrs
            .iter()
            .take(cocoon_gossip::advert::limits::ADDRS)
            .map(|a| a.to_vec())
            .collect(),
        seq,
        issued_at: now,
        expires_at: now + config.ttl_secs,
    }
}

/// Publishes the worker's advert until the network stops.
pub async fn run(
    worker: Worker,
    network: Network,
    market: MarketService,
    key: SigningKey,
    config: AdvertiserConfig,
) {
    let mut price = match PriceCore::new(config.price.clone()) {
        Ok(p) => p,
        Err(e) => {
            tracing::error!("{e}; adverts disabled");
            return;
        }
    };
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut schedule: Schedule<(Price, u32, [u8; 32], Vec<Multiaddr>)> = Schedule::new(
        config.interval.as_millis() as u64,
        MIN_GAP.as_millis() as u64,
    );
    loop {
        tick.tick().await;
        let now = unix_now();
        let (slots, busy) = load(&worker, &config);
        if let Some(p) = price.observe(
            Load {
                busy,
                slots,
                refused: worker.stats().take_refused(),
            },
            now,
        ) {
            tracing::info!(
                prompt = p.prompt_per_mtok,
                completion = p.completion_per_mtok,
                utilisation = price.utilisation(),
                "price changed"
            );
        }
        worker.set_price(cocoon_client::payments::job_price(price.price()));
        // Our addresses are part of the state: a new reservation or mapping is published
        // at once, not at the next interval.
        let addrs = network.state().shareable;
        let state = (
            price.price(),
            slots.saturating_sub(busy),
            worker.attester().current().key.public(),
            addrs.clone(),
        );
        let now_ms = unix_now_ms();
        if !schedule.due(&state, now_ms) {
            continue;
        }
        let seq = schedule.next_seq(now_ms);
        let advert = build(
            &worker,
            &addrs,
            &key,
            &config,
            (slots, busy),
            state.0,
            seq,
            now,
        );
        let bytes = match advert.sign(&key).and_then(|s| s.encode()) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!("cannot sign our advert: {e}");
                continue;
            }
        };
        if let Err(e) = market.insert_own(&bytes) {
            tracing::warn!("our own advert is invalid: {e}");
        }
        match network.publish(bytes).await {
            Ok(()) => {}
            // No subscribed peer yet: try again on the next tick.
            Err(NetworkError::Publish(e)) => {
                tracing::debug!("advert not published yet: {e}");
                continue;
            }
            Err(_) => return,
        }
        schedule.sent(state, now_ms);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn tiny_worker(dir: &std::path::Path) -> Worker {
        let path = dir.join("tiny.gguf");
        cocoon_inference::testing::write_tiny_gguf(&path, &Default::default()).unwrap();
        let source = cocoon_inference::ModelSource::from_path(&path).unwrap();
        let engine = cocoon_inference::Engine::load(&source, Default::default()).unwrap();
        let peer = libp2p::PeerId::random();
        let (attester, _) = crate::attestation::worker_attester(
            &crate::attestation::WorkerAttestation {
                mode: crate::attestation::AttestationMode::DevInsecure,
                ..Default::default()
            },
            peer,
        )
        .unwrap();
        Worker::new(
            HashMap::from([("tiny".to_string(), engine)]),
            Default::default(),
            attester,
            peer,
        )
    }

    /// The worker's first advert is checked as peers check it: one out of bounds is an
    /// error at start, whichever setting put it there.
    #[test]
    fn an_advert_peers_would_refuse_is_caught_before_start() {
        let dir = tempfile::tempdir().unwrap();
        let worker = tiny_worker(dir.path());
        let key = SigningKey::from_bytes(&[7; 32]);
        let addrs: Vec<Multiaddr> = vec!["/ip4/127.0.0.1/tcp/4001".parse().unwrap()];
        let now = 1_700_000_000;
        let check = |config: AdvertiserConfig| check_first(&worker, &addrs, &key, &config, now);
        check(AdvertiserConfig::default()).unwrap();
        let err = check(AdvertiserConfig {
            max_concurrent: 5000,
            ..Default::default()
        })
        .unwrap_err();
        assert!(
            matches!(err, AdvertCheckError::Advert(AdvertError::Bounds(_))),
            "{err}"
        );
        assert!(err.to_string().contains("max_concurrent"), "{err}");
        let err = check(AdvertiserConfig {
            min_deposit: u64::MAX,
            ..Default::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("never be used"), "{err}");
        let err = check(AdvertiserConfig {
            price: PricePolicy::Fixed {
                price: Price {
                    prompt_per_mtok: u64::MAX,
                    completion_per_mtok: 1,
                },
            },
            ..Default::default()
        })
        .unwrap_err();
        assert!(matches!(err, AdvertCheckError::Price(_)), "{err}");
        let err = check(AdvertiserConfig {
            ttl_secs: 100_000,
            ..Default::default()
        })
        .unwrap_err();
        assert!(
            matches!(err, AdvertCheckError::Advert(AdvertError::Expiry(_))),
            "{err}"
        );
    }
}
