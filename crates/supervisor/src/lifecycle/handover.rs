//! What the core hands to the binary an upgrade execs, and takes back
//! there (pure: the times are relative to `now` on both sides).
//!
//! An upgrade happens only when the core is at rest ([`Core::busy`]):
//! every service running, in backoff or down — nothing queued, setting up
//! or stopping, no overlap, roll or waiting client — so a record is a
//! settled phase and its counters.

use std::time::{Duration, Instant};

use super::exit_policy::LastExit;
use super::{Core, Down, Phase, RunHealth};
use crate::upgrade::snapshot::{CoreRecord, ExitRecord, PhaseRecord};

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn ago(now: Instant, ms: u64) -> Instant {
    now.checked_sub(Duration::from_millis(ms)).unwrap_or(now)
}

impl Core {
    /// What keeps an upgrade from happening now (it waits for the core to
    /// be at rest), or `None`.
    pub fn busy(&self) -> Option<String> {
        if self.shutting_down {
            return Some("the stack is shutting down".into());
        }
        if !self.rolls.is_empty() || !self.group_waits.is_empty() {
            return Some("a rolling restart is under way".into());
        }
        for (_, s) in self.services() {
            let name = &s.def.name;
            let why = match s.phase {
                Phase::Queued | Phase::Launching { .. } => "is starting",
                Phase::Stopping { .. } => "is stopping",
                _ if s.successor.is_some() || s.predecessor.is_some() => "is being replaced",
                _ if !s.waiters.is_empty() => "has a client waiting for it",
                _ if s.next_def.is_some() => "waits to take a reloaded definition",
                _ => continue,
            };
            return Some(format!("{name} {why}"));
        }
        None
    }

    /// What an upgrade cannot carry over yet, named (it is refused).
    pub fn not_handed_over(&self) -> Option<&'static str> {
        if !self.templates.is_empty() {
            Some("autoscaled services")
        } else if !self.pinned.is_empty() {
            Some("replica counts set by `isola scale`")
        } else {
            None
        }
    }

    /// Service `i` as the snapshot keeps it (`None`: no such service).
    pub(crate) fn export(&self, i: usize, now: Instant) -> Option<CoreRecord> {
        let s = self.service(i)?;
        let phase = match s.phase {
            Phase::Running { since } => PhaseRecord::Running {
                for_ms: millis(now.saturating_duration_since(since)),
            },
            Phase::Backoff { until } => PhaseRecord::Backoff {
                in_ms: millis(until.saturating_duration_since(now)),
            },
            Phase::Down(Down::Stopped) => PhaseRecord::Stopped,
            Phase::Down(Down::Exited) => PhaseRecord::Exited,
            Phase::Down(Down::Failed) => PhaseRecord::Failed,
            // `busy` kept the upgrade from getting here.
            Phase::Queued | Phase::Launching { .. } | Phase::Stopping { .. } => return None,
        };
        Some(CoreRecord {
            phase,
            restarts: s.restarts,
            streak: s.streak,
            starts_ago_ms: s
                .starts
                .iter()
                .map(|t| millis(now.saturating_duration_since(*t)))
                .collect(),
            last_exit: s.last_exit.map(|e| ExitRecord {
                reason: e.reason,
                code: e.code,
                signal: e.signal,
            }),
            last_exit_message: s.last_exit_message.clone(),
            oom_kills: s.oom_kills,
            probe_failures: s.probe_failures,
            health: s.health.record(now),
            live_limits: s.def.live_limits.then(|| {
                s.def
                    .plan
                    .cgroup_files
                    .iter()
                    .map(|f| (f.file.clone(), f.value.clone()))
                    .collect()
            }),
        })
    }

    /// Service `i` as a snapshot kept it: its phase entered without a
    /// launch (its sandbox runs on), its counters as they were.
    pub(crate) fn restore(&mut self, i: usize, rec: &CoreRecord, now: Instant) {
        self.epoch = now;
        let Some(s) = self.svc(i) else { return };
        s.restarts = rec.restarts;
        s.streak = rec.streak;
        s.starts = rec.starts_ago_ms.iter().map(|ms| ago(now, *ms)).collect();
        s.last_exit = rec.last_exit.map(|e| LastExit {
            reason: e.reason,
            code: e.code,
            signal: e.signal,
        });
        s.last_exit_message = rec.last_exit_message.clone();
        s.oom_kills = rec.oom_kills;
        s.probe_failures = rec.probe_failures;
        let phase = match rec.phase {
            PhaseRecord::Running { for_ms } => {
                s.health = RunHealth::restored(&rec.health, &s.def.policy.health, now);
                Phase::Running {
                    since: ago(now, for_ms),
                }
            }
            PhaseRecord::Backoff { in_ms } => Phase::Backoff {
                until: now + Duration::from_millis(in_ms),
            },
            PhaseRecord::Stopped => Phase::Down(Down::Stopped),
            PhaseRecord::Exited => Phase::Down(Down::Exited),
            PhaseRecord::Failed => Phase::Down(Down::Failed),
        };
        self.enter(i, phase);
        if let Some(live) = &rec.live_limits {
            let files: Vec<_> = live
                .iter()
                .map(|(f, v)| isola_runtime::cgroup::limits::CgroupFile::new(f, v))
                .collect();
            self.set_live_limits(i, &files);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lifecycle::tests::H;

    #[test]
    fn a_running_service_is_restored_running_with_its_counters() {
        let h = H::running(serde_json::json!({"a": {}, "b": {}}));
        let now = h.now;
        let rec = h.core.export(0, now).expect("a is there");
        assert!(h.core.busy().is_none(), "{:?}", h.core.busy());
        let mut fresh = H::new(serde_json::json!({"a": {}, "b": {}}));
        fresh.core.restore(0, &rec, now);
        assert!(matches!(
            fresh.core.service(0).map(|s| s.phase),
            Some(Phase::Running { .. })
        ));
        assert!(
            fresh.core.next_effect().is_none(),
            "nothing launched, nothing said"
        );
    }
}
