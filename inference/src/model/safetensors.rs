//! Loading a llama-family model from a Hugging Face directory: `config.json` (a
//! `LlamaConfig`), `tokenizer.json`, optional `tokenizer_config.json` (chat template, BOS/EOS,
//! `add_bos_token`) and one or more `*.safetensors` files, run by candle's `llama` on the
//! candle runtime ([`crate::candle`]).
//!
//! Weights run in f32 on the CPU; on CUDA in the checkpoint's `torch_dtype` when that is
//! bf16 or f16.

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::llama::{self, LlamaConfig, LlamaEosToks};

use super::{Loaded, ModelInfo};
use crate::candle::Model;
use crate::device::device_name;
use crate::error::LoadError;
use crate::template::ChatTemplate;
use crate::tokenizer::TextTokenizer;

/// `model_type` values of `config.json` this loader runs.
pub const SUPPORTED_MODEL_TYPES: [&str; 1] = ["llama"];

/// Loads a safetensors model directory onto `device`.
pub(crate) fn load(dir: &Path, device: &Device) -> Result<Loaded, LoadError> {
    let config_path = dir.join("config.json");
    let config_json =
        read_json(&config_path)?.ok_or(LoadError::MissingFile(config_path.clone()))?;
    let architecture = config_json
        .get("model_type")
        .and_then(serde_json::Value::as_str)
        .unwrap_or("llama")
        .to_string();
    if !SUPPORTED_MODEL_TYPES.contains(&architecture.as_str()) {
        return Err(LoadError::UnsupportedArchitecture(architecture));
    }
    let config: LlamaConfig =
        serde_json::from_value(config_json.clone()).map_err(|source| LoadError::Json {
            path: config_path.clone(),
            source,
        })?;

    let tokenizer_path = dir.join("tokenizer.json");
    if !tokenizer_path.is_file() {
        return Err(LoadError::MissingFile(tokenizer_path));
    }
    let tokenizer_bytes = std::fs::read(&tokenizer_path).map_err(|source| LoadError::Io {
        path: tokenizer_path.clone(),
        source,
    })?;
    let tokenizer_config = read_json(&dir.join("tokenizer_config.json"))?;
    let config_eos = match &config.eos_token_id {
        Some(LlamaEosToks::Single(id)) => vec![*id],
        Some(LlamaEosToks::Multiple(ids)) => ids.clone(),
        None => Vec::new(),
    };
    let tokenizer = TextTokenizer::from_hf(
        &tokenizer_bytes,
        tokenizer_config.as_ref(),
        config.bos_token_id,
        &config_eos,
    )?;
    let template_source = tokenizer_config
        .as_ref()
        .and_then(|c| c.get("chat_template"))
        .and_then(chat_template_source);
    let template = ChatTemplate::from_source(
        template_source.as_deref(),
        tokenizer.bos_token().unwrap_or_default(),
        tokenizer.eos_token().unwrap_or_default(),
    )?;

    let tensors = read_tensors(dir)?;
    let tied =
        config.tie_word_embeddings.unwrap_or(false) || !tensors.contains_key("lm_head.weight");
    for name in required_tensors(&config, tied) {
        if !tensors.contains_key(&name) {
            return Err(LoadError::MissingTensor(name));
        }
    }
    let parameters = tensors.values().map(|t| t.elem_count() as u64).sum();
    let dtype = run_dtype(&config_json, device);
    let mut config = config.into_config(false);
    config.tie_word_embeddings = tied;

    let vb = VarBuilder::from_tensors(tensors, dtype, device);
    // candle's `Llama::load` unwraps per-block errors (e.g. a mis-shaped tensor): turn such a
    // panic into an error instead of taking the caller down.
    let model =
        catch_unwind(AssertUnwindSafe(|| llama::Llama::load(vb, &config))).map_err(|_| {
            LoadError::Candle(candle_core::Error::Msg("malformed llama weights".into()))
        })??;
    let cache = llama::Cache::new(true, dtype, &config, device)?;

    let info = ModelInfo {
        name: dir
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "model".to_string()),
        architecture,
        context_length: config.max_position_embeddings,
        trained_context_length: config.max_position_embeddings,
        quantization: dtype_name(dtype).to_string(),
        runtime_weights: dtype_name(dtype).to_string(),
        device: device_name(device),
        parameters,
        vocab_size: tokenizer.vocab_size(),
        format: "safetensors".to_string(),
        runtime: "candle".to_string(),
    };
    Ok(Loaded {
        runner: super::Runner::Candle(Model::llama(model, cache, device)),
        tokenizer,
        template,
        info,
        shape: None,
    })
}

/// Reads a JSON file; `Ok(None)` if it does not exist.
fn read_json(path: &Path) -> Result<Option<serde_json::Value>, LoadError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(LoadError::Io {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|source| LoadError::Json {
            path: path.to_path_buf(),
            source,
        })
}

/// `chat_template` is either a string or a list of `{name, template}`; take `default`.
fn chat_template_source(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Array(list) => list
            .iter()
            .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
            .or_else(|| list.first())
            .and_then(|t| t.get("template"))
            .and_then(|t| t.as_str())
            .map(str::to_string),
        _ => None,
    }
}

/// All tensors of all `*.safetensors` files in `dir`, on the CPU.
fn read_tensors(dir: &Path) -> Result<HashMap<String, Tensor>, LoadError> {
    let entries = std::fs::read_dir(dir).map_err(|source| LoadError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    if files.is_empty() {
        return Err(LoadError::MissingFile(dir.join("model.safetensors")));
    }
    files.sort();
    let mut tensors = HashMap::new();
    for f in files {
        tensors.extend(candle_core::safetensors::load(&f, &Device::Cpu)?);
    }
    Ok(tensors)
}

fn required_tensors(config: &LlamaConfig, tied: bool) -> Vec<String> {
    let mut names = vec![
        "model.embed_tokens.weight".to_string(),
        "model.norm.weight".to_string(),
    ];
    if !tied {
        names.push("lm_head.weight".to_string());
    }
    for i in 0..config.num_hidden_layers {
        for part in [
            "self_attn.q_proj",
            "self_attn.k_proj",
            "self_attn.v_proj",
            "self_attn.o_proj",
            "mlp.gate_proj",
            "mlp.up_proj",
            "mlp.down_proj",
            "input_layernorm",
            "post_attention_layernorm",
        ] {
            names.push(format!("model.layers.{i}.{part}.weight"));
        }
    }
    names
}

fn run_dtype(config: &serde_json::Value, device: &Device) -> DType {
    if device.is_cpu() {
        return DType::F32;
    }
    match config.get("torch_dtype").and_then(|d| d.as_str()) {
        Some("bfloat16") => DType::BF16,
        Some("float16") => DType::F16,
        _ => DType::F32,
    }
}

fn dtype_name(dtype: DType) -> &'static str {
    match dtype {
        DType::BF16 => "bf16",
        DType::F16 => "f16",
        _ => "f32",
    }
}
