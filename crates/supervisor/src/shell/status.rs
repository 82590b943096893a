//! The `status` reply: one typed row per service, written straight into
//! the connection's buffer (a thousand services are a thousand rows; no
//! JSON tree in between), from the core's view of each service and the
//! sandboxes' (pid, stat files, runs).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::time::Instant;

use crate::control::{ExitRow, History, ProbeRow, Response, StatusRow};
use crate::lifecycle::{ConnId, Core, Phase, Service, State};
use crate::networks::Networks;
use crate::sandboxes::{Sandboxes, Snapshot};
use crate::spec::health::ProbeKind;
use crate::spec::policy::RestartPolicy;
use crate::supervisor::{ctx, now_ms, Supervisor};

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
    pub(crate) fn status_reply(&mut self, id: ConnId) {
        self.sandboxes.open_stats();
        let reply = Response {
            services: Some(self.autoscale_rows(rows(
                &self.core,
                &self.sandboxes,
                self.networks.as_ref(),
            ))),
            ..Response::ok()
        };
        // Serialized into the connection's buffer.
        self.control.send(ctx!(self), id, &reply);
    }
}

/// Every service's row. One clock read for all rows: under emulation
/// (HPET) each read is an exit to the hypervisor.
fn rows<'a>(
    core: &'a Core,
    sandboxes: &'a Sandboxes,
    networks: Option<&Networks>,
) -> Vec<StatusRow<'a>> {
    let now = Instant::now();
    let wall = now_ms();
    core.services()
        .filter_map(|(i, s)| {
            let sb = sandboxes.snapshot(i)?;
            let mut r = row(core, i, s, sb, now, wall);
            if let (Some(n), true) = (networks, r.pid.is_some()) {
                r.addresses = n
                    .addresses(i)
                    .into_iter()
                    .map(|(net, a)| (net, a.to_string()))
                    .collect();
                r.addresses6 = n
                    .addresses6(i)
                    .into_iter()
                    .map(|(net, a)| (net, a.to_string()))
                    .collect();
            }
            Some(r)
        })
        .collect()
}

/// An overlap shows both sandboxes: the one not yet ready, and the one
/// stopping after it handed its name over.
fn display_name<'a>(core: &Core, i: usize, s: &'a Service) -> Cow<'a, str> {
    if s.predecessor.is_some() {
        Cow::Owned(format!("{} (new)", s.def.name))
    } else if core.find(&s.def.name) != Some(i) {
        Cow::Owned(format!("{} (old)", s.def.name))
    } else {
        Cow::Borrowed(s.def.name.as_str())
    }
}

fn row<'a>(
    core: &Core,
    i: usize,
    s: &'a Service,
    sb: Snapshot<'a>,
    now: Instant,
    wall: u64,
) -> StatusRow<'a> {
    // An init that exited while its cgroup still drains is stopping.
    let state = if sb.draining {
        State::Stopping
    } else {
        s.phase.state()
    };
    let uptime_ms = match (s.phase, sb.started_at_ms) {
        (Phase::Running { since }, Some(_)) => {
            let ms = now.saturating_duration_since(since).as_millis();
            Some(u64::try_from(ms).unwrap_or(u64::MAX))
        }
        _ => None,
    };
    let running = matches!(s.phase, Phase::Running { .. });
    StatusRow {
        name: display_name(core, i, s),
        group: s.def.group.as_deref().map(Cow::Borrowed),
        replacing: s.predecessor.map(|_| Cow::Borrowed(s.def.name.as_str())),
        state,
        pid: sb.pid.map(|p| p.as_raw()),
        restarts: s.restarts,
        uptime_ms,
        started_at_ms: sb.started_at_ms,
        last_exit: last_exit(s),
        oom_kills: s.oom_kills,
        waiting_for: s
            .waiting_for
            .as_deref()
            .or(s.blocked_on.as_deref())
            .map(Cow::Borrowed),
        memory_current: sb.stats.memory_current,
        memory_peak: sb.stats.memory_peak,
        cpu_usec: sb.stats.cpu_usec,
        history: History::Borrowed(sb.history),
        depends_on: Cow::Owned(
            s.def
                .policy
                .depends_on
                .iter()
                .map(|d| d.name.clone())
                .collect(),
        ),
        restart_policy: Cow::Borrowed(restart_policy(s.def.policy.restart.policy)),
        health: Cow::Borrowed(if running {
            s.health.label(&s.def.policy.health)
        } else {
            "-"
        }),
        ready: running && s.health.ready,
        probe: probe_rows(s, now, wall),
        notify_status: s.health.notify_status.as_deref().map(Cow::Borrowed),
        limits: limits(s),
        addresses: BTreeMap::new(),
        addresses6: BTreeMap::new(),
        autoscale: None,
    }
}

fn last_exit(s: &Service) -> Option<ExitRow> {
    s.last_exit.map(|e| ExitRow {
        reason: e.reason,
        code: e.code,
        signal: e.signal,
        message: s.last_exit_message.clone(),
    })
}

/// The cgroup files isola set, `isola update`'s included.
fn limits(s: &Service) -> BTreeMap<String, String> {
    let files = &s.def.plan.cgroup_files;
    files
        .iter()
        .map(|f| (f.file.clone(), f.value.clone()))
        .collect()
}
