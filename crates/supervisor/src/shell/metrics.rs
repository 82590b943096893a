//! What `GET /metrics` and `isola metrics` answer: one family each of
//! `isola_…` metrics, labelled by service (and group and replica for
//! replicas), from the core's counters (kept across a service's restarts)
//! and its running sandbox's cgroup files (per run: their `_created` is
//! when the run started), then the supervisor's own.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use super::context::ServiceIx;
use crate::control::Response;
use crate::held_sockets::SocketQueue;
use crate::lifecycle::{ConnId, Core, Phase, Service};
use crate::metrics::exposition::{Exposition, Format, Kind};
use crate::metrics::server::{MetricsServer, Scrape};
use crate::sandboxes::Sandboxes;
use crate::shell::rules::ResourceWatch;
use crate::spec::health::ProbeKind;
use crate::supervisor::{ctx, Supervisor};

/// One service's labels: `service`, and `group` and `replica` for a
/// replica.
struct Labelled<'a> {
    i: ServiceIx,
    s: &'a Service,
    replica: String,
}

impl Labelled<'_> {
    fn labels(&self) -> Vec<(&str, &str)> {
        let mut l = vec![("service", self.s.def.name.as_str())];
        if let Some(g) = &self.s.def.group {
            l.push(("group", g.as_str()));
            l.push(("replica", self.replica.as_str()));
        }
        l
    }
}

/// A value the core keeps.
type Counted = fn(&Service) -> f64;

/// A family: its name, its help, and how a service's value is read.
struct Def<R> {
    name: &'static str,
    help: &'static str,
    read: R,
}

const fn def<R>(name: &'static str, help: &'static str, read: R) -> Def<R> {
    Def { name, help, read }
}

/// Reading the cgroup files of thousands of sandboxes takes long: a
/// scrape reads them a slice of time per turn of the loop, so no other
/// client waits longer than that behind it, and is answered once all are
/// read.
pub(crate) const SLICE: Duration = Duration::from_millis(5);

/// The metrics endpoint (`--metrics`, if any) and the scrapes being read
/// (its and `isola metrics`').
#[derive(Default)]
pub(crate) struct Metrics {
    server: Option<MetricsServer>,
    jobs: VecDeque<Job>,
}

/// Who asked for a scrape.
enum Asker {
    /// A scraper of the endpoint.
    Endpoint(Scrape),
    /// `isola metrics` (the text format, on the control socket).
    Control(ConnId),
}

/// A scrape whose samples are being read.
struct Job {
    asker: Asker,
    /// The services to read, by index and name (an index reused while the
    /// scrape runs is not mistaken for its old service).
    todo: Vec<(ServiceIx, String)>,
    next: usize,
    samples: Samples,
}

/// Samples read, by service index, with the service's name.
type Samples = HashMap<ServiceIx, (String, Sample)>;

impl Job {
    /// Read samples until `until` (at least one); true once all are read.
    fn read(&mut self, sb: &Sandboxes, until: Instant) -> bool {
        while let Some((i, name)) = self.todo.get(self.next) {
            if let Some(sample) = Sample::read(sb, *i) {
                self.samples.insert(*i, (name.clone(), sample));
            }
            self.next += 1;
            if self.next < self.todo.len() && Instant::now() >= until {
                return false;
            }
        }
        true
    }
}

impl Metrics {
    pub(crate) fn new(server: Option<MetricsServer>) -> Metrics {
        Metrics {
            server,
            jobs: VecDeque::new(),
        }
    }

    pub(crate) fn server(&mut self) -> Option<&mut MetricsServer> {
        self.server.as_mut()
    }

    /// A scrape is being read: the loop must turn again soon.
    pub(crate) fn busy(&self) -> bool {
        !self.jobs.is_empty()
    }
}

/// The services a scrape reports, by index and name.
fn reported(core: &Core) -> Vec<(ServiceIx, String)> {
    core.services()
        .filter(|(i, s)| holds_its_name(core, *i, s))
        .map(|(i, s)| (i, s.def.name.clone()))
        .collect()
}

