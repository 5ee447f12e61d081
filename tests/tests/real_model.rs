//! The real model (SmolLM2-135M-Instruct Q4_1 from its registry package) in process.

use cocoon_inference::{
    Backend, ChatMessage, Engine, EngineConfig, GenerateRequest, GenerationEvent, ModelSource,
    Prompt, SamplingParams,
};

fn engine() -> Engine {
    let path = cocoon_tests::model_path().expect("fetch the model");
    Engine::load(
        &ModelSource::from_path(&path).unwrap(),
        EngineConfig::default(),
    )
    .expect("load the model")
}

fn ask(engine: &Engine, question: &str, sampling: SamplingParams) -> String {
    let request = GenerateRequest {
        prompt: Prompt::Chat(vec![ChatMessage {
            role: "user".into(),
            content: question.into(),
        }]),
        sampling,
    };
    engine.generate_text(request).expect("generate").0
}

#[test]
fn capital_of_france_is_paris() {
    let engine = engine();
    let info = engine.info();
    assert_eq!(info.architecture, "llama");
    assert_eq!(info.quantization, "Q4_1");
    let im_end = engine.tokenizer().token_to_id("<|im_end|>").unwrap();
    assert!(engine.tokenizer().eos_ids().contains(&im_end));
    let greedy = SamplingParams {
        max_tokens: 32,
        ..Default::default()
    };
    let answer = ask(&engine, "What is the capital of France?", greedy.clone());
    assert!(answer.contains("Paris"), "answer: {answer:?}");
    // Greedy is deterministic, whatever the seed.
    let again = ask(
        &engine,
        "What is the capital of France?",
        SamplingParams { seed: 99, ..greedy },
    );
    assert_eq!(answer, again);
}

#[test]
fn seeded_sampling_repeats() {
    let engine = engine();
    let sampling = SamplingParams {
        seed: 42,
        temperature: 0.9,
        top_p: Some(0.95),
        max_tokens: 24,
        ..Default::default()
    };
    let a = ask(&engine, "Tell me a story.", sampling.clone());
    let b = ask(&engine, "Tell me a story.", sampling);
    assert_eq!(a, b);
    assert!(!a.is_empty());
}

#[test]
fn quantized_kernels_agree_with_candle_on_the_real_weights() {
    use candle_core::quantized::gguf_file;
    use cocoon_inference::kernels::{block_sums, Kernel, QMatrix};

    let path = cocoon_tests::model_path().expect("fetch the model");
    let mut file = std::io::BufReader::new(std::fs::File::open(&path).unwrap());
    let content = gguf_file::Content::read(&mut file).unwrap();
    let device = candle_core::Device::Cpu;
    let mut checked = std::collections::BTreeSet::new();
    for name in [
        "blk.0.attn_q.weight",
        "blk.0.attn_k.weight",
        "blk.0.ffn_down.weight",
        "blk.29.ffn_up.weight",
        "token_embd.weight",
    ] {
        let t = content.tensor(&mut file, name, &device).unwrap();
        let m = QMatrix::from_qtensor(&t).unwrap();
        checked.insert(format!("{:?}", t.dtype()));
        // Reference: candle's own dequantization of the same tensor, rows sampled.
        let dense = t.dequantize(&device).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(
            (dense.len(), dense[0].len()),
            (m.rows(), m.cols()),
            "{name}"
        );
        let x: Vec<f32> = (0..m.cols())
            .map(|j| ((j * 7919) % 113) as f32 / 56.0 - 1.0)
            .collect();
        let sums = block_sums(&x);
        let rows = 0..m.rows().min(256);
        for &kernel in Kernel::available() {
            let mut out = vec![0f32; rows.len()];
            m.matmul_with(kernel, rows.clone(), &[&x], &[&sums], &mut [&mut out]);
            for (r, got) in rows.clone().zip(&out) {
                let exact: f64 = dense[r]
                    .iter()
                    .zip(&x)
                    .map(|(w, x)| *w as f64 * *x as f64)
                    .sum();
                let scale: f64 = dense[r]
                    .iter()
                    .zip(&x)
                    .map(|(w, x)| (*w as f64 * *x as f64).abs())
                    .sum();
                let tol = 1e-5 * scale * (m.cols() as f64).sqrt();
                assert!(
                    (*got as f64 - exact).abs() <= tol,
                    "{name} {kernel:?} row {r}: {got} vs {exact}"
                );
            }
        }
    }
    // The file mixes both block types; both were exercised.
    assert!(
        checked.contains("Q4_1") && checked.contains("Q8_0"),
        "{checked:?}"
    );
}

#[test]
fn the_batched_engine_gives_candles_greedy_text_to_concurrent_streams() {
    let path = cocoon_tests::model_path().expect("fetch the model");
    let source = ModelSource::from_path(&path).unwrap();
    // The reference: candle's llama on the weights dequantized to f32, a stream at a time.
    let candle = Engine::load(
        &source,
        EngineConfig {
            backend: Backend::Candle,
            ..EngineConfig::default()
        },
    )
    .unwrap();
    assert_eq!(candle.info().runtime, "candle");
    let batched = engine();
    assert_eq!(batched.info().runtime, "batched");
    let questions = [
        "What is the capital of France?",
        "Name three primary colours.",
        "Write a haiku about the sea.",
        "Explain photosynthesis in one sentence.",
    ];
    let greedy = SamplingParams {
        max_tokens: 40,
        ..Default::default()
    };
    // All at once through the batch (joining one after another, prompts in chunks).
    let handles: Vec<_> = questions
        .iter()
        .map(|q| {
            let g = batched
                .generate(GenerateRequest {
                    prompt: Prompt::Chat(vec![ChatMessage::new("user", *q)]),
                    sampling: greedy.clone(),
                })
                .unwrap();
            std::thread::spawn(move || {
                let mut g = g;
                let mut text = String::new();
                while let Some(e) = g.blocking_next() {
                    match e {
                        GenerationEvent::Text(t) => text.push_str(&t),
                        GenerationEvent::Done(_) => break,
                        GenerationEvent::Error(e) => panic!("{e}"),
                    }
                }
                text
            })
        })
        .collect();
    for (q, h) in questions.iter().zip(handles) {
        let ours = h.join().unwrap();
        let theirs = ask(&candle, q, greedy.clone());
        assert_eq!(ours, theirs, "{q}");
    }
}
