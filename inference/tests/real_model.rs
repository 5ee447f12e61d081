//! The production model, when present: SmolLM2-135M-Instruct Q4_1 GGUF. Ignored by default;
//! run with `COCOON_TEST_GGUF=/path/to/SmolLM2-135M-Instruct.Q4_1.gguf cargo test -p
//! cocoon-inference --test real_model -- --ignored --nocapture`.

use std::time::Instant;

use cocoon_inference::{
    ChatMessage, DeviceChoice, Engine, EngineConfig, FinishReason, GenerateRequest, ModelSource,
    Prompt, SamplingParams,
};

#[test]
#[ignore = "needs COCOON_TEST_GGUF pointing at SmolLM2-135M-Instruct.Q4_1.gguf"]
fn smollm2_knows_the_capital_of_france() {
    let Ok(path) = std::env::var("COCOON_TEST_GGUF") else {
        eprintln!("COCOON_TEST_GGUF not set; skipping");
        return;
    };
    let started = Instant::now();
    let source = ModelSource::from_path(path.as_ref()).unwrap();
    let config = EngineConfig {
        device: DeviceChoice::Cpu,
        ..Default::default()
    };
    let engine = Engine::load(&source, config).unwrap();
    let load = started.elapsed();
    let info = engine.info();
    assert_eq!(info.architecture, "llama");
    assert_eq!(info.quantization, "Q4_1");
    assert!(engine
        .tokenizer()
        .eos_ids()
        .contains(&engine.tokenizer().token_to_id("<|im_end|>").unwrap()));

    let request = GenerateRequest {
        prompt: Prompt::Chat(vec![ChatMessage::new(
            "user",
            "What is the capital of France?",
        )]),
        sampling: SamplingParams::greedy(64),
    };
    let (text, usage) = engine.generate_text(request).unwrap();
    eprintln!(
        "{info:?}\nload {load:?}; {text:?}; {usage:?}; {:.1} tok/s",
        usage.completion_tokens as f64 / (usage.total_ms - usage.time_to_first_token_ms) * 1000.0
    );
    assert_eq!(text, "The capital of France is Paris.");
    assert_eq!(usage.finish_reason, FinishReason::Stop);
}
