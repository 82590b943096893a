//! `isola up`: the event loop around the lifecycle core.
//!
//! The loop holds the reactor (one epoll set), the core and the parts:
//! [`Sandboxes`], the [`Reaper`], [`Outputs`], the [`ControlServer`],
//! [`Probes`], [`Readiness`] and the [`HeldSockets`]. Each part owns its
//! fds and tables and registers its own fds; an event goes to the part
//! its token names, with a context (the reactor, the time, an outbox).
//! What parts tell — inputs for the core, lines to say — is emptied from
//! the outbox after every call ([`Supervisor::settle`]), and the effects
//! the core asks for are carried out by `shell::orchestrate`, the only
//! code besides this file and `shell::requests` that touches several
//! parts. Nothing polls and nothing blocks: an idle supervisor sleeps in
//! epoll_wait with no timeout, and the timerfd is armed for the nearest
//! deadline.

use std::path::Path;
use std::time::{Instant, SystemTime};

pub use crate::config::{Config, Forwarded, NoCgroup};
use isola_runtime::SpecError;
use nix::errno::Errno;
use nix::sys::epoll::EpollEvent;
use nix::sys::signal::Signal;

use crate::autoscale::Autoscaler;
use crate::control::server::ControlServer;
use crate::held_sockets::HeldSockets;
use crate::host::{self, PlanAdditions};
use crate::keeper::link::Link;
use crate::lifecycle::Core;
use crate::metrics::server::MetricsServer;
use crate::networks::Networks;
use crate::outputs::{Outputs, Sink};
use crate::probes::Probes;
use crate::readiness::Readiness;
use crate::reaper::Reaper;
use crate::sandboxes::{self, Sandboxes};
use crate::shell::context::{Ctx, Input, Outbox};
use crate::shell::loading::{
    add_to_all, block_signals, check_stack, claim_group, core_for, networks_for, outputs_for,
    read_stack, spawner_and_stack, Checked, Loading, Prepared,
};
use crate::shell::loop_lag::LoopLag;
use crate::shell::metrics::{Metrics, SLICE};
use crate::shell::reactor::{Part, Reactor, Readiness as Ready, Token};
use crate::shell::reports::Reports;
use crate::shell::rules::ResourceWatch;
use crate::shell::wakeups::Wakeups;
use crate::spec::images::ImageContext;
use crate::spec::stack::{self, Stack};
use crate::upgrade::Upgrades;

pub use crate::upgrade::snapshot::HANDOVER_ENV;

/// Sandboxes setting up at the same time. More does not start a stack
/// faster on a few cores, and it bounds what a start burst holds at once.
pub const MAX_STARTING: usize = 16;