/// During an overlap a service has two sandboxes: the one that holds its
/// name is reported (the new one before it took over, the old one after
/// it handed over, are not: one label set, one value).
fn holds_its_name(core: &Core, i: ServiceIx, s: &Service) -> bool {
    core.find(&s.def.name) == Some(i)
}

impl Supervisor {
    /// A scrape of the metrics endpoint: read a first slice now.
    pub(crate) fn scrape(&mut self, s: Scrape) {
        self.start_scrape(Asker::Endpoint(s));
    }

    /// `isola metrics`: read as a scrape is, answered once all is read.
    pub(crate) fn scrape_for(&mut self, conn: ConnId) {
        self.start_scrape(Asker::Control(conn));
    }

    fn start_scrape(&mut self, asker: Asker) {
        let todo = reported(&self.core);
        self.metrics.jobs.push_back(Job {
            asker,
            todo,
            next: 0,
            samples: HashMap::new(),
        });
        // Once per scrape, not per slice: it walks every service.
        self.sandboxes.open_stats();
        self.work_scrapes(SLICE);
    }

    /// Read samples for `budget`; answer every scrape whose samples are
    /// all read.
    pub(crate) fn work_scrapes(&mut self, budget: Duration) {
        let until = Instant::now() + budget;
        loop {
            let m = &mut self.metrics;
            // A scraper that went away: nothing more to read for it.
            let (server, control) = (&m.server, &self.control);
            m.jobs.retain(|j| match &j.asker {
                Asker::Endpoint(s) => server.as_ref().is_some_and(|v| v.is_open(s.conn)),
                Asker::Control(id) => control.is_open(*id),
            });
            let Some(job) = m.jobs.front_mut() else {
                return;
            };
            if !job.read(&self.sandboxes, until) {
                return;
            }
            let Some(job) = m.jobs.pop_front() else {
                return;
            };
            self.answer_scrape(job);
        }
    }

    fn answer_scrape(&mut self, job: Job) {
        let format = match &job.asker {
            Asker::Endpoint(s) => s.format,
            Asker::Control(_) => Format::Text,
        };
        let own = self.own();
        let body = render(format, &self.core, &job.samples, &self.rules, &own);
        match job.asker {
            Asker::Endpoint(s) => {
                if let Some(server) = self.metrics.server.as_mut() {
                    server.answer(ctx!(self), s, &body);
                }
            }
            Asker::Control(id) => {
                let reply = Response {
                    metrics: Some(body),
                    ..Response::ok()
                };
                self.control.send(ctx!(self), id, &reply);
            }
        }
    }

    /// The supervisor's own numbers, now.
    fn own(&self) -> Own<'_> {
        Own {
            lines_dropped: self.outputs.lines_dropped(),
            sockets: self.held.accept_queues(),
            loop_lag: self.lag.longest(Instant::now()),
        }
    }
}

/// What the supervisor tells of itself beside its services.
struct Own<'a> {
    lines_dropped: Dropped,
    sockets: Vec<SocketQueue<'a>>,
    loop_lag: Duration,
}

/// The exposition of a stack: the core's services, their samples, and
/// the supervisor's own numbers.
fn render(
    format: Format,
    core: &Core,
    samples: &Samples,
    rules: &ResourceWatch,
    own: &Own<'_>,
) -> String {
    let mut e = Exposition::new(format);
    let services: Vec<Labelled<'_>> = core
        .services()
        .filter(|(i, s)| holds_its_name(core, *i, s))
        .map(|(i, s)| Labelled {
            i,
            s,
            replica: s
                .def
                .replica_number()
                .map(|n| n.to_string())
                .unwrap_or_default(),
        })
        .collect();
    lifecycle_families(&mut e, &services);
    let read: Vec<Option<&Sample>> = services
        .iter()
        .map(|l| {
            let (name, sample) = samples.get(&l.i)?;
            (*name == l.s.def.name).then_some(sample)
        })
        .collect();
    cgroup_families(&mut e, &services, &read);
    rule_family(&mut e, &services, rules);
    socket_families(&mut e, &own.sockets);
    supervisor_families(&mut e, own);
    e.finish()
}

