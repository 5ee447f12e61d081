//! CPU kernels for quantized weights times 16-bit integer activations: the matrix products
//! of a decode step, for one sequence or a batch of them. The bottom of the batched runtime:
//! [`super::llama`] keeps its weights as [`QMatrix`] and runs every product here.
//!
//! A decode step multiplies every weight matrix by one activation vector per sequence, so it
//! reads every weight once and does two operations per weight: memory and the cost of
//! unpacking 4-bit weights decide its speed. [`QMatrix`] keeps GGUF's `Q4_1` and `Q8_0`
//! blocks of 32 weights exactly as the file stores them (20 and 34 bytes: 0.625 and 1.06
//! bytes a weight instead of 4, the f16 scales inline so a row is one stream of bytes).
//!
//! Activations are quantized once per vector, a block of 32 at a time ([`QBlock`],
//! [`quantize_into`]: `x ≈ d·q` with 16-bit `q`, `d = max|x| / 32767`), so a block's dot
//! product is exact integer arithmetic:
//!
//! - `Q4_1` weights `d_w·q_w + m_w`: `Σ (d_w·q_w + m_w)·d_x·q_x = d_w·d_x·Σ q_w·q_x + m_w·s_x`,
//!   with `s_x = d_x·Σ q_x` stored with the activation block.
//! - `Q8_0` weights `d_w·q_w`: `d_w·d_x·Σ q_w·q_x`.
//! - The error against f32 activations is that of rounding each activation to its block's
//!   grid: at most `d_x/2 = max|x|/65534` per activation, so at most `Σ_blocks d_x/2 · Σ|w|`
//!   for a row (the property tests hold every kernel to this bound and to the exact product
//!   of the quantized values). That is 256 times finer than the 8-bit blocks of llama.cpp
//!   and candle's quantized path, whose rounding tips near-tied greedy choices (SmolLM2's
//!   "The capital of France is Paris." becomes "L'Étoile, …" with 8-bit activations); with
//!   16 bits greedy text follows the f32 reference.
//!
//! The SIMD kernel unpacks each weight block once per row into 16-bit lanes and meets it
//! with every vector of the batch (AVX2 `madd`: sixteen products summed in pairs, two of
//! those added, so each of eight i32 lanes holds four products, exactly representable as
//! f32), so a batch of `b` vectors reads each weight once and uses it `b` times, which is
//! what makes continuous batching pay on a CPU. Each vector keeps its own accumulator, summed
//! in block order, so a vector's result does not depend on the other vectors of the call.
//!
//! Kernels ([`Kernel`]): AVX2 (with FMA and F16C) on x86-64 when the CPU has it (checked at
//! run time, once; AVX-512 CPUs run it too), else a portable scalar loop that adds the same
//! terms in the same order, so every kernel gives the same bits (a model's output does not
//! depend on the CPU's vector units); each one this CPU runs is tested against the portable
//! one and against the exact product on random inputs.
//! [`QMatrix::matmul_par`] splits the rows across rayon's pool; [`QMatrix::matmul_rows`]
//! computes one range on the calling thread. [`attention_scores`] and [`attention_values`]
//! serve attention, in f32.

use half::f16;

/// Weights per quantization block (GGML's `QK4_1` / `QK8_0`).
pub const BLOCK: usize = 32;

/// Why a tensor cannot become a [`QMatrix`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum KernelError {
    /// Rows must be made of whole blocks.
    #[error("row length {0} is not a multiple of {BLOCK}")]
    RowLength(usize),
    /// The tensor is not a 2-D `Q4_1` or `Q8_0` matrix.
    #[error("unsupported tensor: {0}")]
    Unsupported(String),
    /// The raw bytes do not match the shape.
    #[error("{kind}: expected {expected} bytes for the shape, got {got}")]
    Size {
        /// The block type.
        kind: &'static str,
        /// Bytes the shape needs.
        expected: usize,
        /// Bytes given.
        got: usize,
    },
}

/// Bytes of a GGML `Q4_1` block: f16 `d`, f16 `m`, 16 bytes of nibbles.
const Q4_1_BYTES: usize = 20;
/// Bytes of a GGML `Q8_0` block: f16 `d`, 32 signed bytes.
const Q8_0_BYTES: usize = 34;

/// 32 activations quantized to 16 bits: `x_j ≈ d·q_j`, with `s = d·Σ q_j` (the `Q4_1`
/// offset term). Made by [`quantize_into`].
#[derive(Clone, Copy, Debug, Default, PartialEq)]
#[repr(C)]
pub struct QBlock {
    /// The scale: the block's largest magnitude over 32767 (0 for an all-zero block).
    pub d: f32,
    /// `d · Σ q` (the sum is exact in f32: at most 32·32767 in magnitude).
    pub s: f32,
    /// The quantized values, in `-32767..=32767`.
    pub q: [i16; BLOCK],
}

/// The largest quantized magnitude.
const QMAX: f32 = 32767.0;

/// Quantizes `x` (whole blocks) into `out` (`x.len() / 32` blocks): `d = max|x| / 32767`,
/// `q_j = round(x_j / d)` (halves away from zero, computed as `x_j · (1/d)`), `s = d·Σq`, so
/// each value is within `d/2` of its grid point. One portable function for every kernel, so
/// the quantized activations never depend on the CPU.
///
/// # Panics
/// If the lengths do not match.
pub fn quantize_into(x: &[f32], out: &mut [QBlock]) {
    assert_eq!(x.len(), out.len() * BLOCK, "one block per 32 values");
    #[cfg(target_arch = "x86_64")]
    if Kernel::best() == Kernel::Avx2 {
        // SAFETY: the CPU has AVX2 (detected).
        return unsafe { quantize_avx2(x, out) };
    }
    quantize_blocks(x, out);
}

/// [`quantize_blocks`] compiled for AVX2: the same operations, in wider registers (no
/// operation is fused or reordered, so the results are the same bits).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn quantize_avx2(x: &[f32], out: &mut [QBlock]) {
    quantize_blocks(x, out);
}

