//! The host side of one sandbox: create its cgroup, clone its init into it,
//! hand over id maps, wait, forward signals, tear everything down. A
//! sandbox created now and started later, with its console pty: [`gate`];
//! a process joining a running sandbox: [`join`].

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::Signal;
use nix::sys::signalfd::SignalFd;
use nix::sys::wait::{waitid, Id, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::cgroup::{self, Cgroup};
use crate::error::{Error, SpecError};
use crate::ipc::listen::Listen;
use crate::ipc::sync::{self, Msg};
use crate::plan::Plan;
use crate::{exit, init, sys};

pub mod gate;
pub(crate) mod id_maps;
pub mod join;
mod pid_ns;
mod time_ns;

#[derive(Debug, Clone)]
pub struct Options<'a> {
    /// Names the cgroup (`<cgroup_root>/<name>`) and messages.
    pub name: &'a str,
    pub cgroup_root: &'a Path,
    /// Run without a cgroup (only when the spec sets no resources).
    pub no_cgroup: bool,
    /// stdin, stdout, stderr for the sandbox; `None` inherits ours.
    pub stdio: Option<[std::os::fd::RawFd; 3]>,
    /// Make the init our parent's child (a spawner process working for
    /// the supervisor, which then reaps it).
    pub sibling: bool,
    /// fds handed to the payload at the numbers of [`Plan::pass_fds`].
    pub pass_fds: &'a [std::os::fd::RawFd],
    /// Listening sockets handed to the payload at 3, 4, … (socket
    /// activation, see [`crate::listen`]).
    pub listen: Listen<'a>,
    /// Let the init outlive us and wait at a gate before the payload
    /// starts (OCI `create`); see [`Starting::created`].
    pub detach: Option<init::Detach>,
    /// The container's state for in-container hooks, sent to the init with
    /// the init's host pid filled in (OCI `create`).
    pub hook_state: Option<&'a serde_json::Value>,
    /// The stack networks it is on: the init makes their veth pairs (the
    /// plan must make a network namespace).
    pub net: crate::net::Networking<'a>,
}

/// What a spawner hands to its parent for a sandbox it started
/// ([`Starting::into_parts`], [`Starting::from_parts`]).
#[derive(Debug)]
pub struct Parts {
    pub name: String,
    pub pid: Pid,
    pub pidfd: OwnedFd,
    pub sync: OwnedFd,
    pub cgroup: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    Exited(i32),
    Signaled(i32),
}

impl ExitStatus {
    /// A process's end as `waitid` reports it; `None` for a stop or a
    /// continue.
    pub fn from_wait(ws: WaitStatus) -> Option<ExitStatus> {
        match ws {
            WaitStatus::Exited(_, c) => Some(ExitStatus::Exited(c)),
            WaitStatus::Signaled(_, s, _) => Some(ExitStatus::Signaled(s as i32)),
            _ => None,
        }
    }

