//! Tiny synthetic llama models for tests, in both formats, built from seeded pseudo-random
//! tensors: no download, loads in milliseconds, generates hundreds of tokens per second on a
//! CPU. Other crates' tests can use them to run a real [`Engine`](crate::Engine).
//!
//! The vocabulary is byte-level BPE: three control tokens (`<|endoftext|>` = 0,
//! `<|im_start|>` = 1, `<|im_end|>` = 2, the EOS), the 256 byte characters, then a few merges.
//! The chat template is SmolLM2's (ChatML).
//!
//! The weights are random with one deliberate feature: hidden dimension 0 carries a constant
//! (no layer writes to it), and the output rows of the control tokens read it with a large
//! negative weight, so a [`TinySpec::default`] model never samples a control token and runs to
//! `max_tokens`. With [`TinySpec::eos_first`] the EOS row reads it positively instead, so the
//! model's first token is EOS.

use std::collections::HashMap;
use std::io::{BufWriter, Write};
use std::path::Path;

use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use tokenizers::Tokenizer;

use crate::template::SMOLLM2_TEMPLATE;
use crate::tokenizer::{byte_chars, byte_level_bpe, GGUF_TOKEN_TYPE_CONTROL};

/// Error type of the writers.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Id of `<|endoftext|>` (the BOS) in the tiny vocabulary.
pub const TINY_BOS: u32 = 0;
/// Id of `<|im_start|>`.
pub const TINY_IM_START: u32 = 1;
/// Id of `<|im_end|>` (the EOS).
pub const TINY_EOS: u32 = 2;

/// Shape and behaviour of a tiny model.
#[derive(Clone, Debug)]
pub struct TinySpec {
    /// Width of the residual stream. Default 64 (a multiple of 32, for Q8_0).
    pub hidden: usize,
    /// Transformer blocks. Default 2.
    pub layers: usize,
    /// Attention heads. Default 4.
    pub heads: usize,
    /// Key/value heads (grouped-query attention). Default 2.
    pub kv_heads: usize,
    /// Feed-forward width. Default 128.
    pub ffn: usize,
    /// Context length written to the metadata. Default 256.
    pub context_length: usize,
    /// Seed of the weights. Default 7.
    pub seed: u64,
    /// Make EOS the model's certain first token. Default false.
    pub eos_first: bool,
    /// Quantize the GGUF's matrices to Q8_0 (else F32). Default true.
    pub quantize: bool,
    /// With `quantize`, store the block matrices as Q4_1 and only the embeddings as Q8_0, as
    /// SmolLM2's Q4_1 file does. Default false.
    pub q4_1: bool,
    /// The chat template written to the files (`None`: none, so ChatML is used). Default
    /// SmolLM2's.
    pub chat_template: Option<String>,
    /// GGUF metadata written after the standard keys: a key already written gets this value
    /// instead, a new key is appended. Lets tests write files whose metadata lies (a huge
    /// `llama.block_count`, a zero `general.alignment`). GGUF only. Default none.
    pub extra_metadata: Vec<(String, gguf_file::Value)>,
}

impl Default for TinySpec {
    fn default() -> Self {
        TinySpec {
            hidden: 64,
            layers: 2,
            heads: 4,
            kv_heads: 2,
            ffn: 128,
            context_length: 256,
            seed: 7,
            eos_first: false,
            quantize: true,
            q4_1: false,
            chat_template: Some(SMOLLM2_TEMPLATE.to_string()),
            extra_metadata: Vec::new(),
        }
    }
}

/// Merges of the tiny vocabulary, in priority order.
const MERGES: [(&str, &str); 10] = [
    ("Ġ", "t"),
    ("h", "e"),
    ("Ġt", "he"),
    ("i", "n"),
    ("Ġ", "a"),
    ("e", "r"),
    ("o", "n"),
    ("Ã", "©"),
    ("Ġ", "w"),
    ("Ġw", "or"),
];