/// The body of [`quantize_into`].
#[inline(always)]
fn quantize_blocks(x: &[f32], out: &mut [QBlock]) {
    for (xs, o) in x.chunks_exact(BLOCK).zip(out.iter_mut()) {
        // The largest magnitude in eight independent lanes (a maximum does not depend on
        // the order; NaNs are passed over), so it vectorises.
        let mut lanes = [0f32; 8];
        for c in xs.chunks_exact(8) {
            for (m, v) in lanes.iter_mut().zip(c) {
                *m = m.max(v.abs());
            }
        }
        let amax = lanes.iter().fold(0f32, |m, &v| m.max(v));
        let d = amax / QMAX;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let mut sum = 0i32;
        for (q, &v) in o.q.iter_mut().zip(xs) {
            // `f32::round` without a library call (it vectorises): truncate,
            // then step away from zero when the exact remainder is at least a half.
            let v = v * id;
            let t = v as i32;
            let frac = v - t as f32;
            let r = t + (frac >= 0.5) as i32 - (frac <= -0.5) as i32;
            // |v| ≤ 32767 up to rounding; the clamp only guards NaN and infinities.
            *q = r.clamp(-32767, 32767) as i16;
            sum += *q as i32;
        }
        o.d = d;
        o.s = d * sum as f32;
    }
}

/// [`quantize_into`] into a new vector.
///
/// # Panics
/// If `x` is not made of whole blocks.
pub fn quantize(x: &[f32]) -> Vec<QBlock> {
    let mut out = vec![QBlock::default(); x.len() / BLOCK];
    quantize_into(x, &mut out);
    out
}

/// How the weights of a [`QMatrix`] are stored: GGML's blocks, byte for byte.
#[derive(Clone, Debug)]
enum Store {
    /// 4-bit weights, two per byte: byte `j` of the nibbles holds weight `j` (low nibble)
    /// and weight `j + 16` (high nibble), as GGML lays them out.
    Q4_1(Vec<[u8; Q4_1_BYTES]>),
    /// 8-bit weights.
    Q8_0(Vec<[u8; Q8_0_BYTES]>),
}

/// The f16 at the start of `bytes` (little-endian) as f32.
fn f16_at(bytes: &[u8]) -> f32 {
    f16::from_le_bytes([bytes[0], bytes[1]]).to_f32()
}

/// A block's scale, offset (0 for `Q8_0`) and 32 weights as integers.
fn unpack_block(store: &Store, b: usize) -> (f32, f32, [i32; BLOCK]) {
    let mut w = [0i32; BLOCK];
    match store {
        Store::Q4_1(blocks) => {
            let blk = &blocks[b];
            for (i, &v) in blk[4..].iter().enumerate() {
                w[i] = (v & 0x0f) as i32;
                w[i + 16] = (v >> 4) as i32;
            }
            (f16_at(blk), f16_at(&blk[2..]), w)
        }
        Store::Q8_0(blocks) => {
            let blk = &blocks[b];
            for (o, &q) in w.iter_mut().zip(&blk[2..]) {
                *o = q as i8 as i32;
            }
            (f16_at(blk), 0.0, w)
        }
    }
}

/// A `rows × cols` weight matrix in quantized blocks, multiplied by quantized vectors.
#[derive(Clone, Debug)]
pub struct QMatrix {
    rows: usize,
    cols: usize,
    store: Store,
}

impl QMatrix {
    /// From GGML `Q4_1` bytes (per block: f16 `d`, f16 `m`, 16 bytes of nibbles).
    pub fn from_q4_1(rows: usize, cols: usize, raw: &[u8]) -> Result<Self, KernelError> {
        check(rows, cols, raw, Q4_1_BYTES, "Q4_1")?;
        let blocks = raw
            .chunks_exact(Q4_1_BYTES)
            .map(|b| b.try_into().expect("whole blocks"))
            .collect();
        Ok(Self {
            rows,
            cols,
            store: Store::Q4_1(blocks),
        })
    }

    /// From GGML `Q8_0` bytes (per block: f16 `d`, 32 signed bytes).
    pub fn from_q8_0(rows: usize, cols: usize, raw: &[u8]) -> Result<Self, KernelError> {
        check(rows, cols, raw, Q8_0_BYTES, "Q8_0")?;
        let blocks = raw
            .chunks_exact(Q8_0_BYTES)
            .map(|b| b.try_into().expect("whole blocks"))
            .collect();
        Ok(Self {
            rows,
            cols,
            store: Store::Q8_0(blocks),
        })
    }

    /// From a candle quantized tensor (a GGUF weight) of type `Q4_1` or `Q8_0`, shape
    /// `(rows, cols)`.
    pub fn from_qtensor(t: &candle_core::quantized::QTensor) -> Result<Self, KernelError> {
        use candle_core::quantized::GgmlDType;
        let (rows, cols) = t
            .shape()
            .dims2()
            .map_err(|_| KernelError::Unsupported(format!("shape {:?}", t.shape())))?;
        let raw = t
            .data()
            .map_err(|e| KernelError::Unsupported(e.to_string()))?;
        match t.dtype() {
            GgmlDType::Q4_1 => Self::from_q4_1(rows, cols, &raw),
            GgmlDType::Q8_0 => Self::from_q8_0(rows, cols, &raw),
            other => Err(KernelError::Unsupported(format!("{other:?}"))),
        }
    }

    /// Rows (outputs).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Columns (inputs).
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Bytes the weights take.
    pub fn bytes(&self) -> usize {
        let blocks = self.rows * self.cols / BLOCK;
        match self.store {
            Store::Q4_1(_) => blocks * Q4_1_BYTES,
            Store::Q8_0(_) => blocks * Q8_0_BYTES,
        }
    }

    /// Row `r` as f32 (the weights of the references the kernels are tested against).
    pub fn dequantize_row(&self, r: usize) -> Vec<f32> {
        let mut out = vec![0.0; self.cols];
        self.dequantize_row_into(r, &mut out);
        out
    }

