//! `isola up`: one event loop over every sandbox of a stack.
//!
//! One epoll holds: a signalfd (SIGTERM, SIGINT, SIGHUP), a timerfd armed
//! for the nearest deadline (restart backoff, stop timeout) and disarmed
//! when there is none, an inotify watching each sandbox's memory.events,
//! the control socket and its connections, and per service its init's
//! pidfd and its stdout/stderr pipes, and while a sandbox sets up, the
//! socket its init reports on. Nothing polls: an idle supervisor sleeps in
//! epoll_wait with no timeout.
//!
//! Starting does not block the loop: a start clones the init and returns;
//! the init's report (payload exec'd, or the failure) arrives as an event.
//! Up to [`MAX_STARTING`] sandboxes set up at once; a service waits while
//! one of its dependencies is starting.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::hash::{BuildHasher, Hasher};
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use isola_runtime::cgroup::{Cgroup, StatFiles};
use isola_runtime::sandbox::Starting;
use isola_runtime::{init, sandbox, InitNews, Sandbox, SpecError};
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};
use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::socket::sockopt::PeerCredentials;
use nix::sys::time::TimeSpec;
use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};
use serde_json::{json, Value};

use crate::control;
use crate::decide::{self, LastExit, Next};
use crate::logs::{self, LineBuffer, LogConfig, LogFile};
use crate::policy::{OomPolicy, RestartPolicy};
use crate::spawner::{self, Answer, Spawner};
use crate::stack::{self, ServiceDef, Stack};

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
            UpError::Spec(_) => 2,
            UpError::Setup(_) => 1,
        }
    }
}

fn setup<E: std::fmt::Display>(what: impl std::fmt::Display) -> impl FnOnce(E) -> UpError {
    move |e| UpError::Setup(format!("{what}: {e}"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Starting,
    Running,
    Backoff,
    Stopping,
    Stopped,
    Exited,
    Failed,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Starting => "starting",
            State::Running => "running",
            State::Backoff => "backoff",
            State::Stopping => "stopping",
            State::Stopped => "stopped",
            State::Exited => "exited",
            State::Failed => "failed",
        }
    }
    fn alive(self) -> bool {
        matches!(self, State::Starting | State::Running | State::Stopping)
    }
}

/// Why a stop was asked for: decides what follows the exit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Intent {
    /// `isola stop`, or the OOM policy `stop`: stay down.
    Stop,
    /// `isola restart`, or a reload that changed the service.
    Restart,
    /// Removed from the stack by a reload.
    Remove,
    /// `isola down` / SIGTERM.
    Shutdown,
}

#[derive(Debug, Clone, Copy)]
enum Deadline {
    Restart,
    StopTimeout,
}

struct Pipe {
    fd: OwnedFd,
    buf: LineBuffer,
    stream: &'static str,
}

struct Run {
    sandbox: Sandbox,
    started: Instant,
    start_ms: u64,
    oom_seen: u64,
    /// The OOM policy `stop` ended this run: its exit is an OOM kill.
    oom_stopped: bool,
    watch: Option<WatchDescriptor>,
    stats: Option<StatFiles>,
}

/// A sandbox whose init is setting up.
struct Pending {
    starting: Starting,
    started: Instant,
}

struct Service {
    def: ServiceDef,
    state: State,
    /// `Starting`, waiting for a start slot or for a dependency.
    queued: bool,
    pending: Option<Pending>,
    run: Option<Run>,
    pipes: [Option<Pipe>; 2],
    log: LogFile,
    restarts: u32,
    streak: u32,
    starts: VecDeque<Instant>,
    history: VecDeque<(u64, Option<u64>)>,
    last_exit: Option<LastExit>,
    oom_kills: u64,
    deadline: Option<(Instant, Deadline)>,
    intent: Option<Intent>,
    /// Replaces `def` once the running sandbox has stopped (reload).
    next_def: Option<ServiceDef>,
    /// Connections waiting for this service to settle.
    waiters: Vec<u64>,
}

struct Conn {
    stream: UnixStream,
    inbuf: Vec<u8>,
    out: Vec<u8>,
    /// Following this service's log.
    follow: Option<String>,
    /// Subscribed to every service's supervisor events (`isola events`).
    events: bool,
    close_after_flush: bool,
}

const T_SIGNAL: u64 = 1 << 56;
const T_LISTEN: u64 = 2 << 56;
const T_TIMER: u64 = 3 << 56;
const T_INOTIFY: u64 = 4 << 56;
const T_PIDFD: u64 = 5 << 56;
const T_PIPE: u64 = 6 << 56;
const T_CONN: u64 = 7 << 56;
const T_SYNC: u64 = 8 << 56;
const T_NEWS: u64 = 9 << 56;

/// Sandboxes setting up at the same time. More does not start a stack
/// faster on a few cores, and it bounds what a start burst holds at once.
pub const MAX_STARTING: usize = 16;
const KIND: u64 = 0xff << 56;

pub struct Supervisor {
    cfg: Config,
    stack_root: PathBuf,
    /// RLIMIT_NOFILE as we found it: what services get unless their spec
    /// says otherwise (ours is raised).
    nofile: Option<(u64, u64)>,
    /// The OOM score `isola up` was started with, when it lowered its own:
    /// services get it back unless their spec sets one.
    oom_score_adj: Option<i32>,
    epoll: Epoll,
    signals: SignalFd,
    timer: TimerFd,
    inotify: Inotify,
    listener: UnixListener,
    services: Vec<Option<Service>>,
    /// Services with a `pending` sandbox.
    in_flight: usize,
    /// Clones inits for us while it lives (see `spawner`).
    spawner: Option<Spawner>,
    conns: HashMap<u64, Conn>,
    next_conn: u64,
    shutting_down: bool,
    down_waiters: Vec<u64>,
    stdout: std::io::Stdout,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn random_unit() -> f64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(now_ms());
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

pub fn stack_name(path: &Path) -> String {
    path.file_stem()
        .map(|s| {
            s.to_string_lossy()
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                        c
                    } else {
                        '_'
                    }
                })
                .collect()
        })
        .unwrap_or_else(|| "stack".into())
}

