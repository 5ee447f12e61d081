//! Times our llama's steps alone (no engine, no sampling but argmax): a 42-token prompt per
//! sequence in one prefill step, then decode steps of every sequence together.
//! `cargo run --release -p cocoon-inference --example step_timing -- MODEL_PATH [threads]
//! [tokens] [sequences]`.

use std::time::Instant;

use cocoon_inference::batched::llama::{argmax, Llama, Workspace};
use cocoon_inference::model::gguf_header::{read_content, HeaderLimits};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .ok_or("usage: step_timing MODEL_PATH [threads] [tokens] [sequences]")?;
    let mut number = |default: usize| -> Result<usize, Box<dyn std::error::Error>> {
        Ok(args
            .next()
            .map(|s| s.parse())
            .transpose()?
            .unwrap_or(default))
    };
    let (threads, tokens, seqs) = (number(2)?, number(128)?, number(1)?);
    let mut file = std::io::BufReader::new(std::fs::File::open(path)?);
    let (_, content) = read_content(&mut file, &HeaderLimits::default())?;
    let model = Llama::from_gguf(&content, &mut file)?;
    let mut ws = Workspace::new(threads)?;
    let mut caches: Vec<_> = (0..seqs).map(|_| model.cache(tokens + 64)).collect();
    let prompts: Vec<Vec<u32>> = (0..seqs)
        .map(|s| (1..43).map(|t| t + s as u32).collect())
        .collect();
    let start = Instant::now();
    {
        let mut cs: Vec<_> = caches.iter_mut().collect();
        let ps: Vec<&[u32]> = prompts.iter().map(Vec::as_slice).collect();
        model.step(&mut ws, &mut cs, &ps)?;
    }
    let prefill = start.elapsed().as_secs_f64();
    let mut next: Vec<[u32; 1]> = (0..seqs).map(|s| [argmax(ws.logits(s))]).collect();
    let start = Instant::now();
    for _ in 0..tokens {
        let mut cs: Vec<_> = caches.iter_mut().collect();
        let ts: Vec<&[u32]> = next.iter().map(|t| t.as_slice()).collect();
        model.step(&mut ws, &mut cs, &ts)?;
        for (s, t) in next.iter_mut().enumerate() {
            *t = [argmax(ws.logits(s))];
        }
    }
    let s = start.elapsed().as_secs_f64();
    println!(
        "{threads} threads, {seqs} sequences: prefill {:.1} ms ({:.0} tok/s), decode {:.1} tok/s ({:.2} ms/step)",
        prefill * 1e3,
        (42 * seqs) as f64 / prefill,
        (tokens * seqs) as f64 / s,
        s * 1e3 / tokens as f64
    );
    Ok(())
}
