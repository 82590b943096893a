//! A sandbox's life as the loop sees it: launch (through the spawner),
//! the init's report, OOM news, the exit, and a teardown that waits for the
//! cgroup to empty by event — one service whose processes are slow to die
//! never holds up another.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::time::{Duration, Instant};

use isola_runtime::cgroup::{Cgroup, StatFiles, REMOVE_RETRY};
use isola_runtime::listen::Listen;
use isola_runtime::sandbox::Starting;
use isola_runtime::{exit, ExitStatus, Sandbox};
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::epoll::{EpollEvent, EpollFlags};
use nix::sys::inotify::{AddWatchFlags, WatchDescriptor};
use nix::sys::signal::Signal;
use nix::unistd::Pid;

use crate::lifecycle::{Exit, StartError};
use crate::output::{Pipe, Stream};
use crate::policy::Stderr;
use crate::reap::Child;
use crate::supervisor::{now_ms, Supervisor, Token};

/// How long a teardown waits for the processes left in a cgroup after
/// `cgroup.kill` (uninterruptible sleep, a stuck filesystem) before it
/// reports the exit anyway and leaves the group behind; the next start of
/// the service then fails (the group is in use) and backs off until it is
/// free.
const DRAIN_PATIENCE: Duration = Duration::from_secs(10);

/// A sandbox whose init is setting up.
pub(crate) struct Launched {
    starting: Starting,
}

impl Launched {
    pub(crate) fn pid(&self) -> nix::unistd::Pid {
        self.starting.pid()
    }
}

/// A sandbox whose payload runs.
pub(crate) struct Running {
    pub(crate) sandbox: Sandbox,
    pub(crate) start_ms: u64,
    /// OOM kills of this run already reported to the core.
    oom_seen: u64,
    /// inotify on `memory.events`.
    watch: Option<WatchDescriptor>,
    pub(crate) stats: Option<StatFiles>,
}

/// A sandbox whose init exited while processes were left in its cgroup:
/// killed, and waited for by inotify on `cgroup.events`.
pub(crate) struct Draining {
    cgroup: Cgroup,
    exit: Exit,
    watch: Option<WatchDescriptor>,
    give_up_at: Instant,
    /// The group is empty but the kernel still calls it busy: try again.
    retry_at: Option<Instant>,
}

impl Supervisor {
    fn epoll_add(&self, fd: BorrowedFd<'_>, tok: Token) {
        let _ = self
            .epoll
            .add(fd, EpollEvent::new(EpollFlags::EPOLLIN, tok.encode()));
    }

