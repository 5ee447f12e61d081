//! CPU kernels for quantized weights times f32 activations: the matrix products of a decode
//! step, for one sequence or a batch of them.
//!
//! A decode step multiplies every weight matrix by one activation vector per sequence, so it
//! reads every weight once and does two flops per weight: memory and the cost of unpacking
//! 4-bit weights decide its speed. [`QMatrix`] keeps GGUF's `Q4_1` and `Q8_0` blocks of 32
//! weights packed (0.625 and 1.06 bytes a weight instead of 4) with their f16 scales turned
//! into f32 once at load, and multiplies them with f32 activations (no 8-bit quantization of
//! the activations, so results equal a dequantized f32 product up to rounding order):
//!
//! - `Q4_1`: a block is `d·q + m` with 4-bit `q`, so `Σ (d·q_j + m)·x_j = d·Σ q_j·x_j + m·Σ x_j`;
//!   the block sums of `x` are computed once per activation vector and shared by every row.
//! - `Q8_0`: `d·Σ q_j·x_j` with 8-bit `q`.
//! - A batch of `b` vectors unpacks each weight block once and uses it `b` times, which is
//!   what makes continuous batching pay on a CPU.
//!
//! Kernels ([`Kernel`]): AVX-512F or AVX2+FMA on x86-64 when the CPU has them (checked at
//! run time, once), else a portable scalar loop; every one this CPU runs is tested against
//! the dequantized reference on random inputs.
//! [`QMatrix::matmul_par`] splits the rows across rayon's pool; [`QMatrix::matmul_rows`]
//! computes one range on the calling thread.

use half::f16;

/// Weights per quantization block (GGML's `QK4_1` / `QK8_0`).
pub const BLOCK: usize = 32;

/// Why a tensor cannot become a [`QMatrix`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
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

/// How the weights of a [`QMatrix`] are stored.
#[derive(Clone, Debug)]
enum Store {
    /// 4-bit weights, two per byte: byte `j` of a block holds weight `j` (low nibble) and
    /// weight `j + 16` (high nibble), as GGML lays them out.
    Q4_1 {
        d: Vec<f32>,
        m: Vec<f32>,
        qs: Vec<[u8; 16]>,
    },
    /// 8-bit weights.
    Q8_0 { d: Vec<f32>, qs: Vec<[i8; BLOCK]> },
}

/// A `rows × cols` weight matrix in quantized blocks, multiplied by f32 vectors.
#[derive(Clone, Debug)]
pub struct QMatrix {
    rows: usize,
    cols: usize,
    store: Store,
}

/// The f32 block sums of an activation vector (for `Q4_1`'s `m` term).
pub fn block_sums(x: &[f32]) -> Vec<f32> {
    x.chunks_exact(BLOCK).map(|b| b.iter().sum()).collect()
}

impl QMatrix {
    /// From GGML `Q4_1` bytes (per block: f16 `d`, f16 `m`, 16 bytes of nibbles).
    pub fn from_q4_1(rows: usize, cols: usize, raw: &[u8]) -> Result<Self, KernelError> {
        let blocks = check(rows, cols, raw, 20, "Q4_1")?;
        let (mut d, mut m, mut qs) = (
            Vec::with_capacity(blocks),
            Vec::with_capacity(blocks),
            Vec::with_capacity(blocks),
        );
        for b in raw.chunks_exact(20) {
            d.push(f16::from_le_bytes([b[0], b[1]]).to_f32());
            m.push(f16::from_le_bytes([b[2], b[3]]).to_f32());
            qs.push(b[4..20].try_into().expect("16 bytes"));
        }
        Ok(Self {
            rows,
            cols,
            store: Store::Q4_1 { d, m, qs },
        })
    }

