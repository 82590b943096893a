//! `isola up`: the event loop around the lifecycle core.
//!
//! One epoll holds every fd the supervisor waits on ([`Token`]); each
//! readiness becomes an input of [`Core`] (in [`crate::lifecycle`]), and
//! the effects the core asks for are carried out here and nowhere else.
//! Nothing polls and nothing blocks: an idle supervisor sleeps in
//! epoll_wait with no timeout, a timerfd is armed for the nearest deadline,
//! and a sandbox's teardown waits for its cgroup to empty by event.
//!
//! The rest of the loop lives beside this file: [`crate::launch`] (start
//! slots, the spawner, teardown), [`crate::server`] (the control socket),
//! [`crate::output`] (service output, logs, echo), [`crate::status`] and
//! [`crate::host`] (limits, OOM score, socket, the stack's cgroup).

use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use isola_runtime::{init, SpecError};
use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::inotify::{InitFlags, Inotify};
use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::time::TimeSpec;
use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};

use crate::control::Run;
use crate::handover::{self, Sockets};
use crate::host::{self, StackGroup};
use crate::launch::{Draining, Launched, Running};
use crate::lifecycle::{Core, Effect};
use crate::logs::{LogConfig, LogFile};
use crate::notify::{self, NotifySocket};
use crate::output::{Pipe, Sink};
use crate::probe::Probes;
use crate::reap::Child;
use crate::sdnotify::SdNotify;
use crate::server::Conn;
use crate::spawner::Spawner;
use crate::stack::{self, Stack};
pub(crate) use crate::token::Token;

/// Sandboxes setting up at the same time. More does not start a stack
/// faster on a few cores, and it bounds what a start burst holds at once.
pub const MAX_STARTING: usize = 16;

/// Runs of a service `status` remembers.
const HISTORY_RUNS: usize = 32;

/// epoll events handled per wakeup.
const EPOLL_BATCH: usize = 64;

#[derive(Debug, Clone)]
pub struct Config {
    pub stack_path: PathBuf,
    pub socket: PathBuf,
    /// Parent of the stack's group: sandboxes live in `<cgroup_root>/<stack>/<service>`.
    pub cgroup_root: PathBuf,
    pub no_cgroup: bool,
    pub logs: LogConfig,
    /// Print service output prefixed with the service name.
    pub echo: bool,
}

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

/// What the loop holds for one service besides its lifecycle: fds and
/// presentation.
pub(crate) struct Slot {
    /// The service's name, kept here too: a removed service's last events
    /// are carried out after the core has let it go.
    pub(crate) name: String,
    pub(crate) log: LogFile,
    pub(crate) pipes: [Option<Pipe>; 2],
    pub(crate) launched: Option<Launched>,
    pub(crate) running: Option<Running>,
    pub(crate) draining: Option<Draining>,
    pub(crate) history: VecDeque<Run>,
    /// The sd_notify socket of a `notify: "systemd"` service.
    pub(crate) notify: Option<NotifySocket>,
    /// Our end of a `notify: {"fd": N}` service's pipe, until it said ready.
    pub(crate) ready_pipe: Option<std::os::fd::OwnedFd>,
    /// fds the service stored (`FDSTORE=1`), with their names: passed to
    /// its next start, dropped when it is stopped on purpose.
    pub(crate) fd_store: Vec<(String, std::os::fd::OwnedFd)>,
    /// The cgroup directory of its current (or last) sandbox.
    pub(crate) cgroup_name: String,
}

impl Slot {
    fn new(name: &str, log: LogFile) -> Slot {
        Slot {
            name: name.to_string(),
            log,
            pipes: [None, None],
            launched: None,
            running: None,
            draining: None,
            history: VecDeque::new(),
            notify: None,
            ready_pipe: None,
            fd_store: Vec::new(),
            cgroup_name: name.to_string(),
        }
    }

    pub(crate) fn record_start(&mut self) {
        if self.history.len() >= HISTORY_RUNS {
            self.history.pop_front();
        }
        self.history.push_back(Run {
            start_ms: now_ms(),
            exit_ms: None,
        });
    }

    pub(crate) fn record_exit(&mut self) {
        if let Some(h) = self.history.back_mut() {
            h.exit_ms = Some(now_ms());
        }
    }
}

