//! candle's llama models as the candle runtime runs them: a [`Model`] (immutable weights,
//! shared by every generation) and a [`Session`] of it per generation (its KV cache).
//!
//! Two kinds of weights, both llama-family, both built by the loaders of [`crate::model`]:
//! candle's `quantized_llama` from a GGUF file (its weights sit behind `Arc`s, so a session
//! is a clone of the pristine loaded model with empty caches) and candle's `llama` from a
//! safetensors directory (with a per-session `llama::Cache`).

use candle_core::{Device, Tensor};
use candle_transformers::models::{llama, quantized_llama};

/// A loaded model: immutable weights shared by all requests, and the device they live on.
#[derive(Clone)]
pub(crate) struct Model {
    weights: Weights,
    device: Device,
}

#[derive(Clone)]
enum Weights {
    /// Quantized llama from GGUF; the value is the pristine model with empty KV caches.
    Gguf(quantized_llama::ModelWeights),
    /// Llama from safetensors, with a pristine (empty) cache holding the rotary tables.
    Llama {
        model: llama::Llama,
        cache: llama::Cache,
    },
}

impl Model {
    pub(crate) fn gguf(weights: quantized_llama::ModelWeights, device: &Device) -> Self {
        Model {
            weights: Weights::Gguf(weights),
            device: device.clone(),
        }
    }

    pub(crate) fn llama(model: llama::Llama, cache: llama::Cache, device: &Device) -> Self {
        Model {
            weights: Weights::Llama { model, cache },
            device: device.clone(),
        }
    }

    /// Fresh per-request state: shares the weights (cloning only `Arc`s), owns an empty KV
    /// cache.
    pub fn session(&self) -> Session {
        Session {
            state: self.weights.clone(),
            device: self.device.clone(),
        }
    }
}

/// Per-request mutable state made from a shared [`Model`]: its KV cache.
pub(crate) struct Session {
    state: Weights,
    device: Device,
}

impl Session {
    /// Runs `ids` at positions `pos..pos + ids.len()` (appending them to the KV cache) and
    /// returns the logits for the last one, as an f32 tensor of vocabulary length.
    pub fn forward(&mut self, ids: &[u32], pos: usize) -> candle_core::Result<Tensor> {
        let input = Tensor::new(ids, &self.device)?.unsqueeze(0)?;
        let logits = match &mut self.state {
            Weights::Gguf(w) => w.forward(&input, pos)?,
            Weights::Llama { model, cache } => model.forward(&input, pos, cache)?,
        };
        logits.squeeze(0)?.to_dtype(candle_core::DType::F32)
    }
}
