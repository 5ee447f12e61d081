//! Continuous batching, the batched runtime's top: one scheduler thread runs every live
//! generation of an engine through our llama ([`super::llama`]), one [`Llama::step`] at a
//! time.
//!
//! Between steps, generations join (admitted from [`Engine::generate`](crate::Engine)) and
//! leave (finished, cancelled, or their reader gone), so a new request waits at most one step
//! and a finished one frees its KV cache at once. A step holds each decoding generation's
//! next token and at most [`BatchConfig::prefill_chunk`] prompt tokens in all, so a long
//! prompt is cut into chunks and never stalls the streams already decoding.
//!
//! Each generation keeps its own KV cache and its own `Decoding` (seeded sampler,
//! detokeniser, stop matcher, counts: the same per-sequence logic the candle runtime steps),
//! and a step's rows never mix, so its text is exactly what it would be alone. Output goes
//! through the generation's bounded channel without blocking: a generation whose reader
//! is slow holds its next event in a one-event outbox and sits out the steps until the
//! reader makes room; the others go on.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc as std_mpsc, Arc};
use std::thread;
use std::time::Duration;

use tokio::sync::mpsc;

use super::llama::{KvCache, Llama, Workspace};
use crate::decoding::{Decoding, Logits, Next};
use crate::generation::{Admission, FinishReason, GenerationEvent, Permit};
use crate::tokenizer::TextTokenizer;

/// Default [`BatchConfig::prefill_chunk`]: 64 prompt tokens per step.
pub const DEFAULT_PREFILL_CHUNK: usize = 64;
/// How long the scheduler sleeps when every generation waits on its reader.
const IDLE_POLL: Duration = Duration::from_millis(1);

/// Settings of the batching scheduler.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct BatchConfig {
    /// Threads a step runs on (0: every core). Default 0.
    pub threads: usize,
    /// Most prompt tokens one step takes, over all prefilling generations (≥ 1). Default
    /// [`DEFAULT_PREFILL_CHUNK`].
    pub prefill_chunk: usize,
}

impl BatchConfig {
    /// The threads a step runs on: [`BatchConfig::threads`], or every core for 0.
    pub fn resolved_threads(&self) -> usize {
        match self.threads {
            0 => thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            threads: 0,
            prefill_chunk: DEFAULT_PREFILL_CHUNK,
        }
    }
}

/// The engine's handle on its scheduler thread.
pub(crate) struct Batcher {
    tx: std::sync::Mutex<std_mpsc::SyncSender<Admission>>,
    thread: thread::Thread,
}

impl Batcher {
    /// Starts the scheduler thread for `model`; at most `max_concurrent` generations wait
    /// to join (each holds one of the engine's permits, so no more can).
    pub fn start(
        model: Arc<Llama>,
        tokenizer: Arc<TextTokenizer>,
        context_length: usize,
        max_concurrent: usize,
        config: &BatchConfig,
    ) -> std::io::Result<Batcher> {
        let workspace = Workspace::new(config.resolved_threads())?;
        let (tx, rx) = std_mpsc::sync_channel(max_concurrent.max(1));
        let scheduler = Scheduler {
            model,
            tokenizer,
            context_length,
            prefill_chunk: config.prefill_chunk.max(1),
            workspace,
            rx,
            seqs: Vec::new(),
        };
        let handle = thread::Builder::new()
            .name("cocoon-batch".into())
            .spawn(move || scheduler.run())?;
        Ok(Batcher {
            tx: std::sync::Mutex::new(tx),
            thread: handle.thread().clone(),
        })
    }

    /// Hands a generation over; it joins the batch at the next step.
    pub fn admit(&self, admission: Admission) -> Result<(), String> {
        let tx = self.tx.lock().unwrap_or_else(|p| p.into_inner());
        tx.try_send(admission).map_err(|e| match e {
            std_mpsc::TrySendError::Full(_) => {
                "more generations wait to join the batch than the engine admits".to_string()
            }
            std_mpsc::TrySendError::Disconnected(_) => {
                "the batch scheduler has stopped".to_string()
            }
        })?;
        self.thread.unpark();
        Ok(())
    }

