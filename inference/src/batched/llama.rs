//! Our llama forward pass on the quantized kernels ([`super::kernels`]), built for batching:
//! one [`Llama::step`] runs any number of sequences together, each adding one token (decode)
//! or a chunk of its prompt (prefill) to its own [`KvCache`]. The batch scheduler
//! ([`super::scheduler`]) drives it.
//!
//! It also holds the llama shape a GGUF file declares ([`LlamaConfig`], checked against
//! [`LlamaLimits`] by [`LlamaConfig::from_gguf`]): the GGUF loader checks every file with it
//! whichever runtime will run it, and the engine sizes both runtimes' memory from it.
//!
//! Every token of a step is a row; the weight products see all rows at once (each weight
//! block unpacked once per tile of rows), while normalisation, rotary embeddings and
//! attention run per row against that row's own cache. A row's arithmetic does not depend on
//! the other rows of its step, so a sequence's logits are bit-for-bit the same whether it
//! runs alone, batched with others, or with its prompt cut into different chunks.
//!
//! Each product's input is quantized to 16-bit integer blocks first
//! ([`kernels::quantize_into`]), fine enough that our logits match candle's f32 path on the
//! dequantized weights to 1e-4 (tiny models of both block types) and greedy text on the real
//! model follows it. Everything else runs in f32.
//!
//! The model is the llama of GGUF files as candle's `quantized_llama` runs it: RMSNorm, rotary
//! embeddings on interleaved pairs (GGML's convention), grouped-query attention, a SiLU-gated
//! MLP, the output head tied to the embeddings when the file has none. Matrices must be
//! `Q4_1` or `Q8_0`; other files keep running on candle.

use candle_core::quantized::gguf_file;
use candle_core::Device;

use super::kernels::{self, KernelError, QBlock, QMatrix, BLOCK};
use super::team::{Member, Team};

/// Greedy decoding's pick, kept here for the callers that step a [`Llama`] by hand.
pub use crate::sampling::argmax;

/// Rows handed to one kernel call: a weight row is read from memory once per this many.
const GROUP: usize = 64;

/// Context length assumed when `llama.context_length` is absent: 2048.
pub const DEFAULT_CONTEXT_LENGTH: usize = 2048;

/// Why a model cannot run here, or a step failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LlamaError {
    /// A weight is not one the kernels take.
    #[error("{name}: {source}")]
    Kernel {
        /// The tensor.
        name: String,
        /// Why.
        source: KernelError,
    },
    /// Reading the file failed.
    #[error("reading the GGUF: {0}")]
    Candle(#[from] candle_core::Error),
    /// A metadata key is missing, of the wrong type, or out of bounds.
    #[error("GGUF metadata key {key}: {problem}")]
    Metadata {
        /// The key.
        key: String,
        /// What is wrong with it.
        problem: String,
    },
    /// A tensor the model needs is absent.
    #[error("the GGUF lacks tensor {0}")]
    MissingTensor(String),
    /// A tensor's shape disagrees with the metadata, or is out of bounds.
    #[error("tensor {name}: {problem}")]
    Tensor {
        /// The tensor.
        name: String,
        /// What is wrong with it.
        problem: String,
    },
    /// A sequence's cache has no room for the step's tokens.
    #[error("context full: {needed} positions needed, the cache holds {capacity}")]
    ContextFull {
        /// Positions the step needs.
        needed: usize,
        /// The cache's capacity.
        capacity: usize,
    },
    /// A token id outside the vocabulary.
    #[error("token {0} is outside the vocabulary")]
    Token(u32),
}

/// Bounds on the shape a model file may declare, checked by [`LlamaConfig::from_gguf`]
/// before anything is sized from it. The defaults hold every llama-family model we know of
/// (Llama 3.1 405B has 126 blocks, width 16 384, 128 heads, an MLP of 53 248, a 128k
/// context) with a wide margin.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LlamaLimits {
    /// Longest trained context (`llama.context_length`). Default 2²⁰ positions.
    pub max_context: usize,
    /// Most transformer blocks (`llama.block_count`). Default 1024.
    pub max_layers: usize,
    /// Widest residual stream (`llama.embedding_length`). Default 65 536.
    pub max_hidden: usize,
    /// Most attention heads (`llama.attention.head_count`). Default 1024.
    pub max_heads: usize,
    /// Widest MLP (`llama.feed_forward_length`). Default 2¹⁸.
    pub max_ffn: usize,
    /// Largest vocabulary (rows of `token_embd.weight`). Default 2²².
    pub max_vocab: usize,
    /// Most experts (`llama.expert_count`; mixture-of-experts models run on candle only).
    /// Default 256.
    pub max_experts: usize,
}

impl Default for LlamaLimits {
    fn default() -> Self {
        LlamaLimits {
            max_context: 1 << 20,
            max_layers: 1024,
            max_hidden: 1 << 16,
            max_heads: 1024,
            max_ffn: 1 << 18,
            max_vocab: 1 << 22,
            max_experts: 256,
        }
    }
}

/// The shape of a llama model.
#[derive(Clone, Debug, PartialEq)]
pub struct LlamaConfig {
    /// Transformer blocks.
    pub layers: usize,
    /// Attention heads.
    pub heads: usize,
    /// Key/value heads (grouped-query attention).
    pub kv_heads: usize,
    /// Width of a head.
    pub head_dim: usize,
    /// Width of the residual stream.
    pub hidden: usize,
    /// Width of the MLP.
    pub ffn: usize,
    /// Vocabulary size (rows of the output head).
    pub vocab: usize,
    /// RMSNorm epsilon.
    pub eps: f32,
    /// Rotary base frequency.
    pub rope_base: f32,
    /// Dimensions of a head that rotate (GGUF `rope.dimension_count`).
    pub rope_dim: usize,
    /// Longest context the rotary table covers.
    pub context: usize,
}

struct Layer {
    attn_norm: Vec<f32>,
    wq: QMatrix,
    wk: QMatrix,
    wv: QMatrix,
    wo: QMatrix,
    ffn_norm: Vec<f32>,
    gate: QMatrix,
    up: QMatrix,
    down: QMatrix,
}

