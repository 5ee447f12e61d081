//! The embeddable light client: the network from a Rust program, without candle.
//!
//! [`LightClient::builder`] joins the network in DHT client mode (bootstrap peers and/or
//! mDNS), fills its market from the bootstrap peers and gossip, and keeps an identity, a
//! payment journal and a reputation record in its data dir. [`LightClient::infer`] returns a
//! [`futures::Stream`] of [`Event`]s: text as the worker streams it, then the outcome. Under
//! the stream the job runs as `cocoon infer` runs it ([`crate::infer`]): the market ranks
//! the workers, the first is verified (attestation, bound to the Noise key), the job runs
//! encrypted end to end, is paid through a channel with the worker, and fails over to the
//! next worker, resuming the answer, when one dies.
//!
//! Build with `default-features = false` to leave out the worker (and candle).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cocoon_gossip::{Advert, Reputation};
use cocoon_p2p::{DhtMode, Multiaddr, Network, NetworkConfig};
use futures::Stream;

use crate::infer::{self, ClientConfig, InferError, InferOutcome, InferRequest};
use crate::market::MarketService;
use crate::payments::{ClientLedger, PaymentConfig, PaymentError, JOURNAL_FILE};
use crate::trust::ClientTrust;

/// Why the light client could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LightError {
    /// Neither bootstrap peers nor mDNS: no way to find the network.
    #[error("give bootstrap peers or enable mDNS: there is no way to find the network")]
    NoWayIn,
    /// The identity in the data dir could not be read or made.
    #[error(transparent)]
    Identity(#[from] cocoon_p2p::identity::IdentityError),
    /// The identity is not an ed25519 key.
    #[error("the identity is not an ed25519 key")]
    NotEd25519,
    /// The trust policy could not be loaded.
    #[error(transparent)]
    Trust(#[from] crate::trust::AttestationSetupError),
    /// The payment journal or the chain could not be set up.
    #[error(transparent)]
    Payments(#[from] PaymentError),
    /// The network could not start.
    #[error(transparent)]
    Network(#[from] cocoon_p2p::NetworkError),
    /// Joining the market failed.
    #[error(transparent)]
    Join(#[from] InferError),
}

/// Builds a [`LightClient`]; every setting has a documented default.
#[derive(Clone, Debug)]
pub struct LightClientBuilder {
    bootstrap: Vec<Multiaddr>,
    mdns: bool,
    data_dir: PathBuf,
    trust: ClientTrust,
    payments: PaymentConfig,
    chain: Option<(String, Option<String>)>,
    max_price_per_mtok: Option<u64>,
    sync_timeout: Duration,
}

impl Default for LightClientBuilder {
    fn default() -> Self {
        Self {
            bootstrap: Vec::new(),
            mdns: false,
            data_dir: crate::cocoon_home().join("client"),
            trust: ClientTrust::default(),
            payments: PaymentConfig::default(),
            chain: None,
            max_price_per_mtok: None,
            sync_timeout: Duration::from_secs(10),
        }
    }
}

impl LightClientBuilder {
    /// A bootstrap peer (a multiaddr ending in `/p2p/<peer id>`). Default: none.
    pub fn bootstrap(mut self, addr: Multiaddr) -> Self {
        self.bootstrap.push(addr);
        self
    }

    /// Finds peers on the LAN with mDNS. Default: off.
    pub fn mdns(mut self, on: bool) -> Self {
        self.mdns = on;
        self
    }

    /// Identity, payment journal and reputation record. Default: `$COCOON_HOME/client`.
    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.data_dir = dir.into();
        self
    }

    /// Which workers to trust. Default: the safe default policy, which refuses development
    /// evidence and every TDX image not allowlisted.
    pub fn trust(mut self, trust: ClientTrust) -> Self {
        self.trust = trust;
        self
    }

    /// How to pay (deposit of new channels, tokens per voucher). Default:
    /// [`PaymentConfig::default`].
    pub fn payments(mut self, payments: PaymentConfig) -> Self {
        self.payments = payments;
        self
    }

    /// Opens channels on this TON HTTP API endpoint (and its API key). Default: none, the
    /// channels stay off-chain.
    pub fn chain(mut self, url: impl Into<String>, api_key: Option<String>) -> Self {
        self.chain = Some((url.into(), api_key));
        self
    }

    /// Highest price accepted, nanoTON per million tokens. Default: none.
    pub fn max_price_per_mtok(mut self, max: u64) -> Self {
        self.max_price_per_mtok = Some(max);
        self
    }

    /// Starts the client: network, market (synced from the bootstrap peers), payments.
    pub async fn build(self) -> Result<LightClient, LightError> {
        if self.bootstrap.is_empty() && !self.mdns {
            return Err(LightError::NoWayIn);
        }
        let keypair = cocoon_p2p::identity::load_or_create(&self.data_dir)?;
        let key = cocoon_p2p::identity::signing_key(&keypair).ok_or(LightError::NotEd25519)?;
        let dir = self.data_dir.clone();
        let payments = self.payments.clone();
        let k = key.clone();
        let mut ledger = tokio::task::spawn_blocking(move || {
            ClientLedger::open(
                &dir.join(JOURNAL_FILE),
                k.clone(),
                cocoon_ton::wallet::account_of(&k)
                    .map_err(|e| crate::payments::PaymentError::Terms(e.to_string()))?,
                payments,
            )
        })
        .await
        .map_err(|e| PaymentError::Chain(e.to_string()))??;
        if let Some((url, api_key)) = &self.chain {
            ledger = ledger.with_chain(crate::chain::connect(url, api_key.clone(), &key)?);
        }
        let peers = infer::peers_of(&self.bootstrap);
        let network = Network::start(
            keypair,
            NetworkConfig {
                listen: vec!["/ip4/0.0.0.0/udp/0/quic-v1"
                    .parse()
                    .expect("valid multiaddr")],
                bootstrap: self.bootstrap,
                mdns: self.mdns,
                dht_mode: DhtMode::Client,
                ..Default::default()
            },
        )?;
        let market = infer::join_market(&network, &peers, self.sync_timeout).await?;
        let reputation_file = self.data_dir.join("reputation.json");
        Ok(LightClient {
            config: ClientConfig {
                verifier: Arc::new(self.trust.verifier()?),
                max_price_per_mtok: self.max_price_per_mtok,
                payments: Some(Arc::new(ledger)),
                ..Default::default()
            },
            reputation: Arc::new(Mutex::new(infer::load_reputation(&reputation_file))),
            reputation_file,
            network,
            market,
        })
    }
}

/// Text pieces queued between a job and its reader; the job buffers more itself (up to
/// [`infer::MAX_PENDING_TEXT`] bytes) before it stops reading the worker.
pub const TEXT_QUEUE: usize = 64;

/// What [`LightClient::infer`] streams.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum Event {
    /// More of the answer (one answer across failovers: nothing repeated, nothing lost).
    Text(String),
    /// The job finished: worker, attestation, tokens, timings and what was paid.
    Done(Box<InferOutcome>),
}

/// A running light client. Cheap to share behind an `Arc`; jobs may run concurrently.
pub struct LightClient {
    network: Network,
    market: MarketService,
    config: ClientConfig,
    reputation: Arc<Mutex<Reputation>>,
    reputation_file: PathBuf,
}

impl LightClient {
    /// A builder with the defaults.
    pub fn builder() -> LightClientBuilder {
        LightClientBuilder::default()
    }

    /// The live adverts the market knows (models, prices, capacity, attestation kind).
    pub fn adverts(&self) -> Vec<Advert> {
        self.market.adverts()
    }

    /// Checks what can be checked before a worker is chosen
    /// ([`infer::check_request`]): a caller's mistake, never the network's.
    pub fn check(&self, request: &InferRequest) -> Result<(), InferError> {
        infer::check_request(request, None, self.config.job.max_frame)
    }

    /// Runs `request` on the network; the stream yields the answer's text as it arrives and
    /// ends with [`Event::Done`] or one error. Nothing is dropped: a slow reader makes the
    /// job buffer (bounded) and then wait. Dropping the stream cancels the job at once: the
    /// worker stops generating, is paid for what arrived, and the payment channel is free
    /// for the next job.
    pub fn infer(
        &self,
        request: InferRequest,
    ) -> impl Stream<Item = Result<Event, InferError>> + Send + 'static {
        let (text_tx, text_rx) = tokio::sync::mpsc::channel::<String>(TEXT_QUEUE);
        let (result_tx, result_rx) = tokio::sync::oneshot::channel();
        let network = self.network.clone();
        let market = self.market.clone();
        let config = self.config.clone();
        let reputation = self.reputation.clone();
        tokio::spawn(async move {
            let result =
                infer::infer(&network, &market, &reputation, request, &config, &text_tx).await;
            drop(text_tx);
            let _ = result_tx.send(result);
        });
        futures::stream::unfold(
            (Some(text_rx), Some(result_rx)),
            |(mut texts, result)| async move {
                if let Some(rx) = texts.as_mut() {
                    if let Some(text) = rx.recv().await {
                        return Some((Ok(Event::Text(text)), (texts, result)));
                    }
                }
                let outcome = match result?.await {
                    Ok(r) => r.map(|o| Event::Done(Box::new(o))),
                    Err(_) => Err(InferError::Cancelled),
                };
                Some((outcome, (None, None)))
            },
        )
    }

    /// Stops the network and saves the reputation record.
    pub async fn shutdown(self) {
        self.network.shutdown().await;
        let reputation = self.reputation.lock().expect("reputation lock").clone();
        if let Err(e) = infer::save_reputation(&self.reputation_file, &reputation) {
            tracing::warn!("cannot save {}: {e}", self.reputation_file.display());
        }
    }
}
