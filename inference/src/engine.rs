//! The engine: a loaded model shared by concurrent generations; the crate's API.
//!
//! [`Engine::load`] loads the model through [`crate::model`] and starts the runtime it was
//! loaded for ([`Backend`]):
//! - batched (a GGUF llama with `Q4_1`/`Q8_0` matrices on the CPU, the default there): every
//!   generation joins one continuous batch, run by a scheduler thread on our kernels
//!   ([`crate::batched`]);
//! - candle (everything else): each generation runs on a dedicated `std::thread` that owns
//!   its KV cache ([`crate::candle`]).
//!
//! [`Engine::generate`] checks the request, takes a slot of the concurrency limit, renders
//! and tokenises the prompt and hands the runtime the generation (see
//! [`crate::generation`]). It returns at once with a [`Generation`] handle, or
//! [`GenerateError::Busy`] when [`EngineConfig::max_concurrent`] generations are already
//! running (requests are never queued here: the caller decides whether to wait, retry or go
//! elsewhere).
//!
//! Either way a generation samples with its own seeded RNG and streams text through a
//! bounded `tokio::sync::mpsc` channel, so the async side never blocks and the generation
//! side needs no runtime.
//!
//! A generation ends with exactly one [`GenerationEvent::Done`] or [`GenerationEvent::Error`],
//! except when its receiver is gone. Dropping the [`Generation`] or calling
//! [`Generation::cancel`] stops it before the next token. Its concurrency permit is released
//! when the generation's work is over (KV cache freed), just before the final event is sent.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::batched::llama::LlamaConfig;
use crate::batched::scheduler::{BatchConfig, Batcher};
use crate::candle::Spawner;
use crate::device::DeviceChoice;
use crate::error::{GenerateError, LoadError};
use crate::generation::{self, Slots};
use crate::model::{self, ModelInfo, ModelSource, Runner};
use crate::sampling::SamplingParams;
use crate::template::{ChatMessage, ChatTemplate};
use crate::tokenizer::TextTokenizer;

pub use crate::candle::{CANCEL_POLL, PREFILL_CHUNK};
pub use crate::generation::{FinishReason, Generation, GenerationEvent, Usage};

/// Default [`EngineConfig::max_concurrent`]: 16 generations at once (batched, they share
/// each step; on candle each costs a thread).
pub const DEFAULT_MAX_CONCURRENT: usize = 16;
/// Default [`EngineConfig::channel_capacity`]: 64 chunks buffered per generation.
pub const DEFAULT_CHANNEL_CAPACITY: usize = 64;
/// Default [`EngineConfig::max_state_bytes`]: 64 GiB, room for a 70B llama's f32 KV caches
/// (640 KiB a position) at 16 generations of 4096 positions.
pub const DEFAULT_MAX_STATE_BYTES: u64 = 64 << 30;

/// Engine settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct EngineConfig {
    /// Where to run the model. Default [`DeviceChoice::Auto`].
    pub device: DeviceChoice,
    /// Most generations running at once (≥ 1); more are refused with
    /// [`GenerateError::Busy`]. Each costs one thread and one KV cache (for a llama model,
    /// `2 × layers × kv_heads × head_dim × 4` bytes per token). Default
    /// [`DEFAULT_MAX_CONCURRENT`].
    pub max_concurrent: usize,
    /// Text chunks buffered between a generation thread and its reader (≥ 1); a slow reader
    /// pauses the generation. Default [`DEFAULT_CHANNEL_CAPACITY`].
    pub channel_capacity: usize,
    /// Quantized GGUF models whose weights take at most this many bytes as f32 are
    /// dequantized at load and run in f32; larger ones run on candle's quantized kernels,
    /// which also quantize activations to 8 bits and can flip close greedy choices. 0 keeps
    /// every model quantized. Default [`crate::model::gguf::DEQUANTIZE_MAX_F32_BYTES`]
    /// (2 GiB, about 500M parameters). Applies to the candle runtime only.
    pub dequantize_max_f32_bytes: u64,
    /// Which runtime runs the model. Default [`Backend::Auto`].
    pub backend: Backend,
    /// The batch scheduler's settings (batched runtime only).
    pub batch: BatchConfig,
    /// Most bytes the generations' state may take with `max_concurrent` generations all at
    /// the model's full context: their KV caches, plus the step scratch and rotary tables
    /// (batched runtime) or each generation's attention scores for a prompt chunk (candle).
    /// Computed with checked arithmetic from the model's shape at load, before any of it is
    /// allocated; a model that would need more is refused with
    /// [`LoadError::StateTooLarge`]. GGUF models only. Default [`DEFAULT_MAX_STATE_BYTES`].
    pub max_state_bytes: u64,
}

