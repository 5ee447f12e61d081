//! The client's verifier: evidence bytes from a handshake in, a trusted [`Verdict`] or a
//! reason out.
//!
//! For a TDX quote the DCAP collateral comes, in this order, from the evidence itself (the
//! worker may attach what it fetched; Intel's signatures make it unforgeable), from the local
//! collateral cache directory (`tdx-<fmspc>-<ca>.json`), or from the configured PCCS URL (and
//! is then written to the cache directory). Appraisals that passed DCAP are cached per
//! (evidence, enclave key, peer id) for [`VerifierConfig::cache_ttl_secs`], so a client pays for DCAP
//! once per worker, not per job; the policy and the binding are still checked on every use,
//! since they depend on `now`.
//!
//! Time is a parameter (`now`, Unix seconds): the verifier reads no clock.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use libp2p::PeerId;
use sha2::{Digest, Sha256};

use super::binding::Binding;
use super::evidence::{appraise_dev, Evidence, EvidenceBody, EvidenceError};
use super::policy::{Policy, PolicyError};
use super::{tdx, Appraisal, AttestError};

/// Verifier settings.
#[derive(Clone, Debug)]
pub struct VerifierConfig {
    /// The trust policy. Default: [`Policy::default`] (refuses everything until measurements
    /// are allowlisted; refuses dev evidence).
    pub policy: Policy,
    /// Directory of cached DCAP collateral. Default: none.
    pub collateral_dir: Option<PathBuf>,
    /// PCCS (or Intel PCS) base URL for collateral that is neither attached nor cached.
    /// Default: none (offline).
    pub pccs_url: Option<String>,
    /// Verified appraisals kept in memory. Default: 1024.
    pub cache_entries: usize,
    /// How long a DCAP result is reused before the quote is verified again. Default: 3600 s.
    pub cache_ttl_secs: u64,
}

impl Default for VerifierConfig {
    fn default() -> Self {
        Self {
            policy: Policy::default(),
            collateral_dir: None,
            pccs_url: None,
            cache_entries: 1024,
            cache_ttl_secs: 3600,
        }
    }
}

/// A trusted worker: what was established and when it stops being valid.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// The appraisal the policy accepted.
    pub appraisal: Appraisal,
    /// The evidence's expiry.
    pub expires_at: u64,
    /// Whether the DCAP result came from the cache.
    pub cached: bool,
}

