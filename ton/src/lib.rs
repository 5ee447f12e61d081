//! cocoon-ton: cocoon on TON, the I/O shell of its payments.
//!
//! The payment cores (`cocoon-ledger`: vouchers, channels, the settle policy, the journal) say
//! what to pay and when to settle, without I/O; this crate turns that into TON messages and
//! sends them: the payment-channel and receipt-anchor contracts as Rust builds and reads them,
//! a wallet v4r2 to send with, and the chain behind an object-safe trait. The contracts
//! themselves, their specification and their npm test project are in `ton/contract/`.
//!
//! - [`contract`]: code, addresses, message bodies and getter results of
//!   `ton/contract/{channel,anchor}.tolk` (pure; the README's golden vectors are its tests);
//! - [`merkle`]: receipt-batch Merkle roots and proofs, as the anchor stores them;
//! - [`wallet`]: a wallet v4r2 from a seed: address and signed external messages;
//! - [`chain`]: the [`Chain`] trait and its data types;
//! - [`http`]: [`HttpChain`], the toncenter v2 HTTP API (mainnet, testnet, local chain);
//! - [`local`]: [`LocalChain`], the TVM emulator behind that API as a child process;
//! - [`npm`]: its npm packages, installed once from the lockfile;
//! - [`client`]: [`WalletClient`] and [`ChannelClient`], what the node calls.
//!
//! Cells, BoCs and addresses are tonlib-core's; its cells hash exactly as @ton/core's (the unit
//! tests pin vectors computed with @ton/core), and as the core's own cells
//! (`cocoon_ledger::cell`) where both build one: the contract's tests check the two agree.
#![warn(missing_docs)]

pub mod chain;
pub mod client;
pub mod contract;
pub mod http;
pub mod local;
pub mod merkle;
pub mod npm;
pub mod wallet;

pub use chain::{
    AccountState, AccountStatus, Chain, ChainError, GetMethodResult, StackEntry, TxInfo,
};
pub use client::{ChannelClient, SentTx, WalletClient, WalletConfig};
pub use http::{HttpChain, HttpChainConfig};
pub use local::{LocalChain, LocalChainConfig, LocalChainError};
pub use tonlib_core::cell::{ArcCell, Cell};
pub use tonlib_core::TonAddress;
pub use wallet::{OutMsg, Wallet};