/// epoll events handled per wakeup.
const EPOLL_BATCH: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum UpError {
    #[error("{0}")]
    Spec(#[from] SpecError),
    #[error("{0}")]
    Setup(String),
}

impl UpError {
    pub fn exit_code(&self) -> u8 {
        match self {
            UpError::Spec(_) => isola_runtime::exit::USAGE,
            UpError::Setup(_) => isola_runtime::exit::FAILURE,
        }
    }
}

pub(crate) fn setup<E: std::fmt::Display>(
    what: impl std::fmt::Display,
) -> impl FnOnce(E) -> UpError {
    move |e| UpError::Setup(format!("{what}: {e}"))
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// A stack's name: its file's stem, made safe for a cgroup directory.
pub fn stack_name(path: &Path) -> String {
    path.file_stem()
        .map(|s| isola_runtime::cgroup::sanitize_name(&s.to_string_lossy()))
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "stack".into())
}

/// The stack file at `path`, its image services in the default store.
pub fn load_stack(path: &Path) -> Result<Stack, SpecError> {
    let images = ImageContext::new(isola_images::store::default_root(), stack_name(path));
    load_stack_with(path, &images)
}

pub fn load_stack_with(path: &Path, images: &ImageContext) -> Result<Stack, SpecError> {
    stack::parse_with(
        &read_stack(path)?,
        &isola_runtime::spec::base_dir(path),
        images,
    )
}

pub struct Supervisor {
    pub(crate) cfg: Config,
    pub(crate) reactor: Reactor,
    pub(crate) now: Instant,
    pub(crate) outbox: Outbox,
    pub(crate) core: Core,
    wakeups: Wakeups,
    pub(crate) sandboxes: Sandboxes,
    pub(crate) reaper: Reaper,
    pub(crate) outputs: Outputs,
    pub(crate) control: ControlServer,
    pub(crate) probes: Probes,
    pub(crate) readiness: Readiness,
    pub(crate) held: HeldSockets,
    /// What every loaded plan gets from us (the spawner's copy too).
    pub(crate) additions: PlanAdditions,
    /// What `isola up` tells of the whole stack (systemd, a terminal).
    pub(crate) reports: Reports,
    /// The services whose `resourceRules` are checked.
    pub(crate) rules: ResourceWatch,
    /// The metrics endpoint (`--metrics`) and the scrapes being read.
    pub(crate) metrics: Metrics,
    /// How long the loop's turns take.
    pub(crate) lag: LoopLag,
    /// The stack's networks, when it has some.
    pub(crate) networks: Option<Networks>,
    /// The autoscaled services' controllers.
    pub(crate) autoscaler: Autoscaler,
    /// This supervisor's line of upgrades, and the one under way.
    pub(crate) upgrades: Upgrades,
    /// The stack's keeper, when it has one: the parent of its inits.
    pub(crate) keeper: Option<Link>,
}

/// A part's context, built from the loop's fields (a macro, not a
/// method: the part and the context borrow different fields).
macro_rules! ctx {
    ($s:expr) => {
        &mut $crate::shell::context::Ctx {
            reactor: &$s.reactor,
            now: $s.now,
            out: &mut $s.outbox,
        }
    };
}
pub(crate) use ctx;

impl Supervisor {
    /// Validate the stack, claim its cgroup and take the socket; nothing is
    /// started yet.
    pub fn new(cfg: Config) -> Result<Supervisor, UpError> {
        // Our fd limit raised as far as it goes (the capacity check counts
        // on it), and the signals we take blocked: both before the
        // spawner is forked.
        let additions = PlanAdditions {
            inherited: host::Inherited::adjust(),
            no_cgroup: cfg.no_cgroup.is_some(),
            socket: cfg.socket.clone(),
        };
        block_signals()?;
        let (stack, spawner, stack_text) = spawner_and_stack(&cfg, &additions)?;
        let Checked { stack, stats_cap } = check_stack(&cfg, stack, Loading::Start)?;
        // Bound before anything starts: a port in use stops `isola up`
        // here, with nothing started.
        let held = HeldSockets::default()
            .open_all(stack.with_autoscaled())
            .map_err(UpError::Setup)?;
        let metrics = cfg
            .metrics
            .as_ref()
            .map(crate::metrics::server::bind)
            .transpose()
            .map_err(UpError::Setup)?;
        let listener = host::bind_socket(&cfg.socket)?;
        // Until the supervisor is fully set up, a failure removes the socket.
        let mut socket_guard = host::RemoveOnDrop(Some(cfg.socket.clone()));
        let mut stderr = Sink::stderr();
        for w in &stack.warnings {
            stderr.line(&format!("isola: warning: {w}"));
        }
        let mut group = claim_group(&cfg, &mut stderr)?;
        let networks = networks_for(&cfg, &stack.networks, &mut group)?;
        let mut defs = stack.services;
        add_to_all(&additions, &mut defs);
        let prepared = Prepared {
            additions,
            defs,
            autoscaled: stack.autoscaled,
            replicated: stack.replicated,
            held,
            listener,
            metrics,
            stderr,
            group,
            spawner,
            stats_cap,
            networks,
            stack_text,
        };
        let sup = Supervisor::assemble(cfg, prepared)?;
        socket_guard.0 = None;
        Ok(sup)
    }

    /// The loop and its parts, from what `new` checked and claimed.
    pub(crate) fn assemble(cfg: Config, p: Prepared) -> Result<Supervisor, UpError> {
        let reactor = Reactor::new().map_err(setup("epoll"))?;
        let outputs = outputs_for(&cfg, p.stderr, &p.defs)?;
        let mut outbox = Outbox::default();
        if let Err(e) = &p.spawner {
            outbox.note(format!("spawner: fork: {e}; starting sandboxes in-process"));
        }
        let mut ctx = Ctx {
            reactor: &reactor,
            now: Instant::now(),
            out: &mut outbox,
        };
        let networks = match Networks::start_if(&mut ctx, p.networks, &p.defs, &cfg.socket) {
            Ok(n) => n,
            Err(e) => {
                // Nothing left behind: the stack's cgroup goes too.
                if let Some(g) = p.group {
                    let _ = g.release();
                }
                return Err(UpError::Setup(format!("networks: {e}")));
            }
        };
        let sandbox_setup = sandboxes::Setup {
            stack_root: cfg.cgroup_root.join(stack_name(&cfg.stack_path)),
            no_cgroup: cfg.no_cgroup.is_some(),
            group: p.group,
            spawner: p.spawner.ok(),
            stats_cap: p.stats_cap,
            siblings: cfg.keeper.is_some(),
        };
        let mut sandboxes = Sandboxes::new(&reactor, sandbox_setup).map_err(setup("inotify"))?;
        for (i, def) in p.defs.iter().enumerate() {
            sandboxes.add(i, &def.name);
        }
        let mut autoscaler = Autoscaler::default();
        autoscaler.define(&p.autoscaled, Instant::now());
        let core = core_for(p.defs, p.autoscaled, p.replicated, &p.additions);
        let upgrades = Upgrades::new(p.additions.inherited.record(), p.stack_text);

        let mut sup = Supervisor {
            reports: Reports::new(core.len(), cfg.echo, cfg.keeper.clone()),
            keeper: cfg.keeper.clone().map(Link::new),
            wakeups: Wakeups::new(&reactor).map_err(UpError::Setup)?,
            control: ControlServer::new(p.listener, &reactor).map_err(setup("epoll"))?,
            metrics: Metrics::new(
                p.metrics
                    .map(|m| MetricsServer::new(m, &reactor))
                    .transpose()
                    .map_err(setup("epoll"))?,
            ),
            readiness: Readiness::new(cfg.socket.clone()),
            core,
            cfg,
            reactor,
            now: Instant::now(),
            outbox,
            sandboxes,
            reaper: Reaper::default(),
            rules: ResourceWatch::default(),
            lag: LoopLag::new(Instant::now()),
            networks,
            outputs,
            probes: Probes::default(),
            held: p.held,
            additions: p.additions,
            autoscaler,
            upgrades,
        };
        sup.watch_arrivals();
        sup.watch_keeper()?;
        Ok(sup)
    }

    /// Start every service in dependency order, then serve until shut down.
    pub fn run(mut self) -> Result<(), UpError> {
        self.now = Instant::now();
        if self.upgrades.is_resumed() {
            // What exited while the exec ran is reaped now (its teardown
            // begins; the core hears once the cgroup is empty); what was
            // queued may start.
            self.reap_children();
            self.reconcile_with_keeper();
            self.core.resumed(self.now);
        } else {
            self.core.start_all(self.now);
        }
        self.settle();
        let mut events = vec![EpollEvent::empty(); EPOLL_BATCH];
        while !self.core.finished() {
            self.arm_timer();
            let ready = match self.reactor.wait(&mut events) {
                Ok(r) => r,
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(UpError::Setup(format!("epoll_wait: {e}"))),
            };
            let began = Instant::now();
            for (token, how) in ready {
                self.now = Instant::now();
                self.dispatch(token, how);
                self.settle();
            }
            self.lag.record(began, Instant::now());
            // No event of this wakeup is left to reach a forgotten index.
            self.core.recycle();
            self.report_progress();
            self.upgrade_turn();
            self.keeper_turn();
        }
        self.finish_shutdown();
        Ok(())
    }

    /// Hand an event to the part its token names.
    fn dispatch(&mut self, token: Token, how: Ready) {
        let key = token.key;
        match token.part {
            Part::Signals => self.on_signals(),
            Part::Keeper => self.on_keeper(how),
            Part::Timer => self.on_timer(),
            Part::Sandboxes => {
                if let Some((i, report)) = self.sandboxes.on_event(ctx!(self), key) {
                    self.on_report(i, report);
                }
            }
            Part::Outputs => {
                if let Some(lines) = self.outputs.on_event(ctx!(self), key) {
                    self.send_lines(&lines);
                }
            }
            Part::Control => {
                for (conn, line) in self.control.on_event(ctx!(self), key, how) {
                    match line {
                        Ok(req) => self.handle(conn, req),
                        Err(why) => {
                            let reply = crate::control::Response::err(why);
                            self.control.send(ctx!(self), conn, &reply);
                        }
                    }
                }
                self.control.end_turn(ctx!(self));
            }
            Part::Probes => self.probes.on_event(ctx!(self), key),
            Part::Rules => self.on_trigger(key, how),
            Part::Names => self.on_name_query(key),
            Part::Sockets => self.on_arrival(key),
            Part::Metrics => {
                let scrapes = match self.metrics.server() {
                    Some(server) => server.on_event(ctx!(self), key, how),
                    None => Vec::new(),
                };
                for s in scrapes {
                    self.scrape(s);
                }
            }
            Part::Readiness => {
                let senders = crate::shell::orchestrate::SenderCheck {
                    core: &self.core,
                    sandboxes: &self.sandboxes,
                };
                self.readiness.on_event(ctx!(self), key, &senders);
            }
        }
    }

    /// Empty the outbox into the core and the sinks, and carry out what
    /// the core asks for, until nothing is left: an effect may send
    /// inputs, which may queue more effects.
    pub(crate) fn settle(&mut self) {
        loop {
            while let Some(said) = self.outbox.next_said() {
                self.say(said);
            }
            // The time of each input and effect is its own (a burst of
            // exec probes, each a fork, must not start with its deadline
            // already gone).
            if let Some(input) = self.outbox.next_input() {
                self.now = Instant::now();
                self.feed(input);
                continue;
            }
            match self.core.next_effect() {
                Some(effect) => {
                    self.now = Instant::now();
                    self.apply(effect);
                }
                None => return,
            }
        }
    }

    /// One input to the core (the mirror of [`Supervisor::apply`]).
    fn feed(&mut self, input: Input) {
        // What the core hears is what a keeper's snapshot must see (a
        // wakeup that changed nothing takes none).
        if let Some(k) = self.keeper.as_mut() {
            k.changed();
        }
        let now = self.now;
        let core = &mut self.core;
        match input {
            Input::Started(i, pid) => core.started(i, pid, now),
            Input::StartFailed(i, e) => core.start_failed(i, e, now),
            Input::Exited(i, exit) => core.exited(i, exit, now),
            Input::OomKilled {
                service,
                new,
                memory_max,
            } => core.oom_killed(service, new, &memory_max, now),
            Input::ProbeDone {
                service,
                kind,
                verdict,
            } => core.probe_done(service, kind, verdict.ok, verdict.message, now),
            Input::Notified(i, notice) => core.notified(i, notice, now),
            Input::ResourceExceeded(i, why) => core.resource_exceeded(i, why, now),
            Input::NetworkFailed(i, why) => core.network_failed(i, why, now),
            Input::ConnClosed(conn) => core.forget_conn(conn),
        }
    }

    fn on_signals(&mut self) {
        for sig in self.wakeups.signals.take() {
            self.now = Instant::now();
            match sig {
                Signal::SIGHUP => self.reload(),
                Signal::SIGCHLD => self.reap_children(),
                _ => self.core.shutdown(None, self.now),
            }
            // What one signal told the core goes in before the next.
            self.settle();
        }
    }

    /// Probes past their timeout fail first (as the core hears before it
    /// looks at its own deadlines), then the core's timers, then
    /// teardowns.
    fn on_timer(&mut self) {
        self.wakeups.timer.fired();
        self.probes.tick(ctx!(self));
        while let Some(input) = self.outbox.next_input() {
            self.feed(input);
        }
        self.core.tick(self.now);
        self.sandboxes.tick(ctx!(self));
        if let Some(n) = self.networks.as_mut() {
            n.on_time(Instant::now());
        }
        self.check_rules();
        self.autoscale_turn();
        if self.metrics.busy() {
            self.work_scrapes(SLICE);
        }
    }

    /// The timerfd, armed for the nearest deadline of the core, a probe, a
    /// teardown or the progress line; disarmed when there is none.
    fn arm_timer(&mut self) {
        let next = [
            self.core.next_deadline(),
            self.sandboxes.next_deadline(),
            self.probes.next_deadline(),
            self.reports.deadline(),
            self.rules.deadline(),
            self.networks.as_ref().and_then(Networks::deadline),
            self.autoscaler.deadline(),
            self.upgrades.deadline(),
            self.keeper.as_ref().and_then(Link::deadline),
            // A scrape being read: the next slice at the next turn.
            self.metrics.busy().then(Instant::now),
        ]
        .into_iter()
        .flatten()
        .min();
        self.wakeups.timer.arm(next);
    }

    fn report_progress(&mut self) {
        if self.reports.update(&self.core, self.outputs.stderr()) {
            self.outputs
                .flush(ctx!(self), crate::outputs::Stream::Stderr);
        }
    }

    fn finish_shutdown(&mut self) {
        if self.upgrades.under_way() {
            let r = self.upgrades.give_up("the stack was shut down".into());
            self.control
                .send(ctx!(self), r.conn, &crate::control::Response::err(r.why));
        }
        if let Some(e) = self.sandboxes.finish() {
            self.outbox.note(e);
        }
        self.readiness.finish();
        if let Some(e) = self.networks.as_mut().and_then(Networks::finish) {
            self.outbox.note(format!("networks: {e}"));
        }
        let _ = std::fs::remove_file(&self.cfg.socket);
        // Answered now (`isola down` among them): nothing of the stack is
        // left.
        self.control.flush_all();
        self.outbox.note("all services stopped");
        while let Some(said) = self.outbox.next_said() {
            self.say(said);
        }
        self.outputs.finish();
    }
}
