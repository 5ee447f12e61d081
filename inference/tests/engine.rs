//! End-to-end engine tests on tiny synthetic models in both formats (GGUF with a metadata
//! tokenizer and chat template; safetensors with tokenizer.json and tokenizer_config.json).

use std::path::Path;
use std::time::{Duration, Instant};

use cocoon_inference::stream::cut_at_stop;
use cocoon_inference::testing::{
    write_tiny_gguf, write_tiny_safetensors, TinySpec, TINY_EOS, TINY_IM_START,
};
use cocoon_inference::{
    ChatMessage, DeviceChoice, Engine, EngineConfig, FinishReason, GenerateError, GenerateRequest,
    Generation, GenerationEvent, LoadError, ModelSource, Prompt, SamplingParams, Usage,
};
use tempfile::TempDir;

#[derive(Clone, Copy, Debug)]
enum Format {
    Gguf,
    Safetensors,
}

const FORMATS: [Format; 2] = [Format::Gguf, Format::Safetensors];

fn cpu(max_concurrent: usize, channel_capacity: usize) -> EngineConfig {
    EngineConfig {
        device: DeviceChoice::Cpu,
        max_concurrent,
        channel_capacity,
        ..EngineConfig::default()
    }
}

fn write(format: Format, dir: &Path, spec: &TinySpec) -> ModelSource {
    match format {
        Format::Gguf => {
            let path = dir.join("tiny.gguf");
            write_tiny_gguf(&path, spec).unwrap();
            ModelSource::from_path(&path).unwrap()
        }
        Format::Safetensors => {
            let path = dir.join("tiny-llama");
            write_tiny_safetensors(&path, spec).unwrap();
            ModelSource::from_path(&path).unwrap()
        }
    }
}

fn engine_with(format: Format, spec: &TinySpec, config: EngineConfig) -> (TempDir, Engine) {
    let dir = tempfile::tempdir().unwrap();
    let source = write(format, dir.path(), spec);
    let engine = Engine::load(&source, config).unwrap();
    (dir, engine)
}

fn engine(format: Format) -> (TempDir, Engine) {
    engine_with(format, &TinySpec::default(), cpu(2, 64))
}

fn chat(q: &str) -> Prompt {
    Prompt::Chat(vec![ChatMessage::new("user", q)])
}

fn request(prompt: Prompt, sampling: SamplingParams) -> GenerateRequest {
    GenerateRequest { prompt, sampling }
}

fn sampled(seed: u64, max_tokens: u32) -> SamplingParams {
    SamplingParams {
        seed,
        temperature: 1.0,
        top_p: Some(0.95),
        top_k: Some(50),
        max_tokens,
        ..Default::default()
    }
}

/// All events of a generation: text chunks and the final usage.
fn drain(mut generation: Generation) -> (Vec<String>, Usage) {
    let mut chunks = Vec::new();
    while let Some(event) = generation.blocking_next() {
        match event {
            GenerationEvent::Text(t) => chunks.push(t),
            GenerationEvent::Done(usage) => {
                assert!(generation.blocking_next().is_none(), "Done must be last");
                return (chunks, usage);
            }
            GenerationEvent::Error(e) => panic!("generation failed: {e}"),
        }
    }
    panic!("stream ended without Done");
}

