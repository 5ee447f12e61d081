//! `cocoon demo`: a whole network on loopback and one paid job on it.
//!
//! Its stdout is a transcript a person reads top to bottom: one line per finished step, the
//! question and the streamed answer on lines of their own, then a summary. The step under way
//! shows as a spinner on stderr (a terminal only); logs stay at `error` unless `RUST_LOG`
//! says otherwise (see `main.rs`), so no log line lands in the transcript.

use std::io::Write;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use clap::Args;
use cocoon_worker::progress::Progress;

use super::progress::Bars;
use super::*;

#[derive(Debug, Args)]
pub(crate) struct DemoArgs {
    /// Worker processes to start.
    #[arg(long, default_value_t = 2)]
    pub(crate) workers: usize,
    /// The question to ask.
    #[arg(long, default_value = "What is the capital of France?")]
    pub(crate) prompt: String,
    #[command(flatten)]
    pub(crate) sampling: SamplingArgs,
    /// Print one JSON object at the end instead of streaming text.
    #[arg(long)]
    pub(crate) json: bool,
}

/// Where the transcript is in its story.
#[derive(Default)]
struct Story {
    /// The question has been printed: the answer is streaming or done.
    asked: bool,
    /// The answer's last line has no newline yet.
    open: bool,
    /// The answer is over and set off by a blank line.
    answered: bool,
    /// Lines were said after the answer (the summary gets a blank line before it).
    said_after: bool,
}

/// The demo's transcript on `out` (stdout) and its spinner on stderr. Every line, the
/// spinner's phases included, first ends the answer's line, so nothing is ever printed on it.
pub(crate) struct Transcript<W> {
    /// `--json`: print nothing.
    quiet: bool,
    prompt: String,
    bars: Bars,
    out: Mutex<(W, Story)>,
}

impl<W: Write + Send> Transcript<W> {
    pub(crate) fn new(json: bool, prompt: &str, bars: Bars, out: W) -> Self {
        Self {
            quiet: json,
            prompt: prompt.to_string(),
            bars,
            out: Mutex::new((out, Story::default())),
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut W, &mut Story) -> R) -> R {
        let mut guard = self.out.lock().unwrap_or_else(|e| e.into_inner());
        let (out, story) = &mut *guard;
        f(out, story)
    }

    /// Ends the answer's line and leaves a blank line after it, once.
    fn end_answer(out: &mut W, story: &mut Story) {
        if story.asked && !story.answered {
            if story.open {
                let _ = writeln!(out);
            }
            let _ = writeln!(out);
            story.answered = true;
        }
    }

    /// A transcript line for a finished step.
    pub(crate) fn say(&self, line: &str) {
        if self.quiet {
            return;
        }
        self.bars.suspend(|| {
            self.with(|out, story| {
                Self::end_answer(out, story);
                story.said_after |= story.answered;
                let _ = writeln!(out, "  {line}");
                let _ = out.flush();
            })
        });
    }

    /// A piece of the streamed answer; the first comes after the question.
    pub(crate) fn text(&self, text: &str) {
        if self.quiet {
            return;
        }
        self.with(|out, story| {
            if !story.asked {
                let _ = write!(out, "\n> {}\n", self.prompt);
                story.asked = true;
            }
            let _ = write!(out, "{text}");
            if !text.is_empty() {
                story.open = !text.ends_with('\n');
            }
            let _ = out.flush();
        });
    }

    /// Ends the story before the summary: the answer's line closed, a blank line.
    pub(crate) fn summary(&self) {
        if self.quiet {
            return;
        }
        self.bars.finish();
        self.with(|out, story| {
            Self::end_answer(out, story);
            if story.said_after || !story.asked {
                let _ = writeln!(out);
            }
            let _ = out.flush();
        });
    }

    #[cfg(test)]
    fn into_inner(self) -> W {
        self.out.into_inner().unwrap().0
    }
}

impl<W: Write + Send> Progress for Transcript<W> {
    fn phase(&self, phase: &str) {
        if !self.quiet {
            // A new step ends the answer; a spinner draws from the start of the line.
            self.with(|out, story| {
                Self::end_answer(out, story);
                let _ = out.flush();
            });
        }
        self.bars.phase(phase);
    }

    fn bytes(&self, done: u64, total: u64) {
        self.bars.bytes(done, total);
    }

    fn finish(&self) {
        self.bars.finish();
    }
}

