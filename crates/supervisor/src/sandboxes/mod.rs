//! Sandboxes: each service's sandbox over its runs, as the loop sees it —
//! launched (through the spawner, or here), its init's report, OOM news
//! from `memory.events`, its exit, and a teardown that waits for its
//! cgroup to empty by inotify on `cgroup.events` (one service whose
//! processes are slow to die never holds up another). Owns the sandboxes,
//! the inotify fd and its watches (by descriptor, to their owner), the
//! spawner, the stack's cgroup and the budget of open stat files.
//!
//! The init's exit is not seen here: the reaper collects every child and
//! the shell hands an init's status to [`Sandboxes::init_exited`].

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use isola_runtime::cgroup::{Cgroup, StatFiles, Stats};
use isola_runtime::sandbox::{Progress, Starting};
use isola_runtime::{ExitStatus, Sandbox};
use nix::errno::Errno;
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};
use nix::sys::signal::Signal;
use nix::unistd::Pid;

use crate::control::Run;
use crate::host::StackGroup;
use crate::lifecycle::{Exit, StartError};
use crate::shell::context::{Ctx, Input, ServiceIx, ServiceMap};
use crate::shell::reactor::{Interest, Part, Reactor, Token};
use crate::spawner::Spawner;

mod drain;
mod handover;
mod held;
mod image_roots;
mod launch;
mod limits;
mod membership;
pub(crate) mod spawner_plans;

pub(crate) use handover::adopt_group;
pub(crate) use launch::Launch;

/// Runs of a service `status` remembers.
const HISTORY_RUNS: usize = 32;
/// The inotify fd's key; a sandbox's sync socket is `i << 1`.
const WATCHES: u64 = 1;

fn sync_token(i: ServiceIx) -> Token {
    Token::new(Part::Sandboxes, (i as u64) << 1)
}

/// What an inotify watch is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Watch {
    /// `memory.events` of a running sandbox: OOM kills as they happen.
    OomKills,
    /// `cgroup.events` of a draining one: empty yet?
    Emptied,
}

/// Where a service's sandbox is in its run.
enum Stage {
    Idle,
    /// The init is setting up.
    Starting(Starting),
    Running(Running),
    /// The init exited while processes were left in the cgroup: killed,
    /// and waited for.
    Draining(drain::Draining),
}

/// A sandbox whose payload runs.
struct Running {
    sandbox: Sandbox,
    start_ms: u64,
    /// OOM kills of this run already reported to the core.
    oom_seen: u64,
    watch: Option<WatchDescriptor>,
    stats: Option<StatFiles>,
}

struct ServiceSandbox {
    /// The cgroup directory of its current (or last) sandbox.
    cgroup_name: String,
    history: VecDeque<Run>,
    stage: Stage,
}

impl ServiceSandbox {
    fn record_start(&mut self) {
        if self.history.len() >= HISTORY_RUNS {
            self.history.pop_front();
        }
        self.history.push_back(Run {
            start_ms: crate::supervisor::now_ms(),
            exit_ms: None,
        });
    }

    fn record_exit(&mut self) {
        if let Some(h) = self.history.back_mut() {
            h.exit_ms = Some(crate::supervisor::now_ms());
        }
    }

    fn running(&self) -> Option<&Running> {
        match &self.stage {
            Stage::Running(r) => Some(r),
            _ => None,
        }
    }
}

/// How the sandboxes are set up for the whole stack.
pub(crate) struct Setup {
    /// Sandboxes live in `<stack_root>/<cgroup name>`.
    pub(crate) stack_root: PathBuf,
    pub(crate) no_cgroup: bool,
    /// Our claim on the stack's cgroup (`None` with --no-cgroup).
    pub(crate) group: Option<StackGroup>,
    pub(crate) spawner: Option<Spawner>,
    /// Running services whose stat files may stay open (the fds the
    /// stack leaves spare).
    pub(crate) stats_cap: usize,
    /// Inits are cloned as our parent's children (the keeper's).
    pub(crate) siblings: bool,
}

/// What an init's report meant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Report {
    /// The payload runs (the core is told).
    Running,
    /// The init made its network namespace and waits to be put on its
    /// CNI networks ([`Sandboxes::go_on`]).
    NetworkHeld { init: Pid },
    /// The payload runs, but its init was reaped already: the run is over.
    RanAndExited(ExitStatus),
    /// The start failed (the core is told); the init `init` is gone.
    Failed { init: Pid },
}

