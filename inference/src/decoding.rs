//! One generation's decoding, whichever runtime runs its forward passes: logits in, the next
//! token to feed and the text to stream out.
//!
//! A [`Decoding`] owns everything per sequence that is not the model's state: the seeded
//! sampler, the incremental detokeniser and the stop-string matcher ([`crate::stream`]), the
//! limits (`max_tokens`, the context length) and the counters [`Usage`] reports (tokens
//! sampled, time to the first one). Each runtime runs the model and calls
//! [`Decoding::step`] with the logits of the sequence's last position; the [`Step`] it gets
//! back says what text to send and whether to feed a token, finish (with a
//! [`FinishReason`]) or fail. The batched runtime ([`crate::batched`]) keeps one per sequence
//! of its batch, the candle runtime ([`crate::candle`]) one per generation thread, so both
//! stream exactly the same text for the same logits.
//!
//! A step, in order: sample a token (greedy is the argmax, else the seeded sampler), count
//! it, end on an EOS token, detokenise it, cut at a stop string, then end when `max_tokens`
//! tokens have been sampled or the context is full. A natural end (EOS or a limit) releases
//! the text held back for an incomplete character or a possible stop string. Cancellation
//! and delivery are the runtime's: a `Decoding` only computes.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Instant;

use candle_core::{Device, Tensor};
use candle_transformers::generation::LogitsProcessor;

use crate::generation::{FinishReason, Usage};
use crate::sampling::{argmax, SamplingParams};
use crate::stream::{IncrementalDecoder, StopMatcher, StopStep};
use crate::tokenizer::TextTokenizer;