fn lifecycle_families(e: &mut Exposition, services: &[Labelled<'_>]) {
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
struct Sample {
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
    fn read(sb: &Sandboxes, i: ServiceIx) -> Option<Sample> {
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

fn number(text: &Option<String>) -> Option<f64> {
    text.as_deref()?.trim().parse().ok()
}

fn cgroup_families(e: &mut Exposition, services: &[Labelled<'_>], samples: &[Option<&Sample>]) {
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

fn memory_events(e: &mut Exposition, services: &[Labelled<'_>], samples: &[Option<&Sample>]) {
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
fn pressure(e: &mut Exposition, services: &[Labelled<'_>], samples: &[Option<&Sample>]) {
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
fn rule_family(e: &mut Exposition, services: &[Labelled<'_>], rules: &ResourceWatch) {
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
type Dropped = [(&'static str, u64); 4];

/// A number of a listener's accept queue.
type QueueRead = fn(&SocketQueue<'_>) -> u32;

fn socket_labels<'a>(s: &SocketQueue<'a>) -> [(&'static str, &'a str); 2] {
    [("service", s.service), ("socket", s.socket)]
}

/// The accept queues of the held TCP listeners.
fn socket_families(e: &mut Exposition, sockets: &[SocketQueue<'_>]) {
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

fn supervisor_families(e: &mut Exposition, own: &Own<'_>) {
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
fn key(text: &str, k: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        let mut p = l.split_whitespace();
        (p.next()? == k).then(|| p.next()?.parse().ok())?
    })
}

/// io.stat: `MAJ:MIN rbytes=N wbytes=N …` per device, summed.
fn io_bytes(text: &str, field: &str) -> Option<f64> {
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
fn psi_total(text: &str, line: &str) -> Option<f64> {
    let l = text.lines().find(|l| l.starts_with(line))?;
    l.split_whitespace()
        .find_map(|f| f.strip_prefix("total="))?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_file_readers() {
        let psi = "some avg10=0.00 avg60=0.00 avg300=0.00 total=1500000\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=250\n";
        assert_eq!(psi_total(psi, "some"), Some(1_500_000.0));
        assert_eq!(psi_total(psi, "full"), Some(250.0));
        let io = "254:0 rbytes=4096 wbytes=8192 rios=1 wios=2\n8:0 rbytes=1 wbytes=0\n";
        assert_eq!(io_bytes(io, "rbytes="), Some(4097.0));
        assert_eq!(io_bytes(io, "wbytes="), Some(8192.0));
        assert_eq!(
            key("anon 10\ninactive_file 4096\n", "inactive_file"),
            Some(4096.0)
        );
        assert_eq!(key("VmRSS 1234 kB\n", "VmRSS"), Some(1234.0));
    }
}

#[cfg(test)]
mod golden {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::lifecycle::{Effect, Exit};
    use crate::shell::reactor::Reactor;

    /// A scrape reads its services a slice at a time: with no time left,
    /// one per turn, and it is done after the last.
    #[test]
    fn a_scrape_is_read_in_slices() {
        let reactor = Reactor::new().unwrap();
        let setup = crate::sandboxes::Setup {
            stack_root: "/nonexistent".into(),
            no_cgroup: true,
            group: None,
            spawner: None,
            stats_cap: 0,
        };
        let sb = Sandboxes::new(&reactor, setup).unwrap();
        let core = stack();
        let mut job = Job {
            asker: Asker::Control(1),
            todo: reported(&core),
            next: 0,
            samples: HashMap::new(),
        };
        assert_eq!(job.todo.len(), 3);
        let past = Instant::now();
        assert!(!job.read(&sb, past));
        assert_eq!(job.next, 1);
        assert!(!job.read(&sb, past));
        assert!(job.read(&sb, past), "the last one ends it");
        let mut all = Job { next: 0, ..job };
        assert!(
            all.read(&sb, Instant::now() + Duration::from_secs(1)),
            "time for all"
        );
    }

    fn stack() -> Core {
        let text = r#"{"services": {
            "web": {"process": {"args": ["true"]}, "replicas": 2},
            "db": {"process": {"args": ["true"]},
                   "restart": {"policy": "always", "delayMs": 1, "maxDelayMs": 1},
                   "probes": {"liveness": {"tcp": {"port": 5432}, "failureThreshold": 9}}}}}"#;
        let defs = crate::spec::stack::parse(text, std::path::Path::new("/"))
            .expect("stack")
            .services;
        Core::new(defs, 16, 1)
    }

    fn launch_all(core: &mut Core, now: Instant) {
        let launched: Vec<usize> = std::iter::from_fn(|| core.next_effect())
            .filter_map(|e| match e {
                Effect::Launch(i) => Some(i),
                _ => None,
            })
            .collect();
        for i in launched {
            core.started(i, 100, now);
        }
    }

    fn own() -> Own<'static> {
        Own {
            lines_dropped: [("stdout", 7), ("stderr", 0), ("journald", 2), ("syslog", 0)],
            sockets: vec![SocketQueue {
                service: "web",
                socket: "http",
                queue: isola_runtime::listen::AcceptQueue {
                    queued: 3,
                    backlog: 128,
                    drops: 9,
                },
            }],
            loop_lag: Duration::from_millis(12),
        }
    }

    /// The core's families, as a scraper reads them; the probe failures
    /// and restarts of a service survive its restart.
    #[test]
    fn counters_survive_a_restart_and_replicas_are_labelled() {
        let mut core = stack();
        let t0 = Instant::now();
        core.start_all(t0);
        launch_all(&mut core, t0);
        let db = core.find("db").unwrap();
        let fail = |core: &mut Core, t| {
            core.probe_done(db, ProbeKind::Liveness, false, "refused".into(), t)
        };
        fail(&mut core, t0);
        fail(&mut core, t0);
        let exit = Exit {
            code: 1,
            oom_kills: 0,
            new_oom_kills: 0,
        };
        core.exited(db, exit, t0);
        let t1 = t0 + Duration::from_millis(50);
        core.tick(t1);
        launch_all(&mut core, t1);
        fail(&mut core, t1);
        let text = render(
            Format::Text,
            &core,
            &HashMap::new(),
            &ResourceWatch::default(),
            &own(),
        );
        let want = [
            "isola_service_up{service=\"web.1\",group=\"web\",replica=\"1\"} 1",
            "isola_service_up{service=\"db\"} 1",
            "isola_service_restarts_total{service=\"db\"} 1",
            "isola_service_restarts_total{service=\"web.2\",group=\"web\",replica=\"2\"} 0",
            "isola_service_probe_failures_total{service=\"db\",probe=\"liveness\"} 3",
            "isola_log_lines_dropped_total{sink=\"stdout\"} 7",
            "isola_log_lines_dropped_total{sink=\"journald\"} 2",
            "isola_socket_accept_queue{service=\"web\",socket=\"http\"} 3",
            "isola_socket_backlog{service=\"web\",socket=\"http\"} 128",
            "isola_socket_listen_drops_total{service=\"web\",socket=\"http\"} 9",
            "isola_supervisor_loop_lag_seconds 0.012",
        ];
        for w in want {
            assert!(text.lines().any(|l| l == w), "no {w:?} in\n{text}");
        }
        // One family each: every HELP line names a different family.
        let helps: Vec<&str> = text.lines().filter(|l| l.starts_with("# HELP ")).collect();
        let mut names: Vec<&str> = helps.iter().filter_map(|l| l.split(' ').nth(2)).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), helps.len());
        let om = render(
            Format::OpenMetrics,
            &core,
            &HashMap::new(),
            &ResourceWatch::default(),
            &own(),
        );
        assert!(om.contains("# TYPE isola_service_restarts counter\n"));
        assert!(om.ends_with("# EOF\n"));
    }
}
