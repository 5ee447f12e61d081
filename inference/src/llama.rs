//! Our llama forward pass on the quantized kernels ([`crate::kernels`]), built for batching:
//! one [`Llama::step`] runs any number of sequences together, each adding one token (decode)
//! or a chunk of its prompt (prefill) to its own [`KvCache`].
//!
//! Every token of a step is a row; the weight products see all rows at once (each weight
//! block unpacked once per tile of rows), while normalisation, rotary embeddings and
//! attention run per row against that row's own cache. A row's arithmetic does not depend on
//! the other rows of its step, so a sequence's logits are bit-for-bit the same whether it
//! runs alone, batched with others, or with its prompt cut into different chunks.
//!
//! The model is the llama of GGUF files as candle's `quantized_llama` runs it: RMSNorm, rotary
//! embeddings on interleaved pairs (GGML's convention), grouped-query attention, a SiLU-gated
//! MLP, the output head tied to the embeddings when the file has none. Matrices must be
//! `Q4_1` or `Q8_0`; other files keep running on candle.

use candle_core::quantized::gguf_file;
use candle_core::Device;

use crate::kernels::{block_sums, KernelError, QMatrix};

/// Why a model cannot run here, or a step failed.
#[derive(Debug, thiserror::Error)]
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
    /// Metadata missing or wrong.
    #[error("GGUF metadata: {0}")]
    Metadata(String),
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
    output: QMatrix,
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

    fn at(&self, layer: usize, pos: usize) -> usize {
        (layer * self.capacity + pos) * self.kv_dim
    }
}

fn md_usize(content: &gguf_file::Content, key: &str) -> Result<usize, LlamaError> {
    content
        .metadata
        .get(key)
        .and_then(|v| v.to_u32().ok())
        .map(|v| v as usize)
        .ok_or_else(|| LlamaError::Metadata(format!("{key} missing")))
}

fn md_f32(content: &gguf_file::Content, key: &str, default: f32) -> f32 {
    content
        .metadata
        .get(key)
        .and_then(|v| v.to_f32().ok())
        .unwrap_or(default)
}