/// The logits of a sequence's last position, as a runtime has them.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Logits<'a> {
    /// A row of our own step's output (batched runtime, on the CPU). Greedy decoding takes
    /// its [`argmax`]; sampling copies it into a tensor for the sampler.
    Row(&'a [f32]),
    /// A candle tensor of vocabulary length (candle runtime, on any device); always handed
    /// to the sampler, whose greedy strategy is candle's argmax.
    Tensor(&'a Tensor),
}

/// What one [`Decoding::step`] decided.
#[derive(Debug, PartialEq)]
pub(crate) struct Step {
    /// Text to stream, in this order, each non-empty piece one text event: the token's own
    /// text, then at a natural end the detokeniser's last text and the stop matcher's held
    /// tail. Sent before acting on `next`, even when `next` is a failure.
    pub text: [String; 3],
    /// What the runtime does next.
    pub next: Next,
}

/// What a runtime does after a [`Step`].
#[derive(Debug, PartialEq)]
pub(crate) enum Next {
    /// Feed this token to the model (at [`Decoding::position`]) and step again.
    Feed(u32),
    /// The generation is over.
    Finish(FinishReason),
    /// Sampling or detokenising failed; the generation ends with this error.
    Fail(String),
}

impl Step {
    fn new(next: Next) -> Step {
        Step {
            text: Default::default(),
            next,
        }
    }
}

/// The decoding state of one generation (see the module docs).
pub(crate) struct Decoding {
    sampler: LogitsProcessor,
    greedy: bool,
    max_tokens: u32,
    prompt_tokens: usize,
    context_length: usize,
    detok: IncrementalDecoder,
    stop: StopMatcher,
    /// Tokens sampled so far, published for
    /// [`Generation::tokens_so_far`](crate::Generation::tokens_so_far).
    sampled: Arc<AtomicU32>,
    started: Instant,
    completion_tokens: u32,
    first_token_ms: Option<f64>,
}

impl Decoding {
    /// The decoding of a generation of `prompt_tokens` prompt tokens with `sampling`, on a
    /// model of `context_length` positions, started at `started` (for its timings); it
    /// publishes its token count to `sampled`.
    pub fn new(
        sampling: &SamplingParams,
        prompt_tokens: usize,
        context_length: usize,
        sampled: Arc<AtomicU32>,
        started: Instant,
    ) -> Decoding {
        Decoding {
            sampler: sampling.processor(),
            greedy: sampling.is_greedy(),
            max_tokens: sampling.max_tokens,
            prompt_tokens,
            context_length,
            detok: IncrementalDecoder::new(),
            stop: StopMatcher::new(&sampling.stop),
            sampled,
            started,
            completion_tokens: 0,
            first_token_ms: None,
        }
    }

    /// The position of the last sampled token, where [`Next::Feed`]'s token goes.
    pub fn position(&self) -> usize {
        self.prompt_tokens + self.completion_tokens as usize - 1
    }

    /// The usage of the generation ending now for `finish_reason`.
    pub fn usage(&self, finish_reason: FinishReason) -> Usage {
        Usage {
            prompt_tokens: self.prompt_tokens as u32,
            completion_tokens: self.completion_tokens,
            time_to_first_token_ms: self.first_token_ms.unwrap_or(0.0),
            total_ms: ms_since(self.started),
            finish_reason,
        }
    }

    /// Samples the next token from `logits` and decides what follows (see the module docs).
    pub fn step(&mut self, logits: Logits<'_>, tokenizer: &TextTokenizer) -> Step {
        match self.sample(logits) {
            Ok(token) => self.push(token, tokenizer),
            Err(e) => Step::new(Next::Fail(e.to_string())),
        }
    }

    fn sample(&mut self, logits: Logits<'_>) -> candle_core::Result<u32> {
        match logits {
            Logits::Row(row) if self.greedy => Ok(argmax(row)),
            Logits::Row(row) => {
                self.sampler
                    .sample(&Tensor::from_slice(row, row.len(), &Device::Cpu)?)
            }
            Logits::Tensor(t) => self.sampler.sample(t),
        }
    }

    /// Takes a sampled token: counts it, streams its text and decides whether to go on.
    fn push(&mut self, token: u32, tokenizer: &TextTokenizer) -> Step {
        self.completion_tokens += 1;
        self.sampled
            .store(self.completion_tokens, Ordering::Release);
        let started = self.started;
        self.first_token_ms.get_or_insert_with(|| ms_since(started));
        if tokenizer.is_eos(token) {
            return self.end_naturally(FinishReason::Stop, String::new(), tokenizer);
        }
        let text = match self.detok.push(token, |ids: &[u32]| tokenizer.decode(ids)) {
            Ok(Some(text)) => match self.stop.push(&text) {
                StopStep::Continue(out) => out,
                StopStep::Stop(out) => {
                    return Step {
                        text: [out, String::new(), String::new()],
                        next: Next::Finish(FinishReason::Stop),
                    }
                }
            },
            Ok(None) => String::new(),
            Err(e) => return Step::new(Next::Fail(e)),
        };
        let position = self.prompt_tokens + self.completion_tokens as usize;
        if self.completion_tokens >= self.max_tokens || position >= self.context_length {
            return self.end_naturally(FinishReason::Length, text, tokenizer);
        }
        Step {
            text: [text, String::new(), String::new()],
            next: Next::Feed(token),
        }
    }

    /// A natural end after `text`: releases the text held back for an incomplete character
    /// or a possible stop string (which may still complete a stop string).
    fn end_naturally(
        &mut self,
        reason: FinishReason,
        text: String,
        tokenizer: &TextTokenizer,
    ) -> Step {
        let rest = match self.detok.finish(|ids: &[u32]| tokenizer.decode(ids)) {
            Ok(rest) => rest,
            Err(e) => {
                return Step {
                    text: [text, String::new(), String::new()],
                    next: Next::Fail(e),
                }
            }
        };
        match self.stop.push(&rest) {
            StopStep::Continue(out) => Step {
                text: [text, out, self.stop.finish()],
                next: Next::Finish(reason),
            },
            StopStep::Stop(out) => Step {
                text: [text, out, String::new()],
                next: Next::Finish(FinishReason::Stop),
            },
        }
    }
}

fn ms_since(started: Instant) -> f64 {
    started.elapsed().as_secs_f64() * 1e3
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{tiny_tokenizer, TINY_BOS, TINY_EOS};

    fn tokenizer() -> TextTokenizer {
        TextTokenizer::new(tiny_tokenizer(), Some(TINY_BOS), false, vec![TINY_EOS])
    }

    /// Logits that make `token` the greedy pick.
    fn pick(token: u32, vocab: usize) -> Vec<f32> {
        let mut row = vec![0.0; vocab];
        row[token as usize] = 1.0;
        row
    }

    fn decoding(sampling: &SamplingParams, prompt: usize, context: usize) -> Decoding {
        let sampled = Arc::new(AtomicU32::new(0));
        Decoding::new(sampling, prompt, context, sampled, Instant::now())
    }

    /// Runs greedy steps over `tokens` (their text's ids) until the decoding stops feeding;
    /// returns the text streamed, the end and the tokens counted.
    fn run(d: &mut Decoding, tok: &TextTokenizer, tokens: &[u32]) -> (String, Next, u32) {
        let vocab = tok.vocab_size();
        let mut text = String::new();
        for &t in tokens {
            let step = d.step(Logits::Row(&pick(t, vocab)), tok);
            text.extend(step.text);
            match step.next {
                Next::Feed(fed) => assert_eq!(fed, t),
                end => return (text, end, d.completion_tokens),
            }
        }
        (text, Next::Feed(u32::MAX), d.completion_tokens)
    }

    fn ids(tok: &TextTokenizer, text: &str) -> Vec<u32> {
        tok.encode(text, false).unwrap()
    }

    #[test]
    fn streams_text_and_stops_at_max_tokens() {
        let tok = tokenizer();
        let tokens = ids(&tok, "the world is here");
        let mut d = decoding(&SamplingParams::greedy(3), 5, 256);
        let (text, end, n) = run(&mut d, &tok, &tokens);
        assert_eq!(text, tok.decode(&tokens[..3]).unwrap());
        assert_eq!((end, n), (Next::Finish(FinishReason::Length), 3));
        let usage = d.usage(FinishReason::Length);
        assert_eq!((usage.prompt_tokens, usage.completion_tokens), (5, 3));
        assert!(usage.time_to_first_token_ms <= usage.total_ms);
    }

    #[test]
    fn the_context_length_ends_it_too() {
        let tok = tokenizer();
        let tokens = ids(&tok, "the world is here");
        let mut d = decoding(&SamplingParams::greedy(100), 5, 7);
        let (_, end, n) = run(&mut d, &tok, &tokens);
        assert_eq!((end, n), (Next::Finish(FinishReason::Length), 2));
        assert_eq!(d.position(), 6);
    }

    #[test]
    fn eos_is_counted_and_ends_it() {
        let tok = tokenizer();
        let mut tokens = ids(&tok, "the");
        tokens.push(TINY_EOS);
        let mut d = decoding(&SamplingParams::greedy(100), 1, 256);
        let (text, end, n) = run(&mut d, &tok, &tokens);
        assert_eq!(text, "the");
        assert_eq!(
            (end, n as usize),
            (Next::Finish(FinishReason::Stop), tokens.len())
        );
    }

    #[test]
    fn a_stop_string_cuts_the_text() {
        let tok = tokenizer();
        let tokens = ids(&tok, "the world is here");
        let sampling = SamplingParams {
            stop: vec!["ld".to_string()],
            ..SamplingParams::greedy(100)
        };
        let mut d = decoding(&sampling, 1, 256);
        let (text, end, _) = run(&mut d, &tok, &tokens);
        assert_eq!(text, "the wor");
        assert_eq!(end, Next::Finish(FinishReason::Stop));
    }

    #[test]
    fn a_held_back_tail_is_released_at_the_end() {
        let tok = tokenizer();
        // "wo" could begin the stop string "wox": held back until the end releases it.
        let tokens = ids(&tok, "the wo");
        let sampling = SamplingParams {
            stop: vec!["wox".to_string()],
            ..SamplingParams::greedy(tokens.len() as u32)
        };
        let mut d = decoding(&sampling, 1, 256);
        let (text, end, _) = run(&mut d, &tok, &tokens);
        assert_eq!(text, "the wo");
        assert_eq!(end, Next::Finish(FinishReason::Length));
    }

    #[test]
    fn row_and_tensor_logits_sample_alike() {
        let tok = tokenizer();
        let vocab = tok.vocab_size();
        let rows: Vec<Vec<f32>> = (0..20)
            .map(|i| {
                (0..vocab)
                    .map(|j| ((i * 31 + j * 17) % 23) as f32 / 7.0)
                    .collect()
            })
            .collect();
        let sampling = SamplingParams {
            temperature: 0.8,
            seed: 5,
            ..SamplingParams::greedy(20)
        };
        let (mut a, mut b) = (decoding(&sampling, 1, 256), decoding(&sampling, 1, 256));
        for row in &rows {
            let t = Tensor::from_slice(row, vocab, &Device::Cpu).unwrap();
            assert_eq!(
                a.step(Logits::Row(row), &tok),
                b.step(Logits::Tensor(&t), &tok)
            );
        }
    }
}
