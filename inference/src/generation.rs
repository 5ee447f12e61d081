//! One generation as the engine and a runtime see it: the contract between
//! [`Engine`](crate::Engine) (which admits generations) and the runtimes that run them
//! ([`crate::batched`], [`crate::candle`]).
//!
//! - The caller's end: a [`Generation`] handle streaming [`GenerationEvent`]s: text, then one
//!   `Done` with [`Usage`] and a [`FinishReason`], or one `Error`.
//! - The runtime's end: an `Admission` (the prompt's ids, the sampling parameters, the
//!   sending half of the generation's bounded channel, its cancel flag and token counter)
//!   and the `Permit` that holds one slot of the engine's concurrency limit until the
//!   runtime drops it.
//!
//! This module depends on no runtime and no runtime on the engine, so the module graph has
//! no cycle: the engine depends on the runtimes, and both on this.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::Thread;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::sampling::SamplingParams;

/// Why a generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FinishReason {
    /// The model ended its turn (EOS) or a stop string appeared.
    Stop,
    /// `max_tokens` or the model's context length was reached.
    Length,
    /// The generation was cancelled.
    Cancelled,
}

/// Token counts and timings of a finished generation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    /// Tokens in the prompt (after templating, including BOS).
    pub prompt_tokens: u32,
    /// Tokens sampled, including a final EOS token.
    pub completion_tokens: u32,
    /// Milliseconds from [`Engine::generate`](crate::Engine::generate) to the first sampled
    /// token (0 if none).
    pub time_to_first_token_ms: f64,
    /// Milliseconds from [`Engine::generate`](crate::Engine::generate) to the end.
    pub total_ms: f64,
    /// Why it ended.
    pub finish_reason: FinishReason,
}

impl Usage {
    /// The debug line every finished generation logs, whichever runtime ran it.
    pub(crate) fn log_finished(&self, id: u64) {
        tracing::debug!(
            id,
            prompt_tokens = self.prompt_tokens,
            completion_tokens = self.completion_tokens,
            finish_reason = ?self.finish_reason,
            ttft_ms = self.time_to_first_token_ms,
            total_ms = self.total_ms,
            "generation finished"
        );
    }
}

/// What a [`Generation`] yields.
#[derive(Clone, Debug, PartialEq)]
// Deliberately exhaustive: the worker must handle every event of a generation, so a new
// one breaks its build instead of being ignored.
pub enum GenerationEvent {
    /// The next piece of text (whole UTF-8 characters; never empty).
    Text(String),
    /// The generation finished; always the last event.
    Done(Usage),
    /// The generation failed; always the last event.
    Error(String),
}

/// A running generation: a stream of [`GenerationEvent`]s. Dropping it cancels the generation.
#[derive(Debug)]
pub struct Generation {
    id: u64,
    prompt_tokens: u32,
    sampled: Arc<AtomicU32>,
    rx: mpsc::Receiver<GenerationEvent>,
    cancel: Arc<AtomicBool>,
    /// The thread running it, woken when it is cancelled.
    thread: Thread,
}

impl Generation {
    /// This generation's id, unique within its engine (also in its thread's name and logs).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Tokens in the prompt, as [`Usage::prompt_tokens`] will count them.
    pub fn prompt_tokens(&self) -> u32 {
        self.prompt_tokens
    }

    /// Completion tokens sampled so far, including any whose text is still held back (an
    /// incomplete character, a possible stop string). Never decreases and never exceeds the
    /// final [`Usage::completion_tokens`]: what a worker bills a chunk by.
    pub fn tokens_so_far(&self) -> u32 {
        self.sampled.load(Ordering::Acquire)
    }

    /// The next event; `None` after the last one.
    pub async fn next(&mut self) -> Option<GenerationEvent> {
        self.rx.recv().await
    }

    /// The next event, blocking the current thread; `None` after the last one.
    ///
    /// # Panics
    /// If called from within an async runtime (use [`Generation::next`] there).
    pub fn blocking_next(&mut self) -> Option<GenerationEvent> {
        self.rx.blocking_recv()
    }

    /// Asks the generation to stop before its next token. It then ends with
    /// `Done` carrying [`FinishReason::Cancelled`] (if the channel has room for it).
    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::Release);
        self.thread.unpark();
    }
}

impl Drop for Generation {
    fn drop(&mut self) {
        self.cancel();
    }
}

