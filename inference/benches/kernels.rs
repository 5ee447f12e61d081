//! Benchmark: one decode step's matrix products for SmolLM2-135M's shapes, on each of our
//! quantized kernels this CPU runs ([`cocoon_inference::batched::kernels`]) and, for scale, a
//! plain f32 matrix-vector product of the same dequantized weights; single-threaded, batches
//! of 1 to 16 vectors.
//!
//! `cargo bench -p cocoon-inference --bench kernels`. Prints a table: µs per step (all 30
//! layers' projections and the output head), weights per second, and the batch speed-up;
//! then the best kernel on one thread against every core.

use std::hint::black_box;
use std::time::Instant;

use cocoon_inference::batched::kernels::{quantize, Kernel, QBlock, QMatrix, BLOCK};

/// (rows, cols, count per step): SmolLM2-135M (30 layers, width 576, MLP 1536, 3 KV heads
/// of 64, vocabulary 49,152). Its file stores the block matrices as Q4_1 and the output head
/// (tied to the embeddings) as Q8_0, as here.
const SHAPES: [(usize, usize, usize); 6] = [
    (576, 576, 60),  // q and o projections
    (192, 576, 60),  // k and v
    (1536, 576, 60), // gate and up
    (576, 1536, 30), // down
    (49152, 576, 1), // output head, Q8_0
    (0, 0, 0),
];

/// Random Q8_0 bytes.
fn q8_0(rows: usize, cols: usize, seed: u32) -> Vec<u8> {
    let mut state = seed.wrapping_mul(2654435761).max(1);
    let mut raw = Vec::with_capacity(rows * cols / BLOCK * 34);
    for _ in 0..rows * cols / BLOCK {
        raw.extend_from_slice(&half::f16::from_f32(0.01).to_le_bytes());
        raw.extend((0..32).map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state as u8
        }));
    }
    raw
}

fn q4_1(rows: usize, cols: usize, seed: u32) -> Vec<u8> {
    let mut state = seed.wrapping_mul(2654435761).max(1);
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        state
    };
    let mut raw = Vec::with_capacity(rows * cols / BLOCK * 20);
    for _ in 0..rows * cols / BLOCK {
        raw.extend_from_slice(&half::f16::from_f32(0.01).to_le_bytes());
        raw.extend_from_slice(&half::f16::from_f32(-0.08).to_le_bytes());
        raw.extend((0..16).map(|_| next() as u8));
    }
    raw
}

/// A batch of activation vectors, long enough for every shape.
fn inputs(batch: usize) -> Vec<Vec<f32>> {
    (0..batch)
        .map(|b| {
            (0..1536)
                .map(|j| ((j * 7 + b) % 13) as f32 / 13.0 - 0.5)
                .collect()
        })
        .collect()
}

/// One decode step's products (every shape, `count` times each) through `mul`; µs.
fn step(
    mats: &[QMatrix],
    shapes: &[&(usize, usize, usize)],
    xs: &[Vec<f32>],
    mul: impl Fn(&QMatrix, &[&[QBlock]], &mut [&mut [f32]]),
) -> f64 {
    let start = Instant::now();
    for (m, &&(_, cols, count)) in mats.iter().zip(shapes) {
        // Quantizing the activations is part of the cost: once per vector and shape.
        let qs: Vec<Vec<QBlock>> = xs.iter().map(|x| quantize(&x[..cols])).collect();
        let q: Vec<&[QBlock]> = qs.iter().map(Vec::as_slice).collect();
        let mut outs = vec![vec![0f32; m.rows()]; xs.len()];
        for _ in 0..count {
            let mut o: Vec<&mut [f32]> = outs.iter_mut().map(Vec::as_mut_slice).collect();
            mul(m, &q, &mut o);
        }
        black_box(&outs);
    }
    start.elapsed().as_secs_f64() * 1e6
}

fn f32_matvec(w: &[f32], cols: usize, x: &[f32], out: &mut [f32]) {
    for (o, row) in out.iter_mut().zip(w.chunks_exact(cols)) {
        *o = row.iter().zip(x).map(|(a, b)| a * b).sum();
    }
}

