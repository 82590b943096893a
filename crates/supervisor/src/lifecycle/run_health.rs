//! Health while a service runs: a sub-state of `Phase::Running`, reset at
//! every start. Probes are scheduled here (the loop runs them and reports
//! with [`Core::probe_done`]), notify messages and the watchdog arrive here,
//! and what they mean is decided here:
//!
//! | what                               | does                                   |
//! |------------------------------------|----------------------------------------|
//! | startup fails `failureThreshold`×  | kill, `unhealthy`, restart policy      |
//! | liveness fails `failureThreshold`× | kill, `unhealthy`, restart policy      |
//! | watchdog not pinged in time        | kill, `watchdog`, restart policy       |
//! | readiness fails `failureThreshold`×| not ready (dependents already started  |
//! |                                    | keep running); never a restart         |
//!
//! Until the startup probe passes, liveness and readiness do not run.

use std::time::{Duration, Instant};

use super::{Core, Intent, Phase};

/// Probe times are rounded up to this grid: the probes of a thousand
/// services fall due together in a few timer wakeups, not one wakeup per
/// probe (each costs a context switch). A probe runs at most this much
/// later than its period says.
const PROBE_GRID: Duration = Duration::from_millis(10);
use crate::lifecycle::exit_policy::Reason;
use crate::spec::health::{Health, ProbeKind};
use crate::upgrade::snapshot::HealthRecord;

/// Whole milliseconds, saturating (snapshot times).
pub(super) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// `t` rounded up to the next multiple of [`PROBE_GRID`] after `epoch`.
fn on_grid(t: Instant, epoch: Instant) -> Instant {
    let since = t.saturating_duration_since(epoch).as_nanos();
    let grid = PROBE_GRID.as_nanos();
    let up = since.div_ceil(grid) * grid - since;
    t + Duration::from_nanos(u64::try_from(up).unwrap_or(0))
}

/// The last result of one probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeResult {
    pub at: Instant,
    pub ok: bool,
    pub message: String,
}

/// One probe within a run.
#[derive(Debug, Clone, Default)]
pub struct ProbeState {
    /// When it runs next; `None` while it runs or while it may not run.
    pub(super) next_at: Option<Instant>,
    pub(super) in_flight: bool,
    pub failures: u32,
    pub(super) successes: u32,
    pub last: Option<ProbeResult>,
}

impl ProbeState {
    /// A result came in: the probe is no longer in flight, and its run of
    /// successes or failures goes on or starts over.
    fn record(&mut self, result: ProbeResult) {
        self.in_flight = false;
        if result.ok {
            self.failures = 0;
            self.successes = self.successes.saturating_add(1);
        } else {
            self.successes = 0;
            self.failures = self.failures.saturating_add(1);
        }
        self.last = Some(result);
    }
}

/// What a service's own notifications said (sd_notify or its notify fd).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Notice {
    pub ready: bool,
    pub stopping: bool,
    pub status: Option<String>,
    pub watchdog: bool,
    pub watchdog_trigger: bool,
    pub extend: Option<Duration>,
}

/// The health of the current run.
#[derive(Debug, Clone, Default)]
pub struct RunHealth {
    /// Indexed by [`ProbeKind::index`].
    pub probes: [ProbeState; 3],
    /// The startup probe passed (or there is none).
    pub started: bool,
    pub ready: bool,
    pub ever_ready: bool,
    /// READY=1 (or the notify fd's newline) arrived.
    notified_ready: bool,
    /// The readiness probe passes.
    probe_ready: bool,
    pub watchdog_at: Option<Instant>,
    /// The last `STATUS=` line.
    pub notify_status: Option<String>,
    /// Said `healthy` since it last was not.
    said_healthy: bool,
}

impl RunHealth {
    /// What an upgrade hands over of it (times from `now`).
    pub(crate) fn record(&self, now: Instant) -> HealthRecord {
        HealthRecord {
            started: self.started,
            ready: self.ready,
            ever_ready: self.ever_ready,
            notified_ready: self.notified_ready,
            probe_ready: self.probe_ready,
            watchdog_in_ms: self
                .watchdog_at
                .map(|t| millis(t.saturating_duration_since(now))),
            probes_in_ms: self
                .probes
                .each_ref()
                .map(|p| p.next_at.map(|t| millis(t.saturating_duration_since(now)))),
            notify_status: self.notify_status.clone(),
        }
    }