    /// Shell convention: the code, or 128+N for signal N.
    pub fn code(self) -> i32 {
        match self {
            ExitStatus::Exited(c) => c,
            ExitStatus::Signaled(s) => exit::SIGNALED + s,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Outcome {
    pub status: ExitStatus,
    /// Kills by the kernel's OOM killer inside the sandbox's cgroup.
    pub oom_kills: u64,
    pub memory_max: Option<String>,
}

/// A running sandbox. Dropping it kills and removes everything it holds.
#[derive(Debug)]
pub struct Sandbox {
    name: String,
    pid: Pid,
    /// `None` once the caller reaps the init itself
    /// ([`Sandbox::release_pidfd`]).
    pidfd: Option<OwnedFd>,
    cgroup: Option<Cgroup>,
    status: Option<ExitStatus>,
}

/// Start the sandbox; returns once the payload has been exec'd.
pub fn start(plan: &Plan, opts: &Options) -> Result<Sandbox, Error> {
    spawn(plan, opts)?.complete()
}

/// A sandbox whose init is still setting up. The supervisor polls
/// [`Starting::sync_fd`] with its other fds and calls
/// [`Starting::complete`] once it is readable, so many sandboxes set up at
/// once while it goes on serving. Dropping it kills and removes the sandbox.
#[derive(Debug)]
pub struct Starting {
    sb: Sandbox,
    sync: OwnedFd,
}

impl Starting {
    /// Readable once the init has reported (payload exec'd, or a failure),
    /// or has died.
    pub fn sync_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.sync.as_fd()
    }

    pub fn pid(&self) -> Pid {
        self.sb.pid
    }

    /// The caller reaped the init while it set up (a supervisor collecting
    /// every child on SIGCHLD): [`Starting::complete`] reports its death
    /// with this status instead of waiting for it.
    pub fn reaped(&mut self, status: ExitStatus) {
        self.sb.status = Some(status);
    }

    /// Give the sandbox away (to the process it is a child of) without
    /// killing it: its fds duplicated, its cgroup left in place.
    pub fn into_parts(mut self) -> Result<Parts, Error> {
        let dup = |fd: &OwnedFd| {
            fd.try_clone()
                .map_err(|e| Error::sys("dup", Errno::from_raw(e.raw_os_error().unwrap_or(0))))
        };
        let pidfd = match &self.sb.pidfd {
            Some(fd) => dup(fd)?,
            None => return Err(Error::sys("dup", Errno::EBADF)),
        };
        let sync = dup(&self.sync)?;
        // Disarm Drop: nothing to kill or remove here any more.
        self.sb.status = Some(ExitStatus::Exited(0));
        let cgroup = self.sb.cgroup.take().map(|c| c.path().to_owned());
        Ok(Parts {
            name: self.sb.name.clone(),
            pid: self.sb.pid,
            pidfd,
            sync,
            cgroup,
        })
    }

    /// Take over a sandbox a spawner started; it must be our child. (A
    /// cgroup path that is no directory has nothing to read or remove.)
    pub fn from_parts(p: Parts) -> Starting {
        let cgroup = p.cgroup.and_then(|path| Cgroup::open(&path).ok());
        Starting {
            sb: Sandbox {
                name: p.name,
                pid: p.pid,
                pidfd: Some(p.pidfd),
                cgroup,
                status: None,
            },
            sync: p.sync,
        }
    }

    /// For a detached sandbox ([`Options::detach`]): wait until the init
    /// is set up and waiting at its gate, then let it go on alone. Returns
    /// its pid and cgroup, which outlive us.
    pub fn created(self) -> Result<(Pid, Option<PathBuf>), Error> {
        let Starting { mut sb, sync } = self;
        match sync::read(&sync) {
            Ok(Some(Msg::Created)) => {
                // Disarm Drop: the sandbox is the caller's caller's now.
                sb.status = Some(ExitStatus::Exited(0));
                let cgroup = sb.cgroup.take().map(|c| c.path().to_owned());
                Ok((sb.pid, cgroup))
            }
            other => Err(Starting { sb, sync }.failure(other)),
        }
    }

    /// The init's next report, one of two with [`Networking::hold`]
    /// (`crate::net::Networking`); blocks until there is one.
    pub fn progress(self) -> Result<Progress, Error> {
        match sync::read(&self.sync) {
            Ok(Some(Msg::NetReady)) => Ok(Progress::NetworkHeld(self)),
            Ok(Some(Msg::Started)) => Ok(Progress::Started(self.sb)),
            other => Err(self.failure(other)),
        }
    }

    /// Let an init held for its networks go on.
    pub fn go_on(&self) -> Result<(), Errno> {
        sync::write(&self.sync, &Msg::Go)
    }

    /// The init's report; blocks until there is one.
    pub fn complete(self) -> Result<Sandbox, Error> {
        let Starting { sb, sync } = self;
        match sync::read(&sync) {
            // The sync socket closes here: the init has nothing more to
            // say, and a supervisor of 10,000 sandboxes keeps no fd for it.
            Ok(Some(Msg::Started)) => Ok(sb),
            other => Err(Starting { sb, sync }.failure(other)),
        }
    }

    /// The error for a report other than the expected one; reaps the init.
    fn failure(mut self, report: Result<Option<Msg>, Errno>) -> Error {
        let sb = &mut self.sb;
        match report {
            Ok(Some(Msg::SetupFailed { step, message })) => {
                sb.reap();
                Error::Setup { step, message }
            }
            Ok(Some(Msg::ExecFailed { errno, command })) => {
                sb.reap();
                let errno = Errno::from_raw(errno);
                match errno {
                    Errno::ENOENT | Errno::ENOTDIR => Error::NotFound { command },
                    e => Error::NotExecutable {
                        command,
                        message: e.desc().to_string(),
                    },
                }
            }
            _ => {
                let st = sb.reap();
                Error::Setup {
                    step: "init".into(),
                    message: format!(
                        "died before the payload started (exit status {})",
                        st.code()
                    ),
                }
            }
        }
    }
}

/// Create the cgroup, clone the init into it and let it set up; returns
/// without waiting for the payload.
pub fn spawn(plan: &Plan, opts: &Options) -> Result<Starting, Error> {
    check_options(plan, opts)?;
    let cg = if opts.no_cgroup {
        None
    } else {
        let cg = Cgroup::create(opts.cgroup_root, opts.name, &plan.cgroup_files)?;
        // Unprivileged, we cannot load the filter (BPF needs CAP_SYS_ADMIN
        // in the initial namespace); the sandbox's own user namespace
        // stands in: mknod of a real device is refused there, and what is
        // bound from the host's /dev keeps the host's permissions.
        let filter = match crate::plan::rootless::unprivileged() {
            false => cg.attach_device_filter(&plan.device_filter),
            true => Ok(()),
        };
        if let Err(e) = filter {
            let _ = cg.destroy();
            return Err(e.into());
        }
        Some(cg)
    };
    let (ours, theirs) = match sync::pair() {
        Ok(p) => p,
        Err(e) => {
            if let Some(cg) = cg {
                let _ = cg.destroy();
            }
            return Err(Error::sys("socketpair", e));
        }
    };
    let (pid, pidfd, placed) = match clone_init(plan, cg.as_ref(), ours.as_fd(), theirs, opts) {
        Ok(x) => x,
        Err(e) => {
            if let Some(cg) = cg {
                let _ = cg.destroy();
            }
            return Err(e);
        }
    };
    let mut sb = Sandbox {
        name: opts.name.to_string(),
        pid,
        pidfd: Some(pidfd),
        cgroup: cg,
        status: None,
    };
    // From here on, dropping `sb` kills and cleans up.
    if let Some(cg) = sb.cgroup.as_mut() {
        if !placed {
            cg.add_pid(pid.as_raw())?;
        }
        cg.release_dir();
    }
    let_go(plan, opts, pid, &ours)?;
    Ok(Starting { sb, sync: ours })
}

/// What the options must agree on with the plan before anything exists.
fn check_options(plan: &Plan, opts: &Options) -> Result<(), Error> {
    cgroup::check_name(opts.name)?;
    if opts.pass_fds.len() != plan.pass_fds.len() {
        return Err(Error::sys(
            format!(
                "{} fds for the payload, {} given",
                plan.pass_fds.len(),
                opts.pass_fds.len()
            ),
            Errno::EINVAL,
        ));
    }
    if let Some(fd) = opts.listen.targets().find(|t| plan.pass_fds.contains(t)) {
        return Err(Error::sys(
            format!("fd {fd} is both a listening socket and a passed fd"),
            Errno::EINVAL,
        ));
    }
    if opts.no_cgroup && plan.has_resources() {
        return Err(SpecError::new(
            "--no-cgroup",
            "conflicts with linux.resources: limits and device rules need a cgroup",
        )
        .into());
    }
    Ok(())
}

/// The child waits: its id maps written (a new user namespace), then `G`,
/// then the container's state for in-container hooks.
fn let_go(plan: &Plan, opts: &Options, pid: Pid, ours: &OwnedFd) -> Result<(), Error> {
    id_maps::write(pid, plan.uid_map.as_deref(), plan.gid_map.as_deref())?;
    sync::write(ours, &Msg::Go).map_err(|e| Error::sys("sync", e))?;
    if !plan.container_hooks.is_empty() {
        let mut state = opts
            .hook_state
            .cloned()
            .unwrap_or_else(|| serde_json::json!({}));
        state["pid"] = serde_json::Value::from(pid.as_raw());
        let json = state.to_string();
        sync::write(ours, &Msg::State { json }).map_err(|e| Error::sys("sync", e))?;
    }
    Ok(())
}

/// clone3 into the cgroup; where the kernel refuses CLONE_INTO_CGROUP, clone
/// plainly and let the caller move the child (it waits for `Go` first).
fn clone_init(
    plan: &Plan,
    cg: Option<&Cgroup>,
    ours: std::os::fd::BorrowedFd<'_>,
    theirs: OwnedFd,
    opts: &Options,
) -> Result<(Pid, OwnedFd, bool), Error> {
    let stdio = opts.stdio;
    let deferred = plan.deferred_ns_flags();
    // Left (by drop) once the clone is done, in the parent only: the child
    // never returns from init::run.
    let _joined_pid_ns = pid_ns::enter(plan)?;
    let _new_time_ns = time_ns::make(plan)?;
    #[allow(unsafe_code)]
    let attempt = |into: bool| {
        // SAFETY: isola is single-threaded (the supervisor, its spawner and
        // `isola run` start no threads), and the child below leaves only
        // through init::run, which never returns (exec or exit_now).
        unsafe {
            sys::clone3(
                plan.clone_flags & !deferred,
                if into {
                    cg.and_then(Cgroup::dir_fd)
                } else {
                    None
                },
                opts.sibling,
            )
        }
    };
    let (res, placed) = match attempt(true) {
        Err(Errno::EINVAL | Errno::ENOSYS | Errno::E2BIG | Errno::EOPNOTSUPP) if cg.is_some() => {
            (attempt(false), false)
        }
        r => (r, cg.is_some()),
    };
    match res.map_err(|e| Error::sys("clone3", e))? {
        sys::Forked::Child => {
            sys::use_fresh_arena();
            let _ = nix::unistd::close(ours.as_raw_fd());
            if let Some(fds) = stdio {
                for (target, fd) in fds.into_iter().enumerate() {
                    let target = i32::try_from(target).unwrap_or(i32::MAX);
                    if sys::dup2_raw(fd, target).is_err() {
                        sys::exit_now(exit::code(exit::SETUP));
                    }
                }
            }
            init::run(
                plan,
                theirs,
                deferred,
                opts.pass_fds,
                opts.listen,
                opts.detach,
                opts.net,
            )
        }
        sys::Forked::Parent { pid, pidfd } => Ok((pid, pidfd, placed)),
    }
}

/// How far a start got (see [`Starting::progress`]).
pub enum Progress {
    /// Its network namespace exists and the init waits: put it on its
    /// networks, then [`Starting::go_on`].
    NetworkHeld(Starting),
    Started(Sandbox),
}

impl Sandbox {
    /// A sandbox this process already runs, taken over after an exec of
    /// its own (a supervisor's upgrade): its init `pid` is still our
    /// unreaped child, so it is reaped on SIGCHLD by the caller and
    /// signalled by pid ([`Sandbox::release_pidfd`]'s terms).
    pub fn adopt(name: &str, pid: Pid, cgroup: Option<Cgroup>) -> Sandbox {
        Sandbox {
            name: name.to_string(),
            pid,
            pidfd: None,
            cgroup,
            status: None,
        }
    }

    /// The init's status, once it has been reaped (by us, or by a caller
    /// that told [`Starting::reaped`]).
    pub fn exit_status(&self) -> Option<ExitStatus> {
        self.status
    }

    /// The init's pid in the host's PID namespace.
    pub fn pid(&self) -> Pid {
        self.pid
    }

    /// The init's pidfd, unless the caller took over reaping.
    pub fn pidfd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        self.pidfd.as_ref().map(AsFd::as_fd)
    }

    /// The caller is the init's parent and reaps it itself (a supervisor
    /// waiting for SIGCHLD), then hands the status to
    /// [`Sandbox::into_exited_with`]: the pidfd is closed, and signals go
    /// by pid — safe, as an unreaped child's pid cannot be reused. A
    /// supervisor of 10,000 sandboxes saves 10,000 fds.
    pub fn release_pidfd(&mut self) {
        self.pidfd = None;
    }

    pub fn cgroup(&self) -> Option<&Cgroup> {
        self.cgroup.as_ref()
    }

    /// Send a signal to the init, which forwards it to the payload.
    pub fn signal(&self, sig: Signal) -> Result<(), Errno> {
        match &self.pidfd {
            Some(fd) => sys::pidfd_send_signal(fd.as_fd(), sig as i32),
            // Not reaped yet (the status is unknown): the pid is still ours.
            None if self.status.is_none() => nix::sys::signal::kill(self.pid, sig),
            None => Err(Errno::ESRCH),
        }
    }

    /// Wait for the sandbox to end, forwarding whatever arrives on `signals`.
    pub fn wait(&mut self, signals: Option<&mut SignalFd>) -> Result<ExitStatus, Error> {
        if let Some(st) = self.status {
            return Ok(st);
        }
        let mut signals = signals;
        loop {
            let Some(pidfd) = self.pidfd.as_ref() else {
                return Ok(self.reap());
            };
            let revents = {
                let mut fds = vec![PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)];
                if let Some(sfd) = signals.as_deref() {
                    fds.push(PollFd::new(sfd.as_fd(), PollFlags::POLLIN));
                }
                match poll(&mut fds, PollTimeout::NONE) {
                    Ok(_) => {}
                    Err(Errno::EINTR) => continue,
                    Err(e) => return Err(Error::sys("poll", e)),
                }
                (
                    fds[0].any().unwrap_or(false),
                    fds.get(1).and_then(|f| f.any()).unwrap_or(false),
                )
            };
            if revents.1 {
                if let Some(sfd) = signals.as_deref_mut() {
                    while let Ok(Some(info)) = sfd.read_signal() {
                        let sig = i32::try_from(info.ssi_signo).unwrap_or(0);
                        let _ = sys::pidfd_send_signal(pidfd.as_fd(), sig);
                    }
                }
            }
            if revents.0 {
                return Ok(self.reap());
            }
        }
    }

