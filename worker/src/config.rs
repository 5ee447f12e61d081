//! Node configuration: a TOML file, environment variables and flags, in rising precedence.
//!
//! Every field of [`FileConfig`] may be set in the file given by `--config` (or
//! `COCOON_CONFIG`); every flag also reads a `COCOON_*` environment variable (see
//! `cocoon node --help`). [`NodeConfig`] is the merged result with the defaults filled in.

use std::path::{Path, PathBuf};
use std::time::Duration;

use cocoon_gossip::PricePolicy;
use cocoon_inference::DeviceChoice;
use cocoon_p2p::attest::attester::AttesterConfig;
use cocoon_p2p::{DhtMode, Multiaddr, NetworkConfig, RelayServe};
use serde::Deserialize;

use crate::attestation::WorkerAttestation;

/// The TOML file's schema. Unknown keys are an error, so a typo does not silently fall back
/// to a default.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FileConfig {
    /// Data directory (identity key). Default: see [`default_data_dir`].
    pub data_dir: Option<PathBuf>,
    /// Listen addresses. Default: QUIC and TCP on 0.0.0.0, OS-chosen ports.
    pub listen: Option<Vec<String>>,
    /// Bootstrap peers. Default: none (start a new network).
    pub bootstrap: Option<Vec<String>>,
    /// Addresses to advertise to others. Default: none.
    pub external_addresses: Option<Vec<String>>,
    /// mDNS discovery on the LAN. Default: true.
    pub mdns: Option<bool>,
    /// DHT mode: `auto` (answer queries once a peer confirms this node can be dialled
    /// directly) or `server` (always). Default: auto, or server for a node started without
    /// bootstrap peers (the first node of a network).
    pub dht: Option<String>,
    /// Offer relay reservations: `auto` (once a public address is confirmed), `on` or `off`.
    /// Default: auto.
    pub relay: Option<String>,
    /// Bytes one circuit through our relay may carry. Default: 131072 (libp2p's: enough for
    /// hole punching, not for jobs; raise it to relay jobs for your own workers).
    pub relay_max_circuit_bytes: Option<u64>,
    /// Seconds one circuit through our relay may last. Default: 120.
    pub relay_max_circuit_secs: Option<u64>,
    /// Relay reservations kept while this node cannot be dialled directly. Default: 2.
    pub relays: Option<usize>,
    /// Ask the router for a port mapping (UPnP IGD). Default: true.
    pub upnp: Option<bool>,
    /// Models to serve (paths or known names). Default: none (a plain DHT node).
    pub models: Option<Vec<String>>,
    /// Inference device: auto, cpu or cuda. Default: auto.
    pub device: Option<String>,
    /// Jobs run at once per model; more are answered `busy`. Default: 8 (batched models share
    /// each forward step, so concurrency raises throughput).
    pub max_concurrent: Option<usize>,
    /// Provider record re-announce interval in seconds. Default: 600.
    pub reprovide_secs: Option<u64>,
    /// Run quantized GGUF models on quantized kernels even when small enough to run in f32
    /// (faster, but 8-bit activations can change greedy answers). Default: false.
    pub keep_quantized: Option<bool>,
    /// Evidence a worker presents: auto (TDX when the machine can produce quotes, else
    /// insecure dev evidence), tdx (refuse to start without TDX) or dev-insecure. Default:
    /// auto.
    pub attestation: Option<String>,
    /// configfs-tsm report directory. Default: /sys/kernel/config/tsm/report.
    pub tsm_root: Option<PathBuf>,
    /// DCAP collateral (JSON) attached to TDX evidence so clients can verify offline.
    /// Default: none.
    pub tdx_collateral: Option<PathBuf>,
    /// Lifetime of the enclave key and its evidence, in seconds; they are rotated together
    /// a quarter before expiry. Default: 3600.
    pub evidence_lifetime_secs: Option<u64>,
    /// Pricing, e.g. `[price] mode = "fixed"` with `price = { prompt_per_mtok = 1000,
    /// completion_per_mtok = 3000 }`, or `mode = "dynamic"` with `floor`, `ceiling`, `step`,
    /// `raise_above`, `lower_below`, `hold_secs`. Default: dynamic (see `PricePolicy`).
    pub price: Option<PricePolicy>,
    /// Unpaid value a worker streams ahead of the client's vouchers, nanoTON. Default:
    /// 1,000,000 (0.001 TON).
    pub credit_limit: Option<u64>,
    /// TON HTTP API endpoint (toncenter v2 style, or a local chain's URL) for channel
    /// deposits and settlement. Default: none (payments stay off-chain).
    pub chain: Option<String>,
    /// API key sent to the chain endpoint (`X-API-Key`). Default: none.
    pub chain_api_key: Option<String>,
    /// When a worker settles on chain, e.g. `[settle] threshold = 500000000`, `idle_secs`,
    /// `min_amount`, `deadline_margin_secs`. Default: see `SettlePolicy`.
    pub settle: Option<cocoon_ledger::settle::SettlePolicy>,
}

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {0}: {1}")]
    Read(PathBuf, std::io::Error),
    /// The config file is not valid TOML for [`FileConfig`].
    #[error("config file {0}: {1}")]
    Parse(PathBuf, toml::de::Error),
    /// A multiaddr did not parse.
    #[error("bad {what} address {addr:?}: {reason}")]
    Address {
        /// Which setting.
        what: &'static str,
        /// The text given.
        addr: String,
        /// Why it is not a multiaddr.
        reason: String,
    },
    /// A value is out of range.
    #[error("{0}")]
    Invalid(String),
}