    /// The health an upgrade handed over: its gates as they were; each
    /// probe the service has is due at once, or once its initial delay
    /// from the run's start is over (their streaks start again).
    pub(crate) fn restored(
        rec: &HealthRecord,
        spec: &Health,
        since: Instant,
        now: Instant,
    ) -> RunHealth {
        let mut h = RunHealth {
            started: rec.started,
            ready: rec.ready,
            ever_ready: rec.ever_ready,
            notified_ready: rec.notified_ready,
            probe_ready: rec.probe_ready,
            watchdog_at: rec.watchdog_in_ms.map(|ms| now + Duration::from_millis(ms)),
            notify_status: rec.notify_status.clone(),
            ..RunHealth::default()
        };
        let kinds: &[ProbeKind] = if h.started {
            &[ProbeKind::Liveness, ProbeKind::Readiness]
        } else {
            &[ProbeKind::Startup]
        };
        for &kind in kinds {
            if let Some(p) = spec.probe(kind) {
                // When it was due; else (in flight, or a format 1 record)
                // at once, but not before its initial delay from the start.
                let at = match rec.probes_in_ms[kind.index()] {
                    Some(ms) => now + Duration::from_millis(ms),
                    None => (since + p.initial_delay).max(now),
                };
                h.probes[kind.index()].next_at = Some(at);
            }
        }
        h.said_healthy = h.label(spec) == "healthy";
        h
    }

    /// What the HEALTH column shows for a running service.
    pub fn label(&self, spec: &Health) -> &'static str {
        if !spec.watched() {
            "-"
        } else if !self.started || (!self.ever_ready && !self.ready) {
            "starting"
        } else if !self.ready || self.probes[ProbeKind::Liveness.index()].failures > 0 {
            "unhealthy"
        } else {
            "healthy"
        }
    }

    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.probes
            .iter()
            .filter_map(|p| p.next_at)
            .chain(self.watchdog_at)
            .min()
    }
}

impl Core {
    /// A fresh run of service `i` began: schedule what watches it.
    pub(super) fn begin_health(&mut self, i: usize, now: Instant) {
        let Some(s) = self.svc(i) else { return };
        let spec = &s.def.policy.health;
        let mut h = RunHealth {
            watchdog_at: spec.watchdog.map(|w| now + w),
            ..RunHealth::default()
        };
        match spec.probe(ProbeKind::Startup) {
            Some(p) => h.probes[ProbeKind::Startup.index()].next_at = Some(now + p.initial_delay),
            None => h.started = true,
        }
        s.health = h;
        if self.service(i).is_some_and(|s| s.health.started) {
            self.after_startup(i, now);
        }
        self.note_health(i);
        self.touch(i);
    }

    /// The startup probe passed (or there is none): liveness and readiness
    /// begin; without a readiness gate the service is ready now.
    fn after_startup(&mut self, i: usize, now: Instant) {
        let Some(s) = self.svc(i) else { return };
        s.health.started = true;
        for kind in [ProbeKind::Liveness, ProbeKind::Readiness] {
            if let Some(p) = s.def.policy.health.probe(kind) {
                let at = now + p.initial_delay;
                s.health.probes[kind.index()].next_at = Some(at);
            }
        }
        self.update_ready(i, None);
    }

    /// Say `healthy` when the HEALTH column turns so (after the startup
    /// probe, readiness, or a liveness failure that passed again).
    fn note_health(&mut self, i: usize) {
        let Some(s) = self.svc(i) else { return };
        let healthy = s.health.label(&s.def.policy.health) == "healthy";
        let watched = s.def.policy.health.watched();
        let was = std::mem::replace(&mut s.health.said_healthy, healthy);
        if healthy && !was && watched {
            self.event(i, "healthy".into());
        }
    }

