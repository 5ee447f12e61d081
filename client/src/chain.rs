//! The node's wallet on a TON HTTP API endpoint (toncenter v2 style, or the local chain's):
//! what a client opens and pays its channels through, and a worker settles through.

use std::sync::Arc;

use cocoon_ton::chain::Chain;
use cocoon_ton::client::{ChannelClient, WalletClient, WalletConfig};
use cocoon_ton::http::{HttpChain, HttpChainConfig};
use cocoon_ton::wallet::Wallet;
use ed25519_dalek::SigningKey;

use crate::payments::PaymentError;

/// A TON HTTP API endpoint (toncenter v2 style, or the local chain's) with the node's
/// wallet (v4r2 of `key`) on it.
pub fn connect(
    url: &str,
    api_key: Option<String>,
    key: &SigningKey,
) -> Result<Arc<ChannelClient>, PaymentError> {
    let mut http = HttpChainConfig::new(url);
    http.api_key = api_key;
    let chain: Arc<dyn Chain> =
        Arc::new(HttpChain::new(http).map_err(|e| PaymentError::Chain(e.to_string()))?);
    let wallet =
        Wallet::from_seed(&key.to_bytes()).map_err(|e| PaymentError::Chain(e.to_string()))?;
    let local = url.contains("://127.0.0.1") || url.contains("://localhost");
    let config = if local {
        WalletConfig::local()
    } else {
        WalletConfig::default()
    };
    Ok(Arc::new(ChannelClient::new(WalletClient::new(
        wallet, chain, config,
    ))))
}
