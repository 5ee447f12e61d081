//! cocoon's inference engine: runs llama-family language models on candle and streams their
//! output, for a node that sells confidential inference on the cocoon network.
//!
//! - [`model`] loads a model once, from a quantized GGUF file ([`ModelSource::Gguf`]: weights,
//!   tokenizer and chat template all from the file) or a Hugging Face safetensors directory
//!   ([`ModelSource::Safetensors`]). The loaded weights are immutable and shared.
//! - [`Engine`] runs generations concurrently up to a limit, each with its own KV cache and
//!   seeded sampler, and refuses more with [`GenerateError::Busy`]. GGUF llamas with
//!   `Q4_1`/`Q8_0` matrices run on our CPU kernels ([`kernels`], [`llama`]), all generations
//!   sharing each step ([`batch`], continuous batching, on a [`team`] of threads); other
//!   models run on candle, a thread per generation.
//! - A [`Generation`] streams [`GenerationEvent`]s: text chunks made of whole UTF-8
//!   characters, cut before any stop string, then one `Done` with [`Usage`] (or one `Error`).
//!   Dropping it cancels the generation.
//! - The pure pieces are separate and property-tested: [`stream`] (incremental detokeniser,
//!   stop strings), [`sampling`], [`template`] (chat templates), [`tokenizer`].
//! - [`testing`] builds tiny synthetic models in both formats for tests anywhere.
//!
//! Everything runs on the CPU by default; the `cuda` feature adds CUDA ([`DeviceChoice`]).
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