    /// Recompute `ready` from its gates; say so when it changed (`why`: the
    /// failure that made it unready).
    fn update_ready(&mut self, i: usize, why: Option<String>) {
        let Some(s) = self.svc(i) else { return };
        let spec = &s.def.policy.health;
        let h = &mut s.health;
        let ready = h.started
            && (spec.notify.is_none() || h.notified_ready)
            && (spec.probe(ProbeKind::Readiness).is_none() || h.probe_ready);
        if ready == h.ready {
            return;
        }
        h.ready = ready;
        let watched = spec.watched();
        if ready {
            h.ever_ready = true;
        }
        if watched {
            let msg = match (ready, why) {
                (true, _) => "ready".to_string(),
                (false, Some(w)) => format!("not ready: {w}"),
                (false, None) => "not ready".to_string(),
            };
            self.event(i, msg);
        }
    }

    /// Probes whose time has come: the loop runs them.
    pub(super) fn due_probes(&mut self, i: usize, now: Instant) {
        let Some(s) = self.svc(i) else { return };
        if !matches!(s.phase, Phase::Running { .. }) {
            return;
        }
        let mut due = Vec::new();
        for kind in ProbeKind::ALL {
            let p = &mut s.health.probes[kind.index()];
            if p.next_at.is_some_and(|t| t <= now) && !p.in_flight {
                p.next_at = None;
                p.in_flight = true;
                due.push(kind);
            }
        }
        for kind in due {
            self.effects.push_back(super::Effect::Probe(i, kind));
        }
    }

    /// The watchdog of a running service expired?
    pub(super) fn check_watchdog(&mut self, i: usize, now: Instant) {
        let Some(s) = self.svc(i) else { return };
        let expired = s.health.watchdog_at.is_some_and(|t| t <= now);
        if !expired || !matches!(s.phase, Phase::Running { .. }) {
            return;
        }
        let ms = s.def.policy.health.watchdog.map_or(0, |w| w.as_millis());
        s.health.watchdog_at = None;
        self.kill_unhealthy(
            i,
            Reason::Watchdog,
            format!("watchdog missed ({ms} ms)"),
            now,
        );
    }

    /// The loop ran probe `kind` of service `i`.
    pub fn probe_done(
        &mut self,
        i: usize,
        kind: ProbeKind,
        ok: bool,
        message: String,
        now: Instant,
    ) {
        let Some(s) = self.svc(i) else { return };
        if !matches!(s.phase, Phase::Running { .. }) {
            return;
        }
        // Numbers only: a thousand results a second clone nothing and
        // format nothing unless a failure is to be told.
        let Some((period, failure_threshold, success_threshold)) = s
            .def
            .policy
            .health
            .probe(kind)
            .map(|p| (p.period, p.failure_threshold, p.success_threshold))
        else {
            return;
        };
        let next = on_grid(now + period, self.epoch);
        let Some(s) = self.svc(i) else { return };
        if !ok {
            s.probe_failures[kind.index()] += 1;
        }
        let p = &mut s.health.probes[kind.index()];
        p.record(ProbeResult {
            at: now,
            ok,
            message,
        });
        p.next_at = Some(next);
        let (failures, successes) = (p.failures, p.successes);
        match (kind, ok) {
            (ProbeKind::Startup, true) => {
                s.health.probes[kind.index()].next_at = None;
                self.event(i, "startup probe passed".into());
                self.after_startup(i, now);
            }
            (ProbeKind::Startup | ProbeKind::Liveness, false) => {
                let what = self.probe_failure(i, kind);
                if failures >= failure_threshold {
                    self.kill_unhealthy(i, Reason::Unhealthy, what, now);
                } else {
                    self.event(i, format!("probe failed: {what}"));
                }
            }
            (ProbeKind::Liveness, true) => {}
            (ProbeKind::Readiness, true) => {
                if successes >= success_threshold {
                    s.health.probe_ready = true;
                    self.update_ready(i, None);
                }
            }
            (ProbeKind::Readiness, false) => {
                let h = &mut s.health;
                if h.probe_ready && failures >= failure_threshold {
                    h.probe_ready = false;
                    let what = self.probe_failure(i, kind);
                    self.update_ready(i, Some(what));
                }
            }
        }
        self.note_health(i);
        self.touch(i);
        self.pump(now);
    }