/// A loaded model: immutable, shared by every sequence.
pub struct Llama {
    cfg: LlamaConfig,
    embed: QMatrix,
    layers: Vec<Layer>,
    norm: Vec<f32>,
    /// The output head, `None` when it is tied to the embeddings (read from `embed`, not
    /// copied).
    output: Option<QMatrix>,
    /// cos and sin of `pos × θ_i`, `context × rope_dim / 2` each.
    cos: Vec<f32>,
    sin: Vec<f32>,
}

/// One sequence's keys and values, preallocated for `capacity` positions.
pub struct KvCache {
    k: Vec<f32>,
    v: Vec<f32>,
    len: usize,
    capacity: usize,
    kv_dim: usize,
}

impl KvCache {
    /// Positions filled.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is cached yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Positions it can hold.
    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

fn bad_key(key: &str, problem: impl Into<String>) -> LlamaError {
    LlamaError::Metadata {
        key: key.to_string(),
        problem: problem.into(),
    }
}

/// An integer metadata value in `range`, `None` when absent.
fn md_usize(
    content: &gguf_file::Content,
    key: &str,
    range: std::ops::RangeInclusive<usize>,
) -> Result<Option<usize>, LlamaError> {
    let Some(value) = content.metadata.get(key) else {
        return Ok(None);
    };
    use gguf_file::Value as V;
    let n: i128 = match *value {
        V::U8(x) => x.into(),
        V::I8(x) => x.into(),
        V::U16(x) => x.into(),
        V::I16(x) => x.into(),
        V::U32(x) => x.into(),
        V::I32(x) => x.into(),
        V::U64(x) => x.into(),
        V::I64(x) => x.into(),
        _ => {
            let ty = value.value_type();
            return Err(bad_key(key, format!("a {ty:?}, not an integer")));
        }
    };
    match usize::try_from(n) {
        Ok(n) if range.contains(&n) => Ok(Some(n)),
        _ => Err(bad_key(
            key,
            format!("{n} is outside {}..={}", range.start(), range.end()),
        )),
    }
}

/// A required integer metadata value in `range`.
fn md_required(
    content: &gguf_file::Content,
    key: &str,
    range: std::ops::RangeInclusive<usize>,
) -> Result<usize, LlamaError> {
    md_usize(content, key, range)?.ok_or_else(|| bad_key(key, "missing"))
}

/// A finite f32 metadata value at least `min` (more than `min` when `strict`), `default`
/// when absent.
fn md_f32(
    content: &gguf_file::Content,
    key: &str,
    default: f32,
    min: f32,
    strict: bool,
) -> Result<f32, LlamaError> {
    let Some(value) = content.metadata.get(key) else {
        return Ok(default);
    };
    let v = value
        .to_f32()
        .map_err(|_| bad_key(key, format!("a {:?}, not an f32", value.value_type())))?;
    if !v.is_finite() || v < min || (strict && v == min) {
        let op = if strict { ">" } else { ">=" };
        return Err(bad_key(key, format!("{v}: must be finite and {op} {min}")));
    }
    Ok(v)
}

impl LlamaConfig {
    /// Reads and checks the llama shape in a GGUF's metadata: every size within `limits`,
    /// the head counts consistent, and every tensor the model needs present with the shape
    /// the metadata implies (read from the tensor infos; no tensor data is read). Nothing is
    /// sized from the file before this passes, and what it passes bounds what loading and
    /// running the model allocate (see [`LlamaConfig::kv_bytes_per_position`] and
    /// [`LlamaConfig::workspace_bytes`]).
    ///
    /// `context` is the trained context (`llama.context_length`, else
    /// [`DEFAULT_CONTEXT_LENGTH`]); `vocab` the
    /// rows of `token_embd.weight`. A mixture-of-experts file (`llama.expert_count` > 1)
    /// passes with its expert tensors checked, for candle to run.
    pub fn from_gguf(
        content: &gguf_file::Content,
        limits: &LlamaLimits,
    ) -> Result<Self, LlamaError> {
        let hidden = md_required(content, "llama.embedding_length", 1..=limits.max_hidden)?;
        let heads = md_required(content, "llama.attention.head_count", 1..=limits.max_heads)?;
        if !hidden.is_multiple_of(heads) {
            return Err(bad_key(
                "llama.attention.head_count",
                format!("{heads} heads do not divide llama.embedding_length {hidden}"),
            ));
        }
        let head_dim = hidden / heads;
        let kv_heads = md_required(content, "llama.attention.head_count_kv", 1..=heads)?;
        if !heads.is_multiple_of(kv_heads) {
            return Err(bad_key(
                "llama.attention.head_count_kv",
                format!("{kv_heads} does not divide llama.attention.head_count {heads}"),
            ));
        }
        let layers = md_required(content, "llama.block_count", 1..=limits.max_layers)?;
        let ffn = md_required(content, "llama.feed_forward_length", 1..=limits.max_ffn)?;
        let rope_dim =
            md_usize(content, "llama.rope.dimension_count", 1..=head_dim)?.unwrap_or(head_dim);
        if !rope_dim.is_multiple_of(2) {
            return Err(bad_key(
                "llama.rope.dimension_count",
                format!("{rope_dim} is odd"),
            ));
        }
        let context = md_usize(content, "llama.context_length", 1..=limits.max_context)?
            .unwrap_or(DEFAULT_CONTEXT_LENGTH);
        let eps = md_f32(
            content,
            "llama.attention.layer_norm_rms_epsilon",
            1e-5,
            0.0,
            false,
        )?;
        let rope_base = md_f32(content, "llama.rope.freq_base", 10_000.0, 0.0, true)?;
        let experts = md_usize(content, "llama.expert_count", 0..=limits.max_experts)?.unwrap_or(0);
        if experts > 1 {
            md_required(content, "llama.expert_used_count", 1..=experts)?;
        }

        let dims = |name: &str| -> Result<&[usize], LlamaError> {
            content
                .tensor_infos
                .get(name)
                .map(|t| t.shape.dims())
                .ok_or_else(|| LlamaError::MissingTensor(name.to_string()))
        };
        let expect = |name: &str, want: &[usize]| -> Result<(), LlamaError> {
            let found = dims(name)?;
            if found != want {
                return Err(LlamaError::Tensor {
                    name: name.to_string(),
                    problem: format!("has shape {found:?}; the metadata implies {want:?}"),
                });
            }
            Ok(())
        };
        let vocab = match dims("token_embd.weight")? {
            &[vocab, h] if h == hidden && (1..=limits.max_vocab).contains(&vocab) => vocab,
            found => {
                return Err(LlamaError::Tensor {
                    name: "token_embd.weight".to_string(),
                    problem: format!(
                        "has shape {found:?}; the metadata implies [1..={}, {hidden}]",
                        limits.max_vocab
                    ),
                })
            }
        };
        if content.tensor_infos.contains_key("output.weight") {
            expect("output.weight", &[vocab, hidden])?;
        }
        expect("output_norm.weight", &[hidden])?;
        let kv_dim = kv_heads * head_dim;
        for l in 0..layers {
            let p = format!("blk.{l}");
            expect(&format!("{p}.attn_norm.weight"), &[hidden])?;
            expect(&format!("{p}.attn_q.weight"), &[hidden, hidden])?;
            expect(&format!("{p}.attn_k.weight"), &[kv_dim, hidden])?;
            expect(&format!("{p}.attn_v.weight"), &[kv_dim, hidden])?;
            expect(&format!("{p}.attn_output.weight"), &[hidden, hidden])?;
            expect(&format!("{p}.ffn_norm.weight"), &[hidden])?;
            let mlps: Vec<String> = if experts > 1 {
                expect(&format!("{p}.ffn_gate_inp.weight"), &[experts, hidden])?;
                (0..experts).map(|e| format!(".{e}")).collect()
            } else {
                vec![String::new()]
            };
            for e in mlps {
                expect(&format!("{p}.ffn_gate{e}.weight"), &[ffn, hidden])?;
                expect(&format!("{p}.ffn_up{e}.weight"), &[ffn, hidden])?;
                expect(&format!("{p}.ffn_down{e}.weight"), &[hidden, ffn])?;
            }
        }
        Ok(LlamaConfig {
            layers,
            heads,
            kv_heads,
            head_dim,
            hidden,
            ffn,
            vocab,
            eps,
            rope_base,
            rope_dim,
            context,
        })
    }