/// Which runtime runs a model.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// Batched on our kernels when the model allows (a GGUF llama with `Q4_1`/`Q8_0`
    /// matrices, on the CPU), else candle.
    #[default]
    Auto,
    /// Always candle.
    Candle,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            device: DeviceChoice::Auto,
            max_concurrent: DEFAULT_MAX_CONCURRENT,
            channel_capacity: DEFAULT_CHANNEL_CAPACITY,
            dequantize_max_f32_bytes: crate::model::gguf::DEQUANTIZE_MAX_F32_BYTES,
            backend: Backend::Auto,
            batch: BatchConfig::default(),
            max_state_bytes: DEFAULT_MAX_STATE_BYTES,
        }
    }
}

/// What to generate from.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub enum Prompt {
    /// A chat, rendered with the model's chat template (ending with the assistant's turn).
    Chat(Vec<ChatMessage>),
    /// Raw completion text, tokenised as is (BOS prepended if the model's metadata says so).
    Text(String),
}

/// One generation request.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct GenerateRequest {
    /// The prompt.
    pub prompt: Prompt,
    /// How to sample.
    pub sampling: SamplingParams,
}

/// A loaded model ready to generate. Cheap to clone; all clones share the model and the
/// concurrency limit.
#[derive(Clone)]
pub struct Engine {
    shared: Arc<Shared>,
}

struct Shared {
    runtime: Runtime,
    tokenizer: Arc<TextTokenizer>,
    template: ChatTemplate,
    info: ModelInfo,
    config: EngineConfig,
    slots: Slots,
    next_id: AtomicU64,
}

/// What runs the generations.
#[allow(clippy::large_enum_variant)] // one per engine
enum Runtime {
    /// A thread per generation, each with a session of the model.
    Candle(Spawner),
    /// One batch scheduler.
    Batched(Batcher),
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("info", &self.shared.info)
            .field("config", &self.shared.config)
            .field("active", &self.active())
            .finish()
    }
}

/// Bytes of the generations' state for a model of `shape` (its `context` the one the engine
/// runs) under `config`, all `max_concurrent` generations at full context (see
/// [`EngineConfig::max_state_bytes`]); `None` if that overflows.
fn state_bytes(shape: &LlamaConfig, batched: bool, config: &EngineConfig) -> Option<u64> {
    let generations = config.max_concurrent as u64;
    let context = shape.context as u64;
    let caches = generations
        .checked_mul(context)?
        .checked_mul(shape.kv_bytes_per_position()?)?;
    let scratch = if batched {
        // A step holds one token per decoding generation plus a prompt chunk.
        let rows = config
            .batch
            .prefill_chunk
            .max(1)
            .checked_add(config.max_concurrent)?;
        let threads = config.batch.resolved_threads();
        shape
            .workspace_bytes(rows, config.max_concurrent, threads)?
            .checked_add(shape.rope_bytes()?)?
    } else {
        // candle: each generation's f32 attention scores for a prompt chunk.
        let chunk = PREFILL_CHUNK.min(shape.context) as u64;
        generations
            .checked_mul(shape.heads as u64)?
            .checked_mul(chunk)?
            .checked_mul(context)?
            .checked_mul(4)?
    };
    caches.checked_add(scratch)
}