    /// `liveness http :8080/healthz: 503 (2/3)`: the last result of probe
    /// `kind` of service `i`, for events and `lastExit.message`.
    fn probe_failure(&self, i: usize, kind: ProbeKind) -> String {
        let Some(s) = self.service(i) else {
            return String::new();
        };
        let Some(spec) = s.def.policy.health.probe(kind) else {
            return String::new();
        };
        let p = &s.health.probes[kind.index()];
        let msg = p.last.as_ref().map_or("", |l| l.message.as_str());
        format!(
            "{} {}: {msg} ({}/{})",
            kind.as_str(),
            spec.check.describe(),
            p.failures,
            spec.failure_threshold
        )
    }

    /// Service `i` sent a notification (sd_notify, or its notify fd).
    pub fn notified(&mut self, i: usize, n: Notice, now: Instant) {
        let Some(s) = self.svc(i) else { return };
        let watchdog = s.def.policy.health.watchdog;
        match s.phase {
            Phase::Running { .. } => {}
            Phase::Stopping {
                since,
                intent,
                kill_at: Some(t),
            } => {
                // EXTEND_TIMEOUT_USEC while stopping: more time before the kill.
                if let Some(ext) = n.extend {
                    let kill_at = Some(t.max(now + ext));
                    self.set(
                        i,
                        Phase::Stopping {
                            since,
                            intent,
                            kill_at,
                        },
                    );
                }
                return;
            }
            _ => return,
        }
        let h = &mut s.health;
        if let Some(st) = n.status {
            h.notify_status = Some(st);
        }
        if n.watchdog {
            h.watchdog_at = watchdog.map(|w| now + w);
        }
        if let (Some(ext), Some(t)) = (n.extend, h.watchdog_at) {
            h.watchdog_at = Some(t.max(now + ext));
        }
        if n.watchdog_trigger {
            self.kill_unhealthy(
                i,
                Reason::Watchdog,
                "watchdog triggered by the service".into(),
                now,
            );
        } else if n.stopping {
            if let Some(s) = self.svc(i) {
                s.health.notified_ready = false;
            }
            self.update_ready(i, Some("the service is stopping".into()));
        } else if n.ready {
            if let Some(s) = self.svc(i) {
                s.health.notified_ready = true;
            }
            self.update_ready(i, None);
        }
        self.note_health(i);
        self.touch(i);
        self.pump(now);
    }

    /// Kill a running service for its health; the exit then goes to the
    /// restart policy as a failure of `reason`.
    fn kill_unhealthy(&mut self, i: usize, reason: Reason, why: String, now: Instant) {
        let Some(s) = self.svc(i) else { return };
        if !matches!(s.phase, Phase::Running { .. }) {
            return;
        }
        s.health_kill = Some((reason, why.clone()));
        self.event(
            i,
            match reason {
                Reason::Watchdog | Reason::Resource | Reason::Network => why,
                _ => format!("unhealthy: {why}"),
            },
        );
        self.stop_with(i, Intent::Unhealthy, now);
    }

    /// One of service `i`'s `resourceRules` with `action: restart` held
    /// (`why` names the rule and the value seen): a graceful stop, then its
    /// restart policy, as for a crash, with the reason `resource`.
    pub fn resource_exceeded(&mut self, i: usize, why: String, now: Instant) {
        self.kill_unhealthy(i, Reason::Resource, why, now);
        self.pump(now);
    }

    /// Service `i`'s network broke (`why`): stopped and restarted as
    /// for a failed liveness probe.
    pub fn network_failed(&mut self, i: usize, why: String, now: Instant) {
        self.kill_unhealthy(i, Reason::Network, why, now);
        self.pump(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_times_round_up_to_the_grid() {
        let e = Instant::now();
        let ms = Duration::from_millis;
        assert_eq!(on_grid(e + ms(1), e), e + ms(10));
        assert_eq!(on_grid(e + ms(20), e), e + ms(20));
        assert_eq!(on_grid(e + ms(1001), e), e + ms(1010));
    }
}
