//! The candle runtime: every model our kernels do not take (safetensors, GGUF files with
//! other block types, any model on CUDA, or any model with
//! [`Backend::Candle`](crate::Backend::Candle)) runs on candle's own llama, a thread per
//! generation.
//!
//! - `model`: candle's models as loaded (`Model`, immutable and shared) and a generation's
//!   state (`Session`, its KV cache);
//! - [`job`]: the thread each generation runs on, stepping its `Decoding` (the per-sequence
//!   sampler, detokeniser and stop strings shared with the batched runtime) on the logits
//!   of its session.

pub mod job;
pub(crate) mod model;

pub(crate) use job::Spawner;
pub use job::{CANCEL_POLL, PREFILL_CHUNK};
pub(crate) use model::{Model, Session};