pub fn load_stack(path: &Path) -> Result<Stack, SpecError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| SpecError::new("", format!("{}: {e}", path.display())))?;
    let base = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let base = std::fs::canonicalize(base).unwrap_or_else(|_| base.to_path_buf());
    stack::parse(&text, &base)
}

impl Supervisor {
    /// Validate the stack and take the socket; nothing is started yet.
    pub fn new(cfg: Config) -> Result<Supervisor, UpError> {
        let stack = load_stack(&cfg.stack_path)?;
        if cfg.no_cgroup {
            if let Some(d) = stack.services.iter().find(|d| d.plan.has_resources()) {
                return Err(SpecError::new(
                    format!("services.{}.linux.resources", d.name),
                    "conflicts with --no-cgroup",
                )
                .into());
            }
        } else {
            isola_runtime::cgroup::check_root(&cfg.cgroup_root)
                .map_err(|e| UpError::Spec(SpecError::new("--cgroup-root", e.to_string())))?;
            isola_runtime::cgroup::check_unified().map_err(setup("cgroup"))?;
        }
        let stack_root = cfg.cgroup_root.join(stack_name(&cfg.stack_path));
        let nofile = raise_nofile();
        let oom_score_adj = protect_from_oom();
        let listener = bind_socket(&cfg.socket)?;
        // Until the supervisor is fully set up, a failure removes the socket.
        let mut socket_guard = RemoveOnDrop(Some(cfg.socket.clone()));

        // Everything we handle arrives through the signalfd; SIGCHLD is
        // blocked too so that exits only show up as pidfd events.
        let mut mask = init::signal_set();
        mask.add(Signal::SIGPIPE);
        nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&mask), None)
            .map_err(setup("sigprocmask"))?;
        let mut handled = SigSet::empty();
        for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
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
        let add = |fd: std::os::fd::BorrowedFd<'_>, tok: u64| {
            epoll.add(fd, EpollEvent::new(EpollFlags::EPOLLIN, tok))
        };
        add(signals.as_fd(), T_SIGNAL).map_err(setup("epoll"))?;
        add(timer.as_fd(), T_TIMER).map_err(setup("epoll"))?;
        add(inotify.as_fd(), T_INOTIFY).map_err(setup("epoll"))?;
        add(listener.as_fd(), T_LISTEN).map_err(setup("epoll"))?;

        let mut sup = Supervisor {
            cfg,
            stack_root,
            nofile,
            oom_score_adj,
            epoll,
            signals,
            timer,
            inotify,
            listener,
            services: Vec::new(),
            in_flight: 0,
            spawner: None,
            conns: HashMap::new(),
            next_conn: 0,
            shutting_down: false,
            down_waiters: Vec::new(),
            stdout: std::io::stdout(),
        };
        if !sup.cfg.no_cgroup {
            // A supervisor that was SIGKILLed left empty (or, without
            // PDEATHSIG, populated) groups: clear them before starting.
            let stale = Cgroup::remove_children(&sup.stack_root, false)
                .map_err(setup("remove stale cgroups"))?;
            if !stale.is_empty() {
                sup.note(&format!(
                    "removed stale cgroups of a previous run: {}",
                    stale.join(", ")
                ));
            }
        }
        for mut def in stack.services {
            sup.complete_plan(&mut def);
            sup.add_service(def)?;
        }
        sup.spawner = sup.fork_spawner();
        socket_guard.0 = None;
        Ok(sup)
    }

    /// Fork the spawner now, while the supervisor holds the plans and few
    /// fds. Without one (fork failed), sandboxes are cloned in-process.
    fn fork_spawner(&self) -> Option<Spawner> {
        let supervisor = nix::unistd::getpid();
        let forked = Spawner::fork(|sock| {
            // In the child, which holds only `sock` and stdio.
            if nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).is_err()
                || nix::unistd::getppid() != supervisor
            {
                return 1;
            }
            // The plans as loaded, borrowed: no plan is cloned (and freed)
            // per request, which rewrote heap pages that every earlier init,
            // a copy of the spawner, then kept as private copies.
            let table: Vec<Option<spawner::Entry>> = (0..self.services.len())
                .map(|i| {
                    let s = self.services[i].as_ref()?;
                    Some(spawner::Entry {
                        fingerprint: s.def.fingerprint,
                        plan: &s.def.plan,
                        name: &s.def.name,
                    })
                })
                .collect();
            spawner::serve(sock, &table, |name, stdio| {
                self.options_for(name, stdio, true)
            })
        });
        match forked {
            Ok(sp) => Some(sp),
            Err(e) => {
                self.note(&format!(
                    "spawner: fork: {e}; starting sandboxes in-process"
                ));
                None
            }
        }
    }

    fn add_service(&mut self, def: ServiceDef) -> Result<usize, UpError> {
        let log = LogFile::open(&self.cfg.logs, &def.name)
            .map_err(setup(format!("log file for {}", def.name)))?;
        self.services.push(Some(Service {
            def,
            state: State::Stopped,
            queued: false,
            pending: None,
            run: None,
            pipes: [None, None],
            log,
            restarts: 0,
            streak: 0,
            starts: VecDeque::new(),
            history: VecDeque::new(),
            last_exit: None,
            oom_kills: 0,
            deadline: None,
            intent: None,
            next_def: None,
            waiters: Vec::new(),
        }));
        Ok(self.services.len() - 1)
    }

    /// Start every service in dependency order, then serve until shut down.
    pub fn run(mut self) -> Result<(), UpError> {
        for s in self.services.iter_mut().flatten() {
            s.state = State::Starting;
            s.queued = true;
        }
        self.start_queued();
        let mut events = vec![EpollEvent::empty(); 64];
        loop {
            if self.shutting_down {
                self.progress_shutdown();
                if !self.services.iter().flatten().any(|s| s.state.alive()) {
                    break;
                }
            }
            self.arm_timer();
            let n = match self.epoll.wait(&mut events, EpollTimeout::NONE) {
                Ok(n) => n,
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(UpError::Setup(format!("epoll_wait: {e}"))),
            };
            for ev in &events[..n] {
                let tok = ev.data();
                match tok & KIND {
                    T_SIGNAL => self.on_signal(),
                    T_TIMER => self.on_timer(),
                    T_INOTIFY => self.on_inotify(),
                    T_LISTEN => self.on_accept(),
                    T_PIDFD => self.on_exit((tok & !KIND) as usize),
                    T_SYNC => self.on_started((tok & !KIND) as usize),
                    T_NEWS => self.on_news((tok & !KIND) as usize),
                    T_PIPE => self.on_pipe(((tok & !KIND) >> 1) as usize, (tok & 1) as usize),
                    T_CONN => self.on_conn(tok & !KIND, ev.events()),
                    _ => {}
                }
            }
        }
        self.finish_shutdown();
        Ok(())
    }

    // ---- output -------------------------------------------------------

    /// A supervisor event: on stderr, in the service's log, to the log's
    /// followers and to `events` subscribers.
    fn event(&mut self, i: usize, msg: &str) {
        if let Some(s) = self.services[i].as_mut() {
            eprintln!("isola: {}: {msg}", s.def.name);
            let _ = s.log.write_line("isola", msg);
            let name = s.def.name.clone();
            self.broadcast(
                |c| c.follow.as_deref() == Some(name.as_str()),
                || json!({"line": format!("isola: {msg}")}),
            );
            self.broadcast(
                |c| c.events,
                || {
                    json!({
                        "time": logs::timestamp(SystemTime::now()),
                        "service": name,
                        "event": msg,
                    })
                },
            );
        }
    }

    fn note(&self, msg: &str) {
        eprintln!("isola: {msg}");
    }

    /// One message to every connection `to` selects: log followers,
    /// `events` subscribers. Built (and serialized) only once, and only
    /// when someone listens.
    fn broadcast(&mut self, to: impl Fn(&Conn) -> bool, msg: impl FnOnce() -> Value) {
        let ids: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, c)| to(c))
            .map(|(id, _)| *id)
            .collect();
        if ids.is_empty() {
            return;
        }
        let line = format!("{}\n", msg());
        for id in ids {
            if let Some(c) = self.conns.get_mut(&id) {
                c.out.extend_from_slice(line.as_bytes());
            }
            self.flush(id);
        }
    }

    // ---- starting and stopping ----------------------------------------

    /// Start a service that is down: now if a start slot is free and none
    /// of its dependencies is starting, else as soon as that is so.
    fn start(&mut self, i: usize) {
        let Some(s) = self.services[i].as_mut() else {
            return;
        };
        if s.state.alive() {
            return;
        }
        s.state = State::Starting;
        s.queued = true;
        s.deadline = None;
        s.intent = None;
        self.start_queued();
    }

    /// Launch queued services, in stack order, while slots are free.
    fn start_queued(&mut self) {
        for i in 0..self.services.len() {
            if self.in_flight >= MAX_STARTING {
                return;
            }
            let Some(s) = self.services[i].as_ref() else {
                continue;
            };
            if !s.queued {
                continue;
            }
            if self.shutting_down {
                if let Some(s) = self.services[i].as_mut() {
                    s.queued = false;
                    s.state = State::Stopped;
                }
                self.settle(i);
                continue;
            }
            let waits = s.def.policy.depends_on.iter().any(|d| {
                self.services
                    .iter()
                    .flatten()
                    .any(|o| &o.def.name == d && o.state == State::Starting)
            });
            if !waits {
                self.launch(i);
            }
        }
    }

    /// Add what the supervisor gives every service to its plan, once, as
    /// it is loaded: the fd limit and OOM score `isola up` started with
    /// (unless the spec sets them), `memory.oom.group` for `oom: kill`.
    fn complete_plan(&self, def: &mut ServiceDef) {
        let plan = &mut def.plan;
        let sets_nofile = plan
            .rlimits
            .iter()
            .any(|(r, _, _)| *r == nix::sys::resource::Resource::RLIMIT_NOFILE);
        if let (false, Some((soft, hard))) = (sets_nofile, self.nofile) {
            plan.rlimits
                .push((nix::sys::resource::Resource::RLIMIT_NOFILE, soft, hard));
        }
        if plan.oom_score_adj.is_none() {
            plan.oom_score_adj = self.oom_score_adj;
        }
        if def.policy.oom == OomPolicy::Kill && !self.cfg.no_cgroup {
            plan.cgroup_files
                .push(("memory.oom.group".into(), "1".into()));
        }
    }

    /// Where and how service `i` is cloned. `sibling` when the spawner
    /// clones it.
    fn options_for<'a>(
        &'a self,
        name: &'a str,
        stdio: [RawFd; 3],
        sibling: bool,
    ) -> sandbox::Options<'a> {
        sandbox::Options {
            name,
            cgroup_root: &self.stack_root,
            no_cgroup: self.cfg.no_cgroup,
            stdio: Some(stdio),
            sibling,
        }
    }

    /// Clone service `i`'s init: through the spawner when it knows the
    /// service as it is now, else here.
    fn spawn_sandbox(&mut self, i: usize, stdio: [RawFd; 3]) -> Result<Starting, (i32, String)> {
        let gone = || (125, "service removed".to_string());
        if let Some(sp) = &self.spawner {
            let s = self.services[i].as_ref().ok_or_else(gone)?;
            let cgroup = (!self.cfg.no_cgroup).then(|| self.stack_root.join(&s.def.name));
            match sp.request(i as u32, s.def.fingerprint, stdio, &s.def.name, cgroup) {
                Ok(Answer::Started(st)) => return Ok(st),
                Ok(Answer::Failed { code, message }) => return Err((code, message)),
                Ok(Answer::Unknown) => {}
                Err(e) => {
                    self.note(&format!(
                        "spawner: {e}; starting sandboxes in-process from now on"
                    ));
                    self.spawner = None;
                }
            }
        }
        let def = &self.services[i].as_ref().ok_or_else(gone)?.def;
        let opts = self.options_for(&def.name, stdio, false);
        sandbox::spawn(&def.plan, &opts).map_err(|e| (e.exit_code(), e.to_string()))
    }

    /// Clone the service's sandbox; its init reports on the sync socket.
    fn launch(&mut self, i: usize) {
        let Some(s) = self.services[i].as_mut() else {
            return;
        };
        s.queued = false;
        let pipes = (
            nix::unistd::pipe2(OFlag::O_CLOEXEC),
            nix::unistd::pipe2(OFlag::O_CLOEXEC),
            File::open("/dev/null"),
        );
        let (Ok((out_r, out_w)), Ok((err_r, err_w)), Ok(null)) = pipes else {
            s.state = State::Failed;
            self.event(i, "start failed: cannot create pipes");
            return;
        };
        let started = Instant::now();
        let result =
            self.spawn_sandbox(i, [null.as_raw_fd(), out_w.as_raw_fd(), err_w.as_raw_fd()]);
        drop((out_w, err_w, null));
        let Some(s) = self.services[i].as_mut() else {
            return;
        };
        s.starts.push_back(started);
        s.history.push_back((now_ms(), None));
        if s.history.len() > 32 {
            s.history.pop_front();
        }
        match result {
            Ok(starting) => {
                let _ = self.epoll.add(
                    starting.sync_fd(),
                    EpollEvent::new(EpollFlags::EPOLLIN, T_SYNC | i as u64),
                );
                for (k, (fd, stream)) in [(out_r, "stdout"), (err_r, "stderr")]
                    .into_iter()
                    .enumerate()
                {
                    let _ =
                        nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_SETFL(OFlag::O_NONBLOCK));
                    let _ = self.epoll.add(
                        fd.as_fd(),
                        EpollEvent::new(EpollFlags::EPOLLIN, T_PIPE | ((i as u64) << 1) | k as u64),
                    );
                    s.pipes[k] = Some(Pipe {
                        fd,
                        buf: LineBuffer::default(),
                        stream,
                    });
                }
                s.pending = Some(Pending { starting, started });
                self.in_flight += 1;
            }
            Err((code, e)) => self.start_failed(i, code, &e),
        }
    }

    /// The init of a starting sandbox reported (or died).
    fn on_started(&mut self, i: usize) {
        let Some(s) = self.services[i].as_mut() else {
            return;
        };
        let Some(Pending { starting, started }) = s.pending.take() else {
            return;
        };
        self.in_flight -= 1;
        let _ = self.epoll.delete(starting.sync_fd());
        match starting.complete() {
            Ok(sb) => {
                let pid = sb.pid();
                let watch = sb.cgroup().and_then(|cg| {
                    self.inotify
                        .add_watch(&cg.path().join("memory.events"), AddWatchFlags::IN_MODIFY)
                        .ok()
                });
                let _ = self.epoll.add(
                    sb.pidfd(),
                    EpollEvent::new(EpollFlags::EPOLLIN, T_PIDFD | i as u64),
                );
                if let Some(fd) = sb.news_fd() {
                    let _ = self
                        .epoll
                        .add(fd, EpollEvent::new(EpollFlags::EPOLLIN, T_NEWS | i as u64));
                }
                let stats = sb.cgroup().and_then(|cg| StatFiles::open(cg).ok());
                s.run = Some(Run {
                    sandbox: sb,
                    started,
                    start_ms: now_ms(),
                    oom_seen: 0,
                    oom_stopped: false,
                    watch,
                    stats,
                });
                s.state = State::Running;
                let intent = s.intent;
                self.event(i, &format!("running (pid {pid})"));
                match intent {
                    // Asked to stop (or restart, or go) while it set up.
                    Some(intent) => self.stop(i, intent),
                    None => self.settle(i),
                }
            }
            Err(e) => {
                self.drain_pipes(i);
                self.start_failed(i, e.exit_code(), &e.to_string());
            }
        }
        self.start_queued();
    }

    /// No payload ran: an exit with the start's code, for the restart
    /// policy to judge like any other.
    fn start_failed(&mut self, i: usize, code: i32, why: &str) {
        self.event(i, &format!("start failed: {why}"));
        self.after_exit(i, code, LastExit::classify(code, 0, false), Duration::ZERO);
    }

    /// Ask a running service to stop: its stop signal to the payload, the
    /// whole cgroup killed at the timeout.
    fn stop(&mut self, i: usize, intent: Intent) {
        let Some(s) = self.services[i].as_mut() else {
            return;
        };
        s.intent = Some(intent);
        match s.state {
            State::Running => {
                let sig = s.def.policy.stop.signal;
                let timeout = s.def.policy.stop.timeout;
                s.state = State::Stopping;
                s.deadline = Some((Instant::now() + timeout, Deadline::StopTimeout));
                let delivered = match &s.run {
                    // The init forwards these to the payload; anything else
                    // (SIGKILL, SIGSTOP…) goes to the whole group at once.
                    Some(r) if init::FORWARDED.contains(&sig) => r.sandbox.signal(sig).is_ok(),
                    _ => false,
                };
                if !delivered {
                    self.kill_group(i);
                }
                self.event(i, &format!("stopping ({sig})"));
            }
            State::Backoff => {
                s.deadline = None;
                self.after_stopped(i);
            }
            State::Stopped | State::Exited | State::Failed => self.after_stopped(i),
            // Not launched yet: nothing to stop.
            State::Starting if s.queued => {
                s.queued = false;
                self.after_stopped(i);
            }
            // Launched: `on_started` stops it once the init has reported.
            State::Starting | State::Stopping => {}
        }
    }

    fn kill_group(&mut self, i: usize) {
        let Some(s) = self.services[i].as_mut() else {
            return;
        };
        if let Some(r) = &s.run {
            match r.sandbox.cgroup() {
                Some(cg) => {
                    let _ = cg.write("cgroup.kill", "1");
                }
                None => {
                    let _ = r.sandbox.signal(Signal::SIGKILL);
                }
            }
        }
    }

    /// The service is down after a stop request; what the intent says next.
    fn after_stopped(&mut self, i: usize) {
        let Some(s) = self.services[i].as_mut() else {
            return;
        };
        let intent = s.intent.take();
        if let Some(def) = s.next_def.take() {
            s.def = def;
        }
        match intent {
            // A restart asked for just before a shutdown does not outlive it.
            Some(Intent::Restart) if !self.shutting_down => {
                s.restarts += 1;
                s.state = State::Stopped;
                self.start(i);
            }
            Some(Intent::Remove) => {
                s.state = State::Stopped;
                self.event(i, "removed");
                self.settle(i);
                self.services[i] = None;
            }
            _ => {
                s.state = State::Stopped;
                self.event(i, "stopped");
                self.settle(i);
            }
        }
    }

    // ---- events -------------------------------------------------------

    fn on_exit(&mut self, i: usize) {
        let Some(s) = self.services[i].as_mut() else {
            return;
        };
        let Some(run) = s.run.take() else { return };
        let _ = self.epoll.delete(run.sandbox.pidfd());
        if let Some(w) = run.watch {
            let _ = self.inotify.rm_watch(w);
        }
        let ran = run.started.elapsed();
        let (code, oom) = match run.sandbox.finish() {
            Ok(o) => (o.status.code(), o.oom_kills),
            Err(e) => {
                self.event(i, &format!("teardown: {e}"));
                (125, 0)
            }
        };
        // Everything in the sandbox is dead now: drain what it wrote.
        self.drain_pipes(i);
        let Some(s) = self.services[i].as_mut() else {
            return;
        };
        if let Some(h) = s.history.back_mut() {
            h.1 = Some(now_ms());
        }
        let new_ooms = oom.saturating_sub(run.oom_seen);
        s.oom_kills += new_ooms;
        s.deadline = None;
        self.after_exit(i, code, LastExit::classify(code, oom, run.oom_stopped), ran);
    }

    fn after_exit(&mut self, i: usize, code: i32, exit: LastExit, ran: Duration) {
        let Some(s) = self.services[i].as_mut() else {
            return;
        };
        s.last_exit = Some(exit);
        let what = match exit.reason {
            decide::Reason::Exited => format!("exited with code {code}"),
            decide::Reason::Signaled => format!("killed by signal {}", code - 128),
            decide::Reason::OomKill if exit.signal == Some(libc::SIGKILL) => {
                "killed by the OOM killer".to_string()
            }
            decide::Reason::OomKill => format!("ended by signal {} after an OOM kill", code - 128),
        };
        if s.intent.is_some() {
            self.event(i, &what);
            self.after_stopped(i);
            return;
        }
        if self.shutting_down {
            s.state = State::Stopped;
            self.event(i, &what);
            self.settle(i);
            return;
        }
        let window = Duration::from_millis(s.def.policy.restart.limit.interval_ms);
        while s.starts.front().is_some_and(|t| t.elapsed() > window) {
            s.starts.pop_front();
        }
        let cx = decide::Context {
            run: ran,
            recent_starts: s.starts.len(),
            streak: s.streak,
            unit: random_unit(),
        };
        match decide::after_exit(&s.def.policy, &exit, &cx) {
            Next::Exited => {
                s.state = State::Exited;
                self.event(i, &what);
            }
            Next::Stopped => {
                s.state = State::Stopped;
                self.event(i, &format!("{what}; stopped by its OOM policy"));
            }
            Next::Failed => {
                s.state = State::Failed;
                let l = &s.def.policy.restart.limit;
                let msg = format!(
                    "{what}; failed: more than {} starts within {} ms (isola start {} to retry)",
                    l.burst, l.interval_ms, s.def.name
                );
                self.event(i, &msg);
            }
            Next::Restart { delay, streak } => {
                s.streak = streak;
                s.state = State::Backoff;
                s.deadline = Some((Instant::now() + delay, Deadline::Restart));
                self.event(
                    i,
                    &format!("{what}; restarting in {} ms", delay.as_millis()),
                );
            }
        }
        self.settle(i);
    }

    fn on_timer(&mut self) {
        let _ = self.timer.wait();
        let now = Instant::now();
        for i in 0..self.services.len() {
            let due = match self.services[i].as_ref().and_then(|s| s.deadline) {
                Some((t, d)) if t <= now => d,
                _ => continue,
            };
            if let Some(s) = self.services[i].as_mut() {
                s.deadline = None;
            }
            match due {
                Deadline::Restart => {
                    if let Some(s) = self.services[i].as_mut() {
                        s.restarts += 1;
                        s.state = State::Stopped;
                    }
                    self.start(i);
                }
                Deadline::StopTimeout => {
                    self.event(i, "stop timeout: killing the whole sandbox");
                    self.kill_group(i);
                }
            }
        }
    }

    fn arm_timer(&mut self) {
        let next = self
            .services
            .iter()
            .flatten()
            .filter_map(|s| s.deadline.map(|d| d.0))
            .min();
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

    /// memory.events changed: count OOM kills as they happen (the payload
    /// may survive one), and apply the `stop` policy at once.
    fn on_inotify(&mut self) {
        let Ok(evs) = self.inotify.read_events() else {
            return;
        };
        for ev in evs {
            let Some(i) = self.services.iter().position(|s| {
                s.as_ref()
                    .and_then(|s| s.run.as_ref())
                    .and_then(|r| r.watch)
                    == Some(ev.wd)
            }) else {
                continue;
            };
            self.count_ooms(i);
        }
    }

    /// The init reaped the payload (its own exit follows after teardown):
    /// an OOM kill shows in `status` now.
    fn on_news(&mut self, i: usize) {
        let Some(run) = self.services[i].as_mut().and_then(|s| s.run.as_mut()) else {
            return;
        };
        if let InitNews::PayloadExited(_) = run.sandbox.init_news() {
            self.count_ooms(i);
        }
    }

    /// Count OOM kills of service `i`'s sandbox not seen yet (the payload
    /// may survive one), and apply the `stop` policy at once.
    fn count_ooms(&mut self, i: usize) {
        let Some(s) = self.services[i].as_mut() else {
            return;
        };
        let Some(run) = s.run.as_mut() else { return };
        let count = run.sandbox.cgroup().map(|c| c.oom_kills()).unwrap_or(0);
        if count <= run.oom_seen {
            return;
        }
        let new = count - run.oom_seen;
        run.oom_seen = count;
        s.oom_kills += new;
        let max = run
            .sandbox
            .cgroup()
            .and_then(|c| c.memory_max())
            .unwrap_or_default();
        let policy = s.def.policy.oom;
        if policy == OomPolicy::Stop {
            run.oom_stopped = true;
        }
        self.event(
            i,
            &format!("oom-kill: the kernel killed {new} process(es) (memory.max={max})"),
        );
        if policy == OomPolicy::Stop {
            self.stop(i, Intent::Stop);
        }
    }

    fn on_pipe(&mut self, i: usize, k: usize) {
        self.read_pipe(i, k, false);
    }

    fn drain_pipes(&mut self, i: usize) {
        for k in 0..2 {
            self.read_pipe(i, k, true);
        }
    }

    /// Read what is there; at EOF (or when draining a dead sandbox) close.
    fn read_pipe(&mut self, i: usize, k: usize, closing: bool) {
        let Some(s) = self.services[i].as_mut() else {
            return;
        };
        let Some(p) = s.pipes[k].as_mut() else { return };
        let mut lines = Vec::new();
        let mut buf = [0u8; 16384];
        let mut eof = false;
        loop {
            match nix::unistd::read(&p.fd, &mut buf) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => p.buf.push(&buf[..n], &mut lines),
                Err(Errno::EINTR) => {}
                Err(Errno::EAGAIN) => break,
                // Any other error will not go away: treat it as the end, or
                // the level-triggered epoll would report it forever.
                Err(_) => {
                    eof = true;
                    break;
                }
            }
        }
        let stream = p.stream;
        if eof || closing {
            if let Some(last) = p.buf.finish() {
                lines.push(last);
            }
            let _ = self.epoll.delete(p.fd.as_fd());
            s.pipes[k] = None;
        }
        let name = s.def.name.clone();
        for l in &lines {
            let _ = s.log.write_line(stream, l);
        }
        if self.cfg.echo {
            let mut out = self.stdout.lock();
            for l in &lines {
                let _ = writeln!(out, "{name} | {l}");
            }
            let _ = out.flush();
        }
        for l in lines {
            self.broadcast(
                |c| c.follow.as_deref() == Some(name.as_str()),
                || json!({ "line": l }),
            );
        }
    }

    fn on_signal(&mut self) {
        while let Ok(Some(info)) = self.signals.read_signal() {
            match Signal::try_from(info.ssi_signo as i32) {
                Ok(Signal::SIGHUP) => self.reload(),
                Ok(_) => {
                    if !self.shutting_down {
                        self.note("shutting down");
                        self.shutting_down = true;
                    }
                }
                Err(_) => {}
            }
        }
    }

    // ---- shutdown and reload -------------------------------------------

    /// Stop every service whose dependents are all down (reverse dependency
    /// order, as far as it can go right now).
    fn progress_shutdown(&mut self) {
        // Queued starts are dropped, not launched.
        self.start_queued();
        for i in 0..self.services.len() {
            let Some(s) = self.services[i].as_ref() else {
                continue;
            };
            let name = s.def.name.clone();
            let stoppable = match s.state {
                State::Running => s.intent.is_none() || s.intent == Some(Intent::Restart),
                State::Backoff => true,
                _ => false,
            };
            if !stoppable {
                continue;
            }
            let dependents_alive = self
                .services
                .iter()
                .flatten()
                .any(|o| o.state.alive() && o.def.policy.depends_on.contains(&name));
            if !dependents_alive {
                self.stop(i, Intent::Shutdown);
            }
        }
    }

    fn finish_shutdown(&mut self) {
        for id in std::mem::take(&mut self.down_waiters) {
            self.send(id, &control::ok(json!({})));
        }
        self.flush_all();
        if !self.cfg.no_cgroup {
            if let Err(e) = Cgroup::remove_children(&self.stack_root, true) {
                self.note(&format!("cgroup cleanup: {e}"));
            }
        }
        self.spawner = None;
        let _ = std::fs::remove_file(&self.cfg.socket);
        self.note("all services stopped");
    }

    /// SIGHUP: re-read the stack; restart changed services, start new ones,
    /// stop removed ones, leave the rest alone.
    fn reload(&mut self) {
        let stack = match load_stack(&self.cfg.stack_path) {
            Ok(s) => s,
            Err(e) => {
                self.note(&format!("reload failed, keeping the running stack: {e}"));
                return;
            }
        };
        if self.cfg.no_cgroup {
            if let Some(d) = stack.services.iter().find(|d| d.plan.has_resources()) {
                self.note(&format!(
                    "reload failed: services.{}.linux.resources conflicts with --no-cgroup",
                    d.name
                ));
                return;
            }
        }
        self.note("reloading the stack file");
        let names: Vec<String> = stack.services.iter().map(|d| d.name.clone()).collect();
        for i in 0..self.services.len() {
            if let Some(s) = self.services[i].as_ref() {
                if !names.contains(&s.def.name) {
                    self.stop(i, Intent::Remove);
                }
            }
        }
        for mut def in stack.services {
            self.complete_plan(&mut def);
            match self.find(&def.name) {
                Some(i) => {
                    let Some(s) = self.services[i].as_mut() else {
                        continue;
                    };
                    if s.def.fingerprint == def.fingerprint {
                        continue;
                    }
                    if s.state.alive() {
                        s.next_def = Some(def);
                        self.event(i, "changed: restarting");
                        self.stop(i, Intent::Restart);
                    } else {
                        s.def = def;
                        s.streak = 0;
                        s.starts.clear();
                        self.event(i, "changed");
                        self.start(i);
                    }
                }
                None => match self.add_service(def) {
                    Ok(i) => self.start(i),
                    Err(e) => self.note(&format!("reload: {e}")),
                },
            }
        }
    }

    fn find(&self, name: &str) -> Option<usize> {
        self.services
            .iter()
            .position(|s| s.as_ref().is_some_and(|s| s.def.name == name))
    }

    // ---- control socket -------------------------------------------------

    fn on_accept(&mut self) {
        loop {
            let stream = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(_) => return,
            };
            let creds = nix::sys::socket::getsockopt(&stream, PeerCredentials);
            let me = nix::unistd::geteuid().as_raw();
            let allowed = matches!(&creds, Ok(c) if c.uid() == 0 || c.uid() == me);
            let _ = stream.set_nonblocking(true);
            if !allowed {
                let (uid, pid) = creds.map(|c| (c.uid(), c.pid())).unwrap_or((u32::MAX, -1));
                self.note(&format!(
                    "refused a control connection from uid {uid} (pid {pid})"
                ));
                let mut s = stream;
                let _ = s.write_all(
                    format!(
                        "{}\n",
                        control::err(format!(
                            "permission denied: uid {uid} may not control this supervisor"
                        ))
                    )
                    .as_bytes(),
                );
                continue;
            }
            let id = self.next_conn;
            self.next_conn += 1;
            if self
                .epoll
                .add(
                    stream.as_fd(),
                    EpollEvent::new(EpollFlags::EPOLLIN, T_CONN | id),
                )
                .is_err()
            {
                continue;
            }
            self.conns.insert(
                id,
                Conn {
                    stream,
                    inbuf: Vec::new(),
                    out: Vec::new(),
                    follow: None,
                    events: false,
                    close_after_flush: false,
                },
            );
        }
    }

    fn on_conn(&mut self, id: u64, flags: EpollFlags) {
        if flags.contains(EpollFlags::EPOLLOUT) {
            self.flush(id);
        }
        if !flags.intersects(EpollFlags::EPOLLIN | EpollFlags::EPOLLHUP | EpollFlags::EPOLLERR) {
            return;
        }
        let mut requests = Vec::new();
        let mut closed = false;
        if let Some(c) = self.conns.get_mut(&id) {
            let mut buf = [0u8; 4096];
            loop {
                match c.stream.read(&mut buf) {
                    Ok(0) => {
                        closed = true;
                        break;
                    }
                    Ok(n) => c.inbuf.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(_) => {
                        closed = true;
                        break;
                    }
                }
            }
            while let Some(pos) = c.inbuf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = c.inbuf.drain(..=pos).collect();
                requests.push(line);
            }
            if c.inbuf.len() > 1 << 16 {
                closed = true;
            }
        }
        for line in requests {
            let resp = match serde_json::from_slice::<Value>(&line) {
                Ok(req) => self.handle(id, &req),
                Err(e) => Some(control::err(format!("bad request: {e}"))),
            };
            if let Some(r) = resp {
                self.send(id, &r);
            }
        }
        if closed {
            self.drop_conn(id);
        }
    }

    /// Answer a request, or `None` when the answer comes later (a waiter).
    fn handle(&mut self, id: u64, req: &Value) -> Option<Value> {
        let cmd = req.get("cmd").and_then(Value::as_str).unwrap_or("");
        let name = req.get("name").and_then(Value::as_str);
        let svc = name.and_then(|n| self.find(n));
        let need = |what: &str| control::err(format!("{what} needs an existing service name"));
        match cmd {
            "status" => {
                self.status_reply(id);
                None
            }
            "down" => {
                self.down_waiters.push(id);
                if !self.shutting_down {
                    self.note("shutting down (isola down)");
                    self.shutting_down = true;
                }
                None
            }
            "stop" => {
                let Some(i) = svc else {
                    return Some(need("stop"));
                };
                self.wait_for(i, id);
                self.stop(i, Intent::Stop);
                None
            }
            "start" => {
                let Some(i) = svc else {
                    return Some(need("start"));
                };
                if let Some(s) = self.services[i].as_mut() {
                    if s.state.alive() {
                        return Some(control::ok(json!({"state": s.state.as_str()})));
                    }
                    s.streak = 0;
                    s.starts.clear();
                    s.deadline = None;
                }
                self.wait_for(i, id);
                self.start(i);
                None
            }
            "restart" => {
                let Some(i) = svc else {
                    return Some(need("restart"));
                };
                self.wait_for(i, id);
                let alive = self.services[i]
                    .as_ref()
                    .is_some_and(|s| s.state == State::Running);
                if alive {
                    self.stop(i, Intent::Restart);
                } else {
                    if let Some(s) = self.services[i].as_mut() {
                        s.streak = 0;
                        s.starts.clear();
                        s.deadline = None;
                        s.state = State::Stopped;
                    }
                    self.start(i);
                }
                None
            }
            "logs" => {
                let Some(i) = svc else {
                    return Some(need("logs"));
                };
                let n = req.get("lines").and_then(Value::as_u64).unwrap_or(100) as usize;
                let s = self.services[i].as_ref()?;
                let lines = logs::tail(&self.cfg.logs.dir, &s.def.name, n, self.cfg.logs.files);
                if req.get("follow").and_then(Value::as_bool) == Some(true) {
                    let name = s.def.name.clone();
                    if let Some(c) = self.conns.get_mut(&id) {
                        c.follow = Some(name);
                    }
                }
                Some(control::ok(json!({"lines": lines})))
            }
            "events" => {
                if let Some(c) = self.conns.get_mut(&id) {
                    c.events = true;
                }
                Some(control::ok(json!({})))
            }
            other => Some(control::err(format!("unknown command {other:?}"))),
        }
    }

    fn wait_for(&mut self, i: usize, conn: u64) {
        if let Some(s) = self.services[i].as_mut() {
            s.waiters.push(conn);
        }
    }

    /// A service reached a state a waiting client asked for: answer it.
    fn settle(&mut self, i: usize) {
        let Some(s) = self.services[i].as_mut() else {
            return;
        };
        if matches!(s.state, State::Starting | State::Stopping) || s.intent.is_some() {
            return;
        }
        let state = s.state.as_str();
        let waiters = std::mem::take(&mut s.waiters);
        for id in waiters {
            self.send(id, &control::ok(json!({"state": state})));
        }
    }

    /// The `status` reply, written straight into the connection's buffer
    /// (a thousand services are a thousand rows; no JSON tree in between).
    fn status_reply(&mut self, id: u64) {
        // One clock read for all rows: under emulation (HPET) each read is
        // an exit to the hypervisor.
        let now = Instant::now();
        let rows: Vec<StatusRow> = self
            .services
            .iter()
            .flatten()
            .map(|s| {
                let run = s.run.as_ref();
                let stats = run
                    .and_then(|r| r.stats.as_ref())
                    .map(StatFiles::read)
                    .unwrap_or_default();
                let pid = run
                    .map(|r| r.sandbox.pid())
                    .or(s.pending.as_ref().map(|p| p.starting.pid()));
                StatusRow {
                    name: &s.def.name,
                    state: s.state.as_str(),
                    pid: pid.map(|p| p.as_raw()),
                    restarts: s.restarts,
                    uptime_ms: run
                        .filter(|_| s.state == State::Running)
                        .map(|r| now.saturating_duration_since(r.started).as_millis() as u64),
                    started_at_ms: run.map(|r| r.start_ms),
                    last_exit: s.last_exit.map(|e| ExitRow {
                        reason: e.reason,
                        code: e.code,
                        signal: e.signal,
                    }),
                    oom_kills: s.oom_kills,
                    memory_current: stats.memory_current,
                    memory_peak: stats.memory_peak,
                    cpu_usec: stats.cpu_usec,
                    history: History(&s.history),
                    depends_on: &s.def.policy.depends_on,
                    restart_policy: match s.def.policy.restart.policy {
                        RestartPolicy::No => "no",
                        RestartPolicy::Always => "always",
                        RestartPolicy::OnFailure => "on-failure",
                        RestartPolicy::UnlessStopped => "unless-stopped",
                    },
                }
            })
            .collect();
        let reply = StatusReply {
            ok: true,
            services: rows,
        };
        if let Some(c) = self.conns.get_mut(&id) {
            let before = c.out.len();
            match serde_json::to_writer(&mut c.out, &reply) {
                Ok(()) => c.out.push(b'\n'),
                Err(_) => c.out.truncate(before),
            }
        }
        self.flush(id);
    }

    fn send(&mut self, id: u64, v: &Value) {
        if let Some(c) = self.conns.get_mut(&id) {
            c.out.extend_from_slice(v.to_string().as_bytes());
            c.out.push(b'\n');
        }
        self.flush(id);
    }

    fn flush(&mut self, id: u64) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        while !c.out.is_empty() {
            match c.stream.write(&c.out) {
                Ok(0) => break,
                Ok(n) => {
                    c.out.drain(..n);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(_) => {
                    self.drop_conn(id);
                    return;
                }
            }
        }
        let flags = if c.out.is_empty() {
            EpollFlags::EPOLLIN
        } else {
            EpollFlags::EPOLLIN | EpollFlags::EPOLLOUT
        };
        let mut ev = EpollEvent::new(flags, T_CONN | id);
        let _ = self.epoll.modify(c.stream.as_fd(), &mut ev);
        if c.out.is_empty() && c.close_after_flush {
            self.drop_conn(id);
        }
    }

    /// At exit: give pending answers a last, blocking chance to go out.
    fn flush_all(&mut self) {
        for c in self.conns.values_mut() {
            let _ = c.stream.set_nonblocking(false);
            let _ = c.stream.set_write_timeout(Some(Duration::from_secs(1)));
            let _ = c.stream.write_all(&c.out);
            c.out.clear();
        }
    }

    fn drop_conn(&mut self, id: u64) {
        if let Some(c) = self.conns.remove(&id) {
            let _ = self.epoll.delete(c.stream.as_fd());
        }
        self.down_waiters.retain(|w| *w != id);
        for s in self.services.iter_mut().flatten() {
            s.waiters.retain(|w| *w != id);
        }
    }
}

