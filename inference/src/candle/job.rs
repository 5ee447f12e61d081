//! The candle runtime's generation loop: each generation runs on a `std::thread` of its
//! own, with its own `Session` of the shared `Model` and its own `Decoding`.
//!
//! The thread feeds the prompt in chunks of [`PREFILL_CHUNK`] tokens, then steps the
//! decoding and feeds its token back until it ends, checking the cancel flag before every
//! forward pass. Events go through the generation's bounded channel; when it is full the
//! thread parks until the reader makes room (re-checking the cancel flag every
//! [`CANCEL_POLL`]), so a slow reader pauses only its own generation and the thread needs no
//! async runtime.

use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{self, Thread};
use std::time::Duration;

use tokio::sync::mpsc;

use super::model::{Model, Session};
use crate::decoding::{Decoding, Logits, Next};
use crate::generation::{Admission, FinishReason, GenerationEvent, Permit};
use crate::tokenizer::TextTokenizer;

/// Prompts are fed to the model in chunks of this many tokens (512), bounding the attention
/// scratch memory of a long prompt (about `chunk × context × heads × 4` bytes).
pub const PREFILL_CHUNK: usize = 512;
/// How often a generation blocked on a full channel re-checks its cancel flag: 20 ms.
pub const CANCEL_POLL: Duration = Duration::from_millis(20);

/// The candle runtime's launcher: a thread per generation, each with its own session (KV
/// cache) of the shared model.
pub(crate) struct Spawner {
    model: Model,
    tokenizer: Arc<TextTokenizer>,
    context_length: usize,
}

impl Spawner {
    /// A launcher for generations of `model` (whose usable context is `context_length`).
    pub fn new(model: Model, tokenizer: Arc<TextTokenizer>, context_length: usize) -> Spawner {
        Spawner {
            model,
            tokenizer,
            context_length,
        }
    }

    /// The model every generation gets a session of (tests compare against it).
    #[cfg(test)]
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// Starts `admission` on a thread of its own; returns that thread.
    pub fn start(&self, admission: Admission) -> std::io::Result<Thread> {
        let id = admission.id;
        let (job, decoding, permit) = Job::new(
            self.model.clone(),
            self.tokenizer.clone(),
            self.context_length,
            admission,
        );
        let handle = thread::Builder::new()
            .name(format!("cocoon-gen-{id}"))
            .spawn(move || job.run(decoding, permit))?;
        Ok(handle.thread().clone())
    }
}

/// Why a generation loop stopped early.
enum Halt {
    /// The receiver is gone: nobody to tell.
    Closed,
    /// Cancelled while waiting for room in the channel.
    Cancelled,
    /// The model or tokenizer failed.
    Failed(String),
}

impl From<candle_core::Error> for Halt {
    fn from(e: candle_core::Error) -> Self {
        Halt::Failed(e.to_string())
    }
}

/// Everything one generation thread needs.
struct Job {
    model: Model,
    tokenizer: Arc<TextTokenizer>,
    id: u64,
    prompt_ids: Vec<u32>,
    tx: mpsc::Sender<GenerationEvent>,
    cancel: Arc<AtomicBool>,
}

impl Job {
    /// The job of `admission`, its decoding, and its permit (held by the thread until the
    /// work is over).
    fn new(
        model: Model,
        tokenizer: Arc<TextTokenizer>,
        context_length: usize,
        admission: Admission,
    ) -> (Job, Decoding, Permit) {
        let Admission {
            id,
            prompt,
            sampling,
            tx,
            cancel,
            sampled,
            started,
            permit,
        } = admission;
        let decoding = Decoding::new(&sampling, prompt.len(), context_length, sampled, started);
        let job = Job {
            model,
            tokenizer,
            id,
            prompt_ids: prompt,
            tx,
            cancel,
        };
        (job, decoding, permit)
    }

    /// The thread's body. The permit is released once the KV cache is freed and before the
    /// final event is sent, so whoever sees `Done` can start another generation at once.
    fn run(self, mut decoding: Decoding, permit: Permit) {
        let span = tracing::debug_span!("generation", id = self.id);
        let _enter = span.enter();
        let outcome = catch_unwind(AssertUnwindSafe(|| self.generate(&mut decoding)))
            .unwrap_or_else(|_| Err(Halt::Failed("generation panicked".to_string())));
        drop(permit);
        match outcome {
            Ok(reason) => {
                let usage = decoding.usage(reason);
                usage.log_finished(self.id);
                let done = GenerationEvent::Done(usage);
                if reason == FinishReason::Cancelled {
                    // Never wait for room on behalf of a caller who cancelled.
                    let _ = self.tx.try_send(done);
                } else {
                    let _ = self.send(done);
                }
            }
            Err(Halt::Cancelled) => {
                let usage = decoding.usage(FinishReason::Cancelled);
                let _ = self.tx.try_send(GenerationEvent::Done(usage));
            }
            Err(Halt::Closed) => tracing::debug!("receiver gone; generation dropped"),
            Err(Halt::Failed(e)) => {
                tracing::warn!(error = %e, "generation failed");
                let _ = self.send(GenerationEvent::Error(e));
            }
        }
    }

    fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::Acquire)
    }

    /// The generation loop: prefill, then step the decoding (sample, stream) and feed its
    /// token back until it ends.
    fn generate(&self, decoding: &mut Decoding) -> Result<FinishReason, Halt> {
        let mut session: Session = self.model.session();
        let mut logits = None;
        for (i, chunk) in self.prompt_ids.chunks(PREFILL_CHUNK).enumerate() {
            if self.cancelled() {
                return Ok(FinishReason::Cancelled);
            }
            logits = Some(session.forward(chunk, i * PREFILL_CHUNK)?);
        }
        let mut logits = logits.ok_or_else(|| Halt::Failed("empty prompt".to_string()))?;
        loop {
            if self.cancelled() {
                return Ok(FinishReason::Cancelled);
            }
            let step = decoding.step(Logits::Tensor(&logits), &self.tokenizer);
            for text in step.text {
                self.send_text(text)?;
            }
            match step.next {
                Next::Feed(token) => logits = session.forward(&[token], decoding.position())?,
                Next::Finish(reason) => return Ok(reason),
                Next::Fail(e) => return Err(Halt::Failed(e)),
            }
        }
    }

    fn send_text(&self, text: String) -> Result<(), Halt> {
        if text.is_empty() {
            return Ok(());
        }
        self.send(GenerationEvent::Text(text))
    }

    /// Sends an event, waiting for room in the channel without a runtime; gives up when the
    /// receiver is dropped or the generation is cancelled.
    fn send(&self, event: GenerationEvent) -> Result<(), Halt> {
        let event = match self.tx.try_send(event) {
            Ok(()) => return Ok(()),
            Err(mpsc::error::TrySendError::Closed(_)) => return Err(Halt::Closed),
            Err(mpsc::error::TrySendError::Full(event)) => event,
        };
        let waker = Waker::from(Arc::new(ThreadWaker(thread::current())));
        let mut cx = Context::from_waker(&waker);
        let mut reserve = std::pin::pin!(self.tx.reserve());
        loop {
            match reserve.as_mut().poll(&mut cx) {
                Poll::Ready(Ok(permit)) => {
                    permit.send(event);
                    return Ok(());
                }
                Poll::Ready(Err(_)) => return Err(Halt::Closed),
                Poll::Pending => {
                    if self.cancelled() {
                        return Err(Halt::Cancelled);
                    }
                    thread::park_timeout(CANCEL_POLL);
                }
            }
        }
    }
}

/// Wakes a parked generation thread when its channel has room.
struct ThreadWaker(Thread);

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}