    /// Bytes one sequence's [`KvCache`] takes per position (f32 keys and values of every
    /// block); `None` if that overflows.
    pub fn kv_bytes_per_position(&self) -> Option<u64> {
        (self.layers as u64)
            .checked_mul(self.kv_heads as u64)?
            .checked_mul(self.head_dim as u64)?
            .checked_mul(2 * 4)
    }

    /// Bytes of the model's rotary tables (cos and sin for every position of `context`).
    pub fn rope_bytes(&self) -> Option<u64> {
        (self.context as u64)
            .checked_mul((self.rope_dim / 2) as u64)?
            .checked_mul(2 * 4)
    }

    /// Bytes of the buffers a [`Workspace`] on `threads` threads holds for steps of at most
    /// `rows` tokens over `seqs` sequences; `None` if that overflows.
    pub fn workspace_bytes(&self, rows: usize, seqs: usize, threads: usize) -> Option<u64> {
        let (rows, seqs, threads) = (rows as u64, seqs as u64, threads as u64);
        let (hidden, ffn, vocab) = (self.hidden as u64, self.ffn as u64, self.vocab as u64);
        let q_dim = (self.heads as u64).checked_mul(self.head_dim as u64)?;
        let kv_dim = (self.kv_heads as u64).checked_mul(self.head_dim as u64)?;
        // Per row: x, qkv, attn, gu (see `buffer_sizes`).
        let row = hidden
            .checked_add(q_dim.checked_mul(2)?)?
            .checked_add(kv_dim.checked_mul(2)?)?
            .checked_add(ffn.checked_mul(2)?)?;
        let floats = rows
            .checked_mul(row)?
            .checked_add(threads.checked_mul(self.context as u64)?)?
            .checked_add(seqs.checked_mul(vocab)?)?;
        let blocks = rows
            .checked_mul(hidden.checked_add(q_dim)?.checked_add(ffn)?)?
            .checked_add(seqs.checked_mul(hidden)?)?
            / BLOCK as u64;
        floats
            .checked_mul(4)?
            .checked_add(blocks.checked_mul(std::mem::size_of::<QBlock>() as u64)?)
    }
}

impl Llama {
    /// Loads the llama in `content` (read from `reader`), its shape checked first by
    /// [`LlamaConfig::from_gguf`] with the default [`LlamaLimits`]. The rotary tables cover
    /// the whole trained context.
    pub fn from_gguf<R: std::io::Read + std::io::Seek>(
        content: &gguf_file::Content,
        reader: &mut R,
    ) -> Result<Self, LlamaError> {
        Self::from_gguf_with(content, reader, &LlamaLimits::default(), usize::MAX)
    }