    /// From GGML `Q8_0` bytes (per block: f16 `d`, 32 signed bytes).
    pub fn from_q8_0(rows: usize, cols: usize, raw: &[u8]) -> Result<Self, KernelError> {
        let blocks = check(rows, cols, raw, 34, "Q8_0")?;
        let (mut d, mut qs) = (Vec::with_capacity(blocks), Vec::with_capacity(blocks));
        for b in raw.chunks_exact(34) {
            d.push(f16::from_le_bytes([b[0], b[1]]).to_f32());
            let mut q = [0i8; BLOCK];
            for (o, &v) in q.iter_mut().zip(&b[2..34]) {
                *o = v as i8;
            }
            qs.push(q);
        }
        Ok(Self {
            rows,
            cols,
            store: Store::Q8_0 { d, qs },
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
            Store::Q4_1 { .. } => blocks * 24,
            Store::Q8_0 { .. } => blocks * 36,
        }
    }

    /// Row `r` as f32 (the reference the kernels are tested against).
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
            match &self.store {
                Store::Q4_1 { d, m, qs } => {
                    let (lo, hi) = o.split_at_mut(16);
                    for ((l, h), &v) in lo.iter_mut().zip(hi).zip(&qs[b]) {
                        *l = (v & 0x0f) as f32 * d[b] + m[b];
                        *h = (v >> 4) as f32 * d[b] + m[b];
                    }
                }
                Store::Q8_0 { d, qs } => {
                    for (o, &q) in o.iter_mut().zip(&qs[b]) {
                        *o = q as f32 * d[b];
                    }
                }
            }
        }
    }

    /// `out[i] = W · xs[i]` for the whole batch, rows split across rayon's thread pool
    /// (the pool candle uses too) in `chunks` pieces of whole rows (at least one).
    pub fn matmul_par(
        &self,
        xs: &[&[f32]],
        sums: &[&[f32]],
        out: &mut [&mut [f32]],
        chunks: usize,
    ) {
        let chunks = chunks.clamp(1, self.rows.max(1));
        if chunks == 1 {
            self.matmul_rows(0..self.rows, xs, sums, out);
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
                s.spawn(move |_| self.matmul_rows(range, xs, sums, &mut slices));
            }
        });
    }

    /// `out[i][r - rows.start] = row r · xs[i]` for every row in `rows` and every vector of
    /// the batch. `xs` holds `batch` vectors of `cols`, `sums` their [`block_sums`]
    /// (`batch × cols / 32`), `out` `batch` slices of `rows.len()`.
    pub fn matmul_rows(
        &self,
        rows: std::ops::Range<usize>,
        xs: &[&[f32]],
        sums: &[&[f32]],
        out: &mut [&mut [f32]],
    ) {
        assert!(rows.end <= self.rows, "rows out of range");
        assert_eq!(xs.len(), out.len(), "one output per input");
        assert_eq!(xs.len(), sums.len(), "one block-sum vector per input");
        for ((x, s), o) in xs.iter().zip(sums).zip(out.iter()) {
            assert_eq!(x.len(), self.cols, "input length");
            assert_eq!(s.len(), self.cols / BLOCK, "block sums length");
            assert_eq!(o.len(), rows.len(), "output length");
        }
        self.matmul_with(Kernel::best(), rows, xs, sums, out);
    }

    /// [`Self::matmul_rows`] with a chosen kernel (for tests and benchmarks).
    ///
    /// # Panics
    /// If this CPU cannot run `kernel` (see [`Kernel::available`]).
    pub fn matmul_with(
        &self,
        kernel: Kernel,
        rows: std::ops::Range<usize>,
        xs: &[&[f32]],
        sums: &[&[f32]],
        out: &mut [&mut [f32]],
    ) {
        assert!(
            Kernel::available().contains(&kernel),
            "this CPU cannot run {kernel:?}"
        );
        match kernel {
            Kernel::Scalar => self.tile_scalar(rows, xs, sums, out),
            // SAFETY: the CPU has the features (asserted above); shapes checked by the caller.
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => unsafe { simd::tile(self, rows, xs, sums, out) },
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => unsafe { simd::tile512(self, rows, xs, out) },
            #[cfg(not(target_arch = "x86_64"))]
            _ => unreachable!("not available here"),
        }
    }

    /// The portable kernel.
    fn tile_scalar(
        &self,
        rows: std::ops::Range<usize>,
        xs: &[&[f32]],
        sums: &[&[f32]],
        out: &mut [&mut [f32]],
    ) {
        let per_row = self.cols / BLOCK;
        let mut acc = [0f32; TILE];
        for (r, k, t, n) in schedule(rows, xs.len()) {
            {
                let (xs, sums) = (&xs[t..t + n], &sums[t..t + n]);
                acc.fill(0.0);
                for j in 0..per_row {
                    let b = r * per_row + j;
                    let mut w = [0f32; BLOCK];
                    let (scale, offset) = match &self.store {
                        Store::Q4_1 { d, m, qs } => {
                            for (i, &v) in qs[b].iter().enumerate() {
                                w[i] = (v & 0x0f) as f32;
                                w[i + 16] = (v >> 4) as f32;
                            }
                            (d[b], m[b])
                        }
                        Store::Q8_0 { d, qs } => {
                            for (o, &q) in w.iter_mut().zip(&qs[b]) {
                                *o = q as f32;
                            }
                            (d[b], 0.0)
                        }
                    };
                    for (i, x) in xs.iter().enumerate() {
                        let x = &x[j * BLOCK..(j + 1) * BLOCK];
                        let dot: f32 = w.iter().zip(x).map(|(a, b)| a * b).sum();
                        acc[i] += scale * dot + offset * sums[i][j];
                    }
                }
                for (i, o) in out[t..t + n].iter_mut().enumerate() {
                    o[k] = acc[i];
                }
            }
        }
    }
}

