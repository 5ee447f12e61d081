//! Loading a llama-family model from a GGUF file: the tokenizer rebuilt from
//! `tokenizer.ggml.*` metadata, the chat template from `tokenizer.chat_template`, and the
//! weights onto one of the two runtimes: our [`Llama`] (batched runtime) when asked and our
//! kernels take every matrix, else candle's `quantized_llama` (candle runtime).
//!
//! Small models are dequantized to f32 at load time (see [`DEQUANTIZE_MAX_F32_BYTES`]).
//! candle's quantized matmuls quantize the *activations* to 8 bits too, which is enough to
//! flip close greedy choices: SmolLM2-135M-Instruct Q4_1 answers "L'Étoile, …" instead of
//! "The capital of France is Paris." (top-two logits 0.08 apart). Its CPU kernels for
//! Q4_1/Q5_x are also scalar, so for small models f32 is both exact and faster. The
//! dequantization streams one tensor at a time through a virtual GGUF reader, so peak memory
//! stays near the f32 model's size.
//!
//! Nothing is sized from the file before it is checked: the header by the bounded
//! pre-parser of [`super::gguf_header`] (counts, lengths, tensor extents inside the file),
//! then the llama shape by [`LlamaConfig::from_gguf`] (hyper-parameters within
//! [`LlamaLimits`], every tensor present with the shape they imply), then the tokenizer's
//! vocabulary against the embeddings. A bad file is a typed [`LoadError`], never a panic.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::Device;
use candle_transformers::models::quantized_llama::{self, ModelWeights};

use std::sync::Arc;

use super::gguf_header::{read_content, HeaderLimits};
use super::{Loaded, ModelInfo, Runner};
use crate::batched::llama::{Llama, LlamaConfig, LlamaError, LlamaLimits};
use crate::candle::Model;
use crate::device::device_name;
use crate::error::LoadError;
use crate::template::ChatTemplate;
use crate::tokenizer::{md_string, TextTokenizer};

/// The GGUF architectures this loader runs.
pub const SUPPORTED_ARCHITECTURES: [&str; 1] = ["llama"];

pub use crate::batched::llama::DEFAULT_CONTEXT_LENGTH;

/// Quantized GGUF models whose weights take at most this many bytes as f32 (2 GiB, about
/// 500M parameters) are dequantized and run in f32 on every device; larger ones run on
/// candle's quantized kernels.
pub const DEQUANTIZE_MAX_F32_BYTES: u64 = 2 << 30;

/// Loads a GGUF file onto `device`: with `batched` on the CPU, onto our kernels when they
/// take its matrices; else on candle, dequantized if its f32 size is at most
/// `dequantize_max_f32_bytes`.
pub(crate) fn load_with(
    path: &Path,
    device: &Device,
    dequantize_max_f32_bytes: u64,
    batched: bool,
) -> Result<Loaded, LoadError> {
    let io = |source| LoadError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut reader = BufReader::new(File::open(path).map_err(io)?);
    // Every count, length and offset checked before candle sizes anything from them.
    let (_, content) = read_content(&mut reader, &HeaderLimits::default())?;
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
    // The shape, checked against the limits and the tensors, before either runtime (or the
    // engine's caches) is sized from it.
    let limits = LlamaLimits::default();
    let shape = LlamaConfig::from_gguf(&content, &limits)?;
    let trained_context_length = shape.context;
    let context_length = trained_context_length.min(quantized_llama::MAX_SEQ_LEN);
    let shape = LlamaConfig {
        context: context_length,
        ..shape
    };

    let tokenizer = TextTokenizer::from_gguf_metadata(md)?;
    if tokenizer.vocab_size() > shape.vocab {
        return Err(LoadError::Metadata {
            key: "tokenizer.ggml.tokens".to_string(),
            problem: format!(
                "{} tokens, but token_embd.weight has only {} rows",
                tokenizer.vocab_size(),
                shape.vocab
            ),
        });
    }
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

    let mut info = ModelInfo {
        name,
        architecture,
        context_length,
        trained_context_length,
        runtime_weights: quantization.clone(),
        quantization,
        device: device_name(device),
        parameters,
        vocab_size: tokenizer.vocab_size(),
        format: "gguf".to_string(),
        runtime: "batched".to_string(),
    };
    if batched && device.is_cpu() {
        match Llama::from_gguf_with(&content, &mut reader, &limits, context_length) {
            Ok(llama) => {
                return Ok(Loaded {
                    runner: Runner::Batched(Arc::new(llama)),
                    tokenizer,
                    template,
                    info,
                    shape: Some(shape),
                })
            }
            Err(LlamaError::Kernel { name, source }) => {
                tracing::info!(tensor = %name, reason = %source, "not for our kernels; running on candle");
            }
            Err(e) => return Err(e.into()),
        }
    }
    let f32_bytes = 4 * parameters;
    let quantized = content
        .tensor_infos
        .values()
        .any(|t| is_quantized(t.ggml_dtype));
    let dequantize = quantized && f32_bytes <= dequantize_max_f32_bytes;
    let weights = if dequantize {
        let (virtual_content, mut virtual_reader) = Dequantizing::new(&content, reader);
        ModelWeights::from_gguf(virtual_content, &mut virtual_reader, device)?
    } else {
        ModelWeights::from_gguf(content, &mut reader, device)?
    };
    if dequantize {
        info.runtime_weights = "F32".to_string();
    }
    info.runtime = "candle".to_string();
    Ok(Loaded {
        runner: Runner::Candle(Model::gguf(weights, device)),
        tokenizer,
        template,
        info,
        shape: Some(shape),
    })
}

