//! Times our llama's decode step alone (no engine): `cargo run --release -p cocoon-inference
//! --example step_timing -- MODEL_PATH [threads] [tokens]`.

use std::time::Instant;

use candle_core::quantized::gguf_file;
use cocoon_inference::llama::{argmax, Llama, Workspace};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .ok_or("usage: step_timing MODEL_PATH [threads] [tokens]")?;
    let threads: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(2);
    let tokens: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(128);
    let mut file = std::io::BufReader::new(std::fs::File::open(path)?);
    let content = gguf_file::Content::read(&mut file)?;
    let model = Llama::from_gguf(&content, &mut file)?;
    let mut ws = Workspace::new(threads)?;
    let mut cache = model.cache(tokens + 64);
    let prompt: Vec<u32> = (1..43).collect();
    model.step(&mut ws, &mut [&mut cache], &[&prompt])?;
    let mut next = argmax(ws.logits(0));
    let start = Instant::now();
    for _ in 0..tokens {
        model.step(&mut ws, &mut [&mut cache], &[&[next]])?;
        next = argmax(ws.logits(0));
    }
    let s = start.elapsed().as_secs_f64();
    println!(
        "{threads} threads: {:.1} tok/s ({:.2} ms/token)",
        tokens as f64 / s,
        s * 1e3 / tokens as f64
    );
    Ok(())
}
