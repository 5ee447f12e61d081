//! The batched runtime: a GGUF llama whose matrices are `Q4_1` or `Q8_0`, on the CPU, runs
//! on our own kernels, and every generation of an engine shares each forward step.
//!
//! From the bottom up:
//! - [`kernels`]: quantized matrix products for a batch of activation vectors (AVX2 or a
//!   portable loop with the same bits);
//! - [`team`]: the fixed team of threads a step runs on;
//! - [`llama`]: the model (its shape checked from the GGUF, its weights as
//!   [`kernels::QMatrix`]) and [`llama::Llama::step`], one forward pass over many sequences,
//!   each with its own [`llama::KvCache`];
//! - [`scheduler`]: continuous batching, one thread that admits generations between steps
//!   and steps each one's `Decoding` (the per-sequence sampler, detokeniser and stop strings
//!   shared with the candle runtime) on its row of logits.

pub mod kernels;
pub mod llama;
pub mod scheduler;
pub mod team;

pub use scheduler::{BatchConfig, DEFAULT_PREFILL_CHUNK};