    /// Loads the llama in `content` (read from `reader`), its shape checked first by
    /// [`LlamaConfig::from_gguf`] with `limits`; its rotary tables (and so its caches) cover
    /// at most `positions` positions, fewer if the trained context is shorter.
    pub fn from_gguf_with<R: std::io::Read + std::io::Seek>(
        content: &gguf_file::Content,
        reader: &mut R,
        limits: &LlamaLimits,
        positions: usize,
    ) -> Result<Self, LlamaError> {
        let mut cfg = LlamaConfig::from_gguf(content, limits)?;
        cfg.context = cfg.context.min(positions.max(1));
        let experts = md_usize(content, "llama.expert_count", 0..=limits.max_experts)?;
        if experts.is_some_and(|n| n > 1) {
            return Err(LlamaError::Kernel {
                name: "llama.expert_count".to_string(),
                source: KernelError::Unsupported("a mixture of experts".to_string()),
            });
        }
        let cpu = Device::Cpu;
        let mut matrix = |name: &str| -> Result<QMatrix, LlamaError> {
            let t = content.tensor(reader, name, &cpu)?;
            QMatrix::from_qtensor(&t).map_err(|source| LlamaError::Kernel {
                name: name.to_string(),
                source,
            })
        };
        // Norm weights are small f32 vectors; read through the same reader afterwards.
        let vector = |reader: &mut R, name: &str| -> Result<Vec<f32>, LlamaError> {
            Ok(content
                .tensor(reader, name, &cpu)?
                .dequantize(&cpu)?
                .flatten_all()?
                .to_vec1::<f32>()?)
        };
        let embed = matrix("token_embd.weight")?;
        let output = if content.tensor_infos.contains_key("output.weight") {
            Some(matrix("output.weight")?)
        } else {
            None
        };
        let mut layers = Vec::with_capacity(cfg.layers);
        for l in 0..cfg.layers {
            let p = format!("blk.{l}");
            layers.push(Layer {
                attn_norm: Vec::new(),
                wq: matrix(&format!("{p}.attn_q.weight"))?,
                wk: matrix(&format!("{p}.attn_k.weight"))?,
                wv: matrix(&format!("{p}.attn_v.weight"))?,
                wo: matrix(&format!("{p}.attn_output.weight"))?,
                ffn_norm: Vec::new(),
                gate: matrix(&format!("{p}.ffn_gate.weight"))?,
                up: matrix(&format!("{p}.ffn_up.weight"))?,
                down: matrix(&format!("{p}.ffn_down.weight"))?,
            });
        }
        for (l, layer) in layers.iter_mut().enumerate() {
            layer.attn_norm = vector(reader, &format!("blk.{l}.attn_norm.weight"))?;
            layer.ffn_norm = vector(reader, &format!("blk.{l}.ffn_norm.weight"))?;
        }
        let norm = vector(reader, "output_norm.weight")?;
        check_shapes(&cfg, &embed, output.as_ref().unwrap_or(&embed), &layers)?;
        if norm.len() != cfg.hidden {
            return Err(LlamaError::Tensor {
                name: "output_norm.weight".to_string(),
                problem: "does not match the shape".into(),
            });
        }
        let (cos, sin) = rope_tables(&cfg);
        Ok(Self {
            cfg,
            embed,
            layers,
            norm,
            output,
            cos,
            sin,
        })
    }

    /// The model's shape.
    pub fn config(&self) -> &LlamaConfig {
        &self.cfg
    }

    /// An empty cache for a sequence of at most `capacity` tokens (capped at the context).
    pub fn cache(&self, capacity: usize) -> KvCache {
        let capacity = capacity.min(self.cfg.context);
        let kv_dim = self.cfg.kv_heads * self.cfg.head_dim;
        let size = self.cfg.layers * capacity * kv_dim;
        KvCache {
            k: vec![0.0; size],
            v: vec![0.0; size],
            len: 0,
            capacity,
            kv_dim,
        }
    }

    /// Runs one step: sequence `i` appends `tokens[i]` (one token, or a chunk of its
    /// prompt) to `caches[i]`, on the threads of `ws`. Afterwards [`Workspace::logits`]`(i)`
    /// holds sequence `i`'s logits for its last token. On error no cache has changed length.
    ///
    /// Allocates nothing once `ws` has seen a step as large (it keeps its buffers).
    pub fn step(
        &self,
        ws: &mut Workspace,
        caches: &mut [&mut KvCache],
        tokens: &[&[u32]],
    ) -> Result<(), LlamaError> {
        assert_eq!(caches.len(), tokens.len(), "one token list per cache");
        let c = &self.cfg;
        ws.rows.clear();
        ws.seqs.clear();
        ws.last.clear();
        for (i, (cache, toks)) in caches.iter_mut().zip(tokens).enumerate() {
            let needed = cache.len + toks.len();
            if needed > cache.capacity {
                return Err(LlamaError::ContextFull {
                    needed,
                    capacity: cache.capacity,
                });
            }
            assert!(!toks.is_empty(), "every sequence needs a token");
            assert_eq!(
                cache.kv_dim,
                c.kv_heads * c.head_dim,
                "a cache of this model"
            );
            for (j, &t) in toks.iter().enumerate() {
                if t as usize >= self.embed.rows() {
                    return Err(LlamaError::Token(t));
                }
                ws.rows.push(Row {
                    seq: i,
                    pos: cache.len + j,
                    token: t,
                });
            }
            ws.last.push(ws.rows.len() - 1);
            ws.seqs.push(CachePtrs {
                k: cache.k.as_mut_ptr(),
                v: cache.v.as_mut_ptr(),
                capacity: cache.capacity,
            });
        }
        ws.reserve(c, ws.rows.len(), ws.last.len());
        let plan = Plan::new(c, &mut ws.bufs, &mut ws.qbufs);
        let ws_ref = &*ws;
        ws_ref.team.run(|m| self.forward(m, ws_ref, &plan));
        for (cache, toks) in caches.iter_mut().zip(tokens) {
            cache.len += toks.len();
        }
        ws.vocab = c.vocab;
        Ok(())
    }