impl Engine {
    /// Loads a model (weights once, shared by all generations).
    pub fn load(source: &ModelSource, config: EngineConfig) -> Result<Engine, LoadError> {
        if config.max_concurrent == 0 || config.channel_capacity == 0 {
            return Err(LoadError::Config(
                "max_concurrent and channel_capacity must be >= 1".to_string(),
            ));
        }
        let device = config.device.resolve()?;
        let started = Instant::now();
        let loaded = model::load(
            source,
            &device,
            config.dequantize_max_f32_bytes,
            config.backend == Backend::Auto,
        )?;
        if let Some(shape) = &loaded.shape {
            let batched = matches!(loaded.runner, Runner::Batched(_));
            let needed = state_bytes(shape, batched, &config);
            if needed.is_none_or(|n| n > config.max_state_bytes) {
                return Err(LoadError::StateTooLarge {
                    needed,
                    limit: config.max_state_bytes,
                });
            }
        }
        Self::from_loaded(loaded, config, started)
    }

    fn from_loaded(
        loaded: model::Loaded,
        config: EngineConfig,
        started: Instant,
    ) -> Result<Engine, LoadError> {
        tracing::info!(
            name = %loaded.info.name,
            quantization = %loaded.info.quantization,
            device = %loaded.info.device,
            context_length = loaded.info.context_length,
            runtime_weights = %loaded.info.runtime_weights,
            runtime = %loaded.info.runtime,
            load_ms = started.elapsed().as_millis() as u64,
            "model loaded"
        );
        let tokenizer = Arc::new(loaded.tokenizer);
        let runtime = match loaded.runner {
            Runner::Candle(model) => Runtime::Candle(Spawner::new(
                model,
                tokenizer.clone(),
                loaded.info.context_length,
            )),
            Runner::Batched(llama) => Runtime::Batched(
                Batcher::start(
                    llama,
                    tokenizer.clone(),
                    loaded.info.context_length,
                    config.max_concurrent,
                    &config.batch,
                )
                .map_err(|e| LoadError::Config(format!("starting the batch scheduler: {e}")))?,
            ),
        };
        Ok(Engine {
            shared: Arc::new(Shared {
                runtime,
                slots: Slots::new(config.max_concurrent),
                tokenizer,
                template: loaded.template,
                info: loaded.info,
                config,
                next_id: AtomicU64::new(0),
            }),
        })
    }

    /// Facts about the model.
    pub fn info(&self) -> &ModelInfo {
        &self.shared.info
    }

    /// The settings this engine was loaded with.
    pub fn config(&self) -> &EngineConfig {
        &self.shared.config
    }

    /// The model's tokenizer.
    pub fn tokenizer(&self) -> &TextTokenizer {
        &self.shared.tokenizer
    }

    /// Generations running now (threads not yet exited).
    pub fn active(&self) -> usize {
        self.shared.slots.active()
    }

    /// The share (0 to 1) of the KV cache the running generations hold: the positions each
    /// may fill (prompt plus `max_tokens`, at most the context) over `max_concurrent` full
    /// contexts. vLLM's `kv_cache_usage_perc`, for the same dashboards.
    pub fn kv_cache_usage(&self) -> f64 {
        let whole = self.shared.config.max_concurrent * self.shared.info.context_length;
        if whole == 0 {
            return 0.0;
        }
        (self.shared.slots.reserved() as f64 / whole as f64).min(1.0)
    }

    /// The prompt text the model sees (the chat template applied), before tokenisation.
    pub fn render_prompt(&self, prompt: &Prompt) -> Result<String, GenerateError> {
        match prompt {
            Prompt::Text(t) => Ok(t.clone()),
            Prompt::Chat(messages) => self
                .shared
                .template
                .render(messages)
                .map_err(GenerateError::Template),
        }
    }

    /// The prompt's token ids, as generation would feed them.
    pub fn prompt_tokens(&self, prompt: &Prompt) -> Result<Vec<u32>, GenerateError> {
        let text = self.render_prompt(prompt)?;
        let tokenizer = &self.shared.tokenizer;
        tokenizer
            .encode(&text, tokenizer.add_bos())
            .map_err(GenerateError::Tokenizer)
    }

    /// Number of tokens in the prompt, as [`Usage::prompt_tokens`] would count them.
    pub fn count_prompt_tokens(&self, prompt: &Prompt) -> Result<usize, GenerateError> {
        self.prompt_tokens(prompt).map(|ids| ids.len())
    }

