//! The real model (SmolLM2-135M-Instruct Q4_1 from its registry package) in process.

use cocoon_inference::{
    ChatMessage, Engine, EngineConfig, GenerateRequest, ModelSource, Prompt, SamplingParams,
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
fn our_batched_forward_gives_the_same_greedy_text_as_the_engine() {
    use candle_core::quantized::gguf_file;
    use cocoon_inference::llama::Llama;

    let path = cocoon_tests::model_path().expect("fetch the model");
    let engine = engine();
    let mut file = std::io::BufReader::new(std::fs::File::open(&path).unwrap());
    let content = gguf_file::Content::read(&mut file).unwrap();
    let ours = Llama::from_gguf(&content, &mut file).unwrap();
    let questions = [
        "What is the capital of France?",
        "Name three primary colours.",
        "Write a haiku about the sea.",
    ];
    let tokens = 40;
    let prompts: Vec<Vec<u32>> = questions
        .iter()
        .map(|q| {
            engine
                .prompt_tokens(&Prompt::Chat(vec![ChatMessage::new("user", *q)]))
                .unwrap()
        })
        .collect();
    // All three at once: prompts in one step, then one token each per step; a sequence that
    // ends leaves the batch.
    let mut caches: Vec<_> = prompts
        .iter()
        .map(|p| ours.cache(p.len() + tokens))
        .collect();
    let mut outputs: Vec<Vec<u32>> = vec![Vec::new(); prompts.len()];
    let mut live: Vec<usize> = (0..prompts.len()).collect();
    let argmax = |l: &[f32]| {
        l.iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map(|(i, _)| i as u32)
            .unwrap()
    };
    let mut inputs: Vec<Vec<u32>> = prompts.clone();
    let mut ws = cocoon_inference::llama::Workspace::new(2).unwrap();
    while !live.is_empty() {
        let mut refs: Vec<_> = Vec::new();
        for (i, c) in caches.iter_mut().enumerate() {
            if live.contains(&i) {
                refs.push(c);
            }
        }
        let toks: Vec<&[u32]> = live.iter().map(|&i| inputs[i].as_slice()).collect();
        ours.step(&mut ws, &mut refs, &toks).unwrap();
        let mut still = Vec::new();
        for (k, &i) in live.iter().enumerate() {
            let next = argmax(ws.logits(k));
            if engine.tokenizer().is_eos(next) || outputs[i].len() + 1 >= tokens {
                if !engine.tokenizer().is_eos(next) {
                    outputs[i].push(next);
                }
                continue;
            }
            outputs[i].push(next);
            inputs[i] = vec![next];
            still.push(i);
        }
        live = still;
    }
    for (q, out) in questions.iter().zip(&outputs) {
        let ours = engine.tokenizer().decode(out).unwrap();
        let theirs = ask(
            &engine,
            q,
            SamplingParams {
                max_tokens: tokens as u32,
                ..Default::default()
            },
        );
        assert_eq!(ours.trim_end(), theirs.trim_end(), "{q}");
    }
}
