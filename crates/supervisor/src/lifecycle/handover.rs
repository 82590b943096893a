//! What the core hands to the binary an upgrade execs, and takes back
//! there (pure: the times are relative to `now` on both sides).
//!
//! An upgrade happens only when the core is at rest ([`Core::busy`]):
//! every service running, in backoff, queued (for a slot or a dependency)
//! or down — nothing setting up or stopping, no overlap, roll or waiting
//! client — so a record is such a phase and its counters.

use std::time::{Duration, Instant};

use super::exit_policy::LastExit;
use super::run_health::millis;
use super::{Core, Down, Effect, Phase, RunHealth};
use crate::upgrade::snapshot::{CoreRecord, ExitRecord, PhaseRecord};

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
                // Queued waits for a slot or a dependency: nothing of it
                // runs yet, and the new binary queues it again.
                Phase::Launching { .. } => "is starting",
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

    /// Every service restored: what is queued may start.
    pub(crate) fn resumed(&mut self, now: Instant) {
        self.pump(now);
    }

    /// The counts `isola scale` fixed, by group.
    pub(crate) fn pins(&self) -> Vec<(String, u32)> {
        let mut pins: Vec<_> = self.pinned.iter().map(|(g, n)| (g.clone(), *n)).collect();
        pins.sort();
        pins
    }

    /// A replica the stack file does not list (one `isola scale` or the
    /// autoscaler added), made from its group as written: its index, or
    /// `None` when `name` is no replica of a replicated service.
    pub(crate) fn add_replica(&mut self, name: &str) -> Option<usize> {
        let (group, _) = name.rsplit_once('.')?;
        let k = super::rollout::replica_number(name)?;
        let def = self.made_replica(&self.written(group)?.clone(), k)?;
        Some(self.add_service(def))
    }

    /// A replica the file lists but the running stack no longer has (scaled
    /// down before the upgrade): let go without a word, it was not there.
    pub(crate) fn drop_unlisted(&mut self, i: usize) {
        let Some(name) = self.service(i).map(|s| s.def.name.clone()) else {
            return;
        };
        self.names.remove(&name);
        self.effects.push_back(Effect::Forget(i));
        self.retire(i);
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
            Phase::Queued => PhaseRecord::Queued,
            // `busy` keeps the exec from happening in these; the copy the
            // new binary checks may have them (it only reads).
            Phase::Launching { .. } | Phase::Stopping { .. } => PhaseRecord::Busy,
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
                let since = ago(now, for_ms);
                s.health = RunHealth::restored(&rec.health, &s.def.policy.health, since, now);
                Phase::Running { since }
            }
            PhaseRecord::Queued => Phase::Queued,
            PhaseRecord::Backoff { in_ms } => Phase::Backoff {
                until: now + Duration::from_millis(in_ms),
            },
            PhaseRecord::Stopped => Phase::Down(Down::Stopped),
            PhaseRecord::Exited => Phase::Down(Down::Exited),
            PhaseRecord::Failed => Phase::Down(Down::Failed),
            // Never in a snapshot the new binary takes over from (the
            // real one refuses it): left as it was made.
            PhaseRecord::Busy => return,
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
        let mut h = H::running(serde_json::json!({"a": {}, "b": {}}));
        let now = h.now;
        if let Some(s) = h.core.svc(0) {
            s.restarts = 3;
        }
        let rec = h.core.export(0, now).expect("a is there");
        assert!(h.core.busy().is_none(), "{:?}", h.core.busy());
        let mut fresh = H::new(serde_json::json!({"a": {}, "b": {}}));
        fresh.core.restore(0, &rec, now);
        let s = fresh.core.service(0).expect("a");
        assert!(matches!(s.phase, Phase::Running { .. }));
        assert_eq!(s.restarts, 3);
        assert!(
            fresh.core.next_effect().is_none(),
            "nothing launched, nothing said"
        );
    }

    #[test]
    fn backoff_keeps_its_time_left_and_a_queued_service_starts_once_resumed() {
        let mut h = H::new(serde_json::json!({"a": {}, "b": {}}));
        let now = h.now;
        let mut fresh = H::new(serde_json::json!({"a": {}, "b": {}}));
        let backoff = CoreRecord {
            phase: PhaseRecord::Backoff { in_ms: 700 },
            ..h.core.export(0, now).expect("a")
        };
        let queued = CoreRecord {
            phase: PhaseRecord::Queued,
            ..h.core.export(1, now).expect("b")
        };
        fresh.core.restore(0, &backoff, now);
        fresh.core.restore(1, &queued, now);
        assert_eq!(
            fresh.core.next_deadline(),
            Some(now + Duration::from_millis(700))
        );
        assert!(fresh.core.next_effect().is_none());
        fresh.core.resumed(now);
        assert_eq!(fresh.core.next_effect(), Some(Effect::Launch(1)));
        // Launching is in motion: an upgrade waits for it; queued is not.
        assert_eq!(fresh.core.busy().as_deref(), Some("b is starting"));
        h.core.restore(1, &queued, now);
        assert!(h.core.busy().is_none(), "{:?}", h.core.busy());
    }

    #[test]
    fn a_replica_the_file_lists_but_the_stack_no_longer_runs_is_let_go_quietly() {
        let mut h = H::new(serde_json::json!({"a": {}, "b": {}}));
        h.core.drop_unlisted(1);
        assert_eq!(h.core.find("b"), None);
        let fx: Vec<_> = std::iter::from_fn(|| h.core.next_effect()).collect();
        assert_eq!(fx, vec![Effect::Forget(1)], "no event about it");
    }
}