    /// One member's part of a step (see [`Plan`] for the buffers).
    fn forward(&self, m: &Member<'_>, ws: &Workspace, p: &Plan) {
        let c = &self.cfg;
        let n = ws.rows.len();
        let (hd, q_dim, kv_dim) = (c.head_dim, c.heads * c.head_dim, c.kv_heads * c.head_dim);
        let qkv_w = q_dim + 2 * kv_dim;
        let ffn = c.ffn;
        // SAFETY (for every `Buf` access below): between two `sync`s each member writes only
        // the rows, blocks or heads (or the row ranges of a product) of its own share, and
        // reads only what was written before the last `sync`. Row-wise phases are split by
        // (row, block) or (row, head), so one row's work is shared by every member too.
        unsafe {
            for r in m.share(n) {
                self.embed
                    .dequantize_row_into(ws.rows[r].token as usize, p.x.row(r, c.hidden));
            }
            m.sync();
            for (l, layer) in self.layers.iter().enumerate() {
                // The attention norm (the residual already holds the previous block's MLP).
                norm_quantize(m, n, |r| r, p.x, c.hidden, &layer.attn_norm, c.eps, p.hq);
                m.sync();
                products(m, &[&layer.wq, &layer.wk, &layer.wv], n, p.hq, p.qkv, false);
                m.sync();
                // Rotary embeddings by (row, head); a key head also goes, with its value
                // head, into the sequence's cache.
                let heads = c.heads + c.kv_heads;
                for task in m.share(n * heads) {
                    let (r, h) = (task / heads, task % heads);
                    let row = &ws.rows[r];
                    let qkv = p.qkv.row(r, qkv_w);
                    if h < c.heads {
                        self.rope(&mut qkv[h * hd..(h + 1) * hd], row.pos);
                        continue;
                    }
                    let kvh = h - c.heads;
                    let k = q_dim + kvh * hd;
                    self.rope(&mut qkv[k..k + hd], row.pos);
                    let seq = &ws.seqs[row.seq];
                    let at = (l * seq.capacity + row.pos) * kv_dim + kvh * hd;
                    std::ptr::copy_nonoverlapping(qkv[k..].as_ptr(), seq.k.add(at), hd);
                    std::ptr::copy_nonoverlapping(qkv[k + kv_dim..].as_ptr(), seq.v.add(at), hd);
                }
                m.sync();
                // Attention, split by (row, head).
                let scores = p.scores.row(m.index(), c.context);
                for task in m.share(n * c.heads) {
                    let (r, head) = (task / c.heads, task % c.heads);
                    let row = &ws.rows[r];
                    let seq = &ws.seqs[row.seq];
                    let kvh = head / p.group;
                    let base = l * seq.capacity * kv_dim + kvh * hd;
                    let q = &p.qkv.row(r, qkv_w)[head * hd..(head + 1) * hd];
                    let out = &mut p.attn.row(r, q_dim)[head * hd..(head + 1) * hd];
                    attend(q, seq, base, kv_dim, row.pos + 1, p.scale, scores, out);
                }
                m.sync();
                let blocks = q_dim / BLOCK;
                for task in m.share(n * blocks) {
                    let (r, b) = (task / blocks, task % blocks);
                    kernels::quantize_into(
                        &p.attn.row(r, q_dim)[b * BLOCK..(b + 1) * BLOCK],
                        &mut p.attn_q.row(r, blocks)[b..b + 1],
                    );
                }
                m.sync();
                // The residual: x += Wo·attention.
                products(m, &[&layer.wo], n, p.attn_q, p.x, true);
                m.sync();
                norm_quantize(m, n, |r| r, p.x, c.hidden, &layer.ffn_norm, c.eps, p.hq);
                m.sync();
                products(m, &[&layer.gate, &layer.up], n, p.hq, p.gu, false);
                m.sync();
                let blocks = ffn / BLOCK;
                for task in m.share(n * blocks) {
                    let (r, b) = (task / blocks, task % blocks);
                    let gu = p.gu.row(r, 2 * ffn);
                    let (g, u) = (&gu[b * BLOCK..], &gu[ffn + b * BLOCK..]);
                    let mut a = [0f32; BLOCK];
                    for (j, a) in a.iter_mut().enumerate() {
                        *a = silu(g[j]) * u[j];
                    }
                    kernels::quantize_into(&a, &mut p.a_q.row(r, ffn / BLOCK)[b..b + 1]);
                }
                m.sync();
                // The residual: x += Wdown·a.
                products(m, &[&layer.down], n, p.a_q, p.x, true);
                m.sync();
            }
            // Each sequence's last row: the final norm, the head.
            let seqs = ws.last.len();
            norm_quantize(
                m,
                seqs,
                |s| ws.last[s],
                p.x,
                c.hidden,
                &self.norm,
                c.eps,
                p.lhq,
            );
            m.sync();
            let head = self.output.as_ref().unwrap_or(&self.embed);
            products(m, &[head], seqs, p.lhq, p.logits, false);
        }
    }

