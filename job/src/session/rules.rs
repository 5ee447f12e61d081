//! The rules both sides apply to counts read off the wire.
//!
//! A worker's counts are claims the client pays for, so each one is bounded by something
//! the client knows: a chunk of text bills at most one token per byte ([`chunk_capacity`]:
//! every token of a byte-level vocabulary decodes to at least one byte), a job at most
//! `max_tokens` completion tokens, a prompt at most one token per byte of what the client
//! sent plus the chat template's special tokens ([`prompt_token_bound`]). The worker's
//! session applies the same bounds to itself (a chunk's surplus tokens ride with the next
//! chunk or the final count), so an honest worker never trips them.

use crate::message::{JobInput, JobRequest};

/// Most stop strings a request may carry.
pub const MAX_STOP_STRINGS: usize = 16;
/// Longest stop string, in bytes.
pub const MAX_STOP_LEN: usize = 256;
/// Tokens a chat template may add beyond the text it wraps: a fixed allowance (system
/// prompt, generation prompt, a dummy prefix) ...
pub const TEMPLATE_ALLOWANCE: u64 = 256;
/// ... plus this many per message (role markers).
pub const TEMPLATE_PER_MESSAGE: u64 = 16;

/// The most completion tokens a chunk of `text` may bill.
pub fn chunk_capacity(text: &str) -> u32 {
    u32::try_from(text.len()).unwrap_or(u32::MAX)
}

/// The most prompt tokens a worker may quote for `request`: one per byte of its text and
/// continuation, plus the template allowance.
pub fn prompt_token_bound(request: &JobRequest) -> u64 {
    let (bytes, messages) = match &request.input {
        JobInput::Prompt(t) => (t.len() as u64, 0u64),
        JobInput::Chat(m) => (
            m.iter()
                .map(|m| (m.content.len() as u64).saturating_add(m.role.len() as u64))
                .fold(0u64, u64::saturating_add),
            m.len() as u64,
        ),
    };
    let continuation = request.continuation.as_ref().map_or(0, |c| c.len() as u64);
    bytes
        .saturating_add(continuation)
        .saturating_add(TEMPLATE_ALLOWANCE)
        .saturating_add(messages.saturating_mul(TEMPLATE_PER_MESSAGE))
}

/// A request outside the protocol's bounds.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// Too many, empty or too long stop strings.
    #[error("at most {MAX_STOP_STRINGS} non-empty stop strings of at most {MAX_STOP_LEN} bytes")]
    Stop,
    /// A chat without messages.
    #[error("a chat needs at least one message")]
    EmptyChat,
    /// A prompt without text.
    #[error("the prompt is empty")]
    EmptyPrompt,
    /// `max_tokens` is 0.
    #[error("max_tokens must be at least 1")]
    NoTokens,
}

/// Checks the bounds the wire protocol adds (sampling bounds are the engine's to check).
pub fn validate_request(request: &JobRequest) -> Result<(), RequestError> {
    let stop = &request.sampling.stop;
    if stop.len() > MAX_STOP_STRINGS || stop.iter().any(|x| x.is_empty() || x.len() > MAX_STOP_LEN)
    {
        return Err(RequestError::Stop);
    }
    match &request.input {
        JobInput::Chat(messages) if messages.is_empty() => return Err(RequestError::EmptyChat),
        JobInput::Prompt(text) if text.is_empty() => return Err(RequestError::EmptyPrompt),
        _ => {}
    }
    if request.sampling.max_tokens == 0 {
        return Err(RequestError::NoTokens);
    }
    Ok(())
}