    /// The core's `Launch`: clone the sandbox; its init reports on the
    /// sync socket.
    pub(crate) fn launch(&mut self, i: usize) {
        let now = Instant::now();
        if self.slot(i).is_none() {
            // A service added by a reload whose log file could not be opened.
            let why = "no log file for it (see the reload note)";
            return self.launch_failed(i, why, Errno::ENOENT, now);
        }
        self.prepare_notify(i);
        // stdout's pipe; stderr's own, unless it goes to stdout's.
        let merged = self
            .core
            .service(i)
            .is_some_and(|s| s.def.policy.stderr == Stderr::Stdout);
        let out = nix::unistd::pipe2(OFlag::O_CLOEXEC);
        let err = if merged {
            Ok(None)
        } else {
            nix::unistd::pipe2(OFlag::O_CLOEXEC).map(Some)
        };
        let (out, err) = match (out, err) {
            (Ok(o), Ok(e)) => (o, e),
            (Err(e), _) | (_, Err(e)) => {
                return self.launch_failed(i, &format!("cannot create pipes: {e}"), e, now)
            }
        };
        let null = match File::open("/dev/null") {
            Ok(f) => f,
            Err(e) => {
                let errno = Errno::from_raw(e.raw_os_error().unwrap_or(0));
                return self.launch_failed(i, &format!("/dev/null: {e}"), errno, now);
            }
        };
        let (out_r, out_w) = out;
        let (err_r, err_w) = err.unzip();
        // `notify: {"fd": N}`: the payload's end of a pipe at fd N.
        let ready = match self.ready_pipe(i) {
            Ok(p) => p,
            Err(e) => return self.launch_failed(i, &format!("cannot create pipes: {e}"), e, now),
        };
        let pass: Vec<RawFd> = ready.iter().map(|(_, w)| w.as_raw_fd()).collect();
        let (sockets, names) = self.handover(i);
        let listen = Listen {
            fds: &sockets,
            names: &names,
        };
        let err_fd = err_w.as_ref().unwrap_or(&out_w).as_raw_fd();
        let result = self.spawn_sandbox(
            i,
            [null.as_raw_fd(), out_w.as_raw_fd(), err_fd],
            &pass,
            listen,
        );
        drop((out_w, err_w, null));
        let ready_r = ready.map(|(r, _)| r);
        let Some(slot) = self.slot(i) else { return };
        slot.record_start();
        match result {
            Ok(starting) => {
                self.epoll_add(starting.sync_fd(), Token::Sync(i));
                for (k, fd) in [Some(out_r), err_r].into_iter().enumerate() {
                    let Some(fd) = fd else { continue };
                    let _ =
                        nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_SETFL(OFlag::O_NONBLOCK));
                    self.epoll_add(fd.as_fd(), Token::Pipe(i, k));
                    if let Some(slot) = self.slot(i) {
                        slot.pipes[k] = Some(Pipe::new(fd, Stream::from_index(k)));
                    }
                }
                if let Some(r) = ready_r {
                    self.epoll_add(r.as_fd(), Token::Ready(i));
                    if let Some(slot) = self.slot(i) {
                        slot.ready_pipe = Some(r);
                    }
                }
                self.children
                    .insert(starting.pid().as_raw(), Child::Init(i));
                if let Some(slot) = self.slot(i) {
                    slot.launched = Some(Launched { starting });
                }
            }
            Err(e) => {
                slot.record_exit();
                self.core.start_failed(i, e, now);
            }
        }
    }

    /// No sandbox for want of `errno` on our side (pipes, /dev/null).
    fn launch_failed(&mut self, i: usize, why: &str, errno: Errno, now: Instant) {
        let e = StartError {
            code: exit::code(exit::SETUP),
            why: why.to_string(),
            transient: isola_runtime::error::is_shortage(errno),
        };
        self.core.start_failed(i, e, now);
    }

    /// The init of a starting sandbox reported (or died).
    pub(crate) fn on_started(&mut self, i: usize) {
        let now = Instant::now();
        let Some(Launched { starting }) = self.slot(i).and_then(|s| s.launched.take()) else {
            return;
        };
        let _ = self.epoll.delete(starting.sync_fd());
        let init = starting.pid();
        match starting.complete() {
            Ok(mut sb) => {
                // From now on the init is reaped on SIGCHLD (`reap`): its
                // pidfd and sync socket are closed, and a running service
                // holds only its output pipes.
                sb.release_pidfd();
                let pid = sb.pid();
                let watch = sb.cgroup().and_then(|cg| {
                    self.inotify
                        .add_watch(&cg.memory_events_path(), AddWatchFlags::IN_MODIFY)
                        .ok()
                });
                if let Some(slot) = self.slot(i) {
                    slot.running = Some(Running {
                        sandbox: sb,
                        start_ms: now_ms(),
                        oom_seen: 0,
                        watch,
                        stats: None,
                    });
                }
                self.core.started(i, pid.as_raw(), now);
                // Reaped before its report was read: it exited right after.
                if let Some(status) = self.running(i).and_then(|r| r.sandbox.exit_status()) {
                    self.on_exit(i, status);
                }
            }
            Err(e) => {
                // `complete` reaped it, if we had not.
                self.children.remove(&init.as_raw());
                self.drain_pipes(i);
                self.close_ready_pipe(i);
                if let Some(slot) = self.slot(i) {
                    slot.record_exit();
                }
                self.core.start_failed(i, StartError::from(&e), now);
            }
        }
    }

    /// The core's `Signal`: to the init, which forwards it to the payload;
    /// if the init cannot take it, the whole group is killed.
    pub(crate) fn signal(&mut self, i: usize, sig: Signal) {
        let delivered = self
            .slot(i)
            .and_then(|s| s.running.as_ref())
            .is_some_and(|r| r.sandbox.signal(sig).is_ok());
        if !delivered {
            self.kill_group(i);
        }
    }

    /// The core's `KillGroup`: every process of the sandbox, at once.
    pub(crate) fn kill_group(&mut self, i: usize) {
        let Some(slot) = self.slot(i) else { return };
        if let Some(r) = &slot.running {
            match r.sandbox.cgroup() {
                Some(cg) => {
                    let _ = cg.kill();
                }
                None => {
                    let _ = r.sandbox.signal(Signal::SIGKILL);
                }
            }
        }
        if let Some(d) = &slot.draining {
            let _ = d.cgroup.kill();
        }
    }

    /// memory.events of a running sandbox changed (count OOM kills as they
    /// happen), or cgroup.events of a draining one (empty yet?).
    pub(crate) fn on_inotify(&mut self) {
        let Ok(evs) = self.inotify.read_events() else {
            return;
        };
        for ev in evs {
            let owner = self.slots.iter().enumerate().find_map(|(i, s)| {
                let s = s.as_ref()?;
                if s.running.as_ref().and_then(|r| r.watch) == Some(ev.wd) {
                    Some((i, true))
                } else if s.draining.as_ref().and_then(|d| d.watch) == Some(ev.wd) {
                    Some((i, false))
                } else {
                    None
                }
            });
            match owner {
                Some((i, true)) => self.count_ooms(i),
                Some((i, false)) => self.check_drained(i, Instant::now()),
                None => {}
            }
        }
    }

    /// Tell the core of OOM kills of service `i`'s sandbox not seen yet.
    fn count_ooms(&mut self, i: usize) {
        let Some(run) = self.slot(i).and_then(|s| s.running.as_mut()) else {
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
        let max = cg.memory_max().unwrap_or_default();
        self.core.oom_killed(i, new, &max, Instant::now());
    }

    /// Service `i`'s init `pid` was reaped with `status` (see `reap`):
    /// news for its running sandbox, or for one still setting up (whose
    /// report, or the EOF of its death, is read next).
    pub(crate) fn init_exited(&mut self, i: usize, pid: Pid, status: ExitStatus) {
        let Some(slot) = self.slot(i) else { return };
        if slot
            .running
            .as_ref()
            .is_some_and(|r| r.sandbox.pid() == pid)
        {
            self.on_exit(i, status);
        } else if let Some(l) = slot.launched.as_mut().filter(|l| l.pid() == pid) {
            l.starting.reaped(status);
        }
    }

    /// Service `i`'s init exited: collect its status, drain its output,
    /// and wait for its cgroup to empty before the core hears of the exit.
    fn on_exit(&mut self, i: usize, status: ExitStatus) {
        let Some(run) = self.slot(i).and_then(|s| s.running.take()) else {
            return;
        };
        if run.stats.is_some() {
            self.stats_open -= 1;
        }
        self.cancel_probes(i);
        self.close_ready_pipe(i);
        if let Some(w) = run.watch {
            let _ = self.inotify.rm_watch(w);
        }
        let (outcome, cgroup) = run.sandbox.into_exited_with(status);
        let exit = Exit {
            code: outcome.status.code(),
            oom_kills: outcome.oom_kills,
            new_oom_kills: outcome.oom_kills.saturating_sub(run.oom_seen),
        };
        // Everything the payload wrote is in the pipes now (or soon: its
        // leftovers in a draining cgroup may still write).
        self.drain_pipes(i);
        if let Some(slot) = self.slot(i) {
            slot.record_exit();
        }
        let now = Instant::now();
        match cgroup {
            None => self.core.exited(i, exit, now),
            Some(cgroup) => {
                let watch = self
                    .inotify
                    .add_watch(&cgroup.events_path(), AddWatchFlags::IN_MODIFY)
                    .ok();
                let draining = Draining {
                    cgroup,
                    exit,
                    watch,
                    give_up_at: now + DRAIN_PATIENCE,
                    retry_at: None,
                };
                if let Some(slot) = self.slot(i) {
                    slot.draining = Some(draining);
                    self.drains += 1;
                }
                self.check_drained(i, now);
            }
        }
    }

    /// Kill what is left of a draining sandbox; once its cgroup is empty,
    /// remove it and report the exit.
    fn check_drained(&mut self, i: usize, now: Instant) {
        let Some(d) = self.slot(i).and_then(|s| s.draining.as_mut()) else {
            return;
        };
        match d.cgroup.is_populated() {
            Ok(true) => {
                // Again on every change: a process that forked meanwhile.
                let _ = d.cgroup.kill();
                return;
            }
            Ok(false) => {}
            Err(_) => {} // gone: nothing left to wait for
        }
        match d.cgroup.try_remove() {
            Ok(false) => {
                d.retry_at = Some(now + REMOVE_RETRY);
                return;
            }
            Ok(true) => {}
            Err(e) => {
                let msg = format!("teardown: {e}");
                self.end_drain(i, Some(msg), now);
                return;
            }
        }
        self.end_drain(i, None, now);
    }

    fn end_drain(&mut self, i: usize, why: Option<String>, now: Instant) {
        let Some(d) = self.slot(i).and_then(|s| s.draining.take()) else {
            return;
        };
        self.drains -= 1;
        if let Some(w) = d.watch {
            let _ = self.inotify.rm_watch(w);
        }
        if let Some(msg) = why {
            self.event(i, &msg);
        }
        self.core.exited(i, d.exit, now);
    }

    /// The timer: retry removals the kernel called busy; give up on groups
    /// that stayed populated too long.
    pub(crate) fn drain_tick(&mut self, now: Instant) {
        if self.drains == 0 {
            return;
        }
        for i in 0..self.slots.len() {
            let Some(d) = self.slot(i).and_then(|s| s.draining.as_mut()) else {
                continue;
            };
            if d.give_up_at <= now {
                let msg = format!(
                    "teardown: {} still has processes {} s after cgroup.kill; leaving it behind",
                    d.cgroup.path().display(),
                    DRAIN_PATIENCE.as_secs()
                );
                self.end_drain(i, Some(msg), now);
            } else if d.retry_at.is_some_and(|t| t <= now) {
                d.retry_at = None;
                self.check_drained(i, now);
            }
        }
    }

    pub(crate) fn next_drain_deadline(&self) -> Option<Instant> {
        if self.drains == 0 {
            return None;
        }
        self.slots
            .iter()
            .flatten()
            .filter_map(|s| s.draining.as_ref())
            .map(|d| d.retry_at.map_or(d.give_up_at, |r| r.min(d.give_up_at)))
            .min()
    }
}
