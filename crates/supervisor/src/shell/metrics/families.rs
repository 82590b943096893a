//! The families of the exposition: the core's counters, the running
//! sandboxes' cgroup files, the rules, the held listeners and the
//! supervisor's own numbers.

use super::{def, Counted, Def, Labelled, Own, Scaled};
use crate::held_sockets::SocketQueue;
use crate::lifecycle::Phase;
use crate::metrics::exposition::{Exposition, Kind};
use crate::sandboxes::Sandboxes;
use crate::shell::context::ServiceIx;
use crate::shell::rules::ResourceWatch;
use crate::spec::health::ProbeKind;

pub(super) fn lifecycle_families(e: &mut Exposition, services: &[Labelled<'_>]) {
    let gauges: [Def<Counted>; 2] = [
        def(
            "isola_service_up",
            "1 while the service's payload runs.",
            |s| f64::from(u8::from(matches!(s.phase, Phase::Running { .. }))),
        ),
        def(
            "isola_service_ready",
            "1 while it runs and its readiness gates say ready.",
            |s| {
                f64::from(u8::from(
                    matches!(s.phase, Phase::Running { .. }) && s.health.ready,
                ))
            },
        ),
    ];
    for d in gauges {
        e.family(d.name, Kind::Gauge, d.help);
        for l in services {
            e.gauge(d.name, &l.labels(), (d.read)(l.s));
        }
    }
    let counters: [Def<Counted>; 2] = [
        def(
            "isola_service_restarts",
            "Restarts of the service since isola up started.",
            |s| f64::from(s.restarts),
        ),
        def(
            "isola_service_oom_kills",
            "Processes of the service the kernel's OOM killer killed.",
            |s| s.oom_kills as f64,
        ),
    ];
    for d in counters {
        e.family(d.name, Kind::Counter, d.help);
        for l in services {
            e.counter(d.name, &l.labels(), (d.read)(l.s), None);
        }
    }
    let name = "isola_service_probe_failures";
    e.family(
        name,
        Kind::Counter,
        "Failed results of the service's health probes.",
    );
    for l in services {
        for k in ProbeKind::ALL {
            if l.s.def.policy.health.probe(k).is_none() {
                continue;
            }
            let mut labels = l.labels();
            labels.push(("probe", k.as_str()));
            e.counter(name, &labels, l.s.probe_failures[k.index()] as f64, None);
        }
    }
}

/// What one running sandbox's cgroup says, each file read once per
/// scrape (memory.current and cpu.stat from the files kept open).
pub(super) struct Sample {
    /// When the run started, in epoch seconds: the per-run counters'
    /// `_created`.
    started: Option<f64>,
    memory: Option<f64>,
    cpu_usec: Option<f64>,
    memory_stat: Option<String>,
    memory_max: Option<String>,
    pids: Option<String>,
    io: Option<String>,
    events: Option<String>,
    /// cpu, memory, io.
    pressure: [Option<String>; 3],
}

const PRESSURE: [&str; 3] = ["cpu", "memory", "io"];

impl Sample {
    /// Service `i`'s running sandbox, read now; `None` when it does not run.
    pub(super) fn read(sb: &Sandboxes, i: ServiceIx) -> Option<Sample> {
        sb.running(i)?;
        let snap = sb.snapshot(i)?;
        let file = |name: &str| sb.cgroup_file(i, name);
        Some(Sample {
            started: snap.started_at_ms.map(|ms| ms as f64 / 1000.0),
            memory: snap.stats.memory_current.map(|v| v as f64),
            cpu_usec: snap.stats.cpu_usec.map(|v| v as f64),
            memory_stat: file("memory.stat"),
            memory_max: file("memory.max"),
            pids: file("pids.current"),
            io: file("io.stat"),
            events: file("memory.events"),
            pressure: PRESSURE.map(|r| file(&format!("{r}.pressure"))),
        })
    }
}

/// A value of a running sandbox.
type Reading = fn(&Sample) -> Option<f64>;

pub(super) fn number(text: &Option<String>) -> Option<f64> {
    text.as_deref()?.trim().parse().ok()
}

pub(super) fn cgroup_families(
    e: &mut Exposition,
    services: &[Labelled<'_>],
    samples: &[Option<&Sample>],
) {
    let gauges: [Def<Reading>; 4] = [
        def(
            "isola_service_memory_bytes",
            "memory.current of the running sandbox.",
            |s| s.memory,
        ),
        def(
            "isola_service_memory_working_set_bytes",
            "memory.current less inactive file pages (what cAdvisor calls the working set).",
            |s| {
                let inactive = key(s.memory_stat.as_deref()?, "inactive_file")?;
                Some((s.memory? - inactive).max(0.0))
            },
        ),
        def(
            "isola_service_memory_limit_bytes",
            "memory.max of the running sandbox (absent: no limit).",
            |s| number(&s.memory_max),
        ),
        def(
            "isola_service_pids",
            "Tasks in the running sandbox (pids.current).",
            |s| number(&s.pids),
        ),
    ];
    for d in gauges {
        e.family(d.name, Kind::Gauge, d.help);
        for (l, s) in services.iter().zip(samples) {
            if let Some(v) = s.and_then(d.read) {
                e.gauge(d.name, &l.labels(), v);
            }
        }
    }
    let counters: [Def<Reading>; 3] = [
        def(
            "isola_service_cpu_seconds",
            "CPU time of the running sandbox (cpu.stat usage_usec).",
            |s| Some(s.cpu_usec? / 1e6),
        ),
        def(
            "isola_service_io_read_bytes",
            "Bytes the running sandbox read from block devices (io.stat).",
            |s| io_bytes(s.io.as_deref()?, "rbytes="),
        ),
        def(
            "isola_service_io_write_bytes",
            "Bytes the running sandbox wrote to block devices (io.stat).",
            |s| io_bytes(s.io.as_deref()?, "wbytes="),
        ),
    ];
    for d in counters {
        e.family(d.name, Kind::Counter, d.help);
        for (l, s) in services.iter().zip(samples) {
            if let Some(s) = s {
                if let Some(v) = (d.read)(s) {
                    e.counter(d.name, &l.labels(), v, s.started);
                }
            }
        }
    }
    memory_events(e, services, samples);
    pressure(e, services, samples);
}

pub(super) fn memory_events(
    e: &mut Exposition,
    services: &[Labelled<'_>],
    samples: &[Option<&Sample>],
) {
    let name = "isola_service_memory_events";
    e.family(
        name,
        Kind::Counter,
        "memory.events of the running sandbox, by event.",
    );
    for (l, s) in services.iter().zip(samples) {
        let Some((s, text)) = s.and_then(|s| Some((s, s.events.as_deref()?))) else {
            continue;
        };
        for line in text.lines() {
            let Some((event, v)) = line.split_once(' ') else {
                continue;
            };
            let Ok(v) = v.trim().parse::<u64>() else {
                continue;
            };
            let mut labels = l.labels();
            labels.push(("event", event));
            e.counter(name, &labels, v as f64, s.started);
        }
    }
}

/// PSI: `some` is time some task waited, `full` time all did.
pub(super) fn pressure(e: &mut Exposition, services: &[Labelled<'_>], samples: &[Option<&Sample>]) {
    for (r, resource) in PRESSURE.into_iter().enumerate() {
        for (line, what, who) in [("some", "waiting", "some"), ("full", "stalled", "all")] {
            let name = format!("isola_service_pressure_{resource}_{what}_seconds");
            let help = format!(
                "Time {who} of the running sandbox's tasks waited for {resource} ({resource}.pressure {line} total)."
            );
            e.family(&name, Kind::Counter, &help);
            for (l, s) in services.iter().zip(samples) {
                let Some(s) = s else { continue };
                let Some(us) = s.pressure[r].as_deref().and_then(|t| psi_total(t, line)) else {
                    continue;
                };
                e.counter(&name, &l.labels(), us / 1e6, s.started);
            }
        }
    }
}

/// How often each `resourceRules` rule acted (restarted, or told).
pub(super) fn rule_family(e: &mut Exposition, services: &[Labelled<'_>], rules: &ResourceWatch) {
    let name = "isola_service_resource_rule_actions";
    e.family(
        name,
        Kind::Counter,
        "Times a resourceRules rule held for its forMs and acted, by rule.",
    );
    for l in services {
        for (k, n) in rules.acted(l.i).iter().enumerate() {
            let Some(rule) = l.s.def.policy.resource_rules.get(k) else {
                continue;
            };
            let index = k.to_string();
            let mut labels = l.labels();
            labels.push(("rule", index.as_str()));
            labels.push(("metric", rule.metric.as_str()));
            e.counter(name, &labels, *n as f64, None);
        }
    }
}

/// Lines dropped, by sink.
pub(super) type Dropped = [(&'static str, u64); 4];

/// A number of a listener's accept queue.
type QueueRead = fn(&SocketQueue<'_>) -> u32;

pub(super) fn socket_labels<'a>(s: &SocketQueue<'a>) -> [(&'static str, &'a str); 2] {
    [("service", s.service), ("socket", s.socket)]
}

/// The accept queues of the held TCP listeners.
pub(super) fn socket_families(e: &mut Exposition, sockets: &[SocketQueue<'_>]) {
    let gauges: [Def<QueueRead>; 2] = [
        def(
            "isola_socket_accept_queue",
            "Connections a held TCP listener completed that no payload accepted yet.",
            |s| s.queue.queued,
        ),
        def(
            "isola_socket_backlog",
            "The accept queue's capacity (backlog, capped by somaxconn).",
            |s| s.queue.backlog,
        ),
    ];
    for g in gauges {
        e.family(g.name, Kind::Gauge, g.help);
        for s in sockets {
            e.gauge(g.name, &socket_labels(s), f64::from((g.read)(s)));
        }
    }
    let name = "isola_socket_listen_drops";
    e.family(
        name,
        Kind::Counter,
        "Connections a held TCP listener dropped for a full accept queue, since it was opened.",
    );
    for s in sockets {
        e.counter(name, &socket_labels(s), f64::from(s.queue.drops), None);
    }
}

/// The autoscaled services' counts and decisions.
pub(super) fn autoscale_families(e: &mut Exposition, scaled: &[Scaled<'_>]) {
    let name = "isola_autoscale_replicas";
    e.family(
        name,
        Kind::Gauge,
        "Replicas an autoscaled service wants now: running or starting, not those being removed.",
    );
    for s in scaled {
        e.gauge(name, &[("service", s.service)], f64::from(s.desired));
    }
    let name = "isola_autoscale_decisions";
    e.family(
        name,
        Kind::Counter,
        "Scale decisions of an autoscaled service since isola up started, by direction.",
    );
    for s in scaled {
        for (direction, n) in [("up", s.ups), ("down", s.downs)] {
            let labels = [("service", s.service), ("direction", direction)];
            e.counter(name, &labels, n as f64, None);
        }
    }
}

pub(super) fn supervisor_families(e: &mut Exposition, own: &Own<'_>) {
    let lines_dropped = own.lines_dropped;
    let name = "isola_log_lines_dropped";
    e.family(
        name,
        Kind::Counter,
        "Lines dropped by sink: the supervisor's stdout and stderr (a slow reader), journald and syslog (full, slow or absent).",
    );
    for (sink, n) in lines_dropped {
        e.counter(name, &[("sink", sink)], n as f64, None);
    }
    let fds = std::fs::read_dir("/proc/self/fd").map_or(0, Iterator::count);
    e.family(
        "isola_supervisor_fds",
        Kind::Gauge,
        "Open file descriptors of the supervisor.",
    );
    e.gauge("isola_supervisor_fds", &[], fds as f64);
    let rss = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|t| key(&t.replace(':', ""), "VmRSS"))
        .unwrap_or(0.0);
    e.family(
        "isola_supervisor_rss_bytes",
        Kind::Gauge,
        "Resident memory of the supervisor.",
    );
    e.gauge("isola_supervisor_rss_bytes", &[], rss * 1024.0);
    e.family(
        "isola_supervisor_loop_lag_seconds",
        Kind::Gauge,
        "The longest turn of the supervisor's loop in the last 10 to 20 s: how long an event could wait behind others.",
    );
    e.gauge(
        "isola_supervisor_loop_lag_seconds",
        &[],
        own.loop_lag.as_secs_f64(),
    );
}

/// `KEY VALUE` lines (memory.stat, /proc status): the value of `k`.
pub(super) fn key(text: &str, k: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        let mut p = l.split_whitespace();
        (p.next()? == k).then(|| p.next()?.parse().ok())?
    })
}

/// io.stat: `MAJ:MIN rbytes=N wbytes=N …` per device, summed.
pub(super) fn io_bytes(text: &str, field: &str) -> Option<f64> {
    let mut sum = 0u64;
    for l in text.lines() {
        for f in l.split_whitespace() {
            if let Some(v) = f.strip_prefix(field).and_then(|v| v.parse::<u64>().ok()) {
                sum += v;
            }
        }
    }
    Some(sum as f64)
}

/// A PSI file's `total=` (µs) on its `some` or `full` line.
pub(super) fn psi_total(text: &str, line: &str) -> Option<f64> {
    let l = text.lines().find(|l| l.starts_with(line))?;
    l.split_whitespace()
        .find_map(|f| f.strip_prefix("total="))?
        .parse()
        .ok()
}