pub struct Supervisor {
    pub(crate) cfg: Config,
    pub(crate) stack_root: PathBuf,
    /// Our claim on the stack's cgroup (`None` with --no-cgroup).
    pub(crate) group: Option<StackGroup>,
    /// What every loaded plan gets from us (the spawner's copy too).
    pub(crate) completion: host::Completion,
    pub(crate) epoll: Epoll,
    signals: SignalFd,
    timer: TimerFd,
    pub(crate) inotify: Inotify,
    pub(crate) listener: std::os::unix::net::UnixListener,
    pub(crate) core: Core,
    /// Indexed like the core's services.
    pub(crate) slots: Vec<Option<Slot>>,
    /// Clones inits for us while it lives (see `spawner`).
    pub(crate) spawner: Option<Spawner>,
    pub(crate) conns: HashMap<u64, Conn>,
    /// Held open to be let go when we run out of fds (see `server`).
    pub(crate) reserve_fd: Option<std::fs::File>,
    /// Refusing connections for want of fds (said once).
    pub(crate) shedding: bool,
    /// Services whose log file is open, oldest first (see `output`).
    pub(crate) open_logs: VecDeque<usize>,
    /// Our children by pid, and whose they are (see `reap`).
    pub(crate) children: HashMap<i32, Child>,
    /// Running services whose stat files are open, and how many may be:
    /// the fds the stack leaves spare (see `status`).
    pub(crate) stats_open: usize,
    pub(crate) stats_cap: usize,
    pub(crate) next_conn: u64,
    /// Our stdout (service output) and stderr (events, notes).
    pub(crate) sinks: [Sink; 2],
    /// Health probes in flight.
    pub(crate) probes: Probes,
    /// The deadline the timerfd is armed for.
    armed: Option<Instant>,
    /// Sandboxes draining (no scan of every slot for their deadlines
    /// when there is none).
    pub(crate) drains: usize,
    /// Listening sockets held for services (see `handover`).
    pub(crate) sockets: Sockets,
    /// Under systemd: READY=1, STATUS=, STOPPING=1 (see `sdnotify`).
    sd_notify: Option<SdNotify>,
    /// A big stack's start at a terminal (see `progress`).
    progress: Option<crate::progress::Progress>,
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

pub fn load_stack(path: &Path) -> Result<Stack, SpecError> {
    stack::parse(&read_stack(path)?, &isola_runtime::spec::base_dir(path))
}

fn read_stack(path: &Path) -> Result<String, SpecError> {
    std::fs::read_to_string(path)
        .map_err(|e| SpecError::new("", format!("{}: {e}", path.display())))
}

/// Fork the spawner, then parse the stack file: the spawner is forked
/// while our heap holds little but the file's text (every init is a copy
/// of it), and builds its services from the same text meanwhile. A parse
/// error stops the spawner with the supervisor.
fn spawner_and_stack(
    mut text: String,
    base_dir: &Path,
    stack_root: &Path,
    completion: &host::Completion,
) -> Result<(Stack, Result<Spawner, Errno>), SpecError> {
    isola_runtime::release_free_memory();
    let spawner = crate::spawn::fork_spawner(&mut text, base_dir, stack_root, completion);
    Ok((stack::parse(&text, base_dir)?, spawner))
}

/// `--no-cgroup` leaves no room for limits.
fn check_no_cgroup(cfg: &Config, stack: &Stack) -> Result<(), SpecError> {
    match stack.services.iter().find(|d| d.plan.has_resources()) {
        Some(d) if cfg.no_cgroup => Err(SpecError::new(
            format!("services.{}.linux.resources", d.name),
            "conflicts with --no-cgroup",
        )),
        _ => Ok(()),
    }
}

impl Supervisor {
    /// Validate the stack, claim its cgroup and take the socket; nothing is
    /// started yet.
    pub fn new(cfg: Config) -> Result<Supervisor, UpError> {
        let text = read_stack(&cfg.stack_path)?;
        let base_dir = isola_runtime::spec::base_dir(&cfg.stack_path);
        let stack_root = cfg.cgroup_root.join(stack_name(&cfg.stack_path));
        // Our fd limit raised as far as it goes (the capacity check below
        // counts on it), and the signals we take blocked (every init starts
        // with them blocked): both before the spawner is forked.
        let completion = host::Completion {
            inherited: host::Inherited::adjust(),
            no_cgroup: cfg.no_cgroup,
            socket: cfg.socket.clone(),
        };
        // Everything we handle arrives through the signalfd, SIGCHLD too
        // (every child is reaped on it: see `reap`).
        let mut mask = init::signal_set();
        mask.add(Signal::SIGPIPE);
        nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&mask), None)
            .map_err(setup("sigprocmask"))?;
        let (stack, spawner) = spawner_and_stack(text, &base_dir, &stack_root, &completion)?;
        check_no_cgroup(&cfg, &stack)?;
        if !cfg.no_cgroup {
            isola_runtime::cgroup::check_root(&cfg.cgroup_root)
                .map_err(|e| UpError::Spec(SpecError::new("--cgroup-root", e.to_string())))?;
            isola_runtime::cgroup::check_unified().map_err(setup("cgroup"))?;
        }
        // Does the stack fit?
        let stats_cap = host::check_capacity(&stack.services)?;
        // Bound before anything starts: a port in use stops `isola up`
        // here, with nothing started.
        let sockets =
            handover::open_all(&stack.services, &mut Sockets::new()).map_err(UpError::Setup)?;
        let listener = host::bind_socket(&cfg.socket)?;
        // Until the supervisor is fully set up, a failure removes the socket.
        let mut socket_guard = host::RemoveOnDrop(Some(cfg.socket.clone()));
        let mut sinks = [Sink::stdout(), Sink::stderr()];
        for w in &stack.warnings {
            sinks[1].line(&format!("isola: warning: {w}"));
        }
        let group = if cfg.no_cgroup {
            None
        } else {
            // Only once the group is ours: what is left in it is a dead
            // supervisor's (PDEATHSIG took its inits), never a live one's.
            let (group, stale) = StackGroup::claim(&stack_root)?;
            if !stale.is_empty() {
                sinks[1].line(&format!(
                    "isola: removed stale cgroups of a previous run: {}",
                    stale.join(", ")
                ));
                sinks[1].try_flush();
            }
            Some(group)
        };

