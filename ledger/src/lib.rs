//! cocoon-ledger: payments that lose nothing, sans I/O.
//!
//! - [`cell`]: the few TON cells the payment-channel contract (`ton/contract/channel.tolk`)
//!   checks, built bit for bit and hashed as TVM does, so the bytes a client signs off-chain
//!   are the bytes the contract verifies with `check_signature(cell.hash(), ...)`;
//! - [`voucher`]: cumulative vouchers and cooperative-close statements, signed with ed25519;
//! - [`address`]: the channel contract's address, derived from the channel's terms;
//! - [`channel`]: the sans-IO channel core of both sides: the client pays as tokens stream,
//!   the worker accepts only growing vouchers within the deposit and stops serving when the
//!   unpaid amount passes its credit limit;
//! - [`settle`]: when a worker goes on chain (threshold, idle, shutdown, deadline) and the
//!   job receipts it anchors in batches;
//! - [`journal`]: the durable journal (redb) both sides write before they act.
//!
//! The cores have no clock and no network: the node drives them and journals their state; the
//! simulator drives them too. The chain side (contract messages, a wallet, the toncenter
//! client, a local chain for tests) is the I/O shell `cocoon-ton`, which settles on chain what
//! these cores decide.
#![warn(missing_docs)]

pub mod address;
pub mod cell;
pub mod channel;
pub mod journal;
pub mod settle;
pub mod voucher;