    /// Rotates the interleaved pairs `(2i, 2i+1)` of every head of `v` by `pos × θ_i`.
    fn rope(&self, v: &mut [f32], pos: usize) {
        let half = self.cfg.rope_dim / 2;
        let cos = &self.cos[pos * half..(pos + 1) * half];
        let sin = &self.sin[pos * half..(pos + 1) * half];
        for head in v.chunks_exact_mut(self.cfg.head_dim) {
            for i in 0..half {
                let (a, b) = (head[2 * i], head[2 * i + 1]);
                head[2 * i] = a * cos[i] - b * sin[i];
                head[2 * i + 1] = a * sin[i] + b * cos[i];
            }
        }
    }
}

/// Every matrix has the shape the metadata implies, and every vector a product meets is made
/// of whole blocks, so a step can never index out of its buffers.
fn check_shapes(
    c: &LlamaConfig,
    embed: &QMatrix,
    output: &QMatrix,
    layers: &[Layer],
) -> Result<(), LlamaError> {
    let (q_dim, kv_dim) = (c.heads * c.head_dim, c.kv_heads * c.head_dim);
    let bad = |what: &str| {
        Err(LlamaError::Tensor {
            name: what.to_string(),
            problem: "does not match the shape".to_string(),
        })
    };
    if c.heads == 0 || c.kv_heads == 0 || !c.heads.is_multiple_of(c.kv_heads) || q_dim != c.hidden {
        return Err(bad_key(
            "llama.attention.head_count",
            "inconsistent head counts",
        ));
    }
    if c.rope_dim > c.head_dim || !c.rope_dim.is_multiple_of(2) || c.context == 0 {
        return Err(bad_key(
            "llama.rope.dimension_count",
            "inconsistent with the heads",
        ));
    }
    if embed.cols() != c.hidden || output.cols() != c.hidden {
        return bad("token_embd.weight");
    }
    if embed.rows() != c.vocab || output.rows() != c.vocab {
        return bad("output.weight");
    }
    for (l, layer) in layers.iter().enumerate() {
        let shapes = [
            (&layer.wq, q_dim, c.hidden),
            (&layer.wk, kv_dim, c.hidden),
            (&layer.wv, kv_dim, c.hidden),
            (&layer.wo, c.hidden, q_dim),
            (&layer.gate, c.ffn, c.hidden),
            (&layer.up, c.ffn, c.hidden),
            (&layer.down, c.hidden, c.ffn),
        ];
        for (w, rows, cols) in shapes {
            if w.rows() != rows || w.cols() != cols {
                return bad(&format!("blk.{l}"));
            }
        }
        if layer.attn_norm.len() != c.hidden || layer.ffn_norm.len() != c.hidden {
            return bad(&format!("blk.{l} norms"));
        }
    }
    Ok(())
}

/// `cos` and `sin` of `pos × base^(-2i/rope_dim)` for every position of the context.
fn rope_tables(c: &LlamaConfig) -> (Vec<f32>, Vec<f32>) {
    let half = c.rope_dim / 2;
    let theta: Vec<f32> = (0..half)
        .map(|i| 1.0 / c.rope_base.powf((2 * i) as f32 / c.rope_dim as f32))
        .collect();
    let mut cos = Vec::with_capacity(c.context * half);
    let mut sin = Vec::with_capacity(c.context * half);
    for pos in 0..c.context {
        for &t in &theta {
            let angle = pos as f32 * t;
            cos.push(angle.cos());
            sin.push(angle.sin());
        }
    }
    (cos, sin)
}

/// One token of a step.
struct Row {
    seq: usize,
    pos: usize,
    token: u32,
}

/// Where a sequence's cache lives during a step.
struct CachePtrs {
    k: *mut f32,
    v: *mut f32,
    capacity: usize,
}

/// The threads and scratch memory of [`Llama::step`]: make one per scheduler and reuse it;
/// its buffers grow to the largest step seen and are kept.
pub struct Workspace {
    team: Team,
    rows: Vec<Row>,
    seqs: Vec<CachePtrs>,
    last: Vec<usize>,
    /// Flat buffers, see [`Plan`].
    bufs: Vec<Vec<f32>>,
    /// Quantized activations, see [`Plan`].
    qbufs: Vec<Vec<QBlock>>,
    /// Rows and sequences the buffers hold room for.
    room: (usize, usize),
    vocab: usize,
}

// SAFETY: the pointers are set and used only inside `Llama::step`, which holds the
// `&mut KvCache`s they point into; members write disjoint positions between syncs. Between
// steps they are stale and never read.
unsafe impl Send for CachePtrs {}
unsafe impl Sync for CachePtrs {}

impl std::fmt::Debug for Workspace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workspace")
            .field("threads", &self.team.threads())
            .field("room", &self.room)
            .finish()
    }
}

/// The buffers of [`Workspace::bufs`] and [`Workspace::qbufs`].
const BUFFERS: usize = 6;
const QBUFFERS: usize = 4;

impl Workspace {
    /// A workspace computing on `threads` threads (the caller and `threads − 1` more).
    ///
    /// # Errors
    /// If the threads cannot be spawned.
    pub fn new(threads: usize) -> std::io::Result<Self> {
        Ok(Self {
            team: Team::new(threads)?,
            rows: Vec::new(),
            seqs: Vec::new(),
            last: Vec::new(),
            bufs: vec![Vec::new(); BUFFERS],
            qbufs: vec![Vec::new(); QBUFFERS],
            room: (0, 0),
            vocab: 0,
        })
    }

    /// Threads a step runs on.
    pub fn threads(&self) -> usize {
        self.team.threads()
    }

    /// Sequence `i`'s logits after the last [`Llama::step`].
    pub fn logits(&self, i: usize) -> &[f32] {
        &self.bufs[BUFFERS - 1][i * self.vocab..(i + 1) * self.vocab]
    }

    /// Bytes of scratch memory held.
    pub fn bytes(&self) -> usize {
        let q = std::mem::size_of::<QBlock>();
        self.bufs.iter().map(|b| b.capacity() * 4).sum::<usize>()
            + self.qbufs.iter().map(|b| b.capacity() * q).sum::<usize>()
    }

    fn reserve(&mut self, c: &LlamaConfig, rows: usize, seqs: usize) {
        if rows <= self.room.0
            && seqs <= self.room.1
            && self.bufs[BUFFERS - 1].len() >= seqs * c.vocab
        {
            return;
        }
        let rows = rows.max(self.room.0);
        let seqs = seqs.max(self.room.1);
        self.room = (rows, seqs);
        let (sizes, qsizes) = buffer_sizes(c, rows, seqs, self.team.threads());
        for (b, size) in self.bufs.iter_mut().zip(sizes) {
            if b.len() < size {
                b.resize(size, 0.0);
            }
        }
        for (b, size) in self.qbufs.iter_mut().zip(qsizes) {
            if b.len() < size {
                b.resize(size, QBlock::default());
            }
        }
    }
}

/// Lengths of the workspace buffers (f32, then quantized blocks) for `rows` rows and `seqs`
/// sequences.
fn buffer_sizes(
    c: &LlamaConfig,
    rows: usize,
    seqs: usize,
    threads: usize,
) -> ([usize; BUFFERS], [usize; QBUFFERS]) {
    let (q_dim, kv_dim, ffn) = (c.heads * c.head_dim, c.kv_heads * c.head_dim, c.ffn);
    (
        [
            rows * c.hidden,             // x
            rows * (q_dim + 2 * kv_dim), // qkv
            rows * q_dim,                // attn
            rows * 2 * ffn,              // gu
            threads * c.context,         // scores
            seqs * c.vocab,              // logits
        ],
        [
            rows * c.hidden / BLOCK, // hq
            rows * q_dim / BLOCK,    // attn_q
            rows * ffn / BLOCK,      // a_q
            seqs * c.hidden / BLOCK, // lhq
        ],
    )
}