    /// The scheduler thread (cancelling a generation wakes it).
    pub fn thread(&self) -> &thread::Thread {
        &self.thread
    }
}

/// One generation in the scheduler.
struct Seq {
    id: u64,
    prompt: Vec<u32>,
    /// Prompt tokens already in the cache.
    fed: usize,
    /// The token to feed next, once the prompt is in.
    next: Option<u32>,
    /// `None` once the generation is over (cache freed, permit released).
    cache: Option<KvCache>,
    permit: Option<Permit>,
    decoding: Decoding,
    tx: mpsc::Sender<GenerationEvent>,
    cancel: Arc<AtomicBool>,
    /// Events waiting for room in the channel (at most a text and the final event).
    outbox: VecDeque<GenerationEvent>,
    /// The reader is gone: drop the generation.
    closed: bool,
}

impl Seq {
    fn new(a: Admission, model: &Llama, context_length: usize) -> Seq {
        let capacity = (a.prompt.len() + a.sampling.max_tokens as usize).min(context_length);
        Seq {
            id: a.id,
            cache: Some(model.cache(capacity)),
            fed: 0,
            next: None,
            permit: Some(a.permit),
            decoding: Decoding::new(
                &a.sampling,
                a.prompt.len(),
                context_length,
                a.sampled,
                a.started,
            ),
            prompt: a.prompt,
            tx: a.tx,
            cancel: a.cancel,
            outbox: VecDeque::new(),
            closed: false,
        }
    }

    fn live(&self) -> bool {
        self.cache.is_some()
    }

    /// Sends what the outbox holds while the channel has room.
    fn flush(&mut self) {
        while let Some(event) = self.outbox.pop_front() {
            match self.tx.try_send(event) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(event)) => {
                    self.outbox.push_front(event);
                    return;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    self.closed = true;
                    self.outbox.clear();
                    return;
                }
            }
        }
    }

    fn emit(&mut self, text: String) {
        if !text.is_empty() {
            self.outbox.push_back(GenerationEvent::Text(text));
        }
    }

    /// Ends the generation: frees the cache and the permit first, then queues the final
    /// event (dropped if the reader is gone).
    fn finish(&mut self, outcome: Result<FinishReason, String>) {
        self.cache = None;
        self.permit = None;
        let event = match outcome {
            Ok(reason) => {
                let usage = self.decoding.usage(reason);
                usage.log_finished(self.id);
                if reason == FinishReason::Cancelled {
                    // Never wait for room on behalf of a caller who cancelled.
                    self.outbox.clear();
                }
                GenerationEvent::Done(usage)
            }
            Err(e) => {
                tracing::warn!(id = self.id, error = %e, "generation failed");
                GenerationEvent::Error(e)
            }
        };
        self.outbox.push_back(event);
        self.flush();
        if self.cancel.load(Ordering::Acquire) {
            // A cancelled generation's final event is best-effort.
            self.outbox.clear();
        }
    }

    /// Steps the decoding on the logits of the sequence's last position: queues its text
    /// and feeds its token next, or ends the generation.
    fn take(&mut self, logits: &[f32], tokenizer: &TextTokenizer) {
        let step = self.decoding.step(Logits::Row(logits), tokenizer);
        for text in step.text {
            self.emit(text);
        }
        match step.next {
            Next::Feed(token) => self.next = Some(token),
            Next::Finish(reason) => self.finish(Ok(reason)),
            Next::Fail(e) => self.finish(Err(e)),
        }
    }
}

struct Scheduler {
    model: Arc<Llama>,
    tokenizer: Arc<TextTokenizer>,
    context_length: usize,
    prefill_chunk: usize,
    workspace: Workspace,
    rx: std_mpsc::Receiver<Admission>,
    seqs: Vec<Seq>,
}