/// Each service holds up to eight fds (pidfd, sync socket, two pipes, its
/// log, three stat files): raise our RLIMIT_NOFILE (root may go up to
/// fs.nr_open). Returns the original.
fn raise_nofile() -> Option<(u64, u64)> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|t| t.trim().parse::<u64>().ok())
        .unwrap_or(hard);
    let want = nr_open.min(1 << 20).max(hard);
    if setrlimit(Resource::RLIMIT_NOFILE, want, want).is_err() {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
    Some((soft, hard))
}

/// The supervisor is the last process the kernel's OOM killer should pick:
/// killing it takes every service down (their inits die with it). Lowered
/// the way containerd lowers its own; returns the original score when it
/// could (root), `None` when it was left alone.
fn protect_from_oom() -> Option<i32> {
    const PATH: &str = "/proc/self/oom_score_adj";
    let original: i32 = std::fs::read_to_string(PATH).ok()?.trim().parse().ok()?;
    if original <= SUPERVISOR_OOM_SCORE_ADJ {
        return None;
    }
    std::fs::write(PATH, SUPERVISOR_OOM_SCORE_ADJ.to_string()).ok()?;
    Some(original)
}

const SUPERVISOR_OOM_SCORE_ADJ: i32 = -999;

struct RemoveOnDrop(Option<PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Bind the control socket with mode 0600, refusing to steal it from a
/// supervisor that is still listening.
fn bind_socket(path: &Path) -> Result<UnixListener, UpError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(setup(dir.display()))?;
    }
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            return Err(UpError::Setup(format!(
                "{}: another isola supervisor is listening there (--socket to use another)",
                path.display()
            )));
        }
        std::fs::remove_file(path).map_err(setup(path.display()))?;
    }
    // The socket file takes its mode from the umask at bind time: no window
    // in which it is world-accessible.
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let res = UnixListener::bind(path);
    nix::sys::stat::umask(old);
    let l = res.map_err(setup(path.display()))?;
    l.set_nonblocking(true).map_err(setup(path.display()))?;
    Ok(l)
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct StatusReply<'a> {
    ok: bool,
    services: Vec<StatusRow<'a>>,
}

/// One service in the `status` reply (the README documents the fields).
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct StatusRow<'a> {
    name: &'a str,
    state: &'static str,
    pid: Option<i32>,
    restarts: u32,
    uptime_ms: Option<u64>,
    started_at_ms: Option<u64>,
    last_exit: Option<ExitRow>,
    oom_kills: u64,
    memory_current: Option<u64>,
    memory_peak: Option<u64>,
    cpu_usec: Option<u64>,
    history: History<'a>,
    depends_on: &'a [String],
    restart_policy: &'static str,
}

#[derive(serde::Serialize)]
struct ExitRow {
    reason: decide::Reason,
    code: Option<i32>,
    signal: Option<i32>,
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct HistoryRow {
    start_ms: u64,
    exit_ms: Option<u64>,
}

/// A service's run history, serialized from where it lives (no per-row
/// vector for a thousand-row status).
struct History<'a>(&'a VecDeque<(u64, Option<u64>)>);

impl serde::Serialize for History<'_> {
    fn serialize<S: serde::Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        ser.collect_seq(
            self.0
                .iter()
                .map(|&(start_ms, exit_ms)| HistoryRow { start_ms, exit_ms }),
        )
    }
}