        let mut handled = SigSet::empty();
        for s in [
            Signal::SIGTERM,
            Signal::SIGINT,
            Signal::SIGHUP,
            Signal::SIGCHLD,
        ] {
            handled.add(s);
        }
        let signals =
            SignalFd::with_flags(&handled, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
                .map_err(setup("signalfd"))?;
        let timer = TimerFd::new(
            ClockId::CLOCK_MONOTONIC,
            TimerFlags::TFD_CLOEXEC | TimerFlags::TFD_NONBLOCK,
        )
        .map_err(setup("timerfd"))?;
        let inotify = Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK)
            .map_err(setup("inotify"))?;
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).map_err(setup("epoll"))?;
        let add = |fd: BorrowedFd<'_>, tok: Token| {
            epoll.add(fd, EpollEvent::new(EpollFlags::EPOLLIN, tok.encode()))
        };
        add(signals.as_fd(), Token::Signal).map_err(setup("epoll"))?;
        add(timer.as_fd(), Token::Timer).map_err(setup("epoll"))?;
        add(inotify.as_fd(), Token::Inotify).map_err(setup("epoll"))?;
        add(listener.as_fd(), Token::Listen).map_err(setup("epoll"))?;

        let mut defs = stack.services;
        for def in &mut defs {
            completion.complete(def);
        }
        let mut slots = Vec::with_capacity(defs.len());
        for def in &defs {
            let log = LogFile::open(&cfg.logs, &def.name)
                .map_err(setup(format!("log file for {}", def.name)))?;
            slots.push(Some(Slot::new(&def.name, log)));
        }
        let seed = now_ms() ^ u64::from(std::process::id());
        let mut sup = Supervisor {
            cfg,
            stack_root,
            group,
            completion,
            epoll,
            signals,
            timer,
            inotify,
            listener,
            core: Core::new(defs, MAX_STARTING, seed),
            slots,
            spawner: None,
            conns: HashMap::new(),
            open_logs: VecDeque::new(),
            children: HashMap::new(),
            stats_open: 0,
            stats_cap,
            reserve_fd: std::fs::File::open("/dev/null").ok(),
            shedding: false,
            next_conn: 0,
            sinks,
            probes: Probes::default(),
            armed: None,
            drains: 0,
            sockets,
            sd_notify: SdNotify::from_env(),
            progress: None,
        };
        sup.progress = crate::progress::Progress::new(sup.core.len(), sup.cfg.echo);
        match spawner {
            Ok(sp) => sup.spawner = Some(sp),
            Err(e) => sup.note(&format!(
                "spawner: fork: {e}; starting sandboxes in-process"
            )),
        }
        socket_guard.0 = None;
        Ok(sup)
    }

    /// Start every service in dependency order, then serve until shut down.
    pub fn run(mut self) -> Result<(), UpError> {
        self.core.start_all(Instant::now());
        self.apply_effects();
        let mut events = vec![EpollEvent::empty(); EPOLL_BATCH];
        while !self.core.finished() {
            self.arm_timer();
            let n = match self.epoll.wait(&mut events, EpollTimeout::NONE) {
                Ok(n) => n,
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(UpError::Setup(format!("epoll_wait: {e}"))),
            };
            for ev in &events[..n] {
                match Token::decode(ev.data()) {
                    Some(tok) => self.dispatch(tok, ev.events()),
                    None => continue,
                }
                self.apply_effects();
            }
            if let Some(sd) = self.sd_notify.as_mut() {
                sd.update(&self.core);
            }
            if let Some(p) = self.progress.as_mut() {
                if p.update(&self.core, &mut self.sinks[1], Instant::now()) {
                    self.flush_sink(1);
                }
            }
        }
        self.finish_shutdown();
        Ok(())
    }

    fn dispatch(&mut self, tok: Token, flags: EpollFlags) {
        match tok {
            Token::Signal => self.on_signal(),
            Token::Timer => self.on_timer(),
            Token::Inotify => self.on_inotify(),
            Token::Listen => self.on_accept(),
            Token::Sink(k) => self.flush_sink(k),
            Token::Conn(id) => self.on_conn(id, flags),
            Token::Sync(i) => self.on_started(i),
            Token::Pipe(i, k) => self.read_pipe(i, k, false),
            Token::Probe(id) => self.on_probe(id),
            Token::Notify(i) => self.on_notify(i),
            Token::Ready(i) => self.on_ready(i),
        }
    }

    /// Carry out what the core asked for, until it asks for nothing more
    /// (an effect may feed the core an input, which may queue more).
    pub(crate) fn apply_effects(&mut self) {
        while let Some(effect) = self.core.next_effect() {
            match effect {
                Effect::Added(i) => self.add_slot(i),
                Effect::Launch(i) => self.launch(i),
                Effect::Signal(i, sig) => self.signal(i, sig),
                Effect::KillGroup(i) => self.kill_group(i),
                Effect::Event(i, msg) => self.event(i, &msg),
                Effect::Note(msg) => self.note(&msg),
                Effect::Answer(conn, state) => {
                    self.send(conn, &crate::control::Response::state(state))
                }
                Effect::AnswerDown(conn) => self.send(conn, &crate::control::Response::ok()),
                Effect::Forget(i) => self.forget_slot(i),
                Effect::Probe(i, kind) => self.start_probe(i, kind),
                Effect::HandedOver(old, new) => self.handed_over(old, new),
                Effect::DropFdStore(i) => self.drop_fd_store(i),
            }
        }
    }

    fn add_slot(&mut self, i: usize) {
        let Some(name) = self.core.service(i).map(|s| s.def.name.clone()) else {
            return;
        };
        match LogFile::open(&self.cfg.logs, &name) {
            Ok(log) => {
                if self.slots.len() <= i {
                    self.slots.resize_with(i + 1, || None);
                }
                self.slots[i] = Some(Slot::new(&name, log));
            }
            Err(e) => self.note(&format!("reload: log file for {name}: {e}")),
        }
    }

    fn forget_slot(&mut self, i: usize) {
        let Some(slot) = self.slots.get_mut(i) else {
            return;
        };
        if let Some(s) = slot.as_ref() {
            // A sandbox dropped with its slot is reaped by its Drop: its
            // pid leaves the table of children too.
            let pid = s.running.as_ref().map(|r| r.sandbox.pid());
            let pid = pid.or_else(|| s.launched.as_ref().map(Launched::pid));
            if let Some(pid) = pid {
                self.children.remove(&pid.as_raw());
            }
            if s.running.as_ref().is_some_and(|r| r.stats.is_some()) {
                self.stats_open -= 1;
            }
        }
        *slot = None;
    }

    /// Service `i`'s running sandbox, if it has one.
    pub(crate) fn running(&self, i: usize) -> Option<&Running> {
        self.slots.get(i)?.as_ref()?.running.as_ref()
    }

    pub(crate) fn slot(&mut self, i: usize) -> Option<&mut Slot> {
        self.slots.get_mut(i).and_then(Option::as_mut)
    }

    /// A line about the supervisor itself, on stderr.
    pub(crate) fn note(&mut self, msg: &str) {
        self.sinks[1].line(&format!("isola: {msg}"));
        self.flush_sink(1);
    }

    fn on_signal(&mut self) {
        while let Ok(Some(info)) = self.signals.read_signal() {
            let now = Instant::now();
            match i32::try_from(info.ssi_signo).map(Signal::try_from) {
                Ok(Ok(Signal::SIGHUP)) => self.reload(now),
                Ok(Ok(Signal::SIGCHLD)) => self.reap_children(),
                Ok(Ok(_)) => self.core.shutdown(None, now),
                _ => {}
            }
        }
    }

    fn on_timer(&mut self) {
        let _ = self.timer.wait();
        // Fired: whatever comes next must be armed anew.
        self.armed = None;
        let now = Instant::now();
        self.probe_tick(now);
        self.core.tick(now);
        self.drain_tick(now);
    }

    /// The timerfd, armed for the nearest deadline of the core or of a
    /// teardown, disarmed when there is none.
    fn arm_timer(&mut self) {
        let next = [
            self.core.next_deadline(),
            self.next_drain_deadline(),
            self.probes.next_deadline(),
            self.progress
                .as_ref()
                .and_then(crate::progress::Progress::deadline),
        ]
        .into_iter()
        .flatten()
        .min();
        // The same deadline as armed: no syscall (a probe result wakes us
        // a thousand times a second with a thousand services).
        if next == self.armed {
            return;
        }
        self.armed = next;
        match next {
            Some(t) => {
                let d = t
                    .saturating_duration_since(Instant::now())
                    .max(Duration::from_micros(1));
                let _ = self.timer.set(
                    Expiration::OneShot(TimeSpec::from_duration(d)),
                    TimerSetTimeFlags::empty(),
                );
            }
            None => {
                let _ = self.timer.unset();
            }
        }
    }

    /// SIGHUP: re-read the stack; the core restarts changed services,
    /// starts new ones, stops removed ones and leaves the rest alone.
    fn reload(&mut self, now: Instant) {
        let stack = load_stack(&self.cfg.stack_path)
            .map_err(UpError::from)
            .and_then(|s| {
                check_no_cgroup(&self.cfg, &s)?;
                let cap = host::check_capacity(&s.services)?;
                Ok((s, cap))
            });
        let stack = stack.and_then(|(s, cap)| {
            let sockets =
                handover::open_all(&s.services, &mut self.sockets).map_err(UpError::Setup)?;
            self.stats_cap = cap;
            Ok((s, sockets))
        });
        let (stack, sockets) = match stack {
            Ok(s) => s,
            Err(e) => {
                self.note(&format!("reload failed, keeping the running stack: {e}"));
                return;
            }
        };
        // Sockets no longer listed close here (the running payloads keep
        // their own copies until they stop).
        self.sockets = sockets;
        for w in &stack.warnings {
            self.note(&format!("warning: {w}"));
        }
        let mut defs = stack.services;
        self.note("reloading the stack file");
        for def in &mut defs {
            self.completion.complete(def);
            // The spawner holds the file as it was at start, not this text:
            // what a reload changes or adds is cloned here (services it
            // leaves alone keep their definitions, and numbers).
            def.entry = None;
        }
        self.core.reload(defs, now);
    }

    fn finish_shutdown(&mut self) {
        self.flush_all();
        if let Some(group) = self.group.take() {
            if let Err(e) = group.release() {
                self.note(&format!("cgroup cleanup: {e}"));
            }
        }
        self.spawner = None;
        for slot in self.slots.iter_mut().flatten() {
            slot.notify = None;
        }
        let _ = std::fs::remove_dir(notify::host_dir(&self.cfg.socket, ""));
        let _ = std::fs::remove_file(&self.cfg.socket);
        self.note("all services stopped");
        self.sinks[0].flush_blocking();
        self.sinks[1].flush_blocking();
    }
}
