//! cocoon's inference engine: runs llama-family language models and streams their output,
//! for a node that sells confidential inference on the cocoon network.
//!
//! [`Engine::load`] loads a model once, from a quantized GGUF file ([`ModelSource::Gguf`]:
//! weights, tokenizer and chat template all from the file) or a Hugging Face safetensors
//! directory ([`ModelSource::Safetensors`]); the loaded weights are immutable and shared.
//! [`Engine::generate`] starts a generation with its own KV cache and seeded sampler, up to
//! a limit (more are refused with [`GenerateError::Busy`]), and returns a [`Generation`]
//! that streams [`GenerationEvent`]s: text chunks made of whole UTF-8 characters, cut before
//! any stop string, then one `Done` with [`Usage`] (or one `Error`). Dropping it cancels the
//! generation.
//!
//! Everything runs on the CPU by default; the `cuda` feature adds CUDA ([`DeviceChoice`]).
//!
//! # Module map
//!
//! The API and the pieces both runtimes share sit at the top; each runtime has a folder.
//!
//! - [`engine`]: [`Engine`], its config, prompts and requests; picks the runtime at load and
//!   admits each generation to it.
//! - [`generation`]: one generation as the caller and a runtime see it: the [`Generation`]
//!   handle, its events and [`Usage`], and what the engine hands a runtime (the prompt, the
//!   channel, the cancel flag, a slot of the concurrency limit).
//! - [`model`]: loading. [`model::gguf`] (after the bounded header pre-parser
//!   [`model::gguf_header`]) and [`model::safetensors`] read a model's files into the model
//!   of one runtime, with its tokenizer, chat template and [`ModelInfo`]; [`device`] picks
//!   the device.
//! - [`batched`]: the batched runtime, for GGUF llamas with `Q4_1`/`Q8_0` matrices on the
//!   CPU: [`batched::scheduler`] runs every generation in one continuous batch,
//!   [`batched::llama`] is our llama (its GGUF shape and its batched forward step) on the
//!   quantized products of [`batched::kernels`], run by a [`batched::team`] of threads.
//! - [`candle`]: the candle runtime, for every other model: a thread per generation
//!   ([`candle::job`]), each with a session (KV cache) of candle's llama.
//! - `decoding` (crate-private): one sequence's sampler, detokeniser, stop strings, limits
//!   and counts, stepped once per token by either runtime, so both stream the same text.
//! - The pure pieces, property-tested without a model: [`sampling`] (seeded sampling
//!   parameters), [`stream`] (incremental detokeniser, stop strings), [`tokenizer`],
//!   [`template`] (chat templates); and [`error`], the typed errors.
//! - [`testing`] builds tiny synthetic models in both formats for tests anywhere.
//!
//! Dependencies run one way: engine → model → the runtimes → decoding → generation and the
//! pure pieces. A runtime never sees the engine or the other runtime. For other crates, the
//! batched runtime's modules are also at the paths they had before it had a folder
//! ([`batch`] for [`batched::scheduler`], [`kernels`], [`llama`], [`team`]).
//!
//! ```no_run
//! use cocoon_inference::{ChatMessage, Engine, EngineConfig, GenerateRequest, ModelSource, Prompt, SamplingParams};
//! let source = ModelSource::from_path("SmolLM2-135M-Instruct.Q4_1.gguf".as_ref())?;
//! let engine = Engine::load(&source, EngineConfig::default())?;
//! let (text, usage) = engine.generate_text(GenerateRequest {
//!     prompt: Prompt::Chat(vec![ChatMessage::new("user", "What is the capital of France?")]),
//!     sampling: SamplingParams::greedy(64),
//! })?;
//! println!("{text} ({} tokens)", usage.completion_tokens);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![warn(missing_docs)]

pub mod batched;
pub mod candle;
mod decoding;
pub mod device;
pub mod engine;
pub mod error;
pub mod generation;
pub mod model;
pub mod sampling;
pub mod stream;
pub mod template;
pub mod testing;
pub mod tokenizer;

// The batched runtime's modules at the paths they had before it had a folder.
pub use batched::scheduler as batch;
pub use batched::{kernels, llama, team};

pub use device::DeviceChoice;
pub use engine::{Backend, Engine, EngineConfig, GenerateRequest, Prompt};
pub use error::{GenerateError, LoadError};
pub use generation::{FinishReason, Generation, GenerationEvent, Usage};
pub use model::{ModelInfo, ModelSource};
pub use sampling::SamplingParams;
pub use template::ChatMessage;
