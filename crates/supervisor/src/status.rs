//! The `status` reply: one typed row per service, written straight into
//! the connection's buffer (a thousand services are a thousand rows; no
//! JSON tree in between), reading each running sandbox's open stat files.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::time::Instant;

use isola_runtime::cgroup::StatFiles;

use crate::control::{ExitRow, History, ProbeRow, Response, StatusRow};
use crate::health::ProbeKind;
use crate::lifecycle::{ConnId, Phase, Service, State};
use crate::policy::RestartPolicy;
use crate::supervisor::{now_ms, Supervisor};

/// The last result of each probe of the current run (`now` and `wall` are
/// the same moment on the monotonic and the epoch clock).
fn probe_rows(s: &Service, now: Instant, wall: u64) -> BTreeMap<String, ProbeRow> {
    ProbeKind::ALL
        .into_iter()
        .filter_map(|k| {
            let p = &s.health.probes[k.index()];
            let last = p.last.as_ref()?;
            let ago = now.saturating_duration_since(last.at).as_millis();
            Some((
                k.as_str().to_string(),
                ProbeRow {
                    time_ms: wall.saturating_sub(u64::try_from(ago).unwrap_or(u64::MAX)),
                    ok: last.ok,
                    message: last.message.clone(),
                    failures: p.failures,
                },
            ))
        })
        .collect()
}

fn restart_policy(p: RestartPolicy) -> &'static str {
    match p {
        RestartPolicy::No => "no",
        RestartPolicy::Always => "always",
        RestartPolicy::OnFailure => "on-failure",
        RestartPolicy::UnlessStopped => "unless-stopped",
    }
}

impl Supervisor {
    /// Open the stat files of running services that have none, while the
    /// fds the stack leaves spare allow (`host::check_capacity`): a status
    /// then preads them, no path walk. Past that, they are opened for one
    /// read and closed.
    fn open_stats(&mut self) {
        for slot in self.slots.iter_mut().flatten() {
            if self.stats_open >= self.stats_cap {
                return;
            }
            let Some(run) = slot.running.as_mut().filter(|r| r.stats.is_none()) else {
                continue;
            };
            run.stats = run.sandbox.cgroup().and_then(|cg| StatFiles::open(cg).ok());
            if run.stats.is_some() {
                self.stats_open += 1;
            }
        }
    }

    pub(crate) fn status_reply(&mut self, id: ConnId) {
        self.open_stats();
        // One clock read for all rows: under emulation (HPET) each read is
        // an exit to the hypervisor.
        let now = Instant::now();
        let wall = now_ms();
        let rows: Vec<StatusRow> = self
            .core
            .services()
            .filter_map(|(i, s)| {
                let slot = self.slots.get(i)?.as_ref()?;
                let run = slot.running.as_ref();
                let stats = run
                    .and_then(|r| match &r.stats {
                        Some(files) => Some(files.read()),
                        None => StatFiles::open(r.sandbox.cgroup()?).ok().map(|f| f.read()),
                    })
                    .unwrap_or_default();
                let pid = run
                    .map(|r| r.sandbox.pid())
                    .or_else(|| slot.launched.as_ref().map(|l| l.pid()));
                // An init that exited while its cgroup still drains is stopping.
                let state = match (slot.draining.is_some(), s.phase.state()) {
                    (true, _) => State::Stopping,
                    (false, st) => st,
                };
                let uptime_ms = match (s.phase, run) {
                    (Phase::Running { since }, Some(_)) => {
                        let ms = now.saturating_duration_since(since).as_millis();
                        Some(u64::try_from(ms).unwrap_or(u64::MAX))
                    }
                    _ => None,
                };
                // An overlap shows both sandboxes: the one not yet ready,
                // and the one stopping after it handed its name over.
                let name = if s.predecessor.is_some() {
                    Cow::Owned(format!("{} (new)", s.def.name))
                } else if self.core.find(&s.def.name) != Some(i) {
                    Cow::Owned(format!("{} (old)", s.def.name))
                } else {
                    Cow::Borrowed(s.def.name.as_str())
                };
                Some(StatusRow {
                    name,
                    group: s.def.group.as_deref().map(Cow::Borrowed),
                    replacing: s.predecessor.map(|_| Cow::Borrowed(s.def.name.as_str())),
                    state,
                    pid: pid.map(|p| p.as_raw()),
                    restarts: s.restarts,
                    uptime_ms,
                    started_at_ms: run.map(|r| r.start_ms),
                    last_exit: s.last_exit.map(|e| ExitRow {
                        reason: e.reason,
                        code: e.code,
                        signal: e.signal,
                        message: s.last_exit_message.clone(),
                    }),
                    oom_kills: s.oom_kills,
                    waiting_for: s
                        .waiting_for
                        .as_deref()
                        .or(s.blocked_on.as_deref())
                        .map(Cow::Borrowed),
                    memory_current: stats.memory_current,
                    memory_peak: stats.memory_peak,
                    cpu_usec: stats.cpu_usec,
                    history: History::Borrowed(&slot.history),
                    depends_on: Cow::Owned(
                        s.def
                            .policy
                            .depends_on
                            .iter()
                            .map(|d| d.name.clone())
                            .collect(),
                    ),
                    restart_policy: Cow::Borrowed(restart_policy(s.def.policy.restart.policy)),
                    health: Cow::Borrowed(match s.phase {
                        Phase::Running { .. } => s.health.label(&s.def.policy.health),
                        _ => "-",
                    }),
                    ready: matches!(s.phase, Phase::Running { .. }) && s.health.ready,
                    probe: probe_rows(s, now, wall),
                    notify_status: s.health.notify_status.as_deref().map(Cow::Borrowed),
                    limits: s
                        .def
                        .plan
                        .cgroup_files
                        .iter()
                        .map(|f| (f.file.clone(), f.value.clone()))
                        .collect(),
                })
            })
            .collect();
        let reply = Response {
            services: Some(rows),
            ..Response::ok()
        };
        // Serialized into the connection's buffer by `send`.
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        c.queue(&reply);
        self.flush(id);
    }
}
