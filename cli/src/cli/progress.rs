//! Progress bars on stderr for the slow steps the libraries report through
//! [`cocoon_worker::progress::Progress`]: a spinner with the phase and its elapsed time, a
//! byte bar where the step counts bytes (the model's checksum).
//!
//! A bar is one line, its message cut to the terminal's width. Bars never reach a pipe, a file or a machine: they are hidden when stderr is not a
//! terminal and under `--json`, and then nothing is drawn at all.

use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::Duration;

use cocoon_worker::progress::Progress;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How often a spinner turns while its step gives no news.
const TICK: Duration = Duration::from_millis(120);

/// The bar (or spinner) of the step under way, drawn on stderr.
pub(crate) struct Bars {
    /// Nothing is drawn: `--json`, or stderr is not a terminal.
    hidden: bool,
    /// Where bars draw: stderr (tests draw nowhere).
    target: fn() -> ProgressDrawTarget,
    /// The step under way and whether its bar counts bytes.
    current: Mutex<Option<(ProgressBar, bool)>>,
}

impl Bars {
    /// Bars on stderr, hidden when `json` output was asked for or stderr is not a terminal.
    pub(crate) fn stderr(json: bool) -> Self {
        Self::new(json || !std::io::stderr().is_terminal())
    }

    /// Bars that are drawn on stderr unless `hidden`.
    pub(crate) fn new(hidden: bool) -> Self {
        Self {
            hidden,
            target: ProgressDrawTarget::stderr,
            current: Mutex::new(None),
        }
    }

    /// Whether nothing is drawn.
    #[cfg(test)]
    pub(crate) fn is_hidden(&self) -> bool {
        self.hidden
    }

    /// Runs `f` (which prints to the terminal) with the bar taken off the screen, and
    /// draws it again after.
    pub(crate) fn suspend<R>(&self, f: impl FnOnce() -> R) -> R {
        let current = self.lock();
        match current.as_ref() {
            Some((bar, _)) => bar.suspend(f),
            None => f(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<(ProgressBar, bool)>> {
        self.current.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn spinner(&self, phase: &str) -> ProgressBar {
        let bar = ProgressBar::with_draw_target(None, (self.target)());
        bar.set_style(
            ProgressStyle::with_template("{spinner} [{elapsed}] {wide_msg}")
                .expect("valid template"),
        );
        bar.set_message(phase.to_string());
        bar.enable_steady_tick(TICK);
        bar
    }
}

impl Progress for Bars {
    fn phase(&self, phase: &str) {
        if self.hidden {
            return;
        }
        // One line per step: the last one goes, so its elapsed time is the new step's.
        let mut current = self.lock();
        if let Some((bar, _)) = current.take() {
            bar.finish_and_clear();
        }
        *current = Some((self.spinner(phase), false));
    }

    fn bytes(&self, done: u64, total: u64) {
        if self.hidden {
            return;
        }
        let mut current = self.lock();
        let (bar, counting) = current.get_or_insert_with(|| (self.spinner(""), false));
        if !*counting {
            bar.disable_steady_tick();
            bar.set_style(
                ProgressStyle::with_template(
                    "  [{elapsed}] {bar:24} {bytes}/{total_bytes} ({bytes_per_sec}) {wide_msg}",
                )
                .expect("valid template"),
            );
            *counting = true;
        }
        bar.set_length(total);
        bar.set_position(done);
    }

    fn finish(&self) {
        if let Some((bar, _)) = self.lock().take() {
            bar.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_output_hides_the_bars_and_hidden_bars_draw_nothing() {
        assert!(Bars::stderr(true).is_hidden());
        let bars = Bars::new(true);
        bars.phase("downloading");
        bars.bytes(5, 10);
        assert!(bars.lock().is_none(), "a hidden reporter creates no bar");
        assert_eq!(bars.suspend(|| 7), 7);
        bars.finish();
    }

    #[test]
    fn a_visible_reporter_keeps_one_bar_for_the_step_under_way() {
        let bars = Bars {
            target: ProgressDrawTarget::hidden,
            ..Bars::new(false)
        };
        bars.phase("checking");
        bars.bytes(5, 10);
        {
            let current = bars.lock();
            let (bar, counting) = current.as_ref().unwrap();
            assert!(*counting);
            assert_eq!((bar.position(), bar.length()), (5, Some(10)));
        }
        bars.phase("next");
        assert!(!bars.lock().as_ref().unwrap().1);
        bars.finish();
        assert!(bars.lock().is_none());
    }
}