    /// Starts a generation and returns at once. Fails with [`GenerateError::Busy`] when
    /// [`EngineConfig::max_concurrent`] generations are running.
    pub fn generate(&self, request: GenerateRequest) -> Result<Generation, GenerateError> {
        request.sampling.validate()?;
        let mut permit = self.shared.slots.try_acquire().ok_or(GenerateError::Busy {
            limit: self.shared.config.max_concurrent,
        })?;
        let prompt_ids = self.prompt_tokens(&request.prompt)?;
        let context_length = self.shared.info.context_length;
        if prompt_ids.is_empty() {
            return Err(GenerateError::InvalidRequest("empty prompt".to_string()));
        }
        if prompt_ids.len() >= context_length {
            return Err(GenerateError::PromptTooLong {
                prompt_tokens: prompt_ids.len(),
                context_length,
            });
        }
        let most = prompt_ids.len() + request.sampling.max_tokens as usize;
        permit.reserve(most.min(context_length));
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let (admission, handle) = generation::open(
            id,
            prompt_ids,
            request.sampling,
            self.shared.config.channel_capacity,
            permit,
        );
        let thread = match &self.shared.runtime {
            Runtime::Candle(spawner) => spawner.start(admission).map_err(GenerateError::Spawn)?,
            Runtime::Batched(batcher) => {
                batcher.admit(admission).map_err(GenerateError::Failed)?;
                batcher.thread().clone()
            }
        };
        Ok(handle(thread))
    }