fn main() {
    let shapes: Vec<_> = SHAPES.iter().filter(|s| s.0 > 0).collect();
    let mats: Vec<QMatrix> = shapes
        .iter()
        .enumerate()
        .map(|(i, &&(r, c, _))| {
            if r == 49152 {
                QMatrix::from_q8_0(r, c, &q8_0(r, c, i as u32 + 1)).unwrap()
            } else {
                QMatrix::from_q4_1(r, c, &q4_1(r, c, i as u32 + 1)).unwrap()
            }
        })
        .collect();
    let dense: Vec<Vec<f32>> = mats
        .iter()
        .map(|m| (0..m.rows()).flat_map(|r| m.dequantize_row(r)).collect())
        .collect();
    let weights: usize = shapes.iter().map(|&&(r, c, n)| r * c * n).sum();
    println!("| kernel | batch | µs/step | weights×vectors/s (G) | per-vector speed-up vs batch 1 | f32 matvec µs/step |");
    println!("|---|---:|---:|---:|---:|---:|");
    for &kernel in Kernel::available() {
        let mut single = 0.0;
        for batch in [1usize, 4, 8, 16] {
            let xs = inputs(batch);
            let reps = 3;
            let us = (0..reps)
                .map(|_| {
                    step(&mats, &shapes, &xs, |m, x, o| {
                        m.matmul_with(kernel, 0..m.rows(), x, o)
                    })
                })
                .sum::<f64>()
                / reps as f64;
            if batch == 1 {
                single = us;
            }
            // The f32 reference only for one vector (it does not batch).
            let f32_us = if batch == 1 && kernel == Kernel::Scalar {
                let start = Instant::now();
                for (w, (m, &&(_, cols, count))) in dense.iter().zip(mats.iter().zip(&shapes)) {
                    let mut out = vec![0f32; m.rows()];
                    for _ in 0..count {
                        f32_matvec(w, cols, &xs[0][..cols], &mut out);
                    }
                    black_box(&out);
                }
                format!("{:.0}", start.elapsed().as_secs_f64() * 1e6)
            } else {
                "-".into()
            };
            println!(
                "| {kernel:?} | {batch} | {us:.0} | {:.2} | {:.2} | {f32_us} |",
                (weights * batch) as f64 / us / 1e3,
                single * batch as f64 / us,
            );
        }
    }

    // Where a single-vector step's time goes: each shape alone, best kernel, one thread.
    println!();
    println!("| shape (rows × cols) | type | µs per product | weight GB/s | ns per block |");
    println!("|---|---|---:|---:|---:|");
    let q = quantize(&inputs(1)[0]);
    for (m, &&(rows, cols, _)) in mats.iter().zip(&shapes) {
        let reps = (2_000_000 / (rows * cols / BLOCK)).max(3);
        let mut out = vec![0f32; rows];
        let mut best = f64::MAX;
        for _ in 0..3 {
            let start = Instant::now();
            for _ in 0..reps {
                m.matmul_rows(0..rows, &[&q[..cols / BLOCK]], &mut [&mut out]);
            }
            black_box(&out);
            best = best.min(start.elapsed().as_secs_f64() / reps as f64);
        }
        let kind = if m.bytes() * BLOCK / (rows * cols) == 20 {
            "Q4_1"
        } else {
            "Q8_0"
        };
        println!(
            "| {rows} × {cols} | {kind} | {:.1} | {:.1} | {:.2} |",
            best * 1e6,
            m.bytes() as f64 / best / 1e9,
            best * 1e9 / (rows * cols / BLOCK) as f64
        );
    }

    // The best kernel on every core (rows split across rayon's pool) against one core.
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!();
    println!("| kernel | batch | 1 thread µs/step | {threads} threads µs/step | speed-up |");
    println!("|---|---:|---:|---:|---:|");
    for batch in [1usize, 4, 16] {
        let xs = inputs(batch);
        let time = |chunks: usize| step(&mats, &shapes, &xs, |m, x, o| m.matmul_par(x, o, chunks));
        // Interleaved, best of three each: the machine is noisy.
        let (mut one, mut all) = (f64::MAX, f64::MAX);
        for _ in 0..3 {
            one = one.min(time(1));
            all = all.min(time(threads * 2));
        }
        println!(
            "| {:?} | {batch} | {one:.0} | {all:.0} | {:.2} |",
            Kernel::best(),
            one / all
        );
    }
}
