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

use crate::kernels::{self, KernelError, QMatrix, BLOCK};

/// Rows handed to one kernel call: a weight row is read from memory once per this many.
const GROUP: usize = 64;
use crate::team::{Member, Team};

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
            ffn: md_usize(content, "llama.feed_forward_length")?,
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
        check_shapes(&cfg, &embed, &output, &layers)?;
        if norm.len() != cfg.hidden {
            return Err(LlamaError::Metadata(
                "output_norm does not match the shape".into(),
            ));
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
        let plan = Plan::new(c, &mut ws.bufs);
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
        // the rows (or the row ranges of a product) of its own share, and reads only what
        // was written before the last `sync`.
        unsafe {
            for r in m.share(n) {
                self.embed
                    .dequantize_row_into(ws.rows[r].token as usize, p.x.row(r, c.hidden));
            }
            m.sync();
            for (l, layer) in self.layers.iter().enumerate() {
                // Residual of the previous block's MLP, then the attention norm.
                for r in m.share(n) {
                    let x = p.x.row(r, c.hidden);
                    if l > 0 {
                        add_into(x, p.d.row(r, c.hidden));
                    }
                    norm_into(x, &layer.attn_norm, c.eps, p.h.row(r, c.hidden));
                    sums_into(p.h.row(r, c.hidden), p.hs.row(r, c.hidden / BLOCK));
                }
                m.sync();
                products(
                    m,
                    &[&layer.wq, &layer.wk, &layer.wv],
                    n,
                    p.h,
                    c.hidden,
                    p.hs,
                    p.qkv,
                );
                m.sync();
                // Rotary embeddings, then keys and values into each sequence's cache.
                for r in m.share(n) {
                    let row = &ws.rows[r];
                    let qkv = p.qkv.row(r, qkv_w);
                    self.rope(&mut qkv[..q_dim + kv_dim], row.pos);
                    let seq = &ws.seqs[row.seq];
                    let at = (l * seq.capacity + row.pos) * kv_dim;
                    std::ptr::copy_nonoverlapping(qkv[q_dim..].as_ptr(), seq.k.add(at), kv_dim);
                    std::ptr::copy_nonoverlapping(
                        qkv[q_dim + kv_dim..].as_ptr(),
                        seq.v.add(at),
                        kv_dim,
                    );
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
                for r in m.share(n) {
                    sums_into(p.attn.row(r, q_dim), p.attn_s.row(r, q_dim / BLOCK));
                }
                m.sync();
                products(m, &[&layer.wo], n, p.attn, q_dim, p.attn_s, p.o);
                m.sync();
                for r in m.share(n) {
                    let x = p.x.row(r, c.hidden);
                    add_into(x, p.o.row(r, c.hidden));
                    norm_into(x, &layer.ffn_norm, c.eps, p.h.row(r, c.hidden));
                    sums_into(p.h.row(r, c.hidden), p.hs.row(r, c.hidden / BLOCK));
                }
                m.sync();
                products(m, &[&layer.gate, &layer.up], n, p.h, c.hidden, p.hs, p.gu);
                m.sync();
                for r in m.share(n) {
                    let gu = p.gu.row(r, 2 * ffn);
                    let a = p.a.row(r, ffn);
                    for ((a, &g), &u) in a.iter_mut().zip(&gu[..ffn]).zip(&gu[ffn..]) {
                        *a = silu(g) * u;
                    }
                    sums_into(a, p.a_s.row(r, ffn / BLOCK));
                }
                m.sync();
                products(m, &[&layer.down], n, p.a, ffn, p.a_s, p.d);
                m.sync();
            }
            // Each sequence's last row: the last residual, the final norm, the head.
            let seqs = ws.last.len();
            for s in m.share(seqs) {
                let r = ws.last[s];
                let x = p.x.row(r, c.hidden);
                add_into(x, p.d.row(r, c.hidden));
                norm_into(x, &self.norm, c.eps, p.lh.row(s, c.hidden));
                sums_into(p.lh.row(s, c.hidden), p.lhs.row(s, c.hidden / BLOCK));
            }
            m.sync();
            products(m, &[&self.output], seqs, p.lh, c.hidden, p.lhs, p.logits);
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
        Err(LlamaError::Metadata(format!(
            "{what} does not match the shape"
        )))
    };
    if c.heads == 0 || c.kv_heads == 0 || !c.heads.is_multiple_of(c.kv_heads) || q_dim != c.hidden {
        return bad("head counts");
    }
    if c.rope_dim > c.head_dim || !c.rope_dim.is_multiple_of(2) || c.context == 0 {
        return bad("rope.dimension_count");
    }
    if embed.cols() != c.hidden || output.cols() != c.hidden {
        return bad("embedding width");
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
                return bad(&format!("block {l}"));
            }
        }
        if layer.attn_norm.len() != c.hidden || layer.ffn_norm.len() != c.hidden {
            return bad(&format!("block {l} norm"));
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

/// The buffers of [`Workspace::bufs`], in order.
const BUFFERS: usize = 15;

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
        &self.bufs[14][i * self.vocab..(i + 1) * self.vocab]
    }

    /// Bytes of scratch memory held.
    pub fn bytes(&self) -> usize {
        self.bufs.iter().map(|b| b.capacity() * 4).sum()
    }

    fn reserve(&mut self, c: &LlamaConfig, rows: usize, seqs: usize) {
        if rows <= self.room.0 && seqs <= self.room.1 && self.bufs[14].len() >= seqs * c.vocab {
            return;
        }
        let rows = rows.max(self.room.0);
        let seqs = seqs.max(self.room.1);
        self.room = (rows, seqs);
        let sizes = buffer_sizes(c, rows, seqs, self.team.threads());
        for (b, size) in self.bufs.iter_mut().zip(sizes) {
            if b.len() < size {
                b.resize(size, 0.0);
            }
        }
    }
}