impl Scheduler {
    fn run(mut self) {
        let mut engine_gone = false;
        loop {
            // Admit: block only when there is nothing else to do.
            loop {
                let next = if self.seqs.is_empty() && !engine_gone {
                    self.rx
                        .recv()
                        .map_err(|_| std_mpsc::TryRecvError::Disconnected)
                } else {
                    self.rx.try_recv()
                };
                match next {
                    Ok(a) => {
                        tracing::debug!(
                            id = a.id,
                            prompt_tokens = a.prompt.len(),
                            "joins the batch"
                        );
                        self.seqs
                            .push(Seq::new(a, &self.model, self.context_length));
                    }
                    Err(std_mpsc::TryRecvError::Empty) => break,
                    Err(std_mpsc::TryRecvError::Disconnected) => {
                        engine_gone = true;
                        break;
                    }
                }
            }
            if engine_gone && self.seqs.is_empty() {
                return;
            }
            for seq in &mut self.seqs {
                if seq.live() && seq.cancel.load(Ordering::Acquire) {
                    seq.finish(Ok(FinishReason::Cancelled));
                }
                seq.flush();
                if seq.closed && seq.live() {
                    tracing::debug!(id = seq.id, "receiver gone; generation dropped");
                    seq.cache = None;
                    seq.permit = None;
                }
            }
            // Leave: over and nothing left to deliver.
            self.seqs
                .retain(|s| s.live() || (!s.outbox.is_empty() && !s.closed));
            if !self.step() {
                thread::park_timeout(IDLE_POLL);
            }
        }
    }

    /// Runs one step over every generation ready for one; false if none was.
    fn step(&mut self) -> bool {
        let mut budget = self.prefill_chunk;
        let mut chosen: Vec<(usize, std::ops::Range<usize>)> = Vec::new();
        for (i, seq) in self.seqs.iter().enumerate() {
            if !seq.live() || !seq.outbox.is_empty() {
                continue;
            }
            if seq.fed < seq.prompt.len() {
                if budget == 0 {
                    continue;
                }
                let take = (seq.prompt.len() - seq.fed).min(budget);
                budget -= take;
                chosen.push((i, seq.fed..seq.fed + take));
            } else if seq.next.is_some() {
                chosen.push((i, 0..1));
            }
        }
        if chosen.is_empty() {
            return false;
        }
        let mut tokens: Vec<&[u32]> = Vec::with_capacity(chosen.len());
        let mut caches: Vec<&mut KvCache> = Vec::with_capacity(chosen.len());
        let mut picked = chosen.iter().peekable();
        for (i, seq) in self.seqs.iter_mut().enumerate() {
            let Some((_, range)) = picked.next_if(|(j, _)| *j == i) else {
                continue;
            };
            if seq.fed < seq.prompt.len() {
                tokens.push(&seq.prompt[range.clone()]);
            } else {
                tokens.push(std::slice::from_ref(
                    seq.next.as_ref().expect("chosen to decode"),
                ));
            }
            caches.push(seq.cache.as_mut().expect("live"));
        }
        let (model, ws) = (&self.model, &mut self.workspace);
        let outcome = catch_unwind(AssertUnwindSafe(|| model.step(ws, &mut caches, &tokens)));
        drop((tokens, caches));
        let failure = match outcome {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(_) => Some("the forward pass panicked".to_string()),
        };
        for (k, (i, range)) in chosen.into_iter().enumerate() {
            let seq = &mut self.seqs[i];
            if let Some(e) = &failure {
                seq.finish(Err(e.clone()));
                continue;
            }
            if seq.fed < seq.prompt.len() {
                seq.fed = range.end;
                if seq.fed < seq.prompt.len() {
                    continue;
                }
            }
            seq.take(self.workspace.logits(k), &self.tokenizer);
            seq.flush();
        }
        true
    }
}