    /// Row `r` as f32, into `out` (`cols` long).
    pub fn dequantize_row_into(&self, r: usize, out: &mut [f32]) {
        assert_eq!(out.len(), self.cols, "output length");
        let per_row = self.cols / BLOCK;
        for (b, o) in (r * per_row..(r + 1) * per_row).zip(out.chunks_exact_mut(BLOCK)) {
            let (d, m, w) = unpack_block(&self.store, b);
            for (o, q) in o.iter_mut().zip(w) {
                *o = q as f32 * d + m;
            }
        }
    }

    /// `out[i] = W · xs[i]` for the whole batch, rows split across rayon's thread pool
    /// in `chunks` pieces of whole rows (at least one).
    pub fn matmul_par(&self, xs: &[&[QBlock]], out: &mut [&mut [f32]], chunks: usize) {
        let chunks = chunks.clamp(1, self.rows.max(1));
        if chunks == 1 {
            self.matmul_rows(0..self.rows, xs, out);
            return;
        }
        let per = self.rows.div_ceil(chunks);
        // Each piece gets its row range and, for every vector, the matching output slice.
        let mut pieces: Vec<(std::ops::Range<usize>, Vec<&mut [f32]>)> = (0..chunks)
            .map(|c| {
                (
                    c * per..((c + 1) * per).min(self.rows),
                    Vec::with_capacity(out.len()),
                )
            })
            .filter(|(r, _)| !r.is_empty())
            .collect();
        for o in out.iter_mut() {
            let mut rest: &mut [f32] = o;
            for (range, slices) in pieces.iter_mut() {
                let (head, tail) = std::mem::take(&mut rest).split_at_mut(range.len());
                slices.push(head);
                rest = tail;
            }
        }
        rayon::scope(|s| {
            for (range, mut slices) in pieces {
                s.spawn(move |_| self.matmul_rows(range, xs, &mut slices));
            }
        });
    }

    /// `out[i][r - rows.start] = row r · xs[i]` for every row in `rows` and every vector of
    /// the batch. `xs` holds `batch` quantized vectors of `cols / 32` blocks, `out` `batch`
    /// slices of `rows.len()`.
    pub fn matmul_rows(
        &self,
        rows: std::ops::Range<usize>,
        xs: &[&[QBlock]],
        out: &mut [&mut [f32]],
    ) {
        self.matmul_with(Kernel::best(), rows, xs, out);
    }

    /// [`Self::matmul_rows`], the products added to `out` (a residual connection):
    /// `out[i][r - rows.start] += row r · xs[i]`, the same sum as
    /// `out + matmul_rows(..)`.
    pub fn matmul_rows_add(
        &self,
        rows: std::ops::Range<usize>,
        xs: &[&[QBlock]],
        out: &mut [&mut [f32]],
    ) {
        self.run::<true>(Kernel::best(), rows, xs, out);
    }

    /// [`Self::matmul_rows`] with a chosen kernel (for tests and benchmarks).
    ///
    /// # Panics
    /// If this CPU cannot run `kernel` (see [`Kernel::available`]), or the shapes are wrong.
    pub fn matmul_with(
        &self,
        kernel: Kernel,
        rows: std::ops::Range<usize>,
        xs: &[&[QBlock]],
        out: &mut [&mut [f32]],
    ) {
        self.run::<false>(kernel, rows, xs, out);
    }

    /// The products, stored (`ADD` false) or added to `out`.
    fn run<const ADD: bool>(
        &self,
        kernel: Kernel,
        rows: std::ops::Range<usize>,
        xs: &[&[QBlock]],
        out: &mut [&mut [f32]],
    ) {
        assert!(rows.end <= self.rows, "rows out of range");
        assert_eq!(xs.len(), out.len(), "one output per input");
        for (x, o) in xs.iter().zip(out.iter()) {
            assert_eq!(x.len() * BLOCK, self.cols, "input length");
            assert_eq!(o.len(), rows.len(), "output length");
        }
        assert!(
            Kernel::available().contains(&kernel),
            "this CPU cannot run {kernel:?}"
        );
        match kernel {
            Kernel::Scalar => self.tile_scalar::<ADD>(rows, xs, out),
            // SAFETY: the CPU has the features (asserted above); shapes checked above.
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => unsafe { simd::tile256::<ADD>(self, rows, xs, out) },
            #[cfg(not(target_arch = "x86_64"))]
            Kernel::Avx2 => unreachable!("not available here"),
        }
    }

    /// The portable kernel, also the reference: it adds exactly what the SIMD kernel adds,
    /// in the same order, so every kernel gives the same bits. Per (row, vector): eight
    /// lanes; for each block `j`, lane `l` gets the exact integer sum of `q_w[e]·q_x[e]` over
    /// `e` in `{2l, 2l+1, 16+2l, 17+2l}` times `d_w·d_x` (fused multiply-add), for `Q4_1` into
    /// `[s_x, 0, …, 0]·m_w` then added to the lane; the lanes summed pairwise as
    /// [`lanes_sum`] does.
    fn tile_scalar<const ADD: bool>(
        &self,
        rows: std::ops::Range<usize>,
        xs: &[&[QBlock]],
        out: &mut [&mut [f32]],
    ) {
        let per_row = self.cols / BLOCK;
        let q4 = matches!(self.store, Store::Q4_1(_));
        for (r, k, t, n) in schedule(rows, xs.len()) {
            let mut acc = [[0f32; 8]; TILE];
            for j in 0..per_row {
                let (d, m, w) = unpack_block(&self.store, r * per_row + j);
                for (i, x) in xs[t..t + n].iter().enumerate() {
                    let x = &x[j];
                    let dd = d * x.d;
                    for (l, lane) in acc[i].iter_mut().enumerate() {
                        let quad: i32 = [2 * l, 2 * l + 1, 16 + 2 * l, 17 + 2 * l]
                            .iter()
                            .map(|&b| w[b] * x.q[b] as i32)
                            .sum();
                        *lane = if q4 {
                            let s = if l == 0 { x.s } else { 0.0 };
                            *lane + (quad as f32).mul_add(dd, s * m)
                        } else {
                            (quad as f32).mul_add(dd, *lane)
                        };
                    }
                }
            }
            for (i, o) in out[t..t + n].iter_mut().enumerate() {
                let v = lanes_sum(&acc[i]);
                o[k] = if ADD { o[k] + v } else { v };
            }
        }
    }
}