/// Lengths of the workspace buffers for `rows` rows and `seqs` sequences.
fn buffer_sizes(c: &LlamaConfig, rows: usize, seqs: usize, threads: usize) -> [usize; BUFFERS] {
    let (q_dim, kv_dim, ffn) = (c.heads * c.head_dim, c.kv_heads * c.head_dim, c.ffn);
    [
        rows * c.hidden,             // x
        rows * c.hidden,             // h
        rows * c.hidden / BLOCK,     // hs
        rows * (q_dim + 2 * kv_dim), // qkv
        rows * q_dim,                // attn
        rows * q_dim / BLOCK,        // attn_s
        rows * c.hidden,             // o
        rows * 2 * ffn,              // gu
        rows * ffn,                  // a
        rows * ffn / BLOCK,          // a_s
        rows * c.hidden,             // d
        threads * c.context,         // scores
        seqs * c.hidden,             // lh
        seqs * c.hidden / BLOCK,     // lhs
        seqs * c.vocab,              // logits
    ]
}

/// A flat f32 buffer shared by the members of a step; each touches disjoint rows.
#[derive(Clone, Copy)]
struct Buf(*mut f32, usize);

// SAFETY: members access disjoint ranges between syncs (see `Llama::forward`).
unsafe impl Send for Buf {}
unsafe impl Sync for Buf {}

impl Buf {
    fn of(v: &mut [f32]) -> Buf {
        Buf(v.as_mut_ptr(), v.len())
    }

    /// Row `r` of width `w`.
    ///
    /// # Safety
    /// No other member may access the row until the next sync.
    #[allow(clippy::mut_from_ref)]
    unsafe fn row(&self, r: usize, w: usize) -> &mut [f32] {
        assert!((r + 1) * w <= self.1, "row out of the buffer");
        std::slice::from_raw_parts_mut(self.0.add(r * w), w)
    }
}

/// The step's buffers as shared pointers, and its constants.
struct Plan {
    x: Buf,
    h: Buf,
    hs: Buf,
    qkv: Buf,
    attn: Buf,
    attn_s: Buf,
    o: Buf,
    gu: Buf,
    a: Buf,
    a_s: Buf,
    d: Buf,
    scores: Buf,
    lh: Buf,
    lhs: Buf,
    logits: Buf,
    group: usize,
    scale: f32,
}