fn wait_idle(engine: &Engine) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while engine.active() > 0 {
        assert!(Instant::now() < deadline, "generation thread did not exit");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn gguf_loads_metadata_tokenizer_and_template() {
    let (_dir, engine) = engine(Format::Gguf);
    let info = engine.info();
    assert_eq!(info.name, "tiny-llama");
    assert_eq!(info.architecture, "llama");
    assert_eq!(info.context_length, 256);
    assert_eq!(info.quantization, "Q8_0");
    assert_eq!(info.runtime_weights, "Q8_0", "runs on our kernels, packed");
    assert_eq!(info.runtime, "batched");
    assert_eq!(info.device, "cpu");
    assert_eq!(info.format, "gguf");
    assert!(info.parameters > 50_000);

    let tok = engine.tokenizer();
    assert!(tok.is_eos(TINY_EOS));
    assert!(tok.is_eos(0), "<|endoftext|> also ends a generation");
    assert_eq!(tok.eos_token(), Some("<|im_end|>"));
    assert_eq!(tok.bos_token(), Some("<|endoftext|>"));
    assert!(!tok.add_bos());
    let text = "<|im_start|>user\nHello the world, café ☕<|im_end|>\n";
    let ids = tok.encode(text, false).unwrap();
    assert_eq!(ids[0], TINY_IM_START);
    assert!(ids.contains(&TINY_EOS));
    assert_eq!(tok.decode_with_special(&ids).unwrap(), text);
    assert_eq!(
        tok.decode(&ids).unwrap(),
        "user\nHello the world, café ☕\n"
    );

    let rendered = engine.render_prompt(&chat("Hi")).unwrap();
    assert_eq!(
        rendered,
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    );
    assert_eq!(
        engine.count_prompt_tokens(&chat("Hi")).unwrap(),
        tok.encode(&rendered, false).unwrap().len()
    );
}

#[test]
fn safetensors_loads_config_tokenizer_json_and_template() {
    let (_dir, engine) = engine(Format::Safetensors);
    let info = engine.info();
    assert_eq!(info.name, "tiny-llama");
    assert_eq!(info.architecture, "llama");
    assert_eq!(info.context_length, 256);
    assert_eq!(info.quantization, "f32");
    assert_eq!(info.format, "safetensors");
    assert!(engine.tokenizer().is_eos(TINY_EOS));
    assert_eq!(engine.tokenizer().eos_token(), Some("<|im_end|>"));
    let (_g, gguf) = self::engine(Format::Gguf);
    for p in [chat("Hi"), Prompt::Text("the world".into())] {
        assert_eq!(
            engine.prompt_tokens(&p).unwrap(),
            gguf.prompt_tokens(&p).unwrap()
        );
    }
}

#[test]
fn missing_template_falls_back_to_chatml() {
    let spec = TinySpec {
        chat_template: None,
        ..Default::default()
    };
    for format in FORMATS {
        let (_dir, engine) = engine_with(format, &spec, cpu(1, 8));
        assert_eq!(
            engine.render_prompt(&chat("Hi")).unwrap(),
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
    }
}

#[test]
fn greedy_is_deterministic_and_ignores_the_seed() {
    for format in FORMATS {
        let (_dir, engine) = engine(format);
        let run = |seed| {
            let sampling = SamplingParams {
                seed,
                ..SamplingParams::greedy(40)
            };
            engine
                .generate_text(request(chat("Hello"), sampling))
                .unwrap()
        };
        let (a, usage) = run(0);
        assert_eq!(usage.completion_tokens, 40, "{format:?}");
        assert_eq!(run(0).0, a, "{format:?}");
        assert_eq!(run(12345).0, a, "{format:?}");
    }
}

#[test]
fn same_seed_same_text_and_seeds_differ() {
    for format in FORMATS {
        let (_dir, engine) = engine(format);
        let run = |seed| {
            engine
                .generate_text(request(chat("Hello"), sampled(seed, 30)))
                .unwrap()
                .0
        };
        let first = run(42);
        assert_eq!(run(42), first, "{format:?}");
        let distinct: std::collections::HashSet<String> = (0..4).map(run).collect();
        assert!(distinct.len() >= 2, "{format:?}: seeds gave {distinct:?}");
    }
}

#[test]
fn max_tokens_gives_length() {
    for format in FORMATS {
        let (_dir, engine) = engine(format);
        for max_tokens in [1, 7] {
            let (_, usage) = engine
                .generate_text(request(chat("Hi"), sampled(1, max_tokens)))
                .unwrap();
            assert_eq!(usage.completion_tokens, max_tokens);
            assert_eq!(usage.finish_reason, FinishReason::Length);
            assert!(usage.prompt_tokens > 10);
        }
    }
}

#[test]
fn context_length_bounds_generation() {
    let (_dir, engine) = engine(Format::Gguf);
    let long = "ab ".repeat(100);
    let prompt = Prompt::Text(long.clone());
    let prompt_tokens = engine.count_prompt_tokens(&prompt).unwrap();
    assert!(
        prompt_tokens < 256 && prompt_tokens > 150,
        "{prompt_tokens}"
    );
    let (_, usage) = engine
        .generate_text(request(prompt, SamplingParams::greedy(1000)))
        .unwrap();
    assert_eq!(usage.finish_reason, FinishReason::Length);
    assert_eq!(usage.prompt_tokens + usage.completion_tokens, 256);

    let too_long = Prompt::Text(long.repeat(2));
    assert!(matches!(
        engine.generate(request(too_long, SamplingParams::greedy(10))),
        Err(GenerateError::PromptTooLong {
            context_length: 256,
            ..
        })
    ));
    assert_eq!(engine.active(), 0, "a refused request holds no permit");
}

#[test]
fn stop_strings_cut_the_output() {
    for format in FORMATS {
        let (_dir, engine) = engine(format);
        let (full, _) = engine
            .generate_text(request(chat("Hello"), SamplingParams::greedy(40)))
            .unwrap();
        let chars: Vec<char> = full.chars().collect();
        assert!(chars.len() > 12, "{full:?}");
        let stop: String = chars[8..10].iter().collect();
        let sampling = SamplingParams {
            stop: vec![stop.clone(), "never-appears".into()],
            ..SamplingParams::greedy(40)
        };
        let generation = engine.generate(request(chat("Hello"), sampling)).unwrap();
        let (chunks, usage) = drain(generation);
        let text = chunks.concat();
        let (expected, hit) = cut_at_stop(&full, std::slice::from_ref(&stop));
        assert!(hit);
        assert_eq!(text, expected, "{format:?}");
        assert!(!text.contains(&stop));
        assert_eq!(usage.finish_reason, FinishReason::Stop);
        assert!(usage.completion_tokens < 40);
    }
}

#[test]
fn eos_ends_the_generation() {
    let spec = TinySpec {
        eos_first: true,
        ..Default::default()
    };
    for format in FORMATS {
        let (_dir, engine) = engine_with(format, &spec, cpu(1, 8));
        let (text, usage) = engine
            .generate_text(request(chat("Hi"), sampled(3, 50)))
            .unwrap();
        assert_eq!(text, "");
        assert_eq!(usage.completion_tokens, 1);
        assert_eq!(usage.finish_reason, FinishReason::Stop);
    }
}

#[test]
fn busy_past_the_limit_and_permit_released() {
    let (_dir, engine) = engine_with(Format::Gguf, &TinySpec::default(), cpu(1, 1));
    // Nobody reads: the generation blocks on its one-slot channel while holding the permit.
    let first = engine
        .generate(request(chat("Hi"), SamplingParams::greedy(200)))
        .unwrap();
    let busy = engine.generate(request(chat("Hi"), SamplingParams::greedy(5)));
    assert!(matches!(busy, Err(GenerateError::Busy { limit: 1 })));
    assert_eq!(engine.active(), 1);
    drop(first);
    wait_idle(&engine);
    let (_, usage) = engine
        .generate_text(request(chat("Hi"), SamplingParams::greedy(5)))
        .unwrap();
    assert_eq!(usage.completion_tokens, 5);
    wait_idle(&engine);
}

#[test]
fn concurrent_generations_match_sequential_ones() {
    let (_dir, engine) = engine_with(Format::Gguf, &TinySpec::default(), cpu(3, 4));
    let expected: Vec<String> = (0..3)
        .map(|s| {
            engine
                .generate_text(request(chat("Hi"), sampled(s, 25)))
                .unwrap()
                .0
        })
        .collect();
    let generations: Vec<Generation> = (0..3)
        .map(|s| {
            engine
                .generate(request(chat("Hi"), sampled(s, 25)))
                .unwrap()
        })
        .collect();
    assert_eq!(engine.active(), 3);
    let got: Vec<String> = generations
        .into_iter()
        .map(|g| drain(g).0.concat())
        .collect();
    assert_eq!(got, expected);
    wait_idle(&engine);
}

#[test]
fn cancel_stops_promptly() {
    let (_dir, engine) = engine_with(Format::Gguf, &TinySpec::default(), cpu(1, 2));
    let mut generation = engine
        .generate(request(chat("Hi"), SamplingParams::greedy(200)))
        .unwrap();
    assert!(matches!(
        generation.blocking_next(),
        Some(GenerationEvent::Text(_))
    ));
    generation.cancel();
    let mut done = None;
    while let Some(event) = generation.blocking_next() {
        match event {
            GenerationEvent::Text(_) => {}
            GenerationEvent::Done(u) => done = Some(u),
            GenerationEvent::Error(e) => panic!("{e}"),
        }
    }
    if let Some(usage) = done {
        assert_eq!(usage.finish_reason, FinishReason::Cancelled);
        assert!(usage.completion_tokens < 200);
    }
    wait_idle(&engine);
}

#[test]
fn dropping_the_generation_cancels_it() {
    let (_dir, engine) = engine_with(Format::Safetensors, &TinySpec::default(), cpu(1, 1));
    let started = Instant::now();
    let generation = engine
        .generate(request(chat("Hi"), SamplingParams::greedy(250)))
        .unwrap();
    std::thread::sleep(Duration::from_millis(20));
    drop(generation);
    wait_idle(&engine);
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn async_stream_works() {
    let (_dir, engine) = engine(Format::Gguf);
    let mut generation = engine
        .generate(request(chat("Hi"), SamplingParams::greedy(12)))
        .unwrap();
    let mut text = String::new();
    let mut usage = None;
    while let Some(event) = generation.next().await {
        match event {
            GenerationEvent::Text(t) => text.push_str(&t),
            GenerationEvent::Done(u) => usage = Some(u),
            GenerationEvent::Error(e) => panic!("{e}"),
        }
    }
    assert_eq!(usage.unwrap().completion_tokens, 12);
    let engine2 = engine.clone();
    let blocking = tokio::task::spawn_blocking(move || {
        engine2
            .generate_text(request(chat("Hi"), SamplingParams::greedy(12)))
            .unwrap()
            .0
    })
    .await
    .unwrap();
    assert_eq!(blocking, text);
}

#[test]
fn invalid_requests_and_configs_are_typed_errors() {
    let (dir, engine) = engine(Format::Gguf);
    let bad = SamplingParams {
        temperature: -1.0,
        ..Default::default()
    };
    assert!(matches!(
        engine.generate(request(chat("Hi"), bad)),
        Err(GenerateError::InvalidRequest(_))
    ));
    assert!(matches!(
        engine.generate(request(
            Prompt::Text(String::new()),
            SamplingParams::greedy(3)
        )),
        Err(GenerateError::InvalidRequest(_))
    ));
    let source = ModelSource::Gguf(dir.path().join("tiny.gguf"));
    assert!(matches!(
        Engine::load(&source, cpu(0, 1)),
        Err(LoadError::Config(_))
    ));
    assert!(matches!(
        ModelSource::from_path(&dir.path().join("absent.gguf")),
        Err(LoadError::Io { .. })
    ));
    let txt = dir.path().join("notes.txt");
    std::fs::write(&txt, "hi").unwrap();
    assert!(matches!(
        ModelSource::from_path(&txt),
        Err(LoadError::UnrecognisedSource(_))
    ));
    assert!(matches!(
        Engine::load(
            &ModelSource::Safetensors(dir.path().to_path_buf()),
            cpu(1, 1)
        ),
        Err(LoadError::MissingFile(_))
    ));
}

/// Reads a generation to the end on its own thread; its text and usage.
fn spawn_drain(generation: Generation) -> std::thread::JoinHandle<(String, Usage)> {
    std::thread::spawn(move || {
        let (chunks, usage) = drain(generation);
        (chunks.concat(), usage)
    })
}

/// Waits until a generation has sampled at least `n` tokens.
fn wait_tokens(generation: &Generation, n: u32) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while generation.tokens_so_far() < n {
        assert!(Instant::now() < deadline, "no progress");
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn streams_joining_and_leaving_the_batch_produce_their_solo_outputs() {
    // Prompt chunks of 3 tokens per step, so prompts are cut and share steps with decodes.
    let mut config = cpu(8, 64);
    config.batch.prefill_chunk = 3;
    let (_dir, engine) = engine_with(Format::Gguf, &TinySpec::default(), config);
    assert_eq!(engine.info().runtime, "batched");
    let requests = [
        request(chat("Hello the world"), SamplingParams::greedy(80)),
        request(chat("north and then the world in the"), sampled(7, 50)),
        request(
            Prompt::Text("the the world".into()),
            SamplingParams::greedy(12),
        ),
        request(chat("café"), sampled(3, 70)),
    ];
    // Alone, one at a time.
    let solo: Vec<(String, Usage)> = requests
        .iter()
        .map(|r| {
            let (chunks, usage) = drain(engine.generate(r.clone()).unwrap());
            (chunks.concat(), usage)
        })
        .collect();
    wait_idle(&engine);
    // Together: each joins while the earlier ones are mid-generation; the short one leaves
    // early while the others go on.
    let mut handles = Vec::new();
    let mut previous: Option<Generation> = None;
    for r in &requests {
        let generation = engine.generate(r.clone()).unwrap();
        if let Some(p) = previous.take() {
            handles.push(spawn_drain(p));
        }
        wait_tokens(&generation, 3);
        previous = Some(generation);
    }
    handles.push(spawn_drain(previous.unwrap()));
    for ((text, usage), (solo_text, solo_usage)) in
        handles.into_iter().map(|h| h.join().unwrap()).zip(&solo)
    {
        assert_eq!(&text, solo_text);
        assert_eq!(usage.completion_tokens, solo_usage.completion_tokens);
        assert_eq!(usage.finish_reason, solo_usage.finish_reason);
    }
    wait_idle(&engine);
}

#[test]
fn a_cancelled_stream_frees_its_slot_at_once() {
    let (_dir, engine) = engine_with(Format::Gguf, &TinySpec::default(), cpu(1, 64));
    let long = request(chat("Hello the world"), sampled(1, 10_000));
    let generation = engine.generate(long.clone()).unwrap();
    wait_tokens(&generation, 2);
    assert!(matches!(
        engine.generate(long.clone()),
        Err(GenerateError::Busy { limit: 1 })
    ));
    generation.cancel();
    let (_, usage) = drain(generation);
    assert_eq!(usage.finish_reason, FinishReason::Cancelled);
    // The slot was released before the final event was sent.
    assert_eq!(engine.active(), 0);
    let again = engine
        .generate(request(chat("hi"), SamplingParams::greedy(4)))
        .unwrap();
    let (_, usage) = drain(again);
    assert_eq!(usage.completion_tokens, 4);
}

#[test]
fn a_slow_reader_does_not_hold_up_the_others() {
    // A channel of one chunk: the first stream's reader never reads until the end.
    let (_dir, engine) = engine_with(Format::Gguf, &TinySpec::default(), cpu(4, 1));
    let stalled = engine
        .generate(request(chat("Hello the world"), SamplingParams::greedy(60)))
        .unwrap();
    wait_tokens(&stalled, 2);
    let held = stalled.tokens_so_far();
    let other = engine
        .generate(request(chat("the world"), SamplingParams::greedy(40)))
        .unwrap();
    let (_, usage) = drain(other);
    assert_eq!(usage.completion_tokens, 40);
    // The stalled one waited for its reader (a chunk in the channel, one in its outbox).
    assert!(
        stalled.tokens_so_far() <= held + 10,
        "{} vs {held}",
        stalled.tokens_so_far()
    );
    let (_, usage) = drain(stalled);
    assert_eq!(usage.completion_tokens, 60);
}
