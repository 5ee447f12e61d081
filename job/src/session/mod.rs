//! One job's exchange as two sans-IO state machines, one per side.
//!
//! ```text
//! client                                   worker
//!   ClientSession::new ──Request──────────▶ admit() → WorkerSession::new
//!   [Journal job_open]                      [load the channel]   started(prompt_tokens)
//!                      ◀──Quote──────────── (paid jobs: price, channel view, credit)
//!   check quote, pay prompt ──Voucher─────▶ handle: accept → [Journal] → credit
//!                      ◀──Token*─────────── text(): billed before sent, held past credit
//!   pay every N tokens / half credit ─────▶
//!                      ◀──Done───────────── finished(usage): the rest, within credit
//!   final voucher + [Journal clean] ──────▶ wait for it (bounded), [Journal], close
//!   wait for the worker to close (ack)
//! ```
//!
//! Both sides are driven the same way: feed inputs (`handle(now, message)`, the shell's own
//! inputs such as `text`, `handle_closed`, `handle_timeout`), then drain the outputs in any
//! order: [`ClientSession::poll_transmit`] / [`WorkerSession::poll_transmit`] for messages
//! to send, `poll_event` for what the shell must do, `poll_timeout` for the next deadline.
//! A `Journal` event must be written durably and acknowledged with `journalled()`; messages
//! that depend on it (a voucher, a token streamed on its credit) are held back until then,
//! so a shell that forgets cannot pay or stream unjournalled.
//!
//! Times are [`Duration`]s since any origin the driver picks (a runtime's start, a
//! simulation's clock); only differences matter.

mod client;
mod rules;
mod worker;

#[cfg(test)]
mod tests;

use std::time::Duration;

pub use client::{
    payment, voucher_of, ClientChannelState, ClientEvent, ClientPayment, ClientSession,
};
pub use rules::{
    chunk_capacity, prompt_token_bound, validate_request, RequestError, MAX_STOP_LEN,
    MAX_STOP_STRINGS, TEMPLATE_ALLOWANCE,
};
pub use worker::{
    admit, admit_request, Admission, AdmitContext, Billed, Refusal, WorkerEvent, WorkerSession,
};

use crate::message::{ErrorCode, JobFailure};

/// Settings of the client's side of a job.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// Pay every this many completion tokens (sooner when half the worker's credit is
    /// used). Default: 16.
    pub pay_every: u32,
    /// The largest credit limit a worker may quote, nanoTON: what the client risks losing
    /// to a worker that lies about its deliveries after the client crashed. Default:
    /// 10,000,000 (ten times the worker default).
    pub max_credit: u64,
    /// How long to wait for the worker's next message. Default: 60 s.
    pub idle_timeout: Duration,
    /// How long to wait, after the final voucher, for the worker to end the stream (its
    /// acknowledgement that it holds the voucher). Default: 5 s.
    pub ack_timeout: Duration,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            pay_every: 16,
            max_credit: 10_000_000,
            idle_timeout: Duration::from_secs(60),
            ack_timeout: Duration::from_secs(5),
        }
    }
}

/// Settings of the worker's side of a job.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    /// How long the stream waits for a voucher once the credit is used up; then the job
    /// ends with `PaymentRequired`. Default: 10 s.
    pub voucher_timeout: Duration,
    /// How long the worker waits after `Done` for the voucher that pays the whole job.
    /// Default: 10 s.
    pub final_timeout: Duration,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            voucher_timeout: Duration::from_secs(10),
            final_timeout: Duration::from_secs(10),
        }
    }
}

/// Whose fault a failed job is, from the client's side: decides the reputation penalty and
/// the gateway's status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The worker broke a rule, lied, stalled or vanished: a reputation penalty.
    Worker,
    /// The worker was busy or dearer than the ceiling: try another, no penalty.
    Busy,
    /// We could not pay: the deposit does not cover the job (a gateway answers 402).
    Funds,
    /// The worker says the request itself is bad (`BadRequest`, `ContextLengthExceeded`):
    /// the caller's mistake if a second worker agrees (a gateway answers 400), the worker's
    /// if another serves it.
    Request,
    /// We stopped the job ourselves.
    Cancelled,
}

/// Why a job failed, as a session reports it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// The peer answered with an error.
    #[error("worker refused the job ({:?}): {}", .0.code, .0.message)]
    Remote(JobFailure),
    /// The peer broke the protocol's rules.
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// The worker's quote is not one the client accepts.
    #[error("quote refused: {0}")]
    Quote(String),
    /// The client cannot pay what is due.
    #[error("cannot pay: {0}")]
    Pay(String),
    /// Nothing arrived in time.
    #[error("no {0} from the peer in time")]
    Timeout(&'static str),
    /// The stream ended or broke before the job did.
    #[error("the job stream ended: {0}")]
    Closed(String),
    /// The job was cancelled.
    #[error("the job was cancelled")]
    Cancelled,
}

impl SessionError {
    /// Whose fault this is.
    pub fn fault(&self) -> Fault {
        match self {
            SessionError::Remote(f) => match f.code {
                ErrorCode::Busy | ErrorCode::PriceTooHigh => Fault::Busy,
                ErrorCode::PaymentRequired => Fault::Funds,
                ErrorCode::BadRequest | ErrorCode::ContextLengthExceeded => Fault::Request,
                _ => Fault::Worker,
            },
            SessionError::Pay(_) => Fault::Funds,
            SessionError::Cancelled => Fault::Cancelled,
            _ => Fault::Worker,
        }
    }
}
