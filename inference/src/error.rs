//! Typed errors, one enum per operation: [`LoadError`] for turning files into an
//! [`Engine`](crate::Engine), [`GenerateError`] for starting a generation.
//!
//! Errors that happen *during* a generation (after [`Engine::generate`](crate::Engine::generate)
//! returned) travel in the stream as [`GenerationEvent::Error`](crate::GenerationEvent::Error).

use std::path::PathBuf;

/// Why a model could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// A file or directory could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The path that failed.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The path is neither a `.gguf` file nor a directory holding a safetensors model.
    #[error("{0} is not a model: expected a .gguf file or a directory with config.json")]
    UnrecognisedSource(PathBuf),
    /// A required file of a safetensors model directory is missing.
    #[error("model directory lacks {0}")]
    MissingFile(PathBuf),
    /// A required GGUF metadata key is absent or has the wrong type.
    #[error("GGUF metadata key {key}: {problem}")]
    Metadata {
        /// The metadata key.
        key: String,
        /// What is wrong with it.
        problem: String,
    },
    /// The model's architecture is not one this engine runs (only llama-family models are).
    #[error("unsupported model architecture {0:?}: only llama-family models are supported")]
    UnsupportedArchitecture(String),
    /// The GGUF file's tokenizer model is not one we can rebuild from metadata.
    #[error("unsupported GGUF tokenizer model {0:?}: only \"gpt2\" (byte-level BPE) is supported")]
    UnsupportedTokenizer(String),
    /// The tokenizer could not be built or read.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// The chat template does not parse.
    #[error("chat template: {0}")]
    Template(String),
    /// A JSON configuration file (config.json, tokenizer_config.json) is invalid.
    #[error("{path}: {source}")]
    Json {
        /// The file.
        path: PathBuf,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
    /// A required tensor is missing from the weights.
    #[error("weights lack tensor {0}")]
    MissingTensor(String),
    /// A tensor's shape disagrees with the model's metadata or is out of bounds.
    #[error("tensor {name}: {problem}")]
    Tensor {
        /// The tensor.
        name: String,
        /// What is wrong with it.
        problem: String,
    },
    /// The GGUF file's header is malformed, or declares more than
    /// [`HeaderLimits`](crate::model::gguf_header::HeaderLimits) allow.
    #[error("GGUF header: {0}")]
    Header(#[from] crate::model::gguf_header::HeaderError),
    /// Running the model at [`EngineConfig::max_concurrent`](crate::EngineConfig::max_concurrent)
    /// generations of full context would take more memory than
    /// [`EngineConfig::max_state_bytes`](crate::EngineConfig::max_state_bytes) allows: lower
    /// `max_concurrent` or raise the limit.
    #[error(
        "the generations' state would need {} bytes, over the limit of {limit} \
         (EngineConfig::max_state_bytes)",
        needed.map_or_else(|| "more than 2^64".to_string(), |n| n.to_string())
    )]
    StateTooLarge {
        /// Bytes needed (`None`: more than a `u64` holds).
        needed: Option<u64>,
        /// The configured limit.
        limit: u64,
    },
    /// The [`EngineConfig`](crate::EngineConfig) breaks an invariant.
    #[error("invalid engine config: {0}")]
    Config(String),
    /// CUDA was asked for but this build has no `cuda` feature.
    #[error("CUDA requested but cocoon-inference was built without the `cuda` feature")]
    CudaNotCompiled,
    /// The device could not be opened.
    #[error("device: {0}")]
    Device(String),
    /// candle failed while reading or building the model.
    #[error("model: {0}")]
    Candle(#[from] candle_core::Error),
}

/// Why [`Engine::generate`](crate::Engine::generate) refused to start a generation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GenerateError {
    /// Already `limit` generations are running; try again later or elsewhere.
    #[error("busy: {limit} generations already running")]
    Busy {
        /// The configured concurrency limit ([`EngineConfig::max_concurrent`](crate::EngineConfig::max_concurrent)).
        limit: usize,
    },
    /// The request is malformed (e.g. a negative temperature); the caller must fix it.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The prompt leaves no room to generate within the model's context.
    #[error("prompt has {prompt_tokens} tokens; the context holds {context_length}")]
    PromptTooLong {
        /// Tokens in the prompt after templating.
        prompt_tokens: usize,
        /// The model's usable context length.
        context_length: usize,
    },
    /// The chat template failed to render these messages.
    #[error("chat template: {0}")]
    Template(String),
    /// The prompt could not be tokenised.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// The generation failed after it started (only from
    /// [`Engine::generate_text`](crate::Engine::generate_text), which waits for the end).
    #[error("generation failed: {0}")]
    Failed(String),
    /// The generation thread could not be started.
    #[error("cannot start generation thread: {0}")]
    Spawn(#[source] std::io::Error),
}