pub(crate) async fn run_demo(args: DemoArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.workers >= 1, "--workers must be at least 1");
    let json = args.json;
    let options = cocoon_worker::demo::DemoOptions {
        workers: args.workers,
        prompt: args.prompt.clone(),
        sampling: args.sampling.sampling(),
        dir: None,
    };
    if !json {
        println!(
            "cocoon demo: a bootstrap node, {} worker(s) and a client on loopback",
            args.workers
        );
        println!(
            "NOTE: no TEE here, so the workers present INSECURE development attestation and the \
             client accepts it (as with --insecure-dev-attestation). The job is end-to-end \
             encrypted to the worker's enclave key, but nothing proves what the worker runs."
        );
    }
    let transcript = Arc::new(Transcript::new(
        json,
        &args.prompt,
        Bars::stderr(json),
        std::io::stdout(),
    ));
    let report = cocoon_worker::demo::run(
        options,
        transcript.clone(),
        |text| transcript.text(text),
        |line| transcript.say(line),
    )
    .await
    .context("demo failed")?;
    transcript.summary();
    let o = &report.outcome;
    if json {
        let mut value = serde_json::to_value(o)?;
        value["onchain_txs"] = serde_json::json!(report.onchain_txs);
        value["settled_nanoton"] = serde_json::json!(report.settled_nanoton.map(|n| n as u64));
        print_json(&value)?;
    } else {
        println!(
            "served by   {} ({} candidates, found in the {})",
            o.worker_peer, o.providers_found, o.source
        );
        if let (Some(p), Some(c)) = (o.price_prompt_per_mtok, o.price_completion_per_mtok) {
            println!(
                "price       {p} / {c} nanoTON per million prompt / completion tokens: this job {} nanoTON",
                o.cost_nanoton.unwrap_or_default()
            );
        }
        if let Some(channel) = &o.channel {
            println!(
                "paid        {} nanoTON in vouchers on channel {}…, {}",
                o.paid_nanoton,
                &channel[..12],
                match (report.settled_nanoton, report.onchain_txs) {
                    (Some(n), Some(t)) => format!(
                        "settled on the local chain: {n} nanoTON paid out, {t} transactions"
                    ),
                    _ => "off-chain (no Node.js for the local chain)".into(),
                }
            );
        }
        println!("model       {}", o.model);
        println!(
            "attestation {} (measurement {}…, self-reported: dev evidence proves nothing)",
            o.attestation,
            &o.measurement[..16.min(o.measurement.len())]
        );
        println!(
            "tokens      {} prompt, {} completion ({})",
            o.prompt_tokens, o.completion_tokens, o.finish_reason
        );
        println!(
            "latency     first token after {:.0} ms, {:.1} tok/s",
            o.ttft_ms, o.tokens_per_s
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transcript(json: bool) -> Transcript<Vec<u8>> {
        Transcript::new(json, "Capital of France?", Bars::new(true), Vec::new())
    }

    /// What the library does around the answer: steps, the streamed text, a spinner phase and
    /// a line after it, then the summary.
    fn tell(t: &Transcript<Vec<u8>>) {
        t.say("worker 12D3 serving smollm2");
        t.phase("finding a worker");
        t.finish();
        t.text("The capital");
        t.text(" is Paris.");
        t.phase("stopping the nodes");
        t.say("settled on chain: 610 nanoTON");
        t.finish();
        t.summary();
    }

    #[test]
    fn the_answer_has_its_own_lines_and_nothing_is_printed_on_them() {
        let t = transcript(false);
        tell(&t);
        let out = String::from_utf8(t.into_inner()).unwrap();
        assert_eq!(
            out,
            "  worker 12D3 serving smollm2\n\n> Capital of France?\nThe capital is Paris.\n\n  \
             settled on chain: 610 nanoTON\n\n"
        );
    }

    #[test]
    fn an_answer_ending_in_a_newline_gets_no_second_one() {
        let t = transcript(false);
        t.text("Paris.\n");
        t.summary();
        assert_eq!(
            String::from_utf8(t.into_inner()).unwrap(),
            "\n> Capital of France?\nParis.\n\n"
        );
    }

    #[test]
    fn json_prints_no_transcript_and_draws_no_bars() {
        let cli =
            <crate::Cli as clap::Parser>::try_parse_from(["cocoon", "demo", "--json"]).unwrap();
        let crate::Cmd::Demo(args) = cli.command else {
            panic!("not the demo");
        };
        let bars = Bars::stderr(args.json);
        assert!(bars.is_hidden());
        let t = Transcript::new(args.json, &args.prompt, bars, Vec::new());
        tell(&t);
        assert!(t.into_inner().is_empty());
    }
}
