//! When a worker publishes its advert, sans-IO: on a change of what it advertises (price,
//! free slots, enclave key), at most one per `min_gap`, and every `interval` regardless.
//! Sequence numbers are milliseconds since the epoch and strictly increasing, so they keep
//! growing across restarts. The node's advertiser and the simulator's workers both run it.

/// The publication schedule of one worker; `S` is what a change is judged on.
#[derive(Clone, Debug)]
pub struct Schedule<S> {
    interval_ms: u64,
    min_gap_ms: u64,
    last: Option<S>,
    last_sent: Option<u64>,
    seq: u64,
}

impl<S: PartialEq> Schedule<S> {
    /// Every `interval_ms`, and on a change at most every `min_gap_ms`.
    pub fn new(interval_ms: u64, min_gap_ms: u64) -> Self {
        Self {
            interval_ms,
            min_gap_ms,
            last: None,
            last_sent: None,
            seq: 0,
        }
    }

    /// Whether an advert for `state` is due at `now_ms`.
    pub fn due(&self, state: &S, now_ms: u64) -> bool {
        match self.last_sent {
            None => true,
            Some(t) => {
                let since = now_ms.saturating_sub(t);
                since >= self.interval_ms
                    || (self.last.as_ref() != Some(state) && since >= self.min_gap_ms)
            }
        }
    }

    /// The sequence number for an advert made at `now_ms`.
    pub fn next_seq(&mut self, now_ms: u64) -> u64 {
        self.seq = now_ms.max(self.seq + 1);
        self.seq
    }

    /// The advert for `state` went out at `now_ms`.
    pub fn sent(&mut self, state: S, now_ms: u64) {
        self.last = Some(state);
        self.last_sent = Some(now_ms);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publishes_first_then_on_change_after_the_gap_and_on_the_interval() {
        let mut s = Schedule::new(30_000, 2_000);
        assert!(s.due(&1, 0));
        s.sent(1, 0);
        assert!(!s.due(&1, 1_000), "nothing changed");
        assert!(!s.due(&2, 1_000), "changed, but within the gap");
        assert!(s.due(&2, 2_000));
        assert!(!s.due(&1, 29_999));
        assert!(s.due(&1, 30_000), "the interval");
        assert_eq!(s.next_seq(5), 5);
        assert_eq!(s.next_seq(5), 6, "strictly increasing");
        assert_eq!(s.next_seq(100), 100);
    }
}
