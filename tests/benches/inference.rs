//! Benchmark: our engine (the batched runtime on our kernels) against llama.cpp on the same
//! GGUF, the same prompt tokens, greedy, the same number of threads.
//!
//! `bench/inference.sh` runs it (it builds llama.cpp's Python bindings first); alone,
//! `cargo bench -p cocoon-tests --bench inference` measures our side only unless
//! `COCOON_LLAMA_PYTHON` names a Python with `llama_cpp` installed.
//!
//! Our side goes through the public API: `Engine::generate` for 1, 4 or 16 streams at once,
//! each read on its own thread, as a worker serves them. llama.cpp's side
//! (`bench/llamacpp_side.py`) runs parallel sequences in one batch per step, as its server
//! does with parallel slots. Measures: TTFT (request in → first token, median over streams),
//! single-stream decode tok/s (tokens after the first over the time after it), aggregate
//! tok/s at 4 and 16 streams (all tokens over the whole time, prefill included), peak RSS.
//! Medians of `COCOON_BENCH_RUNS` (default 3) interleaved runs of `COCOON_BENCH_TOKENS`
//! (default 64) tokens. Written to `target/bench-inference.md`.

use std::process::Command;
use std::time::Instant;

use cocoon_inference::{
    ChatMessage, Engine, EngineConfig, GenerateRequest, GenerationEvent, ModelSource, Prompt,
    SamplingParams,
};

const PROMPT: &str = "Write a long story about a lighthouse keeper and a storm.";
const STREAMS: [usize; 3] = [1, 4, 16];

/// One run's figures.
#[derive(Default, Clone, Copy)]
struct Run {
    ttft_ms: f64,
    decode_tok_s: f64,
    aggregate_tok_s: f64,
}

/// `streams` greedy generations at once through the engine.
fn ours(engine: &Engine, tokens: usize, streams: usize) -> Run {
    let request = GenerateRequest {
        prompt: Prompt::Chat(vec![ChatMessage::new("user", PROMPT)]),
        sampling: SamplingParams {
            max_tokens: tokens as u32,
            ..Default::default()
        },
    };
    let start = Instant::now();
    let handles: Vec<_> = (0..streams)
        .map(|_| {
            let mut g = engine.generate(request.clone()).expect("generate");
            std::thread::spawn(move || {
                let mut first = None;
                while let Some(event) = g.blocking_next() {
                    match event {
                        GenerationEvent::Text(_) => {
                            first.get_or_insert_with(Instant::now);
                        }
                        GenerationEvent::Done(usage) => {
                            return (usage, first.expect("a token"), Instant::now());
                        }
                        GenerationEvent::Error(e) => panic!("{e}"),
                    }
                }
                panic!("no Done");
            })
        })
        .collect();
    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let end = results.iter().map(|r| r.2).max().unwrap();
    let first = results.iter().map(|r| r.1).max().unwrap();
    let total: u32 = results.iter().map(|r| r.0.completion_tokens).sum();
    Run {
        ttft_ms: cocoon_tests::median(results.iter().map(|r| r.0.time_to_first_token_ms).collect()),
        decode_tok_s: (total as usize - streams) as f64 / (end - first).as_secs_f64(),
        aggregate_tok_s: total as f64 / (end - start).as_secs_f64(),
    }
}

/// Peak resident memory of this process, MiB.
fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kib| kib / 1024.0)
}

/// llama.cpp's runs for every stream count, and its peak RSS.
fn llama_cpp(
    python: &str,
    model: &std::path::Path,
    prompt: &[u32],
    tokens: usize,
    threads: usize,
) -> (Vec<(usize, Run)>, f64) {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../bench/llamacpp_side.py");
    let out = Command::new(python)
        .arg(script)
        .arg(model)
        .arg(serde_json::to_string(prompt).unwrap())
        .arg(tokens.to_string())
        .arg("1")
        .arg(threads.to_string())
        .args(STREAMS.iter().map(|s| s.to_string()))
        .stderr(std::process::Stdio::null())
        .output()
        .expect("run the llama.cpp side");
    assert!(out.status.success(), "llama.cpp side failed");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("its JSON");
    let runs = v["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["streams"].as_u64().unwrap() as usize,
                Run {
                    ttft_ms: r["ttft_ms"].as_f64().unwrap(),
                    decode_tok_s: r["decode_tok_s"].as_f64().unwrap(),
                    aggregate_tok_s: r["aggregate_tok_s"].as_f64().unwrap(),
                },
            )
        })
        .collect();
    (runs, v["peak_rss_mib"].as_f64().unwrap_or(f64::NAN))
}