/// Vectors multiplied per pass over a row's blocks (the register tile). Every row meets all
/// the vectors of a call, a tile after another while the row is in L1, so the weights are
/// read from memory once per call whatever the batch.
pub const TILE: usize = 8;

/// `Σ a_i·b_i` (attention scores), in sixteen lanes: AVX-512 when the CPU has it, else a
/// portable loop the compiler vectorises. The lanes are summed in a fixed order, so a result
/// depends only on the inputs.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "dot of unequal lengths");
    #[cfg(target_arch = "x86_64")]
    if Kernel::best() == Kernel::Avx512 {
        // SAFETY: the CPU has AVX-512F; lengths checked.
        return unsafe { simd::dot512(a, b) };
    }
    let mut acc = [0f32; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..16 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// `out += p·v` (attention's weighted sum of values).
pub fn axpy(out: &mut [f32], p: f32, v: &[f32]) {
    assert_eq!(out.len(), v.len(), "axpy of unequal lengths");
    #[cfg(target_arch = "x86_64")]
    if Kernel::best() == Kernel::Avx512 {
        // SAFETY: the CPU has AVX-512F; lengths checked.
        return unsafe { simd::axpy512(out, p, v) };
    }
    for (o, &x) in out.iter_mut().zip(v) {
        *o += p * x;
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
    /// x86-64 AVX2 + FMA: eight lanes.
    Avx2,
    /// x86-64 AVX-512F: sixteen lanes.
    Avx512,
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
            {
                if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                    out.push(Kernel::Avx2);
                }
                if is_x86_feature_detected!("avx512f") {
                    out.push(Kernel::Avx512);
                }
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
    //! AVX2 + FMA (a block's 32 weights become four vectors of eight f32 once per row and
    //! tile, then meet each vector of the tile; the `Q4_1` offset through block sums) and
    //! AVX-512F (a block dequantized once into two vectors of sixteen, then two FMAs per
    //! vector).
    use std::arch::x86_64::*;

    use super::{schedule, QMatrix, Store, BLOCK, TILE};

    /// The driver: for each row, each block is unpacked once and met by every vector of the
    /// tile; `d·Σq·x` accumulates in a vector, `m·Σx` in a scalar.
    macro_rules! tile_kernel {
        ($name:ident, $feature:literal, $zero:ident, $set1:ident, $fma:ident, $unpack:ident,
         $dot:ident, $hsum:ident) => {
            /// # Safety
            /// The CPU must have the features; shapes as checked by `matmul_rows`.
            #[target_feature(enable = $feature)]
            pub unsafe fn $name(
                w: &QMatrix,
                rows: std::ops::Range<usize>,
                xs: &[&[f32]],
                sums: &[&[f32]],
                out: &mut [&mut [f32]],
            ) {
                let per_row = w.cols / BLOCK;
                for (r, k, t, n) in super::schedule(rows, xs.len()) {
                    {
                        let mut acc = [$zero(); TILE];
                        let mut offsets = [0f32; TILE];
                        for j in 0..per_row {
                            let (q, scale, offset) = $unpack(w, r * per_row + j);
                            let vs = $set1(scale);
                            for i in 0..n {
                                let x = xs.get_unchecked(t + i).as_ptr().add(j * BLOCK);
                                acc[i] = $fma($dot(&q, x), vs, acc[i]);
                                offsets[i] += offset * *sums.get_unchecked(t + i).get_unchecked(j);
                            }
                        }
                        for i in 0..n {
                            *out.get_unchecked_mut(t + i).get_unchecked_mut(k) =
                                $hsum(acc[i]) + offsets[i];
                        }
                    }
                }
            }
        };
    }

    tile_kernel!(
        tile,
        "avx2,fma",
        _mm256_setzero_ps,
        _mm256_set1_ps,
        _mm256_fmadd_ps,
        unpack8,
        dot8,
        hsum8
    );
    /// AVX-512: each block of a row is dequantized once (`d·q + m`, sixteen lanes at a time)
    /// and met by every vector with two independent accumulators per vector, so a vector
    /// costs two loads and two FMAs per block and no block sums.
    ///
    /// # Safety
    /// The CPU must have AVX-512F; shapes as checked by `matmul_rows`.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn tile512(
        w: &QMatrix,
        rows: std::ops::Range<usize>,
        xs: &[&[f32]],
        out: &mut [&mut [f32]],
    ) {
        let per_row = w.cols / BLOCK;
        for (r, k, t, n) in schedule(rows, xs.len()) {
            let (xs, out) = (&xs[t..t + n], &mut out[t..t + n]);
            match n {
                1 => row512::<1>(w, r, k, per_row, xs, out),
                2 => row512::<2>(w, r, k, per_row, xs, out),
                3 => row512::<3>(w, r, k, per_row, xs, out),
                4 => row512::<4>(w, r, k, per_row, xs, out),
                5 => row512::<5>(w, r, k, per_row, xs, out),
                6 => row512::<6>(w, r, k, per_row, xs, out),
                7 => row512::<7>(w, r, k, per_row, xs, out),
                _ => row512::<TILE>(w, r, k, per_row, xs, out),
            }
        }
    }

    /// One row against `N` vectors, the accumulators in registers (`N` is a constant so the
    /// loops unroll).
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn row512<const N: usize>(
        w: &QMatrix,
        r: usize,
        k: usize,
        per_row: usize,
        xs: &[&[f32]],
        out: &mut [&mut [f32]],
    ) {
        let mut lo = [_mm512_setzero_ps(); N];
        let mut hi = [_mm512_setzero_ps(); N];
        let x: [*const f32; N] = std::array::from_fn(|i| xs.get_unchecked(i).as_ptr());
        for j in 0..per_row {
            let [w0, w1] = dequant16(w, r * per_row + j);
            for i in 0..N {
                let p = x[i].add(j * BLOCK);
                lo[i] = _mm512_fmadd_ps(w0, _mm512_loadu_ps(p), lo[i]);
                hi[i] = _mm512_fmadd_ps(w1, _mm512_loadu_ps(p.add(16)), hi[i]);
            }
        }
        for i in 0..N {
            *out.get_unchecked_mut(i).get_unchecked_mut(k) =
                _mm512_reduce_add_ps(_mm512_add_ps(lo[i], hi[i]));
        }
    }

    /// `Σ a·b` in sixteen lanes, the tail scalar.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn dot512(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len() / 16 * 16;
        let mut acc = _mm512_setzero_ps();
        let mut i = 0;
        while i < n {
            acc = _mm512_fmadd_ps(
                _mm512_loadu_ps(a.as_ptr().add(i)),
                _mm512_loadu_ps(b.as_ptr().add(i)),
                acc,
            );
            i += 16;
        }
        let tail: f32 = a[n..].iter().zip(&b[n..]).map(|(x, y)| x * y).sum();
        _mm512_reduce_add_ps(acc) + tail
    }

    /// `out += p·v` in sixteen lanes.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn axpy512(out: &mut [f32], p: f32, v: &[f32]) {
        let n = out.len() / 16 * 16;
        let vp = _mm512_set1_ps(p);
        let mut i = 0;
        while i < n {
            let o = out.as_mut_ptr().add(i);
            _mm512_storeu_ps(
                o,
                _mm512_fmadd_ps(vp, _mm512_loadu_ps(v.as_ptr().add(i)), _mm512_loadu_ps(o)),
            );
            i += 16;
        }
        for (o, &x) in out[n..].iter_mut().zip(&v[n..]) {
            *o += p * x;
        }
    }

    /// Block `b` dequantized: weights 0..16 and 16..32 as f32.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn dequant16(w: &QMatrix, b: usize) -> [__m512; 2] {
        let (q, scale, offset) = unpack16(w, b);
        let (d, m) = (_mm512_set1_ps(scale), _mm512_set1_ps(offset));
        [_mm512_fmadd_ps(q[0], d, m), _mm512_fmadd_ps(q[1], d, m)]
    }

    /// Block `b` as four vectors of eight f32, its scale and its offset.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn unpack8(w: &QMatrix, b: usize) -> ([__m256; 4], f32, f32) {
        let u8s = |v: __m128i| _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(v));
        let i8s = |p: *const i8| {
            _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(p as *const __m128i)))
        };
        match &w.store {
            Store::Q4_1 { d, m, qs } => {
                let (lo, hi) = nibbles(qs.get_unchecked(b));
                (
                    [
                        u8s(lo),
                        u8s(_mm_srli_si128(lo, 8)),
                        u8s(hi),
                        u8s(_mm_srli_si128(hi, 8)),
                    ],
                    *d.get_unchecked(b),
                    *m.get_unchecked(b),
                )
            }
            Store::Q8_0 { d, qs } => {
                let p = qs.get_unchecked(b).as_ptr();
                (
                    [i8s(p), i8s(p.add(8)), i8s(p.add(16)), i8s(p.add(24))],
                    *d.get_unchecked(b),
                    0.0,
                )
            }
        }
    }

    /// Block `b` as two vectors of sixteen f32, its scale and its offset.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn unpack16(w: &QMatrix, b: usize) -> ([__m512; 2], f32, f32) {
        match &w.store {
            Store::Q4_1 { d, m, qs } => {
                let (lo, hi) = nibbles(qs.get_unchecked(b));
                (
                    [
                        _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(lo)),
                        _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(hi)),
                    ],
                    *d.get_unchecked(b),
                    *m.get_unchecked(b),
                )
            }
            Store::Q8_0 { d, qs } => {
                let p = qs.get_unchecked(b).as_ptr();
                let lo = _mm_loadu_si128(p as *const __m128i);
                let hi = _mm_loadu_si128(p.add(16) as *const __m128i);
                (
                    [
                        _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(lo)),
                        _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(hi)),
                    ],
                    *d.get_unchecked(b),
                    0.0,
                )
            }
        }
    }

    /// The low nibbles (weights 0..16) and high nibbles (16..32) of a `Q4_1` block.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn nibbles(qs: &[u8; 16]) -> (__m128i, __m128i) {
        let mask = _mm_set1_epi8(0x0f);
        let raw = _mm_loadu_si128(qs.as_ptr() as *const __m128i);
        (
            _mm_and_si128(raw, mask),
            _mm_and_si128(_mm_srli_epi16(raw, 4), mask),
        )
    }

    /// `q · x[0..32]` as eight partial sums.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn dot8(q: &[__m256; 4], x: *const f32) -> __m256 {
        let t = _mm256_mul_ps(q[0], _mm256_loadu_ps(x));
        let t = _mm256_fmadd_ps(q[1], _mm256_loadu_ps(x.add(8)), t);
        let t = _mm256_fmadd_ps(q[2], _mm256_loadu_ps(x.add(16)), t);
        _mm256_fmadd_ps(q[3], _mm256_loadu_ps(x.add(24)), t)
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

    fn check_against_reference(m: &QMatrix, xs: &[Vec<f32>]) {
        let sums: Vec<Vec<f32>> = xs.iter().map(|x| block_sums(x)).collect();
        let xr: Vec<&[f32]> = xs.iter().map(Vec::as_slice).collect();
        let sr: Vec<&[f32]> = sums.iter().map(Vec::as_slice).collect();
        let results: Vec<(Kernel, Vec<Vec<f32>>)> = Kernel::available()
            .iter()
            .map(|&kernel| {
                let mut outs = vec![vec![0f32; m.rows()]; xs.len()];
                let mut or: Vec<&mut [f32]> = outs.iter_mut().map(Vec::as_mut_slice).collect();
                m.matmul_with(kernel, 0..m.rows(), &xr, &sr, &mut or);
                (kernel, outs)
            })
            .collect();
        for r in 0..m.rows() {
            let w = m.dequantize_row(r);
            for (i, x) in xs.iter().enumerate() {
                let exact: f64 = w.iter().zip(x).map(|(a, b)| *a as f64 * *b as f64).sum();
                let scale: f64 = w
                    .iter()
                    .zip(x)
                    .map(|(a, b)| (*a as f64 * *b as f64).abs())
                    .sum();
                // f32 rounding of a sum of `cols` products: a few ulps of the magnitudes.
                let tol = 1e-5 * scale.max(1e-6) * (m.cols() as f64).sqrt();
                for (kernel, outs) in &results {
                    let got = outs[i][r];
                    assert!(
                        (got as f64 - exact).abs() <= tol,
                        "{kernel:?} row {r} vec {i}: {got} vs {exact} (tol {tol})"
                    );
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        #[test]
        fn kernels_match_the_dequantized_reference(
            rows in 1usize..9,
            blocks_per_row in 1usize..6,
            batch in 1usize..12,
            q4 in any::<bool>(),
            seed in prop::collection::vec(any::<u8>(), 64..128),
            xseed in prop::collection::vec(-4.0f32..4.0, 32..200),
        ) {
            let cols = blocks_per_row * BLOCK;
            let bytes = raw(rows * blocks_per_row, q4, &seed);
            let m = if q4 {
                QMatrix::from_q4_1(rows, cols, &bytes).unwrap()
            } else {
                QMatrix::from_q8_0(rows, cols, &bytes).unwrap()
            };
            let xs: Vec<Vec<f32>> = (0..batch)
                .map(|i| (0..cols).map(|j| xseed[(i * 31 + j * 7) % xseed.len()] * (1.0 + i as f32 / 10.0)).collect())
                .collect();
            check_against_reference(&m, &xs);
        }
    }

    proptest! {
        #[test]
        fn dot_and_axpy_match_the_plain_loops(
            a in proptest::collection::vec(-4f32..4.0, 0..100),
            p in -2f32..2.0,
        ) {
            let b: Vec<f32> = a.iter().map(|v| v * 0.5 - 1.0).collect();
            let plain: f64 = a.iter().zip(&b).map(|(x, y)| (*x as f64) * (*y as f64)).sum();
            let scale: f64 = a.iter().zip(&b).map(|(x, y)| (x * y).abs() as f64).sum::<f64>() + 1.0;
            prop_assert!((dot(&a, &b) as f64 - plain).abs() <= 1e-5 * scale);
            let mut out = b.clone();
            axpy(&mut out, p, &a);
            for ((o, x), y) in out.iter().zip(&a).zip(&b) {
                prop_assert!((o - (y + p * x)).abs() <= 1e-5 * (1.0 + (p * x).abs() + y.abs()));
            }
        }
    }

    #[test]
    fn a_row_range_computes_only_those_rows() {
        let bytes = raw(4 * 2, true, &[7, 1, 200, 33, 90]);
        let m = QMatrix::from_q4_1(4, 64, &bytes).unwrap();
        let x: Vec<f32> = (0..64).map(|i| i as f32 / 64.0).collect();
        let s = block_sums(&x);
        let mut all = vec![0f32; 4];
        m.matmul_rows(0..4, &[&x], &[&s], &mut [&mut all]);
        let mut part = vec![0f32; 2];
        m.matmul_rows(1..3, &[&x], &[&s], &mut [&mut part]);
        assert_eq!(part, all[1..3]);
    }

    #[test]
    fn the_parallel_product_equals_the_serial_one() {
        let bytes = raw(37 * 3, false, &[5, 250, 17, 99, 3, 41]);
        let m = QMatrix::from_q8_0(37, 96, &bytes).unwrap();
        let xs: Vec<Vec<f32>> = (0..3)
            .map(|i| (0..96).map(|j| (i * 96 + j) as f32 / 100.0 - 1.0).collect())
            .collect();
        let sums: Vec<Vec<f32>> = xs.iter().map(|x| block_sums(x)).collect();
        let xr: Vec<&[f32]> = xs.iter().map(Vec::as_slice).collect();
        let sr: Vec<&[f32]> = sums.iter().map(Vec::as_slice).collect();
        let run = |chunks: usize| {
            let mut outs = vec![vec![0f32; 37]; 3];
            let mut or: Vec<&mut [f32]> = outs.iter_mut().map(Vec::as_mut_slice).collect();
            m.matmul_par(&xr, &sr, &mut or, chunks);
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