impl FileConfig {
    /// Reads and parses a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read(path.into(), e))?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse(path.into(), e))
    }
}

/// A node's complete configuration.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// Data directory.
    pub data_dir: PathBuf,
    /// Network settings.
    pub network: NetworkConfig,
    /// Models to serve.
    pub models: Vec<String>,
    /// Inference device.
    pub device: DeviceChoice,
    /// Concurrent jobs per model.
    pub max_concurrent: usize,
    /// Keep small quantized models quantized instead of running them in f32.
    pub keep_quantized: bool,
    /// Attestation of the worker.
    pub attestation: WorkerAttestation,
    /// Price policy.
    pub price: PricePolicy,
    /// Payment settings (the worker's credit limit).
    pub payments: cocoon_client::payments::PaymentConfig,
    /// The chain endpoint and its API key; `None` keeps payments off-chain.
    pub chain: Option<(String, Option<String>)>,
    /// When to settle on chain.
    pub settle: cocoon_ledger::settle::SettlePolicy,
}

/// `$COCOON_HOME/node` when `COCOON_HOME` is set, else `<user data dir>/cocoon`.
pub fn default_data_dir() -> PathBuf {
    if std::env::var_os("COCOON_HOME").is_some() {
        return cocoon_client::cocoon_home().join("node");
    }
    dirs::data_dir()
        .unwrap_or_else(std::env::temp_dir)
        .join("cocoon")
}

/// Parses multiaddrs, naming the bad one.
pub fn parse_addrs(what: &'static str, addrs: &[String]) -> Result<Vec<Multiaddr>, ConfigError> {
    addrs
        .iter()
        .map(|a| {
            a.parse()
                .map_err(|e: libp2p::multiaddr::Error| ConfigError::Address {
                    what,
                    addr: a.clone(),
                    reason: e.to_string(),
                })
        })
        .collect()
}

/// Refuses model counts and concurrency a worker's advert cannot carry (the bounds every peer
/// checks, [`cocoon_gossip::advert::limits`]): such a worker would start, but its adverts
/// would be dropped and it would never be used. Each pair is (where the value came from,
/// the value).
fn check_advertisable(
    (models_from, models): (&str, usize),
    (from, max_concurrent): (&str, usize),
) -> Result<(), ConfigError> {
    use cocoon_gossip::advert::limits::{CONCURRENCY, MODELS};
    if models > MODELS {
        return Err(ConfigError::Invalid(format!(
            "{models} models given ({models_from}): a worker advertises at most {MODELS}"
        )));
    }
    if max_concurrent == 0 || max_concurrent > CONCURRENCY as usize {
        return Err(ConfigError::Invalid(format!(
            "{from} {max_concurrent} is out of range: a worker advertises 1 to {CONCURRENCY} \
             jobs at once"
        )));
    }
    // The advert carries the slots of all models together.
    if models > 1 && max_concurrent * models > CONCURRENCY as usize {
        return Err(ConfigError::Invalid(format!(
            "{from} {max_concurrent} with {models} models is {} jobs at once: a worker \
             advertises at most {CONCURRENCY}, so at most {} per model with {models} models",
            max_concurrent * models,
            CONCURRENCY as usize / models
        )));
    }
    Ok(())
}