/// How a llama that cannot be loaded reads as a load error.
impl From<LlamaError> for LoadError {
    fn from(e: LlamaError) -> Self {
        use LlamaError as E;
        match e {
            E::Metadata { key, problem } => LoadError::Metadata { key, problem },
            E::MissingTensor(name) => LoadError::MissingTensor(name),
            E::Tensor { name, problem } => LoadError::Tensor { name, problem },
            E::Kernel { name, source } => LoadError::Tensor {
                name,
                problem: source.to_string(),
            },
            E::Candle(e) => LoadError::Candle(e),
            e @ (E::ContextFull { .. } | E::Token(_)) => LoadError::Metadata {
                key: "llama.*".to_string(),
                problem: e.to_string(),
            },
        }
    }
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

fn is_quantized(ty: GgmlDType) -> bool {
    !matches!(ty, GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16)
}

/// One tensor's bytes in the virtual file of [`Dequantizing`].
struct Extent {
    start: u64,
    len: u64,
    name: String,
    dequantize: bool,
}

/// A `Read + Seek` view of a GGUF file's tensor data in which every quantized tensor appears
/// as F32. Tensors are materialised one at a time, when first read.
struct Dequantizing<'a, R> {
    source: &'a gguf_file::Content,
    reader: R,
    extents: Vec<Extent>,
    size: u64,
    pos: u64,
    /// Index into `extents` and bytes of the tensor materialised last.
    current: Option<(usize, Vec<u8>)>,
}

impl<'a, R: Read + Seek> Dequantizing<'a, R> {
    /// The content to hand to the loader (same metadata; quantized tensors as F32, data
    /// offsets in the virtual file) and the virtual reader.
    fn new(source: &'a gguf_file::Content, reader: R) -> (gguf_file::Content, Self) {
        let mut names: Vec<&String> = source.tensor_infos.keys().collect();
        names.sort_by_key(|n| source.tensor_infos[*n].offset);
        let mut extents = Vec::with_capacity(names.len());
        let mut infos = HashMap::with_capacity(names.len());
        let mut cursor = 0u64;
        for name in names {
            let info = &source.tensor_infos[name];
            let dequantize = is_quantized(info.ggml_dtype);
            let elems = info.shape.elem_count() as u64;
            let (ggml_dtype, len) = if dequantize {
                (GgmlDType::F32, elems * 4)
            } else {
                let ty = info.ggml_dtype;
                (ty, elems / ty.block_size() as u64 * ty.type_size() as u64)
            };
            infos.insert(
                name.clone(),
                gguf_file::TensorInfo {
                    ggml_dtype,
                    shape: info.shape.clone(),
                    offset: cursor,
                },
            );
            extents.push(Extent {
                start: cursor,
                len,
                name: name.clone(),
                dequantize,
            });
            cursor += len;
        }
        let content = gguf_file::Content {
            magic: source.magic,
            metadata: source.metadata.clone(),
            tensor_infos: infos,
            tensor_data_offset: 0,
        };
        let view = Dequantizing {
            source,
            reader,
            extents,
            size: cursor,
            pos: 0,
            current: None,
        };
        (content, view)
    }

    fn materialise(&mut self, index: usize) -> std::io::Result<()> {
        if matches!(&self.current, Some((i, _)) if *i == index) {
            return Ok(());
        }
        self.current = None; // free the previous tensor first
        let extent = &self.extents[index];
        let bytes = if extent.dequantize {
            // Re-"quantizing" to F32 gives the raw little-endian f32 bytes, computed in candle.
            self.source
                .tensor(&mut self.reader, &extent.name, &Device::Cpu)
                .and_then(|q| q.dequantize(&Device::Cpu))
                .and_then(|t| QTensor::quantize(&t, GgmlDType::F32))
                .and_then(|q| q.data().map(|d| d.into_owned()))
                .map_err(std::io::Error::other)?
        } else {
            let info = &self.source.tensor_infos[&extent.name];
            let mut bytes = vec![0u8; extent.len as usize];
            self.reader.seek(SeekFrom::Start(
                self.source.tensor_data_offset + info.offset,
            ))?;
            self.reader.read_exact(&mut bytes)?;
            bytes
        };
        self.current = Some((index, bytes));
        Ok(())
    }
}

impl<R: Read + Seek> Read for Dequantizing<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let index = self
            .extents
            .partition_point(|e| e.start + e.len <= self.pos);
        if index >= self.extents.len() || buf.is_empty() {
            return Ok(0);
        }
        self.materialise(index)?;
        let (_, bytes) = self.current.as_ref().expect("just materialised");
        let from = (self.pos - self.extents[index].start) as usize;
        let n = buf.len().min(bytes.len() - from);
        buf[..n].copy_from_slice(&bytes[from..from + n]);
        self.pos += n as u64;
        Ok(n)
    }
}

impl<R: Read + Seek> Seek for Dequantizing<'_, R> {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        let target = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.size.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = target.ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "seek before start")
        })?;
        Ok(self.pos)
    }
}