/// A flat buffer shared by the members of a step; each touches disjoint rows.
struct Buf<T>(*mut T, usize);

impl<T> Clone for Buf<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for Buf<T> {}

// SAFETY: members access disjoint ranges between syncs (see `Llama::forward`).
unsafe impl<T: Send> Send for Buf<T> {}
unsafe impl<T: Sync> Sync for Buf<T> {}

impl<T> Buf<T> {
    fn of(v: &mut [T]) -> Buf<T> {
        Buf(v.as_mut_ptr(), v.len())
    }

    /// Row `r` of width `w`.
    ///
    /// # Safety
    /// No other member may access the row until the next sync.
    #[allow(clippy::mut_from_ref)]
    unsafe fn row(&self, r: usize, w: usize) -> &mut [T] {
        assert!((r + 1) * w <= self.1, "row out of the buffer");
        std::slice::from_raw_parts_mut(self.0.add(r * w), w)
    }
}

/// The step's buffers as shared pointers, and its constants: the residual stream `x`, the
/// products' outputs `qkv` and `gu`, attention's output `attn`, and the quantized inputs of
/// the products (`hq`: the normalised residual, `attn_q`, `a_q`: the gated MLP activations,
/// `lhq`: each sequence's last normalised row, for the head).
struct Plan {
    x: Buf<f32>,
    hq: Buf<QBlock>,
    qkv: Buf<f32>,
    attn: Buf<f32>,
    attn_q: Buf<QBlock>,
    gu: Buf<f32>,
    a_q: Buf<QBlock>,
    scores: Buf<f32>,
    lhq: Buf<QBlock>,
    logits: Buf<f32>,
    group: usize,
    scale: f32,
}

impl Plan {
    fn new(c: &LlamaConfig, bufs: &mut [Vec<f32>], qbufs: &mut [Vec<QBlock>]) -> Plan {
        let [x, qkv, attn, gu, scores, logits] = bufs else {
            unreachable!("the workspace has {BUFFERS} buffers");
        };
        let [hq, attn_q, a_q, lhq] = qbufs else {
            unreachable!("the workspace has {QBUFFERS} quantized buffers");
        };
        Plan {
            x: Buf::of(x),
            hq: Buf::of(hq),
            qkv: Buf::of(qkv),
            attn: Buf::of(attn),
            attn_q: Buf::of(attn_q),
            gu: Buf::of(gu),
            a_q: Buf::of(a_q),
            scores: Buf::of(scores),
            lhq: Buf::of(lhq),
            logits: Buf::of(logits),
            group: c.heads / c.kv_heads.max(1),
            scale: 1.0 / (c.head_dim as f32).sqrt(),
        }
    }
}

/// This member's share of `[mats stacked by rows] · x` for the `n` quantized rows of `x`,
/// into `out` (width: the stacked rows), or added to it with `add`. The members split the
/// stacked rows, so fused projections (q/k/v, gate/up) cost one sync.
///
/// # Safety
/// Every member calls it with the same arguments between the same two syncs.
unsafe fn products(
    m: &Member<'_>,
    mats: &[&QMatrix],
    n: usize,
    x: Buf<QBlock>,
    out: Buf<f32>,
    add: bool,
) {
    let width: usize = mats.iter().map(|w| w.rows()).sum();
    let blocks = mats[0].cols() / BLOCK;
    let mine = m.share(width);
    let mut offset = 0;
    for w in mats {
        let (lo, hi) = (mine.start.max(offset), mine.end.min(offset + w.rows()));
        if lo < hi {
            let local = lo - offset..hi - offset;
            let mut start = 0;
            while start < n {
                let k = (n - start).min(GROUP);
                let xs: [&[QBlock]; GROUP] = std::array::from_fn(|i| {
                    if i < k {
                        &*x.row(start + i, blocks)
                    } else {
                        &[]
                    }
                });
                let mut os: [&mut [f32]; GROUP] = std::array::from_fn(|i| {
                    if i < k {
                        &mut out.row(start + i, width)[lo..hi]
                    } else {
                        &mut []
                    }
                });
                if add {
                    w.matmul_rows_add(local.clone(), &xs[..k], &mut os[..k]);
                } else {
                    w.matmul_rows(local.clone(), &xs[..k], &mut os[..k]);
                }
                start += k;
            }
        }
        offset += w.rows();
    }
}

/// One head of one row: softmax(q·K/√d)·V over the first `len` positions of a cache.
#[allow(clippy::too_many_arguments)]
unsafe fn attend(
    q: &[f32],
    seq: &CachePtrs,
    base: usize,
    stride: usize,
    len: usize,
    scale: f32,
    scores: &mut [f32],
    out: &mut [f32],
) {
    let hd = q.len();
    let scores = &mut scores[..len];
    let span = (len - 1) * stride + hd;
    let keys = std::slice::from_raw_parts(seq.k.add(base), span);
    kernels::attention_scores(q, keys, stride, scale, scores);
    softmax(scores);
    let values = std::slice::from_raw_parts(seq.v.add(base), span);
    kernels::attention_values(scores, values, stride, out);
}

/// This member's share of: RMS-normalise row `src(i)` of `x` (width `w`) with `weight`, and
/// quantize it into row `i` of `out`, for `i` in `0..n`. Split by (row, block); a member
/// computes the norm of every row it touches (a read of the whole row).
///
/// # Safety
/// As [`products`]; nobody writes `x` in this phase.
#[allow(clippy::too_many_arguments)]
unsafe fn norm_quantize(
    m: &Member<'_>,
    n: usize,
    src: impl Fn(usize) -> usize,
    x: Buf<f32>,
    w: usize,
    weight: &[f32],
    eps: f32,
    out: Buf<QBlock>,
) {
    let blocks = w / BLOCK;
    let mut current = (usize::MAX, 0f32);
    for task in m.share(n * blocks) {
        let (i, b) = (task / blocks, task % blocks);
        let row = &*x.row(src(i), w);
        if current.0 != i {
            let mean = row.iter().map(|v| v * v).sum::<f32>() / w as f32;
            current = (i, 1.0 / (mean + eps).sqrt());
        }
        let inv = current.1;
        let mut h = [0f32; BLOCK];
        let span = b * BLOCK..(b + 1) * BLOCK;
        for ((h, v), wt) in h.iter_mut().zip(&row[span.clone()]).zip(&weight[span]) {
            *h = v * inv * wt;
        }
        kernels::quantize_into(&h, &mut out.row(i, blocks)[b..b + 1]);
    }
}

