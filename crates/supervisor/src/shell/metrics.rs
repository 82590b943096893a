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
use crate::lifecycle::{ConnId, Core, Service};
use crate::metrics::exposition::{Exposition, Format};
use crate::metrics::server::{MetricsServer, Scrape};
use crate::sandboxes::Sandboxes;
use crate::shell::rules::ResourceWatch;
use crate::supervisor::{ctx, Supervisor};

use families::{
    autoscale_families, cgroup_families, lifecycle_families, rule_family, socket_families,
    supervisor_families, Dropped, Sample,
};

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

    pub(crate) fn server_ref(&self) -> Option<&MetricsServer> {
        self.server.as_ref()
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
        let groups = self.core.groups_now(Instant::now());
        Own {
            lines_dropped: self.outputs.lines_dropped(),
            sockets: self.held.accept_queues(),
            loop_lag: self.lag.longest(Instant::now()),
            autoscaled: self
                .autoscaler
                .decisions()
                .into_iter()
                .map(|(service, ups, downs)| Scaled {
                    service,
                    desired: groups.get(service).map_or(0, |g| g.census.wanted),
                    ups,
                    downs,
                })
                .collect(),
        }
    }
}

/// What the supervisor tells of itself beside its services.
struct Own<'a> {
    lines_dropped: Dropped,
    sockets: Vec<SocketQueue<'a>>,
    loop_lag: Duration,
    autoscaled: Vec<Scaled<'a>>,
}

/// An autoscaled service's count and its decisions so far.
struct Scaled<'a> {
    service: &'a str,
    desired: u32,
    ups: u64,
    downs: u64,
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
    autoscale_families(&mut e, &own.autoscaled);
    supervisor_families(&mut e, own);
    e.finish()
}

mod families;
#[cfg(test)]
mod tests;