impl Plan {
    fn new(c: &LlamaConfig, bufs: &mut [Vec<f32>]) -> Plan {
        let [x, h, hs, qkv, attn, attn_s, o, gu, a, a_s, d, scores, lh, lhs, logits] = bufs else {
            unreachable!("the workspace has {BUFFERS} buffers");
        };
        let b = |v: &mut Vec<f32>| Buf::of(v);
        Plan {
            x: b(x),
            h: b(h),
            hs: b(hs),
            qkv: b(qkv),
            attn: b(attn),
            attn_s: b(attn_s),
            o: b(o),
            gu: b(gu),
            a: b(a),
            a_s: b(a_s),
            d: b(d),
            scores: b(scores),
            lh: b(lh),
            lhs: b(lhs),
            logits: b(logits),
            group: c.heads / c.kv_heads.max(1),
            scale: 1.0 / (c.head_dim as f32).sqrt(),
        }
    }
}

/// This member's share of `[mats stacked by rows] · x` for the `n` rows of `x` (width
/// `cols`, block sums in `sums`), into `out` (width: the stacked rows). The members split
/// the stacked rows, so fused projections (q/k/v, gate/up) cost one sync.
///
/// # Safety
/// Every member calls it with the same arguments between the same two syncs.
#[allow(clippy::too_many_arguments)]
unsafe fn products(
    m: &Member<'_>,
    mats: &[&QMatrix],
    n: usize,
    x: Buf,
    cols: usize,
    sums: Buf,
    out: Buf,
) {
    let width: usize = mats.iter().map(|w| w.rows()).sum();
    let mine = m.share(width);
    let mut offset = 0;
    for w in mats {
        let (lo, hi) = (mine.start.max(offset), mine.end.min(offset + w.rows()));
        if lo < hi {
            let local = lo - offset..hi - offset;
            let mut start = 0;
            while start < n {
                let k = (n - start).min(GROUP);
                let xs: [&[f32]; GROUP] =
                    std::array::from_fn(|i| if i < k { &*x.row(start + i, cols) } else { &[] });
                let ss: [&[f32]; GROUP] = std::array::from_fn(|i| {
                    if i < k {
                        &*sums.row(start + i, cols / BLOCK)
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
                w.matmul_rows(local.clone(), &xs[..k], &ss[..k], &mut os[..k]);
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
    for (t, s) in scores.iter_mut().enumerate() {
        let k = std::slice::from_raw_parts(seq.k.add(base + t * stride), hd);
        *s = kernels::dot(q, k) * scale;
    }
    softmax(scores);
    out.fill(0.0);
    for (t, &p) in scores.iter().enumerate() {
        let v = std::slice::from_raw_parts(seq.v.add(base + t * stride), hd);
        kernels::axpy(out, p, v);
    }
}

fn norm_into(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let mean = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    let inv = 1.0 / (mean + eps).sqrt();
    for ((o, v), w) in out.iter_mut().zip(x).zip(weight) {
        *o = v * inv * w;
    }
}

fn sums_into(x: &[f32], out: &mut [f32]) {
    for (o, b) in out.iter_mut().zip(x.chunks_exact(BLOCK)) {
        *o = b.iter().sum();
    }
}

fn add_into(x: &mut [f32], y: &[f32]) {
    for (p, q) in x.iter_mut().zip(y) {
        *p += q;
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

/// The index of the largest value, the first one on ties (as candle's argmax).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in logits.iter().enumerate() {
        if logits[best] < v {
            best = i;
        }
    }
    best as u32
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

    #[test]
    fn logits_match_candle_on_the_dequantized_weights() {
        let (_dir, path) = tiny();
        let ours = load(&path);
        // The reference: candle's quantized_llama on the same weights dequantized to f32.
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
                assert!((a - b).abs() <= 1e-4 * max.max(1.0), "{a} vs {b}");
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
