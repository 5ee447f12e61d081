//! What the ledger needs from a TON node, as one object-safe trait: send a message, read an
//! account, run a get-method, list an account's transactions.
//!
//! Two implementations: [`HttpChain`](crate::http::HttpChain) speaks the toncenter v2 HTTP
//! API (mainnet, testnet, or the local chain of `ton/contract/localchain.mjs`), and
//! [`LocalChain`](crate::local::LocalChain) starts and owns such a local chain. Amounts are
//! nanoTON in `u128` (`Coins` is at most 120 bits).

use futures::future::BoxFuture;
use num_bigint::{BigInt, Sign};
use tonlib_core::cell::TonCellError;
use tonlib_core::TonAddress;

/// Why a chain request failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChainError {
    /// The request did not get an HTTP response (connection refused, TLS, timeout of the
    /// HTTP client); retrying later may help.
    #[error("http: {0}")]
    Http(#[from] reqwest::Error),
    /// The API answered with an error (`{"ok":false}`), e.g. 429 when rate-limited or 500
    /// when a message was refused.
    #[error("api error {code}: {message}")]
    Api {
        /// The HTTP status or the API's error code.
        code: i64,
        /// The API's message.
        message: String,
    },
    /// The response is not what the API documents.
    #[error("cannot decode the response: {0}")]
    Decode(String),
    /// A get-method ended with a non-zero exit code.
    #[error("get-method {method} failed with exit code {exit_code}")]
    GetMethod {
        /// The method's name.
        method: String,
        /// The TVM exit code.
        exit_code: i32,
    },
    /// Something awaited on chain did not happen in time (a wallet's seqno did not move).
    #[error("timed out: {0}")]
    Timeout(String),
    /// The request cannot be expressed in this API (e.g. a tuple argument to toncenter).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A cell or message could not be built or parsed.
    #[error("cell: {0}")]
    Cell(#[from] TonCellError),
}

impl ChainError {
    pub(crate) fn decode(what: impl std::fmt::Display) -> Self {
        ChainError::Decode(what.to_string())
    }
}

/// An account's lifecycle state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccountStatus {
    /// Deployed: has code and data.
    Active,
    /// Never deployed, or deleted (may still hold a balance).
    Uninit,
    /// Frozen for storage debt.
    Frozen,
}

/// An account as the chain reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccountState {
    /// Balance, nanoTON.
    pub balance: u128,
    /// Lifecycle state.
    pub status: AccountStatus,
    /// Logical time of the last transaction (0 when there was none).
    pub last_lt: u64,
    /// The chain's current unixtime as seen by the API (toncenter's `sync_utime`), when given.
    pub chain_time: Option<u32>,
}

/// One TVM stack value, as get-methods take and return them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StackEntry {
    /// An integer (TVM integers are 257-bit signed; keys and hashes are uint256).
    Int(BigInt),
    /// A cell (or slice), as a BoC.
    Cell(Vec<u8>),
    /// `null`.
    Null,
    /// A tuple (also what toncenter calls a list).
    Tuple(Vec<StackEntry>),
}

impl StackEntry {
    /// The integer, if it is one that fits `T`.
    pub fn to_uint<T>(&self) -> Option<T>
    where
        T: for<'a> TryFrom<&'a BigInt>,
    {
        match self {
            StackEntry::Int(i) => T::try_from(i).ok(),
            _ => None,
        }
    }

    /// A non-negative integer below 2^256 as 32 big-endian bytes (keys, hashes).
    pub fn to_u256(&self) -> Option<[u8; 32]> {
        let StackEntry::Int(i) = self else {
            return None;
        };
        let (sign, bytes) = i.to_bytes_be();
        if sign == Sign::Minus || bytes.len() > 32 {
            return None;
        }
        let mut out = [0u8; 32];
        out[32 - bytes.len()..].copy_from_slice(&bytes);
        Some(out)
    }
}

impl From<u64> for StackEntry {
    fn from(v: u64) -> Self {
        StackEntry::Int(v.into())
    }
}

/// Reads a get-method's stack front to back, naming the field that is missing or malformed.
pub(crate) struct StackReader<'a> {
    entries: std::slice::Iter<'a, StackEntry>,
}

impl<'a> StackReader<'a> {
    pub(crate) fn new(stack: &'a [StackEntry]) -> Self {
        Self {
            entries: stack.iter(),
        }
    }

    fn next(&mut self, field: &str) -> Result<&'a StackEntry, ChainError> {
        self.entries
            .next()
            .ok_or_else(|| ChainError::decode(format!("stack ends before {field}")))
    }

    pub(crate) fn uint<T>(&mut self, field: &str) -> Result<T, ChainError>
    where
        T: for<'b> TryFrom<&'b BigInt>,
    {
        let entry = self.next(field)?;
        entry
            .to_uint()
            .ok_or_else(|| ChainError::decode(format!("{field}: not a fitting integer: {entry:?}")))
    }

    pub(crate) fn u256(&mut self, field: &str) -> Result<[u8; 32], ChainError> {
        let entry = self.next(field)?;
        entry
            .to_u256()
            .ok_or_else(|| ChainError::decode(format!("{field}: not a uint256: {entry:?}")))
    }
}

/// A get-method's outcome.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GetMethodResult {
    /// TVM exit code (0 or 1 on success).
    pub exit_code: i32,
    /// The returned stack, bottom first (the order the getter's tuple lists them).
    pub stack: Vec<StackEntry>,
}

impl GetMethodResult {
    /// The stack if the method succeeded, else [`ChainError::GetMethod`].
    pub fn ok(self, method: &str) -> Result<Vec<StackEntry>, ChainError> {
        match self.exit_code {
            0 | 1 => Ok(self.stack),
            exit_code => Err(ChainError::GetMethod {
                method: method.to_string(),
                exit_code,
            }),
        }
    }
}

/// One transaction of an account.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxInfo {
    /// Logical time.
    pub lt: u64,
    /// Transaction hash.
    pub hash: [u8; 32],
    /// Unixtime.
    pub utime: u32,
    /// Total fees, nanoTON.
    pub fee: u128,
    /// Value of the inbound message (0 for an external one).
    pub in_value: u128,
    /// The inbound body's first 32 bits, when it has that many.
    pub in_op: Option<u32>,
    /// The compute phase's exit code (local chain only; `None` from toncenter).
    pub compute_exit_code: Option<i32>,
    /// Whether compute and action phases succeeded (local chain only).
    pub success: Option<bool>,
    /// Outbound internal messages: destination and value.
    pub out_msgs: Vec<(TonAddress, u128)>,
}

/// A TON node as the ledger uses it. Object safe: the node holds an `Arc<dyn Chain>`.
pub trait Chain: Send + Sync {
    /// Sends an external message (a serialized BoC). Success means the node accepted it,
    /// not that it was executed.
    fn send_boc<'a>(&'a self, boc: &'a [u8]) -> BoxFuture<'a, Result<(), ChainError>>;

    /// The account's balance and state; a never-used address is `Uninit` with balance 0.
    fn account<'a>(
        &'a self,
        address: &'a TonAddress,
    ) -> BoxFuture<'a, Result<AccountState, ChainError>>;

    /// Runs a get-method on the account's current state.
    fn run_get_method<'a>(
        &'a self,
        address: &'a TonAddress,
        method: &'a str,
        args: Vec<StackEntry>,
    ) -> BoxFuture<'a, Result<GetMethodResult, ChainError>>;

    /// The account's latest transactions, newest first.
    fn transactions<'a>(
        &'a self,
        address: &'a TonAddress,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<TxInfo>, ChainError>>;
}