/// The engine's concurrency limit: at most `limit` [`Permit`]s out at once.
#[derive(Debug)]
pub(crate) struct Slots {
    active: Arc<AtomicUsize>,
    /// KV cache positions the running generations may fill (prompt plus `max_tokens`, at
    /// most the context), summed.
    reserved: Arc<AtomicUsize>,
    limit: usize,
}

impl Slots {
    /// A limit of `limit` generations at once.
    pub fn new(limit: usize) -> Slots {
        Slots {
            active: Arc::new(AtomicUsize::new(0)),
            reserved: Arc::new(AtomicUsize::new(0)),
            limit,
        }
    }

    /// One slot, or `None` when all `limit` are taken.
    pub fn try_acquire(&self) -> Option<Permit> {
        let limit = self.limit;
        self.active
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .ok()
            .map(|_| Permit {
                active: self.active.clone(),
                reserved: self.reserved.clone(),
                tokens: 0,
            })
    }

    /// Slots taken now.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Acquire)
    }

    /// KV cache positions reserved by the running generations.
    pub fn reserved(&self) -> usize {
        self.reserved.load(Ordering::Acquire)
    }
}

/// One slot of the concurrency limit, released on drop. A runtime drops it once the
/// generation's work is over (KV cache freed), just before it sends the final event.
pub(crate) struct Permit {
    active: Arc<AtomicUsize>,
    reserved: Arc<AtomicUsize>,
    tokens: usize,
}

impl Permit {
    /// Holds `tokens` KV cache positions for this generation (replacing what it held).
    pub fn reserve(&mut self, tokens: usize) {
        self.reserved.fetch_add(tokens, Ordering::AcqRel);
        self.reserved.fetch_sub(self.tokens, Ordering::AcqRel);
        self.tokens = tokens;
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.reserved.fetch_sub(self.tokens, Ordering::AcqRel);
        self.active.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A generation handed to a runtime: everything it needs to run it and report back.
pub(crate) struct Admission {
    /// The generation's id, for logs.
    pub id: u64,
    /// The prompt's token ids (non-empty, shorter than the context).
    pub prompt: Vec<u32>,
    /// How to sample.
    pub sampling: SamplingParams,
    /// Where its events go (bounded).
    pub tx: mpsc::Sender<GenerationEvent>,
    /// Set when the caller cancels (or drops the [`Generation`]).
    pub cancel: Arc<AtomicBool>,
    /// Tokens sampled so far, read by [`Generation::tokens_so_far`].
    pub sampled: Arc<AtomicU32>,
    /// When [`Engine::generate`](crate::Engine::generate) was called.
    pub started: Instant,
    /// Its slot of the concurrency limit.
    pub permit: Permit,
}

/// Opens a generation: the runtime's end ([`Admission`]) and, once the runtime says which
/// thread runs it, the caller's end (the closure makes the [`Generation`]).
pub(crate) fn open(
    id: u64,
    prompt: Vec<u32>,
    sampling: SamplingParams,
    channel_capacity: usize,
    permit: Permit,
) -> (Admission, impl FnOnce(Thread) -> Generation) {
    let (tx, rx) = mpsc::channel(channel_capacity);
    let cancel = Arc::new(AtomicBool::new(false));
    let sampled = Arc::new(AtomicU32::new(0));
    let prompt_tokens = prompt.len() as u32;
    let handle = {
        let (cancel, sampled) = (cancel.clone(), sampled.clone());
        move |thread| Generation {
            id,
            prompt_tokens,
            sampled,
            rx,
            cancel,
            thread,
        }
    };
    let admission = Admission {
        id,
        prompt,
        sampling,
        tx,
        cancel,
        sampled,
        started: Instant::now(),
        permit,
    };
    (admission, handle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_count_generations_and_the_kv_positions_they_hold() {
        let slots = Slots::new(2);
        let mut a = slots.try_acquire().unwrap();
        let mut b = slots.try_acquire().unwrap();
        assert!(slots.try_acquire().is_none(), "two at most");
        a.reserve(100);
        b.reserve(50);
        b.reserve(70);
        assert_eq!((slots.active(), slots.reserved()), (2, 170));
        drop(a);
        assert_eq!((slots.active(), slots.reserved()), (1, 70));
        drop(b);
        assert_eq!((slots.active(), slots.reserved()), (0, 0));
        assert!(slots.try_acquire().is_some());
    }
}
