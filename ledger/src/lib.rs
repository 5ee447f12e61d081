//! cocoon-ledger: payments that lose nothing.
//!
//! - [`cell`]: the few TON cells the payment-channel contract (`ledger/contract/channel.tolk`)
//!   checks, built bit for bit and hashed as TVM does, so the bytes a client signs off-chain
//!   are the bytes the contract verifies with `check_signature(cell.hash(), ...)`;
//! - [`voucher`]: cumulative vouchers and cooperative-close statements, signed with ed25519;
//! - [`channel`]: the sans-IO channel core of both sides: the client pays as tokens stream,
//!   the worker accepts only growing vouchers within the deposit and stops serving when the
//!   unpaid amount passes its credit limit;
//! - [`settle`]: when a worker goes on chain (threshold, idle, shutdown, deadline) and the
//!   job receipts it anchors in batches;
//! - [`journal`]: the durable journal (redb) both sides write before they act.
//! - [`ton`]: the chain side: contract messages and addresses, a wallet v4r2, the toncenter
//!   client and a local TVM-emulator chain for tests.
//!
//! The cores have no clock and no I/O: the node drives them and journals their state; the
//! simulator drives them too; [`ton`] is the I/O shell that settles on chain.
#![warn(missing_docs)]

pub mod cell;
pub mod channel;
pub mod journal;
pub mod settle;
pub mod ton;
pub mod voucher;