fn main() {
    let runs = cocoon_tests::env_or("COCOON_BENCH_RUNS", 3);
    let tokens = cocoon_tests::env_or("COCOON_BENCH_TOKENS", 64);
    let python = std::env::var("COCOON_LLAMA_PYTHON").ok();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let path = cocoon_tests::model_path().expect("fetch the model");
    let engine = Engine::load(
        &ModelSource::from_path(&path).expect("model path"),
        EngineConfig::default(),
    )
    .expect("load the engine");
    assert_eq!(engine.info().runtime, "batched");
    let prompt = engine
        .prompt_tokens(&Prompt::Chat(vec![ChatMessage::new("user", PROMPT)]))
        .expect("prompt");

    let mut mine: Vec<Vec<Run>> = vec![Vec::new(); STREAMS.len()];
    let mut theirs: Vec<Vec<Run>> = vec![Vec::new(); STREAMS.len()];
    let mut their_rss = f64::NAN;
    for _ in 0..runs {
        for (i, &s) in STREAMS.iter().enumerate() {
            mine[i].push(ours(&engine, tokens, s));
        }
        if let Some(py) = &python {
            let (rows, rss) = llama_cpp(py, &path, &prompt, tokens, threads);
            their_rss = rss;
            for (s, run) in rows {
                let i = STREAMS.iter().position(|&x| x == s).unwrap();
                theirs[i].push(run);
            }
        }
    }
    let our_rss = peak_rss_mib();
    let pick = |v: &[Run], f: fn(&Run) -> f64| cocoon_tests::median(v.iter().map(f).collect());
    // (measure, ours, llama.cpp, higher is better)
    let rows = [
        (
            "TTFT, 1 stream (ms)".to_string(),
            pick(&mine[0], |r| r.ttft_ms),
            pick(&theirs[0], |r| r.ttft_ms),
            false,
        ),
        (
            "decode tok/s, 1 stream".to_string(),
            pick(&mine[0], |r| r.decode_tok_s),
            pick(&theirs[0], |r| r.decode_tok_s),
            true,
        ),
        (
            "aggregate tok/s, 4 streams".to_string(),
            pick(&mine[1], |r| r.aggregate_tok_s),
            pick(&theirs[1], |r| r.aggregate_tok_s),
            true,
        ),
        (
            "aggregate tok/s, 16 streams".to_string(),
            pick(&mine[2], |r| r.aggregate_tok_s),
            pick(&theirs[2], |r| r.aggregate_tok_s),
            true,
        ),
        (
            "decode tok/s after prefill, 16 streams".to_string(),
            pick(&mine[2], |r| r.decode_tok_s),
            pick(&theirs[2], |r| r.decode_tok_s),
            true,
        ),
        ("peak RSS (MiB)".to_string(), our_rss, their_rss, false),
    ];
    let mut table = format!(
        "SmolLM2-135M-Instruct Q4_1, {} prompt tokens, {tokens} new, greedy, {threads} threads, median of {runs} interleaved runs. Ratio: ours over llama.cpp for speeds, llama.cpp over ours for time and memory (above 1: ours is better).\n\n| measure | cocoon | llama.cpp | ratio |\n|---|---:|---:|---:|\n",
        prompt.len(),
    );
    for (name, a, b, higher) in rows {
        let ratio = if higher { a / b } else { b / a };
        table += &format!("| {name} | {a:.1} | {b:.1} | {ratio:.2} |\n");
    }
    println!("{table}");
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-inference.md");
    std::fs::write(out, table).expect("write the table");
}
