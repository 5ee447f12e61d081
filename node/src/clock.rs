//! The clock the job sessions run on: a monotonic [`Duration`] since this process first
//! asked. The sans-IO cores (`cocoon_job::session`) only compare such times.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Time since this process's clock origin.
pub fn session_now() -> Duration {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    ORIGIN.get_or_init(Instant::now).elapsed()
}

/// The runtime instant of a session deadline.
pub fn instant_of(deadline: Duration) -> tokio::time::Instant {
    let now = session_now();
    tokio::time::Instant::now() + deadline.saturating_sub(now)
}
