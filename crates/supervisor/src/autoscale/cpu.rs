//! The replicas' average CPU between two readings. Per run of a replica,
//! not the group's sum: replicas come and go between readings (a new one
//! has no past, a removed one's time vanishes, a restarted one's counter
//! starts over, and a service's index may go to another), and only a run
//! seen at both readings has a rate.

use std::collections::HashMap;
use std::time::Instant;

/// One run of a replica: its service index and when its sandbox started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Run {
    pub(crate) service: usize,
    pub(crate) started_at_ms: u64,
}

#[derive(Debug, Default)]
pub(crate) struct CpuMeter {
    /// Each run's CPU time (µs) at the last reading.
    last: HashMap<Run, u64>,
    at: Option<Instant>,
}

impl CpuMeter {
    /// Read the replicas' CPU time now: the average of the rates of the
    /// runs seen at the last reading too, in percent of one CPU (none at
    /// the first reading or when no run was seen at both).
    pub(crate) fn average(&mut self, usec: &[(Run, u64)], now: Instant) -> Option<f64> {
        let elapsed = self
            .at
            .map(|t| now.saturating_duration_since(t).as_secs_f64() * 1e6);
        let rates: Vec<f64> = usec
            .iter()
            .filter_map(|(run, u)| {
                let before = *self.last.get(run)?;
                let e = elapsed.filter(|e| *e > 0.0)?;
                Some(u.saturating_sub(before) as f64 / e * 100.0)
            })
            .collect();
        self.last = usec.iter().copied().collect();
        self.at = Some(now);
        (!rates.is_empty()).then(|| rates.iter().sum::<f64>() / rates.len() as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn run(service: usize) -> Run {
        Run {
            service,
            started_at_ms: 7,
        }
    }

    #[test]
    fn only_replicas_seen_at_both_readings_count() {
        let t0 = Instant::now();
        let mut m = CpuMeter::default();
        let [r1, r2, r3] = [run(1), run(2), run(3)];
        assert_eq!(m.average(&[(r1, 1_000)], t0), None);
        let t1 = t0 + Duration::from_secs(1);
        // Replica 1 used half a CPU; replica 2 is new: not counted.
        assert_eq!(m.average(&[(r1, 501_000), (r2, 9_999_999)], t1), Some(50.0));
        let t2 = t1 + Duration::from_secs(1);
        // 1 at 100%, 2 at 0%: 50% on average; a replica gone counts not.
        assert_eq!(
            m.average(&[(r1, 1_501_000), (r2, 9_999_999)], t2),
            Some(50.0)
        );
        let t3 = t2 + Duration::from_secs(1);
        assert_eq!(m.average(&[(r3, 5)], t3), None);
        // Replica 3 restarted (its counter starts over): a new run.
        let again = Run {
            service: 3,
            started_at_ms: 9,
        };
        let t4 = t3 + Duration::from_secs(1);
        assert_eq!(m.average(&[(again, 1)], t4), None);
    }
}