    /// Generates to the end and returns the whole text with its usage.
    ///
    /// # Panics
    /// If called from within an async runtime (it blocks).
    pub fn generate_text(
        &self,
        request: GenerateRequest,
    ) -> Result<(String, Usage), GenerateError> {
        let mut generation = self.generate(request)?;
        let mut text = String::new();
        while let Some(event) = generation.blocking_next() {
            match event {
                GenerationEvent::Text(t) => text.push_str(&t),
                GenerationEvent::Done(usage) => return Ok((text, usage)),
                GenerationEvent::Error(e) => return Err(GenerateError::Failed(e)),
            }
        }
        Err(GenerateError::Failed(
            "generation ended without a result".to_string(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::candle::Model;
    use crate::testing::{write_tiny_gguf, TinySpec};

    fn tiny_engine(dir: &std::path::Path, backend: Backend) -> Engine {
        let path = dir.join("tiny.gguf");
        write_tiny_gguf(&path, &TinySpec::default()).unwrap();
        let config = EngineConfig {
            device: DeviceChoice::Cpu,
            backend,
            ..EngineConfig::default()
        };
        Engine::load(&ModelSource::Gguf(path), config).unwrap()
    }

    fn candle(engine: &Engine) -> &Model {
        match &engine.shared.runtime {
            Runtime::Candle(spawner) => spawner.model(),
            Runtime::Batched(_) => panic!("batched"),
        }
    }

    /// Greedy decoding by hand, straight on a candle session: the token ids the engine
    /// should pick.
    fn greedy_ids(engine: &Engine, prompt: &[u32], n: usize) -> Vec<u32> {
        let mut session = candle(engine).session();
        let mut logits = session.forward(prompt, 0).unwrap();
        let mut ids = Vec::new();
        for i in 0..n {
            let id = logits
                .argmax(candle_core::D::Minus1)
                .unwrap()
                .to_scalar::<u32>()
                .unwrap();
            ids.push(id);
            logits = session.forward(&[id], prompt.len() + i).unwrap();
        }
        ids
    }

    #[test]
    fn streamed_chunks_concatenate_to_the_decode_of_all_ids() {
        let dir = tempfile::tempdir().unwrap();
        let reference = tiny_engine(dir.path(), Backend::Candle);
        let prompt = Prompt::Text("Hello the world".to_string());
        let prompt_ids = reference.prompt_tokens(&prompt).unwrap();
        let n = 60;
        let expected = reference
            .tokenizer()
            .decode(&greedy_ids(&reference, &prompt_ids, n))
            .unwrap();
        for backend in [Backend::Candle, Backend::Auto] {
            let engine = tiny_engine(dir.path(), backend);
            let runtime = if backend == Backend::Auto {
                "batched"
            } else {
                "candle"
            };
            assert_eq!(engine.info().runtime, runtime);
            streams_the_expected_text(&engine, &prompt, &expected, n);
        }
    }

    fn streams_the_expected_text(engine: &Engine, prompt: &Prompt, expected: &str, n: usize) {
        let prompt = prompt.clone();
        let mut generation = engine
            .generate(GenerateRequest {
                prompt,
                sampling: SamplingParams::greedy(n as u32),
            })
            .unwrap();
        let mut chunks = Vec::new();
        let mut usage = None;
        while let Some(event) = generation.blocking_next() {
            match event {
                GenerationEvent::Text(t) => chunks.push(t),
                GenerationEvent::Done(u) => usage = Some(u),
                GenerationEvent::Error(e) => panic!("{e}"),
            }
        }
        assert!(chunks.iter().all(|c| !c.is_empty()));
        assert!(chunks.len() > 1);
        assert_eq!(chunks.concat(), expected);
        let usage = usage.unwrap();
        assert_eq!(usage.completion_tokens, n as u32);
        assert_eq!(generation.tokens_so_far(), usage.completion_tokens);
        assert_eq!(generation.prompt_tokens(), usage.prompt_tokens);
        assert_eq!(usage.finish_reason, FinishReason::Length);
        assert!(usage.time_to_first_token_ms <= usage.total_ms);
    }

    #[test]
    fn handles_are_thread_safe() {
        fn send_sync<T: Send + Sync>() {}
        fn send<T: Send>() {}
        send_sync::<Engine>();
        send::<Generation>();
    }

    #[test]
    fn quantized_and_dequantized_gguf_agree() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tiny.gguf");
        write_tiny_gguf(&path, &TinySpec::default()).unwrap();
        let device = candle_core::Device::Cpu;
        let config = EngineConfig {
            device: DeviceChoice::Cpu,
            ..EngineConfig::default()
        };
        let now = Instant::now();
        let dequantized = Engine::from_loaded(
            model::gguf::load_with(&path, &device, u64::MAX, false).unwrap(),
            config.clone(),
            now,
        )
        .unwrap();
        let quantized = Engine::from_loaded(
            model::gguf::load_with(&path, &device, 0, false).unwrap(),
            config,
            now,
        )
        .unwrap();
        assert_eq!(dequantized.info().runtime_weights, "F32");
        assert_eq!(quantized.info().runtime_weights, "Q8_0");
        assert_eq!(quantized.info().quantization, "Q8_0");
        let ids = quantized
            .prompt_tokens(&Prompt::Text("Hello the world".into()))
            .unwrap();
        let a = candle(&quantized).session().forward(&ids, 0).unwrap();
        let b = candle(&dequantized).session().forward(&ids, 0).unwrap();
        let diff = (&a - &b)
            .unwrap()
            .abs()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let scale = a.abs().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
        assert!(diff < 0.05 * scale, "{diff} vs {scale}");
        // Both paths generate.
        let (_, usage) = quantized
            .generate_text(GenerateRequest {
                prompt: Prompt::Text("Hello".into()),
                sampling: SamplingParams::greedy(5),
            })
            .unwrap();
        assert_eq!(usage.completion_tokens, 5);
    }

    #[test]
    fn chunked_prefill_matches_one_pass() {
        let dir = tempfile::tempdir().unwrap();
        let engine = tiny_engine(dir.path(), Backend::Candle);
        let ids = engine
            .prompt_tokens(&Prompt::Text("the world in the north, and then".into()))
            .unwrap();
        let full = candle(&engine).session().forward(&ids, 0).unwrap();
        let mut s = candle(&engine).session();
        s.forward(&ids[..5], 0).unwrap();
        let chunked = s.forward(&ids[5..], 5).unwrap();
        let diff = (full - chunked)
            .unwrap()
            .abs()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(diff < 1e-3, "{diff}");
    }
}
