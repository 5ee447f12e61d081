//! Benchmark: in-process generation against the same job through the network on loopback.
//!
//! `cargo bench -p cocoon-tests --bench loopback` (or `bench/loopback.sh`). Runs are
//! interleaved (in-process, network, in-process, ...) so machine noise hits both sides alike;
//! the table shows medians. TTFT in process is from `generate` to the first text; through
//! the network it is from sending the request to the first text at the client (DHT lookup
//! and connection set-up excluded; they are reported separately as the client's wall time
//! minus the job's own time).
//!
//! Environment: `COCOON_BENCH_RUNS` (default 5), `COCOON_BENCH_TOKENS` (default 64),
//! `COCOON_BENCH_KEEP_QUANTIZED=1` to run the GGUF on candle's quantized kernels on both sides
//! (the default converts small models to f32 at load, see `EngineConfig`).

use std::time::Instant;

use anyhow::{Context, Result};
use cocoon_inference::{
    ChatMessage, Engine, EngineConfig, GenerateRequest, GenerationEvent, ModelSource, Prompt,
    SamplingParams,
};
use cocoon_tests::{parse_json, LoopbackNet};

/// Long enough an answer that greedy decoding fills the token budget.
const PROMPT: &str = "Write a long story about a lighthouse keeper and a storm.";

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

struct Sample {
    ttft_ms: f64,
    tok_s: f64,
    tokens: u32,
}

fn in_process(engine: &Engine, max_tokens: u32) -> Result<Sample> {
    let request = GenerateRequest {
        prompt: Prompt::Chat(vec![ChatMessage {
            role: "user".into(),
            content: PROMPT.into(),
        }]),
        sampling: SamplingParams {
            max_tokens,
            ..Default::default()
        },
    };
    let start = Instant::now();
    let mut generation = engine.generate(request)?;
    let mut first = None;
    while let Some(event) = generation.blocking_next() {
        match event {
            GenerationEvent::Text(_) => {
                first.get_or_insert_with(Instant::now);
            }
            GenerationEvent::Done(usage) => {
                let end = Instant::now();
                let first = first.unwrap_or(end);
                let decode = end.duration_since(first).as_secs_f64();
                return Ok(Sample {
                    ttft_ms: first.duration_since(start).as_secs_f64() * 1e3,
                    tok_s: usage.completion_tokens.saturating_sub(1) as f64 / decode,
                    tokens: usage.completion_tokens,
                });
            }
            GenerationEvent::Error(e) => anyhow::bail!(e),
        }
    }
    anyhow::bail!("generation ended without Done")
}

fn main() -> Result<()> {
    let runs: usize = std::env::var("COCOON_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let tokens: u32 = std::env::var("COCOON_BENCH_TOKENS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    let keep_quantized = std::env::var("COCOON_BENCH_KEEP_QUANTIZED").is_ok_and(|v| v == "1");
    let model = cocoon_tests::model_path()?;
    let mut config = EngineConfig {
        max_concurrent: 1,
        ..Default::default()
    };
    let mut worker_flags = vec!["--max-concurrent".to_string(), "1".to_string()];
    if keep_quantized {
        config.dequantize_max_f32_bytes = 0;
        worker_flags.push("--keep-quantized".into());
    }
    let engine = Engine::load(&ModelSource::from_path(&model)?, config)?;
    let weights = engine.info().runtime_weights.clone();
    let net = LoopbackNet::start("bench", &[worker_flags])?;
    let max = tokens.to_string();
    // Warm up both paths once (page cache, first connection).
    in_process(&engine, 8)?;
    parse_json(&net.infer(&["--json", "--max-tokens", "8"], PROMPT)?)?;

    let (mut local, mut remote, mut wall) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..runs {
        local.push(in_process(&engine, tokens)?);
        let start = Instant::now();
        let json = parse_json(&net.infer(&["--json", "--max-tokens", &max], PROMPT)?)?;
        let get = |k: &str| json[k].as_f64().with_context(|| format!("{k} missing"));
        wall.push(start.elapsed().as_secs_f64() * 1e3 - get("total_ms")?);
        remote.push(Sample {
            ttft_ms: get("ttft_ms")?,
            tok_s: get("tokens_per_s")?,
            tokens: get("completion_tokens")? as u32,
        });
        eprintln!("run {}/{runs} done", i + 1);
    }
    let l_ttft = median(local.iter().map(|s| s.ttft_ms).collect());
    let r_ttft = median(remote.iter().map(|s| s.ttft_ms).collect());
    let l_tps = median(local.iter().map(|s| s.tok_s).collect());
    let r_tps = median(remote.iter().map(|s| s.tok_s).collect());
    let table = format!(
        "| metric (median of {runs}, {} tokens, greedy, {weights} weights) | in-process | network (loopback QUIC) | difference |\n\
         |---|---:|---:|---:|\n\
         | time to first token (ms) | {l_ttft:.1} | {r_ttft:.1} | {:+.1} ms ({:+.1}%) |\n\
         | decode speed (tok/s) | {l_tps:.2} | {r_tps:.2} | {:+.2} ({:+.1}%) |\n\
         | client set-up: process start + DHT lookup + connect (ms) | - | {:.0} | - |\n",
        local[0].tokens,
        r_ttft - l_ttft,
        (r_ttft / l_ttft - 1.0) * 100.0,
        r_tps - l_tps,
        (r_tps / l_tps - 1.0) * 100.0,
        median(wall),
    );
    assert!(
        remote.iter().all(|s| s.tokens == local[0].tokens),
        "both paths generate the same tokens"
    );
    println!("{table}");
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(format!(
        "../target/bench-loopback-{}.md",
        weights.to_lowercase()
    ));
    std::fs::write(&out, &table)?;
    eprintln!("table written to {}", out.display());
    Ok(())
}