/// The tiny vocabulary as GGUF stores it: tokens (id = index), merges (`"a b"`), token types.
pub fn tiny_vocab() -> (Vec<String>, Vec<String>, Vec<i32>) {
    let mut tokens: Vec<String> = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let mut types = vec![GGUF_TOKEN_TYPE_CONTROL; 3];
    for c in byte_chars() {
        tokens.push(c.to_string());
        types.push(1);
    }
    let mut merges = Vec::new();
    // "or" is needed by "Ġw or" and is not itself a listed merge's result: add it first.
    for (a, b) in [("o", "r")].into_iter().chain(MERGES) {
        merges.push(format!("{a} {b}"));
        tokens.push(format!("{a}{b}"));
        types.push(1);
    }
    (tokens, merges, types)
}

/// The tiny vocabulary's tokenizer.
pub fn tiny_tokenizer() -> Tokenizer {
    let (tokens, merges, types) = tiny_vocab();
    byte_level_bpe(&tokens, &merges, &types).expect("the tiny vocabulary is valid")
}

/// Deterministic pseudo-random numbers (splitmix64), uniform in [-1, 1).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f32 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        ((z >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    fn matrix(&mut self, rows: usize, cols: usize, scale: f32) -> Vec<f32> {
        (0..rows * cols).map(|_| self.next() * scale).collect()
    }
}

/// The tiny model's weights under Hugging Face names, as (shape, row-major data).
fn hf_weights(spec: &TinySpec, vocab: usize) -> Vec<(String, (usize, usize), Vec<f32>)> {
    let mut rng = Rng(spec.seed);
    let (h, f) = (spec.hidden, spec.ffn);
    let head_dim = h / spec.heads;
    let kv = spec.kv_heads * head_dim;
    let mut out = Vec::new();
    let zero_row0 = |mut m: Vec<f32>, cols: usize| {
        // Nobody writes to residual dimension 0: it stays the constant the output reads.
        m[..cols].iter_mut().for_each(|x| *x = 0.0);
        m
    };

    let mut embed = rng.matrix(vocab, h, 0.8);
    for row in embed.chunks_mut(h) {
        row[0] = 1.0;
    }
    out.push(("model.embed_tokens.weight".to_string(), (vocab, h), embed));
    for i in 0..spec.layers {
        let p = format!("model.layers.{i}");
        out.push((
            format!("{p}.self_attn.q_proj.weight"),
            (h, h),
            rng.matrix(h, h, 0.2),
        ));
        out.push((
            format!("{p}.self_attn.k_proj.weight"),
            (kv, h),
            rng.matrix(kv, h, 0.2),
        ));
        out.push((
            format!("{p}.self_attn.v_proj.weight"),
            (kv, h),
            rng.matrix(kv, h, 0.1),
        ));
        let o = zero_row0(rng.matrix(h, h, 0.1), h);
        out.push((format!("{p}.self_attn.o_proj.weight"), (h, h), o));
        out.push((
            format!("{p}.mlp.gate_proj.weight"),
            (f, h),
            rng.matrix(f, h, 0.1),
        ));
        out.push((
            format!("{p}.mlp.up_proj.weight"),
            (f, h),
            rng.matrix(f, h, 0.1),
        ));
        let down = zero_row0(rng.matrix(h, f, 0.1), f);
        out.push((format!("{p}.mlp.down_proj.weight"), (h, f), down));
        out.push((format!("{p}.input_layernorm.weight"), (h, 1), vec![1.0; h]));
        out.push((
            format!("{p}.post_attention_layernorm.weight"),
            (h, 1),
            vec![1.0; h],
        ));
    }
    out.push(("model.norm.weight".to_string(), (h, 1), vec![1.0; h]));
    let mut lm_head = rng.matrix(vocab, h, 0.3);
    for (id, row) in lm_head.chunks_mut(h).enumerate() {
        row[0] = 0.0;
        if id < 3 {
            row.iter_mut().for_each(|x| *x = 0.0);
            row[0] = if spec.eos_first && id as u32 == TINY_EOS {
                30.0
            } else {
                -30.0
            };
        }
    }
    out.push(("lm_head.weight".to_string(), (vocab, h), lm_head));
    out
}