    /// Block until the init has exited and collect its status (by pidfd,
    /// or by pid once the pidfd was released).
    fn reap(&mut self) -> ExitStatus {
        if let Some(st) = self.status {
            return st;
        }
        let st = loop {
            let id = match &self.pidfd {
                Some(fd) => Id::PIDFd(fd.as_fd()),
                None => Id::Pid(self.pid),
            };
            match waitid(id, WaitPidFlag::WEXITED | WaitPidFlag::__WALL) {
                Ok(ws) => match ExitStatus::from_wait(ws) {
                    Some(st) => break st,
                    None => continue,
                },
                Err(Errno::EINTR) => continue,
                // Already reaped elsewhere: nothing to wait for.
                Err(_) => break ExitStatus::Exited(exit::code(exit::SETUP)),
            }
        };
        self.status = Some(st);
        st
    }

    /// [`Sandbox::into_exited`] for an init the caller reaped itself
    /// ([`Sandbox::release_pidfd`]), with the status it collected.
    pub fn into_exited_with(mut self, status: ExitStatus) -> (Outcome, Option<Cgroup>) {
        self.status = Some(status);
        self.into_exited()
    }

    /// The init has exited (its pidfd is readable): its status and OOM
    /// count, and its cgroup, still to be emptied and removed — the caller
    /// waits for that by event ([`Cgroup::events_path`]), not here.
    pub fn into_exited(mut self) -> (Outcome, Option<Cgroup>) {
        let status = self.reap();
        let (oom_kills, memory_max) = match &self.cgroup {
            Some(cg) => (cg.oom_kills(), cg.memory_max()),
            None => (0, None),
        };
        let outcome = Outcome {
            status,
            oom_kills,
            memory_max,
        };
        (outcome, self.cgroup.take())
    }

    /// Tear down (kill what is left, remove the cgroup) and report.
    pub fn finish(mut self) -> Result<Outcome, Error> {
        if self.status.is_none() {
            let _ = self.signal(Signal::SIGKILL);
        }
        let status = self.reap();
        let (oom_kills, memory_max) = match &self.cgroup {
            Some(cg) => (cg.oom_kills(), cg.memory_max()),
            None => (0, None),
        };
        if let Some(cg) = self.cgroup.take() {
            cg.destroy()?;
        }
        Ok(Outcome {
            status,
            oom_kills,
            memory_max,
        })
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if self.status.is_none() {
            let _ = self.signal(Signal::SIGKILL);
            self.reap();
        }
        if let Some(cg) = self.cgroup.take() {
            let _ = cg.destroy();
        }
    }
}