/// Why a worker's evidence was not trusted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// The evidence bytes are malformed.
    #[error(transparent)]
    Evidence(#[from] EvidenceError),
    /// The quote failed verification.
    #[error(transparent)]
    Attest(#[from] AttestError),
    /// No collateral for the quote: none attached, none cached, no PCCS configured (or it
    /// failed).
    #[error("no DCAP collateral for the quote: {0}")]
    NoCollateral(String),
    /// The policy refused the evidence.
    #[error(transparent)]
    Policy(#[from] PolicyError),
}

struct CacheEntry {
    appraisal: Appraisal,
    valid_until: u64,
}

#[derive(Default)]
struct Cache {
    map: HashMap<[u8; 32], CacheEntry>,
    order: VecDeque<[u8; 32]>,
}

/// Verifies workers' evidence under a policy, with a cache.
pub struct Verifier {
    config: VerifierConfig,
    cache: Mutex<Cache>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Verifier {
    /// A verifier with `config`.
    pub fn new(config: VerifierConfig) -> Self {
        Self {
            config,
            cache: Mutex::new(Cache::default()),
        }
    }

    /// Its policy.
    pub fn policy(&self) -> &Policy {
        &self.config.policy
    }

    /// Appraisals held in the cache.
    pub fn cached_appraisals(&self) -> usize {
        self.cache.lock().expect("cache lock").map.len()
    }

    /// Verifies `evidence` presented by `worker` with Noise static key `enclave_key` at `now`.
    pub async fn verify(
        &self,
        evidence: &[u8],
        enclave_key: &[u8; 32],
        worker: &PeerId,
        now: u64,
    ) -> Result<Verdict, VerifyError> {
        let parsed = Evidence::decode(evidence)?;
        let binding = Binding {
            enclave_key: *enclave_key,
            peer_id: *worker,
            expires_at: parsed.expires_at,
        };
        let key = cache_key(evidence, &binding);
        if let Some(appraisal) = self.cached(&key, now) {
            self.config.policy.check(&appraisal, &binding, now)?;
            return Ok(Verdict {
                appraisal,
                expires_at: parsed.expires_at,
                cached: true,
            });
        }
        let appraisal = match &parsed.body {
            EvidenceBody::DevInsecure {
                measurement,
                report_data,
            } => appraise_dev(measurement, report_data)?,
            EvidenceBody::Tdx { quote, collateral } => {
                self.appraise_tdx(quote, collateral.as_deref(), now).await?
            }
        };
        // What DCAP established is a fact about these bytes: keep it whatever the policy says,
        // so a refused worker that retries costs a policy check, not a quote verification.
        self.remember(key, appraisal.clone(), now, parsed.expires_at);
        self.config.policy.check(&appraisal, &binding, now)?;
        Ok(Verdict {
            appraisal,
            expires_at: parsed.expires_at,
            cached: false,
        })
    }

    fn cached(&self, key: &[u8; 32], now: u64) -> Option<Appraisal> {
        let cache = self.cache.lock().expect("cache lock");
        cache
            .map
            .get(key)
            .filter(|e| now <= e.valid_until)
            .map(|e| e.appraisal.clone())
    }

    fn remember(&self, key: [u8; 32], appraisal: Appraisal, now: u64, expires_at: u64) {
        if self.config.cache_entries == 0 {
            return;
        }
        let mut cache = self.cache.lock().expect("cache lock");
        let valid_until = expires_at.min(now.saturating_add(self.config.cache_ttl_secs));
        if cache
            .map
            .insert(
                key,
                CacheEntry {
                    appraisal,
                    valid_until,
                },
            )
            .is_none()
        {
            cache.order.push_back(key);
        }
        while cache.map.len() > self.config.cache_entries {
            match cache.order.pop_front() {
                Some(old) => {
                    cache.map.remove(&old);
                }
                None => break,
            }
        }
    }

    /// Appraises a TDX quote with the first collateral that verifies it.
    pub async fn appraise_tdx(
        &self,
        quote: &[u8],
        attached: Option<&[u8]>,
        now: u64,
    ) -> Result<Appraisal, VerifyError> {
        let mut tried = Vec::new();
        if let Some(json) = attached {
            match tdx::parse_collateral(json).and_then(|c| tdx::appraise(quote, &c, now)) {
                Ok(a) => return Ok(a),
                Err(e) => tried.push(format!("attached: {e}")),
            }
        }
        let cache_path = match (&self.config.collateral_dir, collateral_file_name(quote)) {
            (Some(dir), Ok(name)) => Some(dir.join(name)),
            (Some(_), Err(e)) => return Err(e.into()),
            (None, _) => None,
        };
        if let Some(path) = &cache_path {
            match std::fs::read(path) {
                Ok(json) => {
                    match tdx::parse_collateral(&json).and_then(|c| tdx::appraise(quote, &c, now)) {
                        Ok(a) => return Ok(a),
                        Err(e) => tried.push(format!("{}: {e}", path.display())),
                    }
                }
                Err(e) => tried.push(format!("{}: {e}", path.display())),
            }
        }
        if let Some(url) = &self.config.pccs_url {
            let fetched = async {
                dcap_qvl::collateral::CollateralClient::with_default_http(url.as_str())?
                    .fetch(quote)
                    .await
            }
            .await;
            match fetched {
                Ok(collateral) => {
                    let appraisal = tdx::appraise(quote, &collateral, now)?;
                    if let Some(path) = &cache_path {
                        if let Err(e) = store(path, &collateral) {
                            tracing::warn!("cannot cache collateral at {}: {e}", path.display());
                        }
                    }
                    return Ok(appraisal);
                }
                Err(e) => tried.push(format!("PCCS {url}: {e:#}")),
            }
        }
        if tried.is_empty() {
            tried.push("none attached, no cache directory, no PCCS URL configured".into());
        }
        Err(VerifyError::NoCollateral(tried.join("; ")))
    }
}

/// The cache file name for a quote's collateral: `tdx-<fmspc>-<ca>.json`.
pub fn collateral_file_name(quote: &[u8]) -> Result<String, AttestError> {
    let parsed = dcap_qvl::quote::Quote::parse(quote)
        .map_err(|e| AttestError::Verification(format!("{e:#}")))?;
    let fmspc = dcap_qvl::intel::quote_fmspc(&parsed)
        .map_err(|e| AttestError::Verification(format!("{e:#}")))?;
    let ca = dcap_qvl::intel::quote_ca(&parsed)
        .map_err(|e| AttestError::Verification(format!("{e:#}")))?;
    let hex: String = fmspc.iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!("tdx-{hex}-{}.json", ca.as_id_str()))
}

fn store(path: &Path, collateral: &dcap_qvl::QuoteCollateralV3) -> std::io::Result<()> {
    let json = serde_json::to_vec(collateral).map_err(std::io::Error::other)?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension(format!("json.{}.tmp", std::process::id()));
    std::fs::write(&tmp, json)?;
    std::fs::rename(tmp, path)
}

fn cache_key(evidence: &[u8], binding: &Binding) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"cocoon/attest/verified/v1");
    h.update((evidence.len() as u64).to_be_bytes());
    h.update(evidence);
    h.update(binding.enclave_key);
    h.update(binding.peer_id.to_bytes());
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    //! The verifier under hostile evidence: mutated envelopes, quotes and collateral.
    use super::*;
    use crate::fuzz::{apply, mutations};
    use libp2p::identity::Keypair;
    use proptest::prelude::*;

    const QUOTE: &[u8] = include_bytes!("../../tests/data/dcap-qvl/tdx_quote");
    const COLLATERAL: &[u8] = include_bytes!("../../tests/data/dcap-qvl/tdx_quote_collateral.json");
    /// Inside the recorded collateral's validity.
    const NOW: u64 = 1_750_809_600;

    fn verify(
        verifier: &Verifier,
        evidence: &[u8],
        key: &[u8; 32],
        worker: &PeerId,
    ) -> Result<Verdict, VerifyError> {
        futures::executor::block_on(verifier.verify(evidence, key, worker, NOW))
    }

    /// Trusts the recorded quote's measurement, so only the binding can refuse it.
    fn tdx_verifier() -> Verifier {
        let mrtd = tdx::quote_mrtd(QUOTE).expect("a TDX quote");
        Verifier::new(VerifierConfig {
            policy: Policy {
                allowed_mrtd: vec![mrtd.iter().map(|b| format!("{b:02x}")).collect()],
                allowed_rtmrs: vec![["*".into(), "*".into(), "*".into(), "*".into()]],
                ..Policy::default()
            },
            ..Default::default()
        })
    }

    fn tdx_evidence(quote: Vec<u8>, collateral: Vec<u8>) -> Evidence {
        Evidence {
            expires_at: NOW + 600,
            body: EvidenceBody::Tdx {
                quote,
                collateral: Some(collateral),
            },
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn hostile_dev_evidence_is_refused_unless_it_binds(
            mutations in mutations(),
            garbage in proptest::collection::vec(any::<u8>(), 0..256),
        ) {
            let worker = Keypair::generate_ed25519().public().to_peer_id();
            let key = [5; 32];
            let binding = Binding { enclave_key: key, peer_id: worker, expires_at: NOW + 600 };
            let original = Evidence::dev_insecure(&binding);
            let verifier = Verifier::new(VerifierConfig {
                policy: Policy::insecure_dev(),
                ..Default::default()
            });
            let valid = original.encode().unwrap();
            prop_assert!(verify(&verifier, &valid, &key, &worker).is_ok());
            let mutated = apply(valid, &mutations);
            if verify(&verifier, &mutated, &key, &worker).is_ok() {
                // Dev evidence is the worker's word: its measurement is whatever it says. What
                // passes still binds this key, peer and expiry.
                let decoded = Evidence::decode(&mutated).unwrap();
                let EvidenceBody::DevInsecure { report_data, .. } = decoded.body else {
                    panic!("dev evidence became {:?}", decoded.kind());
                };
                prop_assert_eq!(decoded.expires_at, binding.expires_at);
                prop_assert_eq!(&report_data[..], &binding.report_data()[..]);
            }
            prop_assert!(verify(&verifier, &garbage, &key, &worker).is_err());
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        #[test]
        fn hostile_tdx_evidence_is_refused(
            mutations in mutations(),
            target in 0u8..3,
        ) {
            // The recorded quote binds someone else's key: nothing derived from it may pass.
            let worker = Keypair::generate_ed25519().public().to_peer_id();
            let (quote, collateral) = match target {
                0 => (apply(QUOTE.to_vec(), &mutations), COLLATERAL.to_vec()),
                1 => (QUOTE.to_vec(), apply(COLLATERAL.to_vec(), &mutations)),
                _ => (QUOTE.to_vec(), COLLATERAL.to_vec()),
            };
            let _ = collateral_file_name(&quote);
            let _ = tdx::quote_mrtd(&quote);
            let mut evidence = tdx_evidence(quote, collateral).encode().unwrap();
            if target == 2 {
                evidence = apply(evidence, &mutations);
            }
            prop_assert!(verify(&tdx_verifier(), &evidence, &[5; 32], &worker).is_err());
        }
    }
}