/// What a sandbox is doing, for `status`.
pub(crate) struct Snapshot<'a> {
    pub(crate) pid: Option<Pid>,
    /// The init exited while its cgroup still drains.
    pub(crate) draining: bool,
    pub(crate) started_at_ms: Option<u64>,
    pub(crate) stats: Stats,
    pub(crate) history: &'a VecDeque<Run>,
}

pub(crate) struct Sandboxes {
    services: ServiceMap<ServiceSandbox>,
    inotify: Inotify,
    watches: HashMap<WatchDescriptor, (ServiceIx, Watch)>,
    /// Sandboxes draining (their deadlines, without a scan of all).
    draining: BTreeSet<ServiceIx>,
    setup: Setup,
    stats_open: usize,
    roots: image_roots::ImageRoots,
}

impl Sandboxes {
    pub(crate) fn new(reactor: &Reactor, setup: Setup) -> Result<Sandboxes, Errno> {
        let inotify = Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK)?;
        reactor.add(
            inotify.as_fd(),
            Token::new(Part::Sandboxes, WATCHES),
            Interest::Read,
        )?;
        Ok(Sandboxes {
            services: ServiceMap::default(),
            inotify,
            watches: HashMap::new(),
            draining: BTreeSet::new(),
            setup,
            stats_open: 0,
            roots: image_roots::ImageRoots::default(),
        })
    }

    /// Service `i`, named `name`, has no sandbox yet.
    pub(crate) fn add(&mut self, i: ServiceIx, name: &str) {
        let s = ServiceSandbox {
            cgroup_name: name.to_string(),
            history: VecDeque::new(),
            stage: Stage::Idle,
        };
        self.services.insert(i, s);
    }

    /// Service `i` is gone. A sandbox dropped with it is reaped by its
    /// Drop: its init's pid, for the reaper to forget.
    pub(crate) fn forget(&mut self, ctx: &mut Ctx<'_>, i: ServiceIx) -> Option<Pid> {
        self.roots.discard(i);
        let s = self.services.remove(i)?;
        self.draining.remove(&i);
        match s.stage {
            Stage::Idle => None,
            Stage::Starting(st) => {
                ctx.reactor.remove(st.sync_fd());
                Some(st.pid())
            }
            Stage::Running(r) => {
                self.unwatch(r.watch);
                if r.stats.is_some() {
                    self.stats_open -= 1;
                }
                Some(r.sandbox.pid())
            }
            Stage::Draining(d) => {
                self.unwatch(d.watch());
                None
            }
        }
    }

    /// One of our fds has news: an init's report, or cgroup files changed.
    pub(crate) fn on_event(&mut self, ctx: &mut Ctx<'_>, key: u64) -> Option<(ServiceIx, Report)> {
        if key == WATCHES {
            self.on_watches(ctx);
            return None;
        }
        let i = usize::try_from(key >> 1).ok()?;
        Some((i, self.on_report(ctx, i)?))
    }

    /// The init of a starting sandbox reported (or died).
    fn on_report(&mut self, ctx: &mut Ctx<'_>, i: ServiceIx) -> Option<Report> {
        let s = self.services.get_mut(i)?;
        if !matches!(s.stage, Stage::Starting(_)) {
            return None;
        }
        let Stage::Starting(starting) = std::mem::replace(&mut s.stage, Stage::Idle) else {
            return None;
        };
        ctx.reactor.remove(starting.sync_fd());
        let init = starting.pid();
        match starting.progress() {
            Ok(Progress::NetworkHeld(st)) => {
                if let Err(e) = ctx.reactor.add(st.sync_fd(), sync_token(i), Interest::Read) {
                    // Dropping it kills and removes the sandbox.
                    drop(st);
                    return Some(self.start_failed(ctx, i, init, format!("epoll: {e}")));
                }
                s.stage = Stage::Starting(st);
                Some(Report::NetworkHeld { init })
            }
            Ok(Progress::Started(mut sb)) => {
                // From now on the init is reaped on SIGCHLD (by the
                // reaper): its pidfd and sync socket are closed, and a
                // running service holds only its output pipes.
                sb.release_pidfd();
                let pid = sb.pid();
                let watch = sb.cgroup().and_then(|cg| {
                    let path = cg.memory_events_path();
                    self.inotify.add_watch(&path, AddWatchFlags::IN_MODIFY).ok()
                });
                if let Some(w) = watch {
                    self.watches.insert(w, (i, Watch::OomKills));
                }
                let exited = sb.exit_status();
                s.stage = Stage::Running(Running {
                    sandbox: sb,
                    start_ms: crate::supervisor::now_ms(),
                    oom_seen: 0,
                    watch,
                    stats: None,
                });
                ctx.out.input(Input::Started(i, pid.as_raw()));
                // Reaped before its report was read: it exited right after.
                Some(exited.map_or(Report::Running, Report::RanAndExited))
            }
            Err(e) => {
                s.record_exit();
                ctx.out.input(Input::StartFailed(i, StartError::from(&e)));
                Some(Report::Failed { init })
            }
        }
    }

    /// Service `i`'s init `pid` was reaped with `status`: true when it was
    /// the running sandbox's (its run is over: [`Sandboxes::end_run`]);
    /// one still setting up keeps the status for its report.
    pub(crate) fn init_exited(&mut self, i: ServiceIx, pid: Pid, status: ExitStatus) -> bool {
        let Some(s) = self.services.get_mut(i) else {
            return false;
        };
        match &mut s.stage {
            Stage::Running(r) => r.sandbox.pid() == pid,
            Stage::Starting(st) if st.pid() == pid => {
                st.reaped(status);
                false
            }
            _ => false,
        }
    }

    /// Service `i`'s run is over (its init exited with `status`): the core
    /// hears of it once its cgroup is empty.
    pub(crate) fn end_run(&mut self, ctx: &mut Ctx<'_>, i: ServiceIx, status: ExitStatus) {
        let Some(s) = self.services.get_mut(i) else {
            return;
        };
        if !matches!(s.stage, Stage::Running(_)) {
            return;
        }
        let Stage::Running(run) = std::mem::replace(&mut s.stage, Stage::Idle) else {
            return;
        };
        s.record_exit();
        if run.stats.is_some() {
            self.stats_open -= 1;
        }
        self.unwatch(run.watch);
        let (outcome, cgroup) = run.sandbox.into_exited_with(status);
        let exit = Exit {
            code: outcome.status.code(),
            oom_kills: outcome.oom_kills,
            new_oom_kills: outcome.oom_kills.saturating_sub(run.oom_seen),
        };
        match cgroup {
            None => ctx.out.input(Input::Exited(i, exit)),
            Some(cgroup) => self.start_drain(ctx, i, cgroup, exit),
        }
    }

    fn unwatch(&mut self, watch: Option<WatchDescriptor>) {
        if let Some(w) = watch {
            self.watches.remove(&w);
            let _gone_with_the_cgroup_anyway = self.inotify.rm_watch(w);
        }
    }

    /// The core's `Signal`: to the init, which forwards it to the payload;
    /// if the init cannot take it, the whole group is killed.
    pub(crate) fn signal(&mut self, i: ServiceIx, sig: Signal) {
        let delivered = self
            .services
            .get(i)
            .and_then(ServiceSandbox::running)
            .is_some_and(|r| r.sandbox.signal(sig).is_ok());
        if !delivered {
            self.kill_group(i);
        }
    }

    /// The core's `KillGroup`: every process of the sandbox, at once.
    pub(crate) fn kill_group(&mut self, i: ServiceIx) {
        let Some(s) = self.services.get(i) else {
            return;
        };
        // Nothing to do on failure: the teardown sees what is left.
        match &s.stage {
            Stage::Running(r) => match r.sandbox.cgroup() {
                Some(cg) => drop(cg.kill()),
                None => drop(r.sandbox.signal(Signal::SIGKILL)),
            },
            Stage::Draining(d) => d.kill(),
            Stage::Idle | Stage::Starting(_) => {}
        }
    }

    /// memory.events of a running sandbox changed (count OOM kills as they
    /// happen), or cgroup.events of a draining one (empty yet?).
    fn on_watches(&mut self, ctx: &mut Ctx<'_>) {
        let Ok(evs) = self.inotify.read_events() else {
            return;
        };
        for ev in evs {
            match self.watches.get(&ev.wd).copied() {
                Some((i, Watch::OomKills)) => self.count_ooms(ctx, i),
                Some((i, Watch::Emptied)) => self.check_drained(ctx, i),
                None => {}
            }
        }
    }

    /// Tell the core of OOM kills of service `i`'s sandbox not seen yet.
    fn count_ooms(&mut self, ctx: &mut Ctx<'_>, i: ServiceIx) {
        let Some(Stage::Running(run)) = self.services.get_mut(i).map(|s| &mut s.stage) else {
            return;
        };
        let Some(cg) = run.sandbox.cgroup() else {
            return;
        };
        let count = cg.oom_kills();
        if count <= run.oom_seen {
            return;
        }
        let new = count - run.oom_seen;
        run.oom_seen = count;
        let memory_max = cg.memory_max().unwrap_or_default();
        ctx.out.input(Input::OomKilled {
            service: i,
            new,
            memory_max,
        });
    }

    /// Service `i`'s running sandbox: its init (an unreaped child of ours,
    /// so its pid still names it) and cgroup.
    pub(crate) fn running(&self, i: ServiceIx) -> Option<(Pid, Option<&Path>)> {
        let r = self.services.get(i)?.running()?;
        Some((r.sandbox.pid(), r.sandbox.cgroup().map(Cgroup::path)))
    }

    /// What service `i`'s sandbox is doing, for `status`.
    pub(crate) fn snapshot(&self, i: ServiceIx) -> Option<Snapshot<'_>> {
        let s = self.services.get(i)?;
        let run = s.running();
        let stats = run
            .and_then(|r| match &r.stats {
                Some(files) => Some(files.read()),
                None => StatFiles::open(r.sandbox.cgroup()?).ok().map(|f| f.read()),
            })
            .unwrap_or_default();
        let pid = match &s.stage {
            Stage::Running(r) => Some(r.sandbox.pid()),
            Stage::Starting(st) => Some(st.pid()),
            Stage::Idle | Stage::Draining(_) => None,
        };
        Some(Snapshot {
            pid,
            draining: matches!(s.stage, Stage::Draining(_)),
            started_at_ms: run.map(|r| r.start_ms),
            stats,
            history: &s.history,
        })
    }

    /// Open the stat files of running services that have none, while the
    /// fds the stack leaves spare allow (`host::check_capacity`): a status
    /// then preads them, no path walk. Past that, they are opened for one
    /// read and closed.
    pub(crate) fn open_stats(&mut self) {
        for (_, s) in self.services.iter_mut() {
            if self.stats_open >= self.setup.stats_cap {
                return;
            }
            let Stage::Running(run) = &mut s.stage else {
                continue;
            };
            if run.stats.is_some() {
                continue;
            }
            run.stats = run.sandbox.cgroup().and_then(|cg| StatFiles::open(cg).ok());
            if run.stats.is_some() {
                self.stats_open += 1;
            }
        }
    }

    /// A file of service `i`'s running sandbox's cgroup, read now (the
    /// metrics' less frequent values: PSI, io.stat, memory.events).
    pub(crate) fn cgroup_file(&self, i: ServiceIx, file: &str) -> Option<String> {
        let (_, cgroup) = self.running(i)?;
        std::fs::read_to_string(cgroup?.join(file)).ok()
    }

    /// A reload's capacity check: how many stat files may stay open now.
    pub(crate) fn set_stats_cap(&mut self, cap: usize) {
        self.setup.stats_cap = cap;
    }

    pub(crate) fn no_cgroup(&self) -> bool {
        self.setup.no_cgroup
    }

    /// The spawner's pid, while there is one.
    pub(crate) fn spawner_pid(&self) -> Option<nix::unistd::Pid> {
        self.setup.spawner.as_ref().map(Spawner::pid)
    }

    /// At exit: the spawner goes, image roots are deleted, the stack's
    /// cgroup is let go (an error is for the caller to say).
    pub(crate) fn finish(&mut self) -> Option<String> {
        self.setup.spawner = None;
        let roots = self.roots.finish();
        let group = self
            .setup
            .group
            .take()
            .and_then(|g| g.release().err().map(|e| format!("cgroup cleanup: {e}")));
        group.or(roots)
    }
}