impl Llama {
    /// Loads the llama in `content` (read from `reader`).
    pub fn from_gguf<R: std::io::Read + std::io::Seek>(
        content: &gguf_file::Content,
        reader: &mut R,
    ) -> Result<Self, LlamaError> {
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
        let heads = md_usize(content, "llama.attention.head_count")?;
        let hidden = md_usize(content, "llama.embedding_length")?;
        let head_dim = hidden / heads.max(1);
        let cfg = LlamaConfig {
            layers: md_usize(content, "llama.block_count")?,
            heads,
            kv_heads: md_usize(content, "llama.attention.head_count_kv")?,
            head_dim,
            hidden,
            vocab: 0,
            eps: md_f32(content, "llama.attention.layer_norm_rms_epsilon", 1e-5),
            rope_base: md_f32(content, "llama.rope.freq_base", 10_000.0),
            rope_dim: md_usize(content, "llama.rope.dimension_count").unwrap_or(head_dim),
            context: md_usize(content, "llama.context_length")
                .unwrap_or(crate::model::gguf::DEFAULT_CONTEXT_LENGTH),
        };
        let embed = matrix("token_embd.weight")?;
        let output = if content.tensor_infos.contains_key("output.weight") {
            matrix("output.weight")?
        } else {
            embed.clone()
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
        let cfg = LlamaConfig {
            vocab: output.rows(),
            ..cfg
        };
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
    /// prompt) to `caches[i]`. Returns each sequence's logits for its last token. On error no
    /// cache has changed length.
    pub fn step(
        &self,
        caches: &mut [&mut KvCache],
        tokens: &[&[u32]],
    ) -> Result<Vec<Vec<f32>>, LlamaError> {
        assert_eq!(caches.len(), tokens.len(), "one token list per cache");
        let c = &self.cfg;
        // The rows: (sequence, position).
        let mut rows = Vec::new();
        for (i, (cache, toks)) in caches.iter().zip(tokens).enumerate() {
            let needed = cache.len + toks.len();
            if needed > cache.capacity {
                return Err(LlamaError::ContextFull {
                    needed,
                    capacity: cache.capacity,
                });
            }
            for (j, &t) in toks.iter().enumerate() {
                if t as usize >= self.embed.rows() {
                    return Err(LlamaError::Token(t));
                }
                rows.push((i, cache.len + j));
            }
        }
        let ids: Vec<u32> = tokens.iter().flat_map(|t| t.iter().copied()).collect();
        let mut x: Vec<Vec<f32>> = ids
            .iter()
            .map(|&t| self.embed.dequantize_row(t as usize))
            .collect();
        let group = c.heads / c.kv_heads.max(1);
        let hd = c.head_dim;
        let scale = 1.0 / (hd as f32).sqrt();
        for (l, layer) in self.layers.iter().enumerate() {
            let h = Inputs::new(
                x.iter()
                    .map(|v| rms_norm(v, &layer.attn_norm, c.eps))
                    .collect(),
            );
            let mut q = h.times(&layer.wq);
            let mut k = h.times(&layer.wk);
            let v = h.times(&layer.wv);
            for (r, &(seq, pos)) in rows.iter().enumerate() {
                self.rope(&mut q[r], pos);
                self.rope(&mut k[r], pos);
                let cache = &mut *caches[seq];
                let at = cache.at(l, pos);
                cache.k[at..at + cache.kv_dim].copy_from_slice(&k[r]);
                cache.v[at..at + cache.kv_dim].copy_from_slice(&v[r]);
            }
            // Attention: each row over its own sequence's positions up to its own.
            let mut attn = vec![vec![0f32; c.heads * hd]; rows.len()];
            let mut scores = Vec::new();
            for (r, &(seq, pos)) in rows.iter().enumerate() {
                let cache = &*caches[seq];
                for head in 0..c.heads {
                    let kvh = head / group;
                    let qh = &q[r][head * hd..(head + 1) * hd];
                    scores.clear();
                    for t in 0..=pos {
                        let at = cache.at(l, t) + kvh * hd;
                        let kt = &cache.k[at..at + hd];
                        scores.push(dot(qh, kt) * scale);
                    }
                    softmax(&mut scores);
                    let out = &mut attn[r][head * hd..(head + 1) * hd];
                    for (t, &p) in scores.iter().enumerate() {
                        let at = cache.at(l, t) + kvh * hd;
                        for (o, &vv) in out.iter_mut().zip(&cache.v[at..at + hd]) {
                            *o += p * vv;
                        }
                    }
                }
            }
            let o = Inputs::new(attn).times(&layer.wo);
            add(&mut x, &o);
            let h = Inputs::new(
                x.iter()
                    .map(|v| rms_norm(v, &layer.ffn_norm, c.eps))
                    .collect(),
            );
            let g = h.times(&layer.gate);
            let u = h.times(&layer.up);
            let a: Vec<Vec<f32>> = g
                .iter()
                .zip(&u)
                .map(|(g, u)| g.iter().zip(u).map(|(&g, &u)| silu(g) * u).collect())
                .collect();
            let d = Inputs::new(a).times(&layer.down);
            add(&mut x, &d);
        }
        // Each sequence's last row through the head.
        let mut last = Vec::with_capacity(tokens.len());
        let mut end = 0;
        for toks in tokens {
            end += toks.len();
            last.push(rms_norm(&x[end - 1], &self.norm, c.eps));
        }
        for (cache, toks) in caches.iter_mut().zip(tokens) {
            cache.len += toks.len();
        }
        Ok(Inputs::new(last).times(&self.output))
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

/// Rows about to meet one or more weight matrices, with their block sums computed once.
struct Inputs {
    xs: Vec<Vec<f32>>,
    sums: Vec<Vec<f32>>,
}

impl Inputs {
    fn new(xs: Vec<Vec<f32>>) -> Self {
        let sums = xs.iter().map(|x| block_sums(x)).collect();
        Self { xs, sums }
    }

    /// `W · x` for every row, on every core.
    fn times(&self, w: &QMatrix) -> Vec<Vec<f32>> {
        let xr: Vec<&[f32]> = self.xs.iter().map(Vec::as_slice).collect();
        let sr: Vec<&[f32]> = self.sums.iter().map(Vec::as_slice).collect();
        let mut out = vec![vec![0f32; w.rows()]; self.xs.len()];
        let mut or: Vec<&mut [f32]> = out.iter_mut().map(Vec::as_mut_slice).collect();
        w.matmul_par(&xr, &sr, &mut or, 2 * rayon::current_num_threads());
        out
    }
}

fn rms_norm(x: &[f32], weight: &[f32], eps: f32) -> Vec<f32> {
    let mean = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    let inv = 1.0 / (mean + eps).sqrt();
    x.iter().zip(weight).map(|(v, w)| v * inv * w).collect()
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
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

fn add(x: &mut [Vec<f32>], y: &[Vec<f32>]) {
    for (a, b) in x.iter_mut().zip(y) {
        for (p, q) in a.iter_mut().zip(b) {
            *p += q;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{self, ModelSource};
    use crate::testing::{write_tiny_gguf, TinySpec};

    fn tiny() -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tiny.gguf");
        write_tiny_gguf(&path, &TinySpec::default()).unwrap();
        (dir, path)
    }

    fn load(path: &std::path::Path) -> Llama {
        let mut file = std::io::BufReader::new(std::fs::File::open(path).unwrap());
        let content = gguf_file::Content::read(&mut file).unwrap();
        Llama::from_gguf(&content, &mut file).unwrap()
    }

    #[test]
    fn logits_match_candle_on_the_dequantized_weights() {
        let (_dir, path) = tiny();
        let ours = load(&path);
        // The reference: candle's quantized_llama on the same weights dequantized to f32.
        let loaded = model::load(&ModelSource::Gguf(path.clone()), &Device::Cpu, u64::MAX).unwrap();
        let mut session = loaded.model.session();
        let prompt = [1u32, 40, 70, 100, 200, 7, 9, 33];
        let mut cache = ours.cache(64);
        let check = |mine: &[f32], theirs: Vec<f32>| {
            let max = theirs.iter().fold(0f32, |m, v| m.max(v.abs()));
            for (a, b) in mine.iter().zip(&theirs) {
                assert!((a - b).abs() <= 1e-4 * max.max(1.0), "{a} vs {b}");
            }
        };
        let mine = ours.step(&mut [&mut cache], &[&prompt]).unwrap();
        let theirs = session
            .forward(&prompt, 0)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        check(&mine[0], theirs);
        for (i, t) in [5u32, 77, 150, 3].iter().enumerate() {
            let mine = ours.step(&mut [&mut cache], &[&[*t]]).unwrap();
            let theirs = session
                .forward(&[*t], prompt.len() + i)
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            check(&mine[0], theirs);
        }
        assert_eq!(cache.len(), prompt.len() + 4);
    }

    #[test]
    fn batching_and_chunking_leave_every_sequence_bit_for_bit_the_same() {
        let (_dir, path) = tiny();
        let m = load(&path);
        let a = [1u32, 50, 60, 70, 80, 90];
        let b = [1u32, 9, 8];
        // Alone, whole prompts.
        let mut ca = m.cache(32);
        let solo_a = m.step(&mut [&mut ca], &[&a]).unwrap().remove(0);
        let next_a = m.step(&mut [&mut ca], &[&[11]]).unwrap().remove(0);
        let mut cb = m.cache(32);
        let solo_b = m.step(&mut [&mut cb], &[&b]).unwrap().remove(0);
        // Together, a's prompt in two chunks, b joining at the second step.
        let (mut ca2, mut cb2) = (m.cache(32), m.cache(32));
        m.step(&mut [&mut ca2], &[&a[..4]]).unwrap();
        let both = m.step(&mut [&mut ca2, &mut cb2], &[&a[4..], &b]).unwrap();
        assert_eq!(both[0], solo_a);
        assert_eq!(both[1], solo_b);
        let next = m.step(&mut [&mut ca2], &[&[11]]).unwrap();
        assert_eq!(next[0], next_a);
    }

    #[test]
    fn a_full_cache_and_a_bad_token_are_errors_that_change_nothing() {
        let (_dir, path) = tiny();
        let m = load(&path);
        let mut c = m.cache(4);
        m.step(&mut [&mut c], &[&[1, 2, 3]]).unwrap();
        assert!(matches!(
            m.step(&mut [&mut c], &[&[4, 5]]),
            Err(LlamaError::ContextFull {
                needed: 5,
                capacity: 4
            })
        ));
        assert!(matches!(
            m.step(&mut [&mut c], &[&[1_000_000]]),
            Err(LlamaError::Token(1_000_000))
        ));
        assert_eq!(c.len(), 3);
        m.step(&mut [&mut c], &[&[4]]).unwrap();
        assert_eq!(c.len(), 4);
    }
}