/// Values given on the command line or in the environment (`None`/empty = not given).
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    /// `--data-dir`.
    pub data_dir: Option<PathBuf>,
    /// `--listen`.
    pub listen: Vec<String>,
    /// `--bootstrap`.
    pub bootstrap: Vec<String>,
    /// `--external-addr`.
    pub external_addresses: Vec<String>,
    /// `--no-mdns` (Some(false)) or `--mdns` (Some(true)).
    pub mdns: Option<bool>,
    /// `--dht`.
    pub dht: Option<String>,
    /// `--relay`.
    pub relay: Option<String>,
    /// `--relay-max-circuit-bytes`.
    pub relay_max_circuit_bytes: Option<u64>,
    /// `--relay-max-circuit-secs`.
    pub relay_max_circuit_secs: Option<u64>,
    /// `--relays`.
    pub relays: Option<usize>,
    /// `--no-upnp` (Some(false)).
    pub upnp: Option<bool>,
    /// `--model`.
    pub models: Vec<String>,
    /// `--device`.
    pub device: Option<String>,
    /// `--max-concurrent`.
    pub max_concurrent: Option<usize>,
    /// `--keep-quantized` (Some(true) when given).
    pub keep_quantized: Option<bool>,
    /// `--attestation`.
    pub attestation: Option<String>,
    /// `--price PROMPT,COMPLETION`: a fixed price, nanoTON per million tokens.
    pub fixed_price: Option<(u64, u64)>,
    /// `--chain URL`.
    pub chain: Option<String>,
    /// `--chain-api-key`.
    pub chain_api_key: Option<String>,
}

