//! Benchmark: decode speed of our batched llama forward (`cocoon_inference::llama`, the
//! quantized kernels) against the current engine (candle's llama on weights dequantized to
//! f32), on the real model, greedy, all cores.
//!
//! `cargo bench -p cocoon-tests --bench inference`. One prompt; for 1, 4 and 16 concurrent
//! streams our step runs every stream's token together; the engine runs one stream (it does
//! not batch). TTFT: prompt in → first token's logits. Decode: tokens after the first over
//! the time after it, summed over streams. Medians of `COCOON_BENCH_RUNS` (default 3)
//! interleaved runs of `COCOON_BENCH_TOKENS` (default 64) tokens. Written to
//! `target/bench-inference.md`.

use std::time::Instant;

use candle_core::quantized::gguf_file;
use cocoon_inference::llama::{argmax, Llama, Workspace};
use cocoon_inference::{
    ChatMessage, Engine, EngineConfig, GenerateRequest, GenerationEvent, ModelSource, Prompt,
    SamplingParams,
};

const PROMPT: &str = "Write a long story about a lighthouse keeper and a storm.";

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// (ttft ms, aggregate decode tok/s) of `streams` greedy streams on our forward.
fn ours(model: &Llama, ws: &mut Workspace, prompt: &[u32], streams: usize, tokens: usize) -> (f64, f64) {
    let mut caches: Vec<_> = (0..streams)
        .map(|_| model.cache(prompt.len() + tokens))
        .collect();
    let start = Instant::now();
    let mut refs: Vec<_> = caches.iter_mut().collect();
    let prompts: Vec<&[u32]> = (0..streams).map(|_| prompt).collect();
    model.step(ws, &mut refs, &prompts).expect("prefill");
    let first = Instant::now();
    let mut next: Vec<[u32; 1]> = (0..streams).map(|i| [argmax(ws.logits(i))]).collect();
    for _ in 1..tokens {
        let toks: Vec<&[u32]> = next.iter().map(|t| t.as_slice()).collect();
        model.step(ws, &mut refs, &toks).expect("decode");
        next = (0..streams).map(|i| [argmax(ws.logits(i))]).collect();
    }
    let decode = first.elapsed().as_secs_f64();
    (
        first.duration_since(start).as_secs_f64() * 1e3,
        ((tokens - 1) * streams) as f64 / decode,
    )
}

/// (ttft ms, decode tok/s) of one greedy stream on the engine.
fn engine(engine: &Engine, tokens: usize) -> (f64, f64) {
    let request = GenerateRequest {
        prompt: Prompt::Chat(vec![ChatMessage::new("user", PROMPT)]),
        sampling: SamplingParams {
            max_tokens: tokens as u32,
            ..Default::default()
        },
    };
    let start = Instant::now();
    let mut generation = engine.generate(request).expect("generate");
    let mut first = None;
    let mut generated = 0;
    while let Some(event) = generation.blocking_next() {
        match event {
            GenerationEvent::Text(_) => {
                first.get_or_insert_with(Instant::now);
            }
            GenerationEvent::Done(usage) => generated = usage.completion_tokens,
            GenerationEvent::Error(e) => panic!("{e}"),
        }
    }
    let first = first.expect("a token");
    (
        first.duration_since(start).as_secs_f64() * 1e3,
        generated.saturating_sub(1) as f64 / first.elapsed().as_secs_f64(),
    )
}

fn main() {
    let runs = env("COCOON_BENCH_RUNS", 3);
    let tokens = env("COCOON_BENCH_TOKENS", 64);
    let path = cocoon_tests::model_path().expect("fetch the model");
    let eng = Engine::load(
        &ModelSource::from_path(&path).expect("model path"),
        EngineConfig::default(),
    )
    .expect("load the engine");
    let mut file = std::io::BufReader::new(std::fs::File::open(&path).expect("open"));
    let content = gguf_file::Content::read(&mut file).expect("gguf");
    let model = Llama::from_gguf(&content, &mut file).expect("load ours");
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut ws = Workspace::new(threads).expect("threads");
    let prompt = eng
        .prompt_tokens(&Prompt::Chat(vec![ChatMessage::new("user", PROMPT)]))
        .expect("prompt");

    let mut rows: Vec<(String, Vec<f64>, Vec<f64>)> = vec![
        (
            "engine (candle, f32 weights), 1 stream".into(),
            vec![],
            vec![],
        ),
        ("ours (Q4_1 kernels), 1 stream".into(), vec![], vec![]),
        ("ours, 4 streams".into(), vec![], vec![]),
        ("ours, 16 streams".into(), vec![], vec![]),
    ];
    for _ in 0..runs {
        let results = [
            engine(&eng, tokens),
            ours(&model, &mut ws, &prompt, 1, tokens),
            ours(&model, &mut ws, &prompt, 4, tokens),
            ours(&model, &mut ws, &prompt, 16, tokens),
        ];
        for (row, (ttft, tps)) in rows.iter_mut().zip(results) {
            row.1.push(ttft);
            row.2.push(tps);
        }
    }
    let mut table = format!(
        "| SmolLM2-135M Q4_1, {} prompt tokens, {tokens} new, greedy, {} threads (median of {runs}) | TTFT (ms) | decode tok/s (all streams) |\n|---|---:|---:|\n",
        prompt.len(),
        std::thread::available_parallelism().map_or(1, |n| n.get()),
    );
    for (name, ttft, tps) in rows {
        table += &format!("| {name} | {:.1} | {:.1} |\n", median(ttft), median(tps));
    }
    println!("{table}");
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-inference.md");
    std::fs::write(out, table).expect("write the table");
}
