//! Loading models: a model's files in, the model of one runtime out, with its tokenizer,
//! chat template and [`ModelInfo`].
//!
//! [`ModelSource`] says where the files are. The loaders return a `Loaded` whose `Runner`
//! is the model of the runtime that will run it: our llama for the batched runtime
//! ([`crate::batched`]) or candle's model for the candle runtime ([`crate::candle`]). Two
//! formats are supported, both llama-family:
//! - [`gguf`]: a GGUF file, its header first checked by [`gguf_header`], a bounded
//!   pre-parser, and its llama shape by
//!   [`LlamaConfig::from_gguf`](crate::batched::llama::LlamaConfig::from_gguf), before
//!   anything is sized from them; then loaded onto our kernels when they take its matrices
//!   (CPU only), else onto candle's `quantized_llama` (dequantized when small).
//! - [`safetensors`]: a Hugging Face directory (`config.json`, `tokenizer.json`,
//!   `*.safetensors`), always run by candle's `llama`.

pub mod gguf;
pub mod gguf_header;
pub mod safetensors;

use std::path::{Path, PathBuf};

use candle_core::Device;
use serde::{Deserialize, Serialize};

use crate::error::LoadError;
use crate::template::ChatTemplate;
use crate::tokenizer::TextTokenizer;

/// Where a model's files are.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ModelSource {
    /// A GGUF file (quantized weights, tokenizer and chat template in its metadata).
    Gguf(PathBuf),
    /// A directory with `config.json`, `tokenizer.json` and `*.safetensors`
    /// (optionally `tokenizer_config.json` for the chat template).
    Safetensors(PathBuf),
}

impl ModelSource {
    /// Recognises a path: a file ending in `.gguf` is [`ModelSource::Gguf`], a directory is
    /// [`ModelSource::Safetensors`].
    pub fn from_path(p: &Path) -> Result<Self, LoadError> {
        let meta = std::fs::metadata(p).map_err(|source| LoadError::Io {
            path: p.to_path_buf(),
            source,
        })?;
        let is_gguf = p
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("gguf"));
        if meta.is_file() && is_gguf {
            Ok(ModelSource::Gguf(p.to_path_buf()))
        } else if meta.is_dir() {
            Ok(ModelSource::Safetensors(p.to_path_buf()))
        } else {
            Err(LoadError::UnrecognisedSource(p.to_path_buf()))
        }
    }

    /// The path this source points at.
    pub fn path(&self) -> &Path {
        match self {
            ModelSource::Gguf(p) | ModelSource::Safetensors(p) => p,
        }
    }
}

/// Facts about a loaded model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ModelInfo {
    /// GGUF `general.name`, or the file / directory name.
    pub name: String,
    /// The architecture, e.g. `llama`.
    pub architecture: String,
    /// Usable context length in tokens (prompt + completion). For GGUF this is the trained
    /// context capped at candle's rotary table length (4096).
    pub context_length: usize,
    /// The context length the model was trained with, as its metadata says.
    pub trained_context_length: usize,
    /// The dominant weight type: a GGML type such as `Q4_1` or `Q8_0` for GGUF, the run-time
    /// dtype (`f32`, `bf16`, `f16`) for safetensors.
    pub quantization: String,
    /// The weight type the model actually computes with: `F32` when a small quantized GGUF
    /// was dequantized at load (see [`gguf::DEQUANTIZE_MAX_F32_BYTES`]), else as
    /// `quantization`.
    pub runtime_weights: String,
    /// The device it runs on: `cpu` or `cuda:N`.
    pub device: String,
    /// Number of weights (elements of all tensors).
    pub parameters: u64,
    /// Vocabulary size including added tokens.
    pub vocab_size: usize,
    /// Which format it was loaded from: `gguf` or `safetensors`.
    pub format: String,
    /// What runs it: `batched` (our quantized kernels, every generation in one batch, see
    /// [`crate::batched`]) or `candle` (candle's model, a thread per generation, see
    /// [`crate::candle`]).
    pub runtime: String,
}

/// What runs a loaded model.
#[allow(clippy::large_enum_variant)] // one per engine
pub(crate) enum Runner {
    /// candle's model; generations get sessions of it.
    Candle(crate::candle::Model),
    /// Our llama, driven by the batch scheduler.
    Batched(std::sync::Arc<crate::batched::llama::Llama>),
}

impl Runner {
    /// The candle model (tests compare against it).
    #[cfg(test)]
    pub fn candle(&self) -> &crate::candle::Model {
        match self {
            Runner::Candle(m) => m,
            Runner::Batched(_) => panic!("loaded for batching, not candle"),
        }
    }
}

/// Everything a loader produces.
pub(crate) struct Loaded {
    pub runner: Runner,
    pub tokenizer: TextTokenizer,
    pub template: ChatTemplate,
    pub info: ModelInfo,
    /// The llama shape checked at load, its `context` the one the engine runs (GGUF only):
    /// what the engine sizes its caches and scratch from.
    pub shape: Option<crate::batched::llama::LlamaConfig>,
}

/// Loads a model of either format onto `device`.
/// With `batched`, a GGUF llama whose matrices our kernels take runs on them
/// ([`Runner::Batched`], CPU only); otherwise quantized GGUF weights are dequantized when
/// their f32 size is at most `dequantize_max_f32_bytes` (see
/// [`gguf::DEQUANTIZE_MAX_F32_BYTES`]) and run on candle.
pub(crate) fn load(
    source: &ModelSource,
    device: &Device,
    dequantize_max_f32_bytes: u64,
    batched: bool,
) -> Result<Loaded, LoadError> {
    match source {
        ModelSource::Gguf(p) => gguf::load_with(p, device, dequantize_max_f32_bytes, batched),
        ModelSource::Safetensors(p) => safetensors::load(p, device),
    }
}
