//! How long the loop's turns take: the longest of the last 10 to 20
//! seconds is how long an event (a client's request, a child's exit) could
//! have waited behind the others (`isola_supervisor_loop_lag_seconds`).
//! Two windows of ten seconds: the current one and the one before, so the
//! number neither forgets a stall at once nor keeps it forever.

use std::time::{Duration, Instant};

const WINDOW: Duration = Duration::from_secs(10);

pub(crate) struct LoopLag {
    window_start: Instant,
    current: Duration,
    previous: Duration,
}

impl LoopLag {
    pub(crate) fn new(now: Instant) -> LoopLag {
        LoopLag {
            window_start: now,
            current: Duration::ZERO,
            previous: Duration::ZERO,
        }
    }

    /// A turn ran from `began` to `ended`.
    pub(crate) fn record(&mut self, began: Instant, ended: Instant) {
        let age = ended.saturating_duration_since(self.window_start);
        if age >= 2 * WINDOW {
            self.previous = Duration::ZERO;
            self.current = Duration::ZERO;
            self.window_start = ended;
        } else if age >= WINDOW {
            self.previous = self.current;
            self.current = Duration::ZERO;
            self.window_start += WINDOW;
        }
        self.current = self.current.max(ended.saturating_duration_since(began));
    }

    /// The longest turn of the last 10 to 20 seconds, as of `now`.
    pub(crate) fn longest(&self, now: Instant) -> Duration {
        let age = now.saturating_duration_since(self.window_start);
        if age >= 2 * WINDOW {
            Duration::ZERO
        } else if age >= WINDOW {
            self.current
        } else {
            self.current.max(self.previous)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_turn_is_remembered_for_one_to_two_windows() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut lag = LoopLag::new(t0);
        lag.record(at(100), at(350));
        lag.record(at(400), at(410));
        assert_eq!(lag.longest(at(500)), Duration::from_millis(250));
        // The next window still shows it; the one after does not.
        lag.record(at(10_500), at(10_520));
        assert_eq!(lag.longest(at(12_000)), Duration::from_millis(250));
        assert_eq!(lag.longest(at(20_100)), Duration::from_millis(20));
        lag.record(at(20_200), at(20_205));
        assert_eq!(lag.longest(at(20_300)), Duration::from_millis(20));
        assert_eq!(lag.longest(at(45_000)), Duration::ZERO);
        lag.record(at(45_000), at(45_001));
        assert_eq!(lag.longest(at(45_002)), Duration::from_millis(1));
    }
}