impl NodeConfig {
    /// Merges flags over the file over the defaults.
    pub fn merge(file: FileConfig, flags: Overrides) -> Result<Self, ConfigError> {
        fn pick(flag: Vec<String>, file: Option<Vec<String>>) -> Option<Vec<String>> {
            if flag.is_empty() {
                file
            } else {
                Some(flag)
            }
        }
        let mut network = NetworkConfig::default();
        if let Some(listen) = pick(flags.listen, file.listen) {
            network.listen = parse_addrs("listen", &listen)?;
        }
        if let Some(b) = pick(flags.bootstrap, file.bootstrap) {
            network.bootstrap = parse_addrs("bootstrap", &b)?;
        }
        if let Some(x) = pick(flags.external_addresses, file.external_addresses) {
            network.external_addresses = parse_addrs("external", &x)?;
        }
        network.mdns = flags.mdns.or(file.mdns).unwrap_or(true);
        network.dht_mode = match flags.dht.or(file.dht).as_deref() {
            // The first node of a network has nobody to confirm it: it serves.
            None if network.bootstrap.is_empty() => DhtMode::Server,
            None | Some("auto") => DhtMode::Auto,
            Some("server") => DhtMode::Server,
            Some(other) => {
                return Err(ConfigError::Invalid(format!(
                    "dht {other:?}: expected auto or server"
                )))
            }
        };
        network.relay_server = match flags.relay.or(file.relay).as_deref() {
            None | Some("auto") => RelayServe::Auto,
            Some("on") => RelayServe::On,
            Some("off") => RelayServe::Off,
            Some(other) => {
                return Err(ConfigError::Invalid(format!(
                    "relay {other:?}: expected auto, on or off"
                )))
            }
        };
        if let Some(bytes) = flags
            .relay_max_circuit_bytes
            .or(file.relay_max_circuit_bytes)
        {
            network.relay_limits.max_circuit_bytes = bytes;
        }
        if let Some(secs) = flags.relay_max_circuit_secs.or(file.relay_max_circuit_secs) {
            if secs == 0 || secs > u64::from(u32::MAX) {
                return Err(ConfigError::Invalid(format!(
                    "relay_max_circuit_secs {secs} is out of range (1 to {})",
                    u32::MAX
                )));
            }
            network.relay_limits.max_circuit_duration = Duration::from_secs(secs);
        }
        if let Some(n) = flags.relays.or(file.relays) {
            if n > 8 {
                return Err(ConfigError::Invalid(format!(
                    "relays {n}: a node keeps at most 8 reservations"
                )));
            }
            network.relays = n;
        }
        network.upnp = flags.upnp.or(file.upnp).unwrap_or(true);
        if let Some(secs) = file.reprovide_secs {
            if secs < 10 {
                return Err(ConfigError::Invalid(
                    "reprovide_secs must be at least 10".into(),
                ));
            }
            network.reprovide_interval = Duration::from_secs(secs);
            network.provider_ttl = Duration::from_secs(secs * 3);
        }
        let device = flags
            .device
            .or(file.device)
            .unwrap_or_else(|| "auto".into())
            .parse::<DeviceChoice>()
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        let models_from = if flags.models.is_empty() {
            "models (config file)"
        } else {
            "--model"
        };
        let models = pick(flags.models, file.models).unwrap_or_default();
        let max_concurrent_from = if flags.max_concurrent.is_some() {
            "--max-concurrent"
        } else {
            "max_concurrent (config file)"
        };
        let max_concurrent = flags.max_concurrent.or(file.max_concurrent).unwrap_or(8);
        check_advertisable(
            (models_from, models.len()),
            (max_concurrent_from, max_concurrent),
        )?;
        let mut attestation = WorkerAttestation::default();
        if let Some(mode) = flags.attestation.or(file.attestation) {
            attestation.mode = mode.parse().map_err(ConfigError::Invalid)?;
        }
        if let Some(root) = file.tsm_root {
            attestation.tsm_root = root;
        }
        attestation.collateral_file = file.tdx_collateral;
        if let Some(secs) = file.evidence_lifetime_secs {
            if secs < 60 {
                return Err(ConfigError::Invalid(
                    "evidence_lifetime_secs must be at least 60".into(),
                ));
            }
            attestation.attester = AttesterConfig {
                lifetime_secs: secs,
                rotate_before_secs: secs / 4,
            };
        }
        let mut payments = cocoon_client::payments::PaymentConfig::default();
        if let Some(limit) = file.credit_limit {
            payments.credit_limit = limit;
        }
        Ok(NodeConfig {
            payments,
            chain: flags
                .chain
                .or(file.chain)
                .map(|url| (url, flags.chain_api_key.or(file.chain_api_key))),
            settle: file.settle.unwrap_or_default(),
            data_dir: flags
                .data_dir
                .or(file.data_dir)
                .unwrap_or_else(default_data_dir),
            network,
            models,
            device,
            max_concurrent,
            keep_quantized: flags
                .keep_quantized
                .or(file.keep_quantized)
                .unwrap_or(false),
            attestation,
            price: match flags.fixed_price {
                Some((prompt, completion)) => {
                    let policy = PricePolicy::Fixed {
                        price: cocoon_gossip::Price {
                            prompt_per_mtok: prompt,
                            completion_per_mtok: completion,
                        },
                    };
                    cocoon_gossip::PriceCore::new(policy.clone()).map_err(|e| {
                        ConfigError::Invalid(format!("--price {prompt},{completion}: {e}"))
                    })?;
                    policy
                }
                None => {
                    let policy = file.price.unwrap_or_default();
                    cocoon_gossip::PriceCore::new(policy.clone()).map_err(|e| {
                        ConfigError::Invalid(format!("[price] in the config file: {e}"))
                    })?;
                    policy
                }
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_beat_file_beats_defaults() {
        let file: FileConfig = toml::from_str(
            r#"
            listen = ["/ip4/127.0.0.1/udp/4001/quic-v1"]
            mdns = false
            max_concurrent = 4
            models = ["smollm2"]
            "#,
        )
        .unwrap();
        let flags = Overrides {
            max_concurrent: Some(1),
            ..Default::default()
        };
        let c = NodeConfig::merge(file, flags).unwrap();
        assert_eq!(c.network.listen.len(), 1);
        assert!(!c.network.mdns);
        assert_eq!(c.max_concurrent, 1);
        assert_eq!(c.models, vec!["smollm2".to_string()]);
        let d = NodeConfig::merge(FileConfig::default(), Overrides::default()).unwrap();
        assert!(d.network.mdns);
        assert_eq!(d.max_concurrent, 8);
        assert_eq!(d.network.listen.len(), 2);
    }

    /// Values a worker's advert cannot carry are refused at start, naming the setting and
    /// the range, instead of yielding an advert every peer drops.
    #[test]
    fn values_a_worker_cannot_advertise_are_refused_at_start() {
        use cocoon_gossip::advert::limits;
        let flags = |f: fn(&mut Overrides)| {
            let mut o = Overrides::default();
            f(&mut o);
            NodeConfig::merge(FileConfig::default(), o)
        };
        let file =
            |text: &str| NodeConfig::merge(toml::from_str(text).unwrap(), Overrides::default());
        let refused = |r: Result<NodeConfig, ConfigError>, words: &[&str]| {
            let err = r.expect_err("accepted").to_string();
            for w in words {
                assert!(err.contains(w), "{w:?} not in: {err}");
            }
        };
        refused(
            flags(|o| o.max_concurrent = Some(5000)),
            &["--max-concurrent", "5000", "1 to 4096"],
        );
        refused(
            flags(|o| o.max_concurrent = Some(u32::MAX as usize + 2)),
            &["--max-concurrent", "4096"],
        );
        refused(file("max_concurrent = 5000"), &["max_concurrent", "4096"]);
        // The slots of all models together are advertised.
        refused(
            flags(|o| {
                o.max_concurrent = Some(3000);
                o.models = vec!["a.gguf".into(), "b.gguf".into()];
            }),
            &["--max-concurrent", "2 models", "2048"],
        );
        refused(
            flags(|o| o.models = (0..17).map(|i| format!("m{i}.gguf")).collect()),
            &["17 models", "16"],
        );
        refused(
            flags(|o| o.fixed_price = Some((u64::MAX, 1))),
            &["--price", "18446744073709551615", "1000000000000"],
        );
        refused(
            flags(|o| o.fixed_price = Some((1, limits::PRICE + 1))),
            &["--price", "1000000000000"],
        );
        refused(
            file("[price]\nmode = \"fixed\"\nprice = { prompt_per_mtok = 1, completion_per_mtok = 2000000000000 }"),
            &["price", "1000000000000"],
        );
        refused(
            file(
                "[price]\nmode = \"dynamic\"\nfloor = { prompt_per_mtok = 1, completion_per_mtok = 1 }\n\
                 ceiling = { prompt_per_mtok = 1, completion_per_mtok = 2000000000000 }\n\
                 step = 0.1\nraise_above = 0.8\nlower_below = 0.3\nhold_secs = 60",
            ),
            &["price", "ceiling", "1000000000000"],
        );
        // The limits themselves are fine.
        let c = flags(|o| {
            o.max_concurrent = Some(limits::CONCURRENCY as usize);
            o.fixed_price = Some((limits::PRICE, limits::PRICE));
        })
        .unwrap();
        assert_eq!(c.max_concurrent, 4096);
        flags(|o| {
            o.max_concurrent = Some(2048);
            o.models = vec!["a.gguf".into(), "b.gguf".into()];
        })
        .unwrap();
    }

    #[test]
    fn typos_and_bad_addresses_are_errors() {
        assert!(toml::from_str::<FileConfig>("mdsn = true").is_err());
        let flags = Overrides {
            bootstrap: vec!["not-an-addr".into()],
            ..Default::default()
        };
        let err = NodeConfig::merge(FileConfig::default(), flags).unwrap_err();
        assert!(err.to_string().contains("not-an-addr"), "{err}");
    }
}