fn tensor(shape: (usize, usize), data: Vec<f32>) -> candle_core::Result<Tensor> {
    match shape {
        (n, 1) => Tensor::from_vec(data, n, &Device::Cpu),
        (r, c) => Tensor::from_vec(data, (r, c), &Device::Cpu),
    }
}

/// GGUF name of a Hugging Face llama tensor name.
fn gguf_name(hf: &str) -> String {
    let map = [
        ("model.embed_tokens.weight", "token_embd.weight"),
        ("model.norm.weight", "output_norm.weight"),
        ("lm_head.weight", "output.weight"),
    ];
    if let Some((_, g)) = map.iter().find(|(h, _)| *h == hf) {
        return g.to_string();
    }
    hf.replace("model.layers.", "blk.")
        .replace("self_attn.q_proj", "attn_q")
        .replace("self_attn.k_proj", "attn_k")
        .replace("self_attn.v_proj", "attn_v")
        .replace("self_attn.o_proj", "attn_output")
        .replace("mlp.gate_proj", "ffn_gate")
        .replace("mlp.up_proj", "ffn_up")
        .replace("mlp.down_proj", "ffn_down")
        .replace("post_attention_layernorm", "ffn_norm")
        .replace("input_layernorm", "attn_norm")
}

/// Writes a tiny llama GGUF file (llama metadata, `tokenizer.ggml.*`, chat template).
pub fn write_tiny_gguf(path: &Path, spec: &TinySpec) -> Result<(), BoxError> {
    use gguf_file::Value;
    let (tokens, merges, types) = tiny_vocab();
    let u32v = |n: usize| Value::U32(n as u32);
    let mut metadata: Vec<(&str, Value)> = vec![
        ("general.architecture", Value::String("llama".into())),
        ("general.name", Value::String("tiny-llama".into())),
        ("llama.context_length", u32v(spec.context_length)),
        ("llama.embedding_length", u32v(spec.hidden)),
        ("llama.block_count", u32v(spec.layers)),
        ("llama.feed_forward_length", u32v(spec.ffn)),
        ("llama.attention.head_count", u32v(spec.heads)),
        ("llama.attention.head_count_kv", u32v(spec.kv_heads)),
        ("llama.rope.dimension_count", u32v(spec.hidden / spec.heads)),
        ("llama.rope.freq_base", Value::F32(10000.0)),
        ("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5)),
        ("tokenizer.ggml.model", Value::String("gpt2".into())),
        (
            "tokenizer.ggml.tokens",
            Value::Array(tokens.iter().cloned().map(Value::String).collect()),
        ),
        (
            "tokenizer.ggml.merges",
            Value::Array(merges.into_iter().map(Value::String).collect()),
        ),
        (
            "tokenizer.ggml.token_type",
            Value::Array(types.into_iter().map(Value::I32).collect()),
        ),
        ("tokenizer.ggml.bos_token_id", Value::U32(TINY_BOS)),
        ("tokenizer.ggml.eos_token_id", Value::U32(TINY_EOS)),
        ("tokenizer.ggml.add_bos_token", Value::Bool(false)),
    ];
    if let Some(t) = &spec.chat_template {
        metadata.push(("tokenizer.chat_template", Value::String(t.clone())));
    }
    for (key, value) in &spec.extra_metadata {
        match metadata.iter_mut().find(|(k, _)| k == key) {
            Some((_, v)) => *v = value.clone(),
            None => metadata.push((key.as_str(), value.clone())),
        }
    }
    let mut qtensors = Vec::new();
    for (name, shape, data) in hf_weights(spec, tokens.len()) {
        let t = tensor(shape, data)?;
        let name = gguf_name(&name);
        let dtype = match (spec.quantize && shape.1 > 1, spec.q4_1) {
            (false, _) => GgmlDType::F32,
            (true, true) if name != "token_embd.weight" => GgmlDType::Q4_1,
            (true, _) => GgmlDType::Q8_0,
        };
        qtensors.push((name, QTensor::quantize(&t, dtype)?));
    }
    let md: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (*k, v)).collect();
    let ts: Vec<(&str, &QTensor)> = qtensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut w = BufWriter::new(std::fs::File::create(path)?);
    gguf_file::write(&mut w, &md, &ts)?;
    w.flush()?;
    Ok(())
}