fn softmax(v: &mut [f32]) {
    let max = v.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for x in v.iter_mut() {
        *x = (*x - max).exp();
        sum += *x;
    }
    for x in v.iter_mut() {
        *x /= sum;
    }
}

fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{self, ModelSource};
    use crate::testing::{write_tiny_gguf, TinySpec};

    fn tiny() -> (tempfile::TempDir, std::path::PathBuf) {
        tiny_with(&TinySpec::default())
    }

    fn tiny_with(spec: &TinySpec) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tiny.gguf");
        write_tiny_gguf(&path, spec).unwrap();
        (dir, path)
    }

    fn load(path: &std::path::Path) -> Llama {
        let mut file = std::io::BufReader::new(std::fs::File::open(path).unwrap());
        let content = gguf_file::Content::read(&mut file).unwrap();
        Llama::from_gguf(&content, &mut file).unwrap()
    }

    /// One step, every sequence's logits copied out.
    fn step(
        m: &Llama,
        ws: &mut Workspace,
        caches: &mut [&mut KvCache],
        tokens: &[&[u32]],
    ) -> Result<Vec<Vec<f32>>, LlamaError> {
        m.step(ws, caches, tokens)?;
        Ok((0..tokens.len()).map(|i| ws.logits(i).to_vec()).collect())
    }

    /// Our forward against candle's llama on the same weights dequantized to f32: our 16-bit
    /// activation blocks move logits by far less than 1e-4 of the largest.
    #[test]
    fn logits_match_candle_on_the_dequantized_weights() {
        for q4_1 in [false, true] {
            let (_dir, path) = tiny_with(&TinySpec {
                q4_1,
                ..TinySpec::default()
            });
            let ours = load(&path);
            let loaded = model::load(
                &ModelSource::Gguf(path.clone()),
                &Device::Cpu,
                u64::MAX,
                false,
            )
            .unwrap();
            let mut session = loaded.runner.candle().session();
            let prompt = [1u32, 40, 70, 100, 200, 7, 9, 33];
            let mut cache = ours.cache(64);
            let mut ws = Workspace::new(2).unwrap();
            let check = |mine: &[f32], theirs: Vec<f32>| {
                let max = theirs.iter().fold(0f32, |m, v| m.max(v.abs()));
                for (a, b) in mine.iter().zip(&theirs) {
                    assert!(
                        (a - b).abs() <= 1e-4 * max.max(1.0),
                        "q4_1 {q4_1}: {a} vs {b}"
                    );
                }
            };
            let mine = step(&ours, &mut ws, &mut [&mut cache], &[&prompt]).unwrap();
            let theirs = session
                .forward(&prompt, 0)
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            check(&mine[0], theirs);
            for (i, t) in [5u32, 77, 150, 3].iter().enumerate() {
                let mine = step(&ours, &mut ws, &mut [&mut cache], &[&[*t]]).unwrap();
                let theirs = session
                    .forward(&[*t], prompt.len() + i)
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap();
                check(&mine[0], theirs);
            }
            assert_eq!(cache.len(), prompt.len() + 4);
        }
    }

    #[test]
    fn batching_and_chunking_leave_every_sequence_bit_for_bit_the_same() {
        let (_dir, path) = tiny();
        let m = load(&path);
        // The thread count changes how rows are split, never a result.
        let one = batching_case(&m, 1);
        for threads in [2, 3] {
            assert_eq!(batching_case(&m, threads), one);
        }
    }

    fn batching_case(m: &Llama, threads: usize) -> Vec<f32> {
        let mut ws = Workspace::new(threads).unwrap();
        let a = [1u32, 50, 60, 70, 80, 90];
        let b = [1u32, 9, 8];
        // Alone, whole prompts.
        let mut ca = m.cache(32);
        let solo_a = step(m, &mut ws, &mut [&mut ca], &[&a]).unwrap().remove(0);
        let next_a = step(m, &mut ws, &mut [&mut ca], &[&[11]])
            .unwrap()
            .remove(0);
        let mut cb = m.cache(32);
        let solo_b = step(m, &mut ws, &mut [&mut cb], &[&b]).unwrap().remove(0);
        // Together, a's prompt in two chunks, b joining at the second step.
        let (mut ca2, mut cb2) = (m.cache(32), m.cache(32));
        step(m, &mut ws, &mut [&mut ca2], &[&a[..4]]).unwrap();
        let both = step(m, &mut ws, &mut [&mut ca2, &mut cb2], &[&a[4..], &b]).unwrap();
        assert_eq!(both[0], solo_a);
        assert_eq!(both[1], solo_b);
        let next = step(m, &mut ws, &mut [&mut ca2], &[&[11]]).unwrap();
        assert_eq!(next[0], next_a);
        next_a
    }

    #[test]
    fn a_full_cache_and_a_bad_token_are_errors_that_change_nothing() {
        let (_dir, path) = tiny();
        let m = &load(&path);
        let mut ws = Workspace::new(2).unwrap();
        let mut c = m.cache(4);
        step(m, &mut ws, &mut [&mut c], &[&[1, 2, 3]]).unwrap();
        assert!(matches!(
            step(m, &mut ws, &mut [&mut c], &[&[4, 5]]),
            Err(LlamaError::ContextFull {
                needed: 5,
                capacity: 4
            })
        ));
        assert!(matches!(
            step(m, &mut ws, &mut [&mut c], &[&[1_000_000]]),
            Err(LlamaError::Token(1_000_000))
        ));
        assert_eq!(c.len(), 3);
        step(m, &mut ws, &mut [&mut c], &[&[4]]).unwrap();
        assert_eq!(c.len(), 4);
    }
}
