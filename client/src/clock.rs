//! The node's clocks, in one place: the monotonic clock the job sessions run on (a
//! [`Duration`] since this process first asked; the sans-IO cores, `cocoon_job::session`,
//! only compare such times) and wall-clock unix time (adverts, attestation expiry,
//! settlement).

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

/// Unix seconds now.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Unix time in milliseconds (the clock adverts' sequence numbers come from).
pub fn unix_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