/// The sum of eight lanes in the order the SIMD kernel's horizontal sum takes:
/// `((a0 + a4) + (a2 + a6)) + ((a1 + a5) + (a3 + a7))`.
fn lanes_sum(a: &[f32; 8]) -> f32 {
    let s: [f32; 4] = std::array::from_fn(|k| a[k] + a[k + 4]);
    (s[0] + s[2]) + (s[1] + s[3])
}

/// Vectors multiplied per pass over a row's blocks (the register tile). Every row meets all
/// the vectors of a call, a tile after another while the row is in L1, so the weights are
/// read from memory once per call whatever the batch.
pub const TILE: usize = 8;

/// Attention scores of one head: `scores[t] = scale · q·k_t` for `t < scores.len()`, where
/// key `t` is `keys[t·stride..][..q.len()]` (a KV cache's rows for one head). AVX2 where
/// the CPU has it (sixteen lanes, the positions in one loop), else portable loops; the result
/// depends only on the inputs and the CPU.
///
/// # Panics
/// If `keys` is too short.
pub fn attention_scores(q: &[f32], keys: &[f32], stride: usize, scale: f32, scores: &mut [f32]) {
    let hd = q.len();
    if let Some(last) = scores.len().checked_sub(1) {
        assert!(last * stride + hd <= keys.len(), "keys out of range");
    }
    #[cfg(target_arch = "x86_64")]
    if Kernel::best() == Kernel::Avx2 {
        // SAFETY: the CPU has AVX2 and FMA; every key is in `keys` (asserted).
        return unsafe { simd::scores256(q, keys.as_ptr(), stride, scale, scores) };
    }
    for (t, s) in scores.iter_mut().enumerate() {
        let k = &keys[t * stride..t * stride + hd];
        let mut acc = [0f32; 16];
        let (cq, ck) = (q.chunks_exact(16), k.chunks_exact(16));
        let tail: f32 = cq
            .remainder()
            .iter()
            .zip(ck.remainder())
            .map(|(x, y)| x * y)
            .sum();
        for (x, y) in cq.zip(ck) {
            for i in 0..16 {
                acc[i] += x[i] * y[i];
            }
        }
        *s = (acc.iter().sum::<f32>() + tail) * scale;
    }
}

/// Attention's weighted sum of one head: `out = Σ_t p[t]·v_t`, value `t` at
/// `values[t·stride..][..out.len()]`. AVX2 where the CPU has it (the sum held in registers
/// across all positions), else portable loops.
///
/// # Panics
/// If `values` is too short.
pub fn attention_values(p: &[f32], values: &[f32], stride: usize, out: &mut [f32]) {
    let hd = out.len();
    if let Some(last) = p.len().checked_sub(1) {
        assert!(last * stride + hd <= values.len(), "values out of range");
    }
    #[cfg(target_arch = "x86_64")]
    if Kernel::best() == Kernel::Avx2 {
        // SAFETY: the CPU has AVX2 and FMA; every value is in `values` (asserted).
        return unsafe { simd::values256(p, values.as_ptr(), stride, out) };
    }
    out.fill(0.0);
    for (t, &w) in p.iter().enumerate() {
        for (o, &v) in out.iter_mut().zip(&values[t * stride..t * stride + hd]) {
            *o += w * v;
        }
    }
}

/// Rows per cache block of the loop order (see [`schedule`]).
const ROW_BLOCK: usize = 32;

/// The order a kernel visits (row, vector tile) pairs: blocks of [`ROW_BLOCK`] rows, and in
/// each, every tile of [`TILE`] vectors over every row of the block, so both a tile of
/// vectors and a block of weight rows stay in cache while they meet. Yields
/// `(row, row index in the output, first vector, vectors in the tile)`.
fn schedule(
    rows: std::ops::Range<usize>,
    vectors: usize,
) -> impl Iterator<Item = (usize, usize, usize, usize)> {
    let start = rows.start;
    (rows.start..rows.end)
        .step_by(ROW_BLOCK)
        .flat_map(move |b| {
            let block = b..(b + ROW_BLOCK).min(rows.end);
            (0..vectors).step_by(TILE).flat_map(move |t| {
                let n = (vectors - t).min(TILE);
                block.clone().map(move |r| (r, r - start, t, n))
            })
        })
}

/// An implementation of the products.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    /// Portable Rust.
    Scalar,
    /// x86-64 AVX2 + FMA + F16C: sixteen 16-bit products per instruction. It also runs
    /// attention and the activation quantization.
    Avx2,
}

impl Kernel {
    /// The fastest kernel this CPU runs.
    pub fn best() -> Kernel {
        *Kernel::available().last().expect("scalar is always there")
    }

    /// Every kernel this CPU runs, slowest first (detected once).
    pub fn available() -> &'static [Kernel] {
        static AVAILABLE: std::sync::OnceLock<Vec<Kernel>> = std::sync::OnceLock::new();
        AVAILABLE.get_or_init(|| {
            let mut out = vec![Kernel::Scalar];
            #[cfg(target_arch = "x86_64")]
            if is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
                && is_x86_feature_detected!("f16c")
            {
                out.push(Kernel::Avx2);
            }
            out
        })
    }
}

fn check(
    rows: usize,
    cols: usize,
    raw: &[u8],
    block_bytes: usize,
    kind: &'static str,
) -> Result<usize, KernelError> {
    if !cols.is_multiple_of(BLOCK) {
        return Err(KernelError::RowLength(cols));
    }
    let blocks = rows * cols / BLOCK;
    if raw.len() != blocks * block_bytes {
        return Err(KernelError::Size {
            kind,
            expected: blocks * block_bytes,
            got: raw.len(),
        });
    }
    Ok(blocks)
}

#[cfg(target_arch = "x86_64")]
mod simd {
    //! AVX2 + FMA + F16C: for each row, each weight block is unpacked once into two vectors
    //! of sixteen i16 and met by every vector of the tile: `madd` multiplies i16 by i16 and
    //! adds pairs, the halves of the block are added, and the eight i32 sums of four products
    //! (at most 4·128·32767 < 2^24, exact in f32), scaled by `d_w·d_x`, accumulate in eight
    //! f32 lanes per vector (the tile size and the block type are constants, so the loops
    //! unroll and nothing is decided per block).
    use std::arch::x86_64::*;

