//! Loading a llama-family model from a GGUF file: quantized weights through candle's
//! `quantized_llama`, the tokenizer rebuilt from `tokenizer.ggml.*` metadata, and the chat
//! template from `tokenizer.chat_template`.

use std::collections::HashMap;
use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use candle_core::quantized::{gguf_file, GgmlDType};
use candle_core::Device;
use candle_transformers::models::quantized_llama::{self, ModelWeights};

use super::{Loaded, Model, ModelInfo};
use crate::device::device_name;
use crate::error::LoadError;
use crate::template::ChatTemplate;
use crate::tokenizer::{md_string, md_u32, TextTokenizer};

/// The GGUF architectures this loader runs.
pub const SUPPORTED_ARCHITECTURES: [&str; 1] = ["llama"];

/// Context length assumed when `llama.context_length` is absent.
pub const DEFAULT_CONTEXT_LENGTH: usize = 2048;

/// Loads a GGUF file onto `device`.
pub(crate) fn load(path: &Path, device: &Device) -> Result<Loaded, LoadError> {
    let io = |source| LoadError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut reader = BufReader::new(File::open(path).map_err(io)?);
    let content = gguf_file::Content::read(&mut reader)?;
    let md = &content.metadata;

    let architecture = md_string(md, "general.architecture")?;
    if !SUPPORTED_ARCHITECTURES.contains(&architecture.as_str()) {
        return Err(LoadError::UnsupportedArchitecture(architecture));
    }
    let name = md
        .get("general.name")
        .and_then(|v| v.to_string().ok())
        .filter(|s| !s.is_empty())
        .cloned()
        .unwrap_or_else(|| file_stem(path));
    let trained_context_length = md_u32(md, &format!("{architecture}.context_length"))
        .map(|c| c as usize)
        .unwrap_or(DEFAULT_CONTEXT_LENGTH);
    let context_length = trained_context_length.min(quantized_llama::MAX_SEQ_LEN);

    let tokenizer = TextTokenizer::from_gguf_metadata(md)?;
    let template_source = md
        .get("tokenizer.chat_template")
        .and_then(|v| v.to_string().ok())
        .cloned();
    let template = ChatTemplate::from_source(
        template_source.as_deref(),
        tokenizer.bos_token().unwrap_or_default(),
        tokenizer.eos_token().unwrap_or_default(),
    )?;
    let quantization = dominant_dtype(&content.tensor_infos);
    let parameters = content
        .tensor_infos
        .values()
        .map(|t| t.shape.elem_count() as u64)
        .sum();

    let weights = ModelWeights::from_gguf(content, &mut reader, device)?;
    let info = ModelInfo {
        name,
        architecture,
        context_length,
        trained_context_length,
        quantization,
        device: device_name(device),
        parameters,
        vocab_size: tokenizer.vocab_size(),
        format: "gguf".to_string(),
    };
    Ok(Loaded {
        model: Model::gguf(weights, device),
        tokenizer,
        template,
        info,
    })
}

fn file_stem(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".to_string())
}

/// The GGML type holding the most weights, in llama.cpp's spelling (`Q4_1`, `Q4_K`, `F32`).
fn dominant_dtype(infos: &HashMap<String, gguf_file::TensorInfo>) -> String {
    let mut by_type: HashMap<GgmlDType, u64> = HashMap::new();
    for t in infos.values() {
        *by_type.entry(t.ggml_dtype).or_default() += t.shape.elem_count() as u64;
    }
    by_type
        .into_iter()
        .max_by_key(|&(ty, n)| (n, ggml_name(ty)))
        .map(|(ty, _)| ggml_name(ty).to_string())
        .unwrap_or_else(|| "unknown".to_string())
}

fn ggml_name(ty: GgmlDType) -> &'static str {
    match ty {
        GgmlDType::F32 => "F32",
        GgmlDType::F16 => "F16",
        GgmlDType::BF16 => "BF16",
        GgmlDType::Q4_0 => "Q4_0",
        GgmlDType::Q4_1 => "Q4_1",
        GgmlDType::Q5_0 => "Q5_0",
        GgmlDType::Q5_1 => "Q5_1",
        GgmlDType::Q8_0 => "Q8_0",
        GgmlDType::Q8_1 => "Q8_1",
        GgmlDType::Q2K => "Q2_K",
        GgmlDType::Q3K => "Q3_K",
        GgmlDType::Q4K => "Q4_K",
        GgmlDType::Q5K => "Q5_K",
        GgmlDType::Q6K => "Q6_K",
        GgmlDType::Q8K => "Q8_K",
    }
}