/// Writes a tiny llama model directory: `config.json`, `tokenizer.json`,
/// `tokenizer_config.json` and `model.safetensors`.
pub fn write_tiny_safetensors(dir: &Path, spec: &TinySpec) -> Result<(), BoxError> {
    std::fs::create_dir_all(dir)?;
    let tokenizer = tiny_tokenizer();
    let vocab = tokenizer.get_vocab_size(true);
    let config = serde_json::json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": spec.hidden,
        "intermediate_size": spec.ffn,
        "vocab_size": vocab,
        "num_hidden_layers": spec.layers,
        "num_attention_heads": spec.heads,
        "num_key_value_heads": spec.kv_heads,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "bos_token_id": TINY_BOS,
        "eos_token_id": TINY_EOS,
        "max_position_embeddings": spec.context_length,
        "tie_word_embeddings": false,
        "torch_dtype": "float32",
    });
    std::fs::write(dir.join("config.json"), serde_json::to_vec_pretty(&config)?)?;
    tokenizer.save(dir.join("tokenizer.json"), false)?;
    let mut tok_config = serde_json::json!({
        "bos_token": "<|endoftext|>",
        "eos_token": "<|im_end|>",
        "add_bos_token": false,
    });
    if let Some(t) = &spec.chat_template {
        tok_config["chat_template"] = serde_json::Value::String(t.clone());
    }
    std::fs::write(
        dir.join("tokenizer_config.json"),
        serde_json::to_vec_pretty(&tok_config)?,
    )?;
    let mut tensors = HashMap::new();
    for (name, shape, data) in hf_weights(spec, vocab) {
        tensors.insert(name, tensor(shape, data)?);
    }
    candle_core::safetensors::save(&tensors, dir.join("model.safetensors"))?;
    Ok(())
}

/// Candle's llama on a GGUF file, for tests that compare our runtime with it: with
/// `dequantize` the weights are dequantized to f32 at load (the exact reference for quantized
/// weights), else candle runs its own quantized kernels.
pub struct CandleReference {
    model: crate::candle::Model,
    session: crate::candle::Session,
}

impl CandleReference {
    /// Loads `path` on the CPU.
    pub fn load(path: &Path, dequantize: bool) -> Result<Self, BoxError> {
        let limit = if dequantize { u64::MAX } else { 0 };
        let loaded = crate::model::gguf::load_with(path, &Device::Cpu, limit, false)?;
        match loaded.runner {
            crate::model::Runner::Candle(model) => Ok(CandleReference {
                session: model.session(),
                model,
            }),
            crate::model::Runner::Batched(_) => Err("loaded for batching".into()),
        }
    }

    /// Forgets every position (a new sequence).
    pub fn reset(&mut self) {
        self.session = self.model.session();
    }

    /// Appends `ids` at positions `pos..` and returns the logits of the last one.
    pub fn forward(&mut self, ids: &[u32], pos: usize) -> Result<Vec<f32>, BoxError> {
        Ok(self.session.forward(ids, pos)?.to_vec1::<f32>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vocab_is_consistent() {
        let (tokens, merges, types) = tiny_vocab();
        assert_eq!(tokens.len(), types.len());
        assert_eq!(tokens.len(), 3 + 256 + merges.len());
        let t = tiny_tokenizer();
        assert_eq!(t.token_to_id("<|im_end|>"), Some(TINY_EOS));
        let ids = t.encode(" the world", false).unwrap();
        assert_eq!(ids.get_tokens(), ["Ġthe", "Ġwor", "l", "d"]);
    }

    #[test]
    fn gguf_names() {
        assert_eq!(
            gguf_name("model.layers.3.self_attn.o_proj.weight"),
            "blk.3.attn_output.weight"
        );
        assert_eq!(
            gguf_name("model.layers.0.post_attention_layernorm.weight"),
            "blk.0.ffn_norm.weight"
        );
    }
}