    use super::{schedule, QBlock, QMatrix, Store, BLOCK, TILE};

    /// # Safety
    /// The CPU must have AVX2, FMA and F16C; shapes as checked by `matmul_with`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn tile256<const ADD: bool>(
        w: &QMatrix,
        rows: std::ops::Range<usize>,
        xs: &[&[QBlock]],
        out: &mut [&mut [f32]],
    ) {
        match &w.store {
            Store::Q4_1(b) => tile256_of::<true, ADD>(b.as_ptr().cast(), w, rows, xs, out),
            Store::Q8_0(b) => tile256_of::<false, ADD>(b.as_ptr().cast(), w, rows, xs, out),
        }
    }

    /// One block type (`Q4`: `Q4_1`, else `Q8_0`), its blocks starting at `base`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn tile256_of<const Q4: bool, const ADD: bool>(
        base: *const u8,
        w: &QMatrix,
        rows: std::ops::Range<usize>,
        xs: &[&[QBlock]],
        out: &mut [&mut [f32]],
    ) {
        let per_row = w.cols / BLOCK;
        let row_at = |r: usize| base.add(r * per_row * block_bytes::<Q4>());
        // One or two vectors (decoding): several rows at once, so the accumulator chains of
        // different rows overlap and each activation block is loaded once for all of them.
        // A row's arithmetic is the same however many rows run beside it.
        if xs.len() <= 2 {
            let mut r = rows.start;
            while r < rows.end {
                let (k, pair) = (r - rows.start, rows.end - r >= 2);
                match (xs.len(), pair) {
                    (1, true) => rows256::<2, 1, Q4, ADD>(row_at(r), k, per_row, xs, out),
                    (1, false) => rows256::<1, 1, Q4, ADD>(row_at(r), k, per_row, xs, out),
                    (_, true) => rows256::<2, 2, Q4, ADD>(row_at(r), k, per_row, xs, out),
                    (_, false) => rows256::<1, 2, Q4, ADD>(row_at(r), k, per_row, xs, out),
                }
                r += if pair { 2 } else { 1 };
            }
            return;
        }
        for (r, k, t, n) in schedule(rows, xs.len()) {
            let (xs, out) = (&xs[t..t + n], &mut out[t..t + n]);
            let row = row_at(r);
            match n {
                1 => rows256::<1, 1, Q4, ADD>(row, k, per_row, xs, out),
                2 => rows256::<1, 2, Q4, ADD>(row, k, per_row, xs, out),
                3 => rows256::<1, 3, Q4, ADD>(row, k, per_row, xs, out),
                4 => rows256::<1, 4, Q4, ADD>(row, k, per_row, xs, out),
                5 => rows256::<1, 5, Q4, ADD>(row, k, per_row, xs, out),
                6 => rows256::<1, 6, Q4, ADD>(row, k, per_row, xs, out),
                7 => rows256::<1, 7, Q4, ADD>(row, k, per_row, xs, out),
                _ => rows256::<1, TILE, Q4, ADD>(row, k, per_row, xs, out),
            }
        }
    }

    /// How far ahead of the block in use the weights are prefetched, in bytes.
    const PREFETCH: usize = 1024;

    /// Bytes of one block of the type.
    const fn block_bytes<const Q4: bool>() -> usize {
        if Q4 {
            super::Q4_1_BYTES
        } else {
            super::Q8_0_BYTES
        }
    }

    /// `R` consecutive rows (the first at `row`, each `per_row` blocks) against `N` vectors,
    /// into (or, with `ADD`, added to) output index `k..k + R`. Every (row, vector) pair has
    /// its own accumulators, summed in block order.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn rows256<const R: usize, const N: usize, const Q4: bool, const ADD: bool>(
        row: *const u8,
        k: usize,
        per_row: usize,
        xs: &[&[QBlock]],
        out: &mut [&mut [f32]],
    ) {
        let stride = per_row * block_bytes::<Q4>();
        let mut acc = [[_mm256_setzero_ps(); N]; R];
        let x: [*const QBlock; N] = std::array::from_fn(|i| xs.get_unchecked(i).as_ptr());
        for j in 0..per_row {
            for (a, acc) in acc.iter_mut().enumerate() {
                let p = row.add(a * stride + j * block_bytes::<Q4>());
                _mm_prefetch::<_MM_HINT_T0>(p.add(PREFETCH) as *const i8);
                let (dw, mw) = scales(p);
                let (dw, mw) = (_mm256_set1_ps(dw), _mm256_set1_ps(mw));
                // The weights as i16: elements 0..16 and 16..32.
                let (w0, w1) = if Q4 {
                    let raw = _mm_loadu_si128(p.add(4) as *const __m128i);
                    let mask = _mm_set1_epi8(0x0f);
                    (
                        _mm256_cvtepu8_epi16(_mm_and_si128(raw, mask)),
                        _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(raw, 4), mask)),
                    )
                } else {
                    (
                        _mm256_cvtepi8_epi16(_mm_loadu_si128(p.add(2) as *const __m128i)),
                        _mm256_cvtepi8_epi16(_mm_loadu_si128(p.add(18) as *const __m128i)),
                    )
                };
                for i in 0..N {
                    let b = &*x[i].add(j);
                    let q = b.q.as_ptr() as *const __m256i;
                    let lo = _mm256_madd_epi16(w0, _mm256_loadu_si256(q));
                    let hi = _mm256_madd_epi16(w1, _mm256_loadu_si256(q.add(1)));
                    let quads = _mm256_cvtepi32_ps(_mm256_add_epi32(lo, hi));
                    let dd = _mm256_mul_ps(dw, _mm256_broadcast_ss(&b.d));
                    acc[i] = if Q4 {
                        // The offset `m_w·s_x` rides in lane 0 (`[s_x, 0, …]·m_w`), added
                        // with the block's products: no scalar accumulators to hold in
                        // registers, and one addition on the accumulator's chain.
                        let s = _mm256_zextps128_ps256(_mm_load_ss(&b.s));
                        let block = _mm256_fmadd_ps(quads, dd, _mm256_mul_ps(s, mw));
                        _mm256_add_ps(acc[i], block)
                    } else {
                        _mm256_fmadd_ps(quads, dd, acc[i])
                    };
                }
            }
        }
        for (a, acc) in acc.iter().enumerate() {
            for (i, &sum) in acc.iter().enumerate() {
                let o = out.get_unchecked_mut(i).get_unchecked_mut(k + a);
                let v = hsum8(sum);
                *o = if ADD { *o + v } else { v };
            }
        }
    }

    /// [`super::attention_scores`]: per position two accumulators of eight lanes over the
    /// head's 16-float chunks, the tail scalar.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn scores256(
        q: &[f32],
        keys: *const f32,
        stride: usize,
        scale: f32,
        scores: &mut [f32],
    ) {
        let hd = q.len();
        let n = hd / 16 * 16;
        let qp = q.as_ptr();
        for (t, s) in scores.iter_mut().enumerate() {
            let k = keys.add(t * stride);
            let (mut lo, mut hi) = (_mm256_setzero_ps(), _mm256_setzero_ps());
            let mut i = 0;
            while i < n {
                lo = _mm256_fmadd_ps(_mm256_loadu_ps(qp.add(i)), _mm256_loadu_ps(k.add(i)), lo);
                hi = _mm256_fmadd_ps(
                    _mm256_loadu_ps(qp.add(i + 8)),
                    _mm256_loadu_ps(k.add(i + 8)),
                    hi,
                );
                i += 16;
            }
            let mut tail = 0f32;
            for j in n..hd {
                tail += *qp.add(j) * *k.add(j);
            }
            *s = (hsum8(_mm256_add_ps(lo, hi)) + tail) * scale;
        }
    }

    /// [`super::attention_values`]: the output in chunks of up to eight vectors of eight
    /// lanes, each held in registers over every position; the tail scalar.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn values256(p: &[f32], values: *const f32, stride: usize, out: &mut [f32]) {
        let hd = out.len();
        let mut c = 0;
        while c + 64 <= hd {
            values_chunk::<8>(p, values.add(c), stride, out.as_mut_ptr().add(c));
            c += 64;
        }
        while c + 8 <= hd {
            values_chunk::<1>(p, values.add(c), stride, out.as_mut_ptr().add(c));
            c += 8;
        }
        for (j, o) in out.iter_mut().enumerate().skip(c) {
            let mut sum = 0f32;
            for (t, &w) in p.iter().enumerate() {
                sum += w * *values.add(t * stride + j);
            }
            *o = sum;
        }
    }

    /// `V` vectors of eight outputs at `out`, summed over every position.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn values_chunk<const V: usize>(
        p: &[f32],
        values: *const f32,
        stride: usize,
        out: *mut f32,
    ) {
        let mut acc = [_mm256_setzero_ps(); V];
        for (t, &w) in p.iter().enumerate() {
            let w = _mm256_set1_ps(w);
            let v = values.add(t * stride);
            for (u, acc) in acc.iter_mut().enumerate() {
                *acc = _mm256_fmadd_ps(w, _mm256_loadu_ps(v.add(8 * u)), *acc);
            }
        }
        for (u, acc) in acc.iter().enumerate() {
            _mm256_storeu_ps(out.add(8 * u), *acc);
        }
    }

    /// A block's f16 scale and offset (the first four bytes at `p`; the offset is garbage
    /// for `Q8_0`, whose weights start there, and unused) as f32, exactly.
    #[inline]
    #[target_feature(enable = "f16c")]
    unsafe fn scales(p: *const u8) -> (f32, f32) {
        let dm = _mm_cvtph_ps(_mm_cvtsi32_si128(std::ptr::read_unaligned(p as *const i32)));
        (_mm_cvtss_f32(dm), _mm_cvtss_f32(_mm_movehdup_ps(dm)))
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn hsum8(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps(s, s, 1)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Random GGML bytes for a matrix: scales in a realistic range, any quants.
    fn raw(blocks: usize, q4: bool, seed: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        for b in 0..blocks {
            let byte = |i: usize| seed[(b * 37 + i * 11) % seed.len()];
            let scale = f16::from_f32(0.001 + byte(0) as f32 / 2000.0).to_le_bytes();
            out.extend_from_slice(&scale);
            if q4 {
                let min = f16::from_f32(-(byte(1) as f32) / 500.0).to_le_bytes();
                out.extend_from_slice(&min);
                out.extend((0..16).map(|i| byte(i + 2)));
            } else {
                out.extend((0..32).map(|i| byte(i + 2)));
            }
        }
        out
    }

    /// A `rows × cols` matrix of random blocks of either type.
    fn matrix(rows: usize, cols: usize, q4: bool, seed: &[u8]) -> QMatrix {
        let bytes = raw(rows * cols / BLOCK, q4, seed);
        if q4 {
            QMatrix::from_q4_1(rows, cols, &bytes).unwrap()
        } else {
            QMatrix::from_q8_0(rows, cols, &bytes).unwrap()
        }
    }

    /// Each kernel's outputs, one vector per input.
    type Outputs = Vec<(Kernel, Vec<Vec<f32>>)>;

    /// Every kernel's products of `m` with `xs` (quantized here).
    fn products(m: &QMatrix, xs: &[Vec<f32>]) -> (Vec<Vec<QBlock>>, Outputs) {
        let qs: Vec<Vec<QBlock>> = xs.iter().map(|x| quantize(x)).collect();
        let qr: Vec<&[QBlock]> = qs.iter().map(Vec::as_slice).collect();
        let results = Kernel::available()
            .iter()
            .map(|&kernel| {
                let mut outs = vec![vec![0f32; m.rows()]; xs.len()];
                let mut or: Vec<&mut [f32]> = outs.iter_mut().map(Vec::as_mut_slice).collect();
                m.matmul_with(kernel, 0..m.rows(), &qr, &mut or);
                (kernel, outs)
            })
            .collect();
        (qs, results)
    }

    /// Holds every kernel to (1) the exact product of the dequantized weights and the
    /// quantized activations, within f32 rounding, and (2) the product with the f32
    /// activations, within the quantization bound `Σ_blocks d_x/2 · Σ|w|` plus rounding.
    fn check_against_reference(m: &QMatrix, xs: &[Vec<f32>]) {
        let (qs, results) = products(m, xs);
        // The SIMD kernels add what the portable one adds, in its order: the same bits.
        for (kernel, outs) in &results[1..] {
            assert_eq!(outs, &results[0].1, "{kernel:?} against {:?}", results[0].0);
        }
        for r in 0..m.rows() {
            let w = m.dequantize_row(r);
            for (i, (x, q)) in xs.iter().zip(&qs).enumerate() {
                // The quantized product in f64: per block d_w·d_x·Σ q_w·q_x + m_w·s_x.
                let per_row = m.cols() / BLOCK;
                let (mut exact, mut magnitude) = (0f64, 0f64);
                for (j, b) in q.iter().enumerate() {
                    let (dw, mw, qw) = unpack_block(&m.store, r * per_row + j);
                    let dot: i64 = qw
                        .iter()
                        .zip(&b.q)
                        .map(|(&a, &v)| a as i64 * v as i64)
                        .sum();
                    exact += dw as f64 * b.d as f64 * dot as f64 + mw as f64 * b.s as f64;
                    let abs_dot: i64 = qw
                        .iter()
                        .zip(&b.q)
                        .map(|(&a, &v)| (a * v as i32).abs() as i64)
                        .sum();
                    magnitude += (dw as f64 * b.d as f64 * abs_dot as f64).abs()
                        + (mw as f64 * b.s as f64).abs();
                }
                // f32 rounding of a sum of `cols` products: a few ulps of the magnitudes.
                let rounding = 1e-5 * magnitude.max(1e-6) * (m.cols() as f64).sqrt();
                let unquantized: f64 = w.iter().zip(x).map(|(a, b)| *a as f64 * *b as f64).sum();
                // Per value: half a step of the grid (computed through `1/d`: a hair more).
                let bound: f64 = w
                    .chunks_exact(BLOCK)
                    .zip(q)
                    .map(|(wb, b)| {
                        b.d as f64
                            * 0.5
                            * (1.0 + 1e-3)
                            * wb.iter().map(|w| w.abs() as f64).sum::<f64>()
                    })
                    .sum::<f64>();
                for (kernel, outs) in &results {
                    let got = outs[i][r] as f64;
                    assert!(
                        (got - exact).abs() <= rounding,
                        "{kernel:?} row {r} vec {i}: {got} vs {exact} (tol {rounding})"
                    );
                    assert!(
                        (got - unquantized).abs() <= bound + rounding,
                        "{kernel:?} row {r} vec {i}: {got} vs f32 {unquantized} (bound {bound})"
                    );
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        #[test]
        fn kernels_match_the_exact_reference(
            rows in 1usize..9,
            blocks_per_row in 1usize..6,
            batch in 1usize..20,
            q4 in any::<bool>(),
            seed in prop::collection::vec(any::<u8>(), 64..128),
            xseed in prop::collection::vec(-4.0f32..4.0, 32..200),
        ) {
            let cols = blocks_per_row * BLOCK;
            let m = matrix(rows, cols, q4, &seed);
            let xs: Vec<Vec<f32>> = (0..batch)
                .map(|i| (0..cols).map(|j| xseed[(i * 31 + j * 7) % xseed.len()] * (1.0 + i as f32 / 10.0)).collect())
                .collect();
            check_against_reference(&m, &xs);
        }

        #[test]
        fn a_vectors_result_does_not_depend_on_its_batch(
            blocks_per_row in 1usize..5,
            batch in 2usize..20,
            q4 in any::<bool>(),
            seed in prop::collection::vec(any::<u8>(), 64..128),
            xseed in prop::collection::vec(-4.0f32..4.0, 32..200),
        ) {
            let cols = blocks_per_row * BLOCK;
            let m = matrix(3, cols, q4, &seed);
            let xs: Vec<Vec<f32>> = (0..batch)
                .map(|i| (0..cols).map(|j| xseed[(i * 13 + j * 5) % xseed.len()] - i as f32 / 7.0).collect())
                .collect();
            let (_, together) = products(&m, &xs);
            for (i, x) in xs.iter().enumerate() {
                let (_, alone) = products(&m, std::slice::from_ref(x));
                for ((kernel, t), (_, a)) in together.iter().zip(&alone) {
                    prop_assert_eq!(&t[i], &a[0], "{:?} vector {}", kernel, i);
                }
            }
        }

        #[test]
        fn quantization_rounds_to_the_blocks_grid(
            x in prop::collection::vec(-100.0f32..100.0, 32..160),
            zero_block in any::<bool>(),
        ) {
            let mut x = x[..x.len() / BLOCK * BLOCK].to_vec();
            if zero_block {
                x[..BLOCK].fill(0.0);
            }
            let q = quantize(&x);
            prop_assert_eq!(q.len(), x.len() / BLOCK);
            for (b, xs) in q.iter().zip(x.chunks_exact(BLOCK)) {
                let amax = xs.iter().fold(0f32, |m, v| m.max(v.abs()));
                let d = amax / 32767.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                prop_assert_eq!(b.d, d);
                let mut sum = 0i32;
                for (&v, &qv) in xs.iter().zip(&b.q) {
                    prop_assert!((-32767..=32767).contains(&qv));
                    // Nearest on the grid of d, halves away from zero (as f32::round).
                    prop_assert_eq!(qv as f32, (v * id).round(), "{} / {}", v, d);
                    prop_assert!((v - d * qv as f32).abs() <= d * 0.5 * 1.001 + f32::EPSILON * v.abs());
                    sum += qv as i32;
                }
                prop_assert_eq!(b.s, d * sum as f32);
                if amax == 0.0 {
                    prop_assert!(b.q.iter().all(|&v| v == 0));
                } else {
                    // The largest magnitude lands on ±32767.
                    prop_assert!(b.q.iter().any(|&v| v.abs() == 32767));
                }
            }
        }
    }

    proptest! {
        #[test]
        fn attention_matches_the_plain_loops(
            hd in 1usize..150,
            len in 0usize..40,
            gap in 0usize..20,
            seed in prop::collection::vec(-4f32..4.0, 64..128),
        ) {
            let stride = hd + gap;
            let at = |i: usize| seed[(i * 7 + i / 13) % seed.len()];
            let cache: Vec<f32> = (0..len * stride + hd).map(|i| at(i) * 0.5).collect();
            let q: Vec<f32> = (0..hd).map(|i| at(i + 3) - 0.25).collect();
            let mut scores = vec![0f32; len];
            attention_scores(&q, &cache, stride, 0.125, &mut scores);
            for (t, s) in scores.iter().enumerate() {
                let k = &cache[t * stride..t * stride + hd];
                let exact: f64 = q.iter().zip(k).map(|(a, b)| *a as f64 * *b as f64).sum::<f64>() * 0.125;
                let scale: f64 = q.iter().zip(k).map(|(a, b)| (*a as f64 * *b as f64).abs()).sum::<f64>() + 1.0;
                prop_assert!((*s as f64 - exact).abs() <= 1e-5 * scale, "{} vs {}", s, exact);
            }
            let p: Vec<f32> = (0..len).map(|t| at(t + 11).abs() / 4.0).collect();
            let mut out = vec![f32::NAN; hd];
            attention_values(&p, &cache, stride, &mut out);
            for (j, o) in out.iter().enumerate() {
                let exact: f64 = (0..len).map(|t| p[t] as f64 * cache[t * stride + j] as f64).sum();
                let scale: f64 = (0..len).map(|t| (p[t] as f64 * cache[t * stride + j] as f64).abs()).sum::<f64>() + 1.0;
                prop_assert!((*o as f64 - exact).abs() <= 1e-5 * scale, "{} vs {}", o, exact);
            }
        }
    }

    #[test]
    fn non_finite_activations_do_not_panic() {
        let mut x = vec![1.0f32; 64];
        x[3] = f32::NAN;
        x[40] = f32::INFINITY;
        let q = quantize(&x);
        assert!(q
            .iter()
            .all(|b| b.q.iter().all(|v| (-32767..=32767).contains(v))));
        let m = QMatrix::from_q8_0(1, 64, &raw(2, false, &[1, 2, 3])).unwrap();
        let mut out = vec![0f32; 1];
        m.matmul_rows(0..1, &[&q], &mut [&mut out]);
    }

    #[test]
    fn adding_equals_storing_then_adding() {
        for (q4, batch) in [(true, 1), (false, 2), (true, 3), (false, 11)] {
            let m = matrix(5, 64, q4, &[9, 4, 77, 120]);
            let xs: Vec<Vec<QBlock>> = (0..batch)
                .map(|i| {
                    quantize(
                        &(0..64)
                            .map(|j| (j as f32 - i as f32) / 9.0)
                            .collect::<Vec<_>>(),
                    )
                })
                .collect();
            let xr: Vec<&[QBlock]> = xs.iter().map(Vec::as_slice).collect();
            let start: Vec<Vec<f32>> = (0..batch)
                .map(|i| (0..5).map(|r| (r * 3 + i) as f32 / 7.0).collect())
                .collect();
            let mut stored = vec![vec![0f32; 5]; batch];
            let mut sr: Vec<&mut [f32]> = stored.iter_mut().map(Vec::as_mut_slice).collect();
            m.matmul_rows(0..5, &xr, &mut sr);
            let mut added = start.clone();
            let mut ar: Vec<&mut [f32]> = added.iter_mut().map(Vec::as_mut_slice).collect();
            m.matmul_rows_add(0..5, &xr, &mut ar);
            for i in 0..batch {
                for r in 0..5 {
                    assert_eq!(
                        added[i][r],
                        start[i][r] + stored[i][r],
                        "q4 {q4} vector {i} row {r}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_row_range_computes_only_those_rows() {
        let bytes = raw(4 * 2, true, &[7, 1, 200, 33, 90]);
        let m = QMatrix::from_q4_1(4, 64, &bytes).unwrap();
        let x: Vec<f32> = (0..64).map(|i| i as f32 / 64.0).collect();
        let q = quantize(&x);
        let mut all = vec![0f32; 4];
        m.matmul_rows(0..4, &[&q], &mut [&mut all]);
        let mut part = vec![0f32; 2];
        m.matmul_rows(1..3, &[&q], &mut [&mut part]);
        assert_eq!(part, all[1..3]);
    }

    #[test]
    fn the_parallel_product_equals_the_serial_one() {
        let bytes = raw(37 * 3, false, &[5, 250, 17, 99, 3, 41]);
        let m = QMatrix::from_q8_0(37, 96, &bytes).unwrap();
        let qs: Vec<Vec<QBlock>> = (0..3)
            .map(|i| {
                quantize(
                    &(0..96)
                        .map(|j| (i * 96 + j) as f32 / 100.0 - 1.0)
                        .collect::<Vec<_>>(),
                )
            })
            .collect();
        let qr: Vec<&[QBlock]> = qs.iter().map(Vec::as_slice).collect();
        let run = |chunks: usize| {
            let mut outs = vec![vec![0f32; 37]; 3];
            let mut or: Vec<&mut [f32]> = outs.iter_mut().map(Vec::as_mut_slice).collect();
            m.matmul_par(&qr, &mut or, chunks);
            outs
        };
        let serial = run(1);
        for chunks in [2, 4, 7, 37, 100] {
            assert_eq!(run(chunks), serial, "{chunks} chunks");
        }
    }

    #[test]
    fn bad_shapes_are_refused() {
        assert_eq!(
            QMatrix::from_q4_1(1, 33, &[0; 20]).unwrap_err(),
            KernelError::RowLength(33)
        );
        assert!(matches!(
            QMatrix::from_q8_0(2, 32, &[0; 34]),
            Err(KernelError::Size {
                expected: 68,
                got: 34,
                ..
            })
        ));
    }
}
