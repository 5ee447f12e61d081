//! Streams a greedy chat answer from a model: `cargo run --release -p cocoon-inference
//! --example generate -- MODEL_PATH "question" [max_tokens]`. With `COCOON_DEBUG_TOKENS=1` it
//! also prints the rendered prompt and its token ids.

use std::io::Write;

use cocoon_inference::{
    ChatMessage, Engine, EngineConfig, GenerateRequest, GenerationEvent, ModelSource, Prompt,
    SamplingParams,
};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .ok_or("usage: generate MODEL_PATH QUESTION [MAX_TOKENS]")?;
    let question = args
        .next()
        .unwrap_or_else(|| "What is the capital of France?".to_string());
    let max_tokens = args.next().map(|s| s.parse()).transpose()?.unwrap_or(64);
    let engine = Engine::load(
        &ModelSource::from_path(path.as_ref())?,
        EngineConfig::default(),
    )?;
    eprintln!("{:?}", engine.info());
    let prompt = Prompt::Chat(vec![ChatMessage::new("user", question)]);
    if std::env::var_os("COCOON_DEBUG_TOKENS").is_some() {
        eprintln!("{:?}", engine.render_prompt(&prompt)?);
        let ids = engine.prompt_tokens(&prompt)?;
        let pieces: Vec<String> = ids
            .iter()
            .map(|&id| {
                engine
                    .tokenizer()
                    .inner()
                    .id_to_token(id)
                    .unwrap_or_default()
            })
            .collect();
        eprintln!("{ids:?}\n{pieces:?}");
    }
    let mut generation = engine.generate(GenerateRequest {
        prompt,
        sampling: SamplingParams::greedy(max_tokens),
    })?;
    while let Some(event) = generation.blocking_next() {
        match event {
            GenerationEvent::Text(t) => {
                print!("{t}");
                std::io::stdout().flush()?;
            }
            GenerationEvent::Done(usage) => eprintln!("\n{usage:?}"),
            GenerationEvent::Error(e) => return Err(e.into()),
        }
    }
    Ok(())
}
