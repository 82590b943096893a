//! A process joining a running sandbox, the way `docker exec` does: the
//! sandbox's cgroup (so its limits count it), its namespaces (user, mount
//! and so its root, PID, network, UTS, IPC, cgroup), then the payload's
//! limits and credentials, capabilities, no_new_privs and seccomp filter —
//! [`init::become_payload`], the very code the init runs before the payload.
//! `isola exec` and exec probes both come through here.
//!
//! ```text
//! caller ── clone3 (into the cgroup) ──► waiter: setns(init's pidfd, …)
//!                                          └─ fork ─► command (PID n of the
//!                                             sandbox): credentials, exec
//! ```
//! The waiter stays in the host's PID namespace (setns of a PID namespace
//! applies to children only), waits for the command and exits with its
//! status (128+N for signal N), so the caller waits on an ordinary child.
//! A SIGTERM to the waiter is passed on: to the command, or with
//! [`Options::kill_group`] as SIGKILL to the command's whole process group.

use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::PathBuf;

use nix::errno::Errno;
use nix::sched::CloneFlags;
use nix::sys::signal::{kill, SigSet, SigmaskHow, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{ForkResult, Pid};

use crate::error::Error;
use crate::plan::Plan;
use crate::{exit, init, sys};

/// Every namespace flag setns(2) takes with a pidfd.
const NS_FLAGS: u64 = (libc::CLONE_NEWUSER
    | libc::CLONE_NEWNS
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWCGROUP) as u64;

/// The sandbox to join.
pub struct Target<'a> {
    /// The sandbox's init, by pidfd (no pid-reuse race).
    pub init: BorrowedFd<'a>,
    /// The sandbox's cgroup, when it has one.
    pub cgroup: Option<&'a std::path::Path>,
    /// The service's plan: which namespaces it has, its credentials,
    /// capabilities, seccomp, environment and PATH.
    pub plan: &'a Plan,
}

/// The command to run there.
pub struct Options {
    pub args: Vec<CString>,
    /// Added to the payload's environment (replacing equal names).
    pub env: Vec<CString>,
    /// `uid`, `gid`; the payload's when `None`.
    pub user: Option<(u32, u32)>,
    /// The payload's cwd when `None`.
    pub cwd: Option<PathBuf>,
    /// stdin, stdout, stderr; ours when `None`.
    pub stdio: Option<[RawFd; 3]>,
    /// The command leads its own process group, and a SIGTERM to the waiter
    /// SIGKILLs that group (a probe past its timeout, and what it started).
    /// Otherwise signals to the waiter are forwarded to the command.
    pub kill_group: bool,
    /// The waiter outlives its caller (OCI `exec --detach`: a subreaper
    /// adopts and waits on it); otherwise the caller's death ends it.
    pub detached: bool,
    /// A connected console socket: the command gets a pty of the
    /// sandbox's `/dev/pts` as its terminal, the master goes there.
    pub console: Option<RawFd>,
}

/// The waiter process, our child.
#[derive(Debug)]
pub struct Joined {
    pid: Pid,
    pidfd: OwnedFd,
}

impl Joined {
    pub fn pid(&self) -> Pid {
        self.pid
    }

    /// Readable once the waiter (and so the command) has exited.
    pub fn pidfd(&self) -> BorrowedFd<'_> {
        self.pidfd.as_fd()
    }

    /// Ask the waiter to end the command (see [`Options::kill_group`]).
    pub fn terminate(&self) {
        let _ = sys::pidfd_send_signal(self.pidfd(), libc::SIGTERM);
    }

    /// Wait for the command's status: its exit code, 128+N for signal N.
    /// (A supervisor reaps its waiters with its other children instead.)
    pub fn wait(&self) -> i32 {
        loop {
            match waitpid(self.pid, None) {
                Ok(ws) => {
                    if let Some(st) = crate::sandbox::ExitStatus::from_wait(ws) {
                        return st.code();
                    }
                }
                Err(Errno::EINTR) => {}
                Err(_) => return exit::code(exit::SETUP),
            }
        }
    }
}

/// The `pidfd` of process `pid` (for a caller that knows the sandbox by
/// its init's pid, like `isola exec`).
pub fn pidfd_of(pid: Pid) -> Result<OwnedFd, Error> {
    sys::pidfd_open(pid).map_err(|e| Error::sys(format!("pidfd_open {pid}"), e))
}

/// Send signal `sig` to the process behind `pidfd` (no pid-reuse race).
pub fn signal(pidfd: &OwnedFd, sig: i32) -> Result<(), Errno> {
    sys::pidfd_send_signal(pidfd.as_fd(), sig)
}

/// Start `opts` inside `target`. The caller must be single-threaded (isola's
/// processes are; checked).
pub fn spawn(target: &Target<'_>, opts: &Options) -> Result<Joined, Error> {
    if opts.args.is_empty() {
        return Err(Error::sys("exec", Errno::EINVAL));
    }
    sys::check_single_threaded()
        .map_err(|e| Error::sys("exec needs a single-threaded caller", e))?;
    let plan = target.plan;
    let joined_ns = plan.join.iter().fold(0u64, |acc, (f, _)| {
        acc | u64::try_from(f.bits()).unwrap_or(0)
    });
    let mut flags = (plan.clone_flags | joined_ns) & NS_FLAGS;
    // Only when it has one: joining even our own time namespace needs
    // CAP_SYS_ADMIN, which a rootless caller lacks.
    if plan.time_ns.is_some() || plan.joins(libc::CLONE_NEWTIME) {
        flags |= libc::CLONE_NEWTIME as u64;
    }
    let mut env = plan.env.clone();
    for e in &opts.env {
        crate::plan::set_env(&mut env, e.clone());
    }
    let (uid, gid) = opts.user.unwrap_or((plan.uid, plan.gid));
    let cwd = opts.cwd.clone().unwrap_or_else(|| plan.cwd.clone());
    let cgroup = target.cgroup.map(crate::cgroup::open_dir).transpose()?;
    let entry = entry_point(target)?;
    flags = (flags & !(libc::CLONE_NEWUSER as u64)) | entry.user_flag;
    #[allow(unsafe_code)]
    // SAFETY: single-threaded (checked above); the child leaves only through
    // `waiter`, which ends in exit_now.
    let forked = unsafe { sys::clone3(0, cgroup.as_ref().map(|c| c.as_fd()), false) };
    match forked.map_err(|e| Error::sys("exec: clone3", e))? {
        sys::Forked::Child => {
            let via = entry.payload.as_ref().map_or(target.init, |p| p.as_fd());
            let code = waiter(target, via, opts, flags, &env, uid, gid, &cwd);
            sys::exit_now(code)
        }
        sys::Forked::Parent { pid, pidfd } => Ok(Joined { pid, pidfd }),
    }
}

/// How to join: through which process, and whether its user namespace
/// is to be entered.
struct Entry {
    /// The payload, when not the init.
    payload: Option<OwnedFd>,
    /// CLONE_NEWUSER when the sandbox's user namespace is not ours —
    /// whatever the plan says: root joining a user's sandbox must take on
    /// its user namespace, or it would act as the host's root in there.
    user_flag: u64,
}

/// An unprivileged caller (or root of a user namespace of its own) joins
/// through the payload. The init is not dumpable (nothing in the sandbox
/// may open its /proc files), and its memory was made in the host's user
/// namespace, so only CAP_SYS_PTRACE there could enter through it; the
/// payload was exec'd inside, where the caller owns the namespace.
fn entry_point(target: &Target<'_>) -> Result<Entry, Error> {
    let fd = target.init.as_raw_fd();
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}"))
        .map_err(|e| Error::sys("exec: the init's pidfd", io_errno(&e)))?;
    let init = info
        .lines()
        .find_map(|l| l.strip_prefix("Pid:"))
        .and_then(|p| p.trim().parse::<i32>().ok())
        .filter(|p| *p > 0)
        .ok_or_else(|| Error::sys("exec: the sandbox has ended", Errno::ESRCH))?;
    let (via, payload) = match crate::plan::rootless::unprivileged() {
        false => (init, None),
        true => {
            let p = payload_of(init)?;
            let fd = pidfd_of(Pid::from_raw(p))?;
            // Still the init's child now that we hold it: not a reused pid.
            if payload_of(init)? != p {
                return Err(Error::sys(
                    "exec: the sandbox's payload has ended",
                    Errno::ESRCH,
                ));
            }
            (p, Some(fd))
        }
    };
    let user_ns = |p: &str| std::fs::metadata(p).map(|m| std::os::unix::fs::MetadataExt::ino(&m));
    let theirs = user_ns(&format!("/proc/{via}/ns/user"))
        .map_err(|e| Error::sys("exec: the sandbox's user namespace", io_errno(&e)))?;
    // Ours does not change: read once (exec probes come here every period).
    static OURS: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();
    let ours = OURS
        .get_or_init(|| user_ns("/proc/self/ns/user").ok())
        .ok_or_else(|| Error::sys("exec: our user namespace", Errno::EIO))?;
    let user_flag = match theirs == ours {
        true => 0,
        false => libc::CLONE_NEWUSER as u64,
    };
    Ok(Entry { payload, user_flag })
}

/// The init's first child: the payload.
fn payload_of(init: i32) -> Result<i32, Error> {
    let children = std::fs::read_to_string(format!("/proc/{init}/task/{init}/children"))
        .map_err(|e| Error::sys("exec: the sandbox's payload", io_errno(&e)))?;
    children
        .split_whitespace()
        .next()
        .and_then(|p| p.parse::<i32>().ok())
        .ok_or_else(|| Error::sys("exec: the sandbox's payload has ended", Errno::ESRCH))
}

fn io_errno(e: &std::io::Error) -> Errno {
    Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))
}

/// The signals the waiter handles itself.
fn waiter_signals() -> SigSet {
    let mut set = SigSet::empty();
    for s in [
        Signal::SIGCHLD,
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
        Signal::SIGQUIT,
    ] {
        set.add(s);
    }
    set
}

/// In the waiter: join, fork the command, wait for it; returns our exit code.
#[allow(clippy::too_many_arguments)]
fn waiter(
    target: &Target<'_>,
    via: BorrowedFd<'_>,
    opts: &Options,
    flags: u64,
    env: &[CString],
    uid: u32,
    gid: u32,
    cwd: &std::path::Path,
) -> i32 {
    let setup_failed = |what: &str, e: &dyn std::fmt::Display| {
        eprintln!("isola exec: {what}: {e}");
        exit::code(exit::SETUP)
    };
    let set = waiter_signals();
    if let Err((what, e)) = enter(via, opts, flags, &set) {
        return setup_failed(what, &e);
    }
    // Nothing of the caller's (a supervisor's thousands of fds) goes in.
    #[allow(unsafe_code)]
    // SAFETY: a fresh child that leaves by exit_now; from here on it uses
    // only stdio and the plan in memory, no Rust owner of a closed fd.
    let closed = unsafe { sys::close_fds_except(libc::STDERR_FILENO) };
    if let Err(e) = closed {
        return setup_failed("close fds", &e);
    }
    let plan = target.plan;
    #[allow(unsafe_code)]
    // SAFETY: we are single-threaded (a fresh child of a single-threaded
    // caller); the command's side leaves by exec or exit_now.
    let forked = unsafe { sys::fork() };
    match forked {
        Err(e) => setup_failed("fork", &e),
        Ok(ForkResult::Child) => sys::exit_now(command(plan, opts, env, uid, gid, cwd)),
        Ok(ForkResult::Parent { child }) => relay(child, &set, opts),
    }
}

/// The waiter's own setup: stdio, signals, the namespaces of `via`, the
/// console; what failed, and why.
fn enter(
    via: BorrowedFd<'_>,
    opts: &Options,
    flags: u64,
    set: &SigSet,
) -> Result<(), (&'static str, String)> {
    if let Some(fds) = opts.stdio {
        for (slot, fd) in fds.into_iter().enumerate() {
            let slot = i32::try_from(slot).unwrap_or(i32::MAX);
            sys::dup2_raw(fd, slot).map_err(|e| ("stdio", e.to_string()))?;
        }
    }
    nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(set), None)
        .map_err(|e| ("sigprocmask", e.to_string()))?;
    // If our caller dies, the command goes with us.
    if !opts.detached {
        nix::sys::prctl::set_pdeathsig(Signal::SIGTERM).map_err(|e| ("prctl", e.to_string()))?;
    }
    if flags & libc::CLONE_NEWUSER as u64 != 0 {
        // Our supplementary groups must not come along into a user
        // namespace where setgroups may be denied (a user's): root drops
        // them here, while it still may; a user's are its own.
        let _ = nix::unistd::setgroups(&[]);
    }
    if flags != 0 {
        let bits = i32::try_from(flags).unwrap_or(0);
        nix::sched::setns(via, CloneFlags::from_bits_retain(bits))
            .map_err(|e| ("join the sandbox's namespaces", e.to_string()))?;
    }
    if let Some(console) = opts.console {
        // In the sandbox's mount namespace now: /dev/ptmx is its devpts.
        #[allow(unsafe_code)]
        // SAFETY: our caller's owner of this fd lives on in its memory only;
        // this child leaves by exit_now.
        let console = unsafe { sys::adopt_inherited_fd(console) };
        let slave = super::gate::console(console).map_err(|e| ("console", e))?;
        for slot in 0..=2 {
            sys::dup2_raw(slave.as_raw_fd(), slot).map_err(|e| ("console", e.to_string()))?;
        }
    }
    Ok(())
}

/// Pass signals on to the command until it ends; its status.
fn relay(command: Pid, set: &SigSet, opts: &Options) -> i32 {
    loop {
        let Ok(sig) = set.wait() else { continue };
        match sig {
            Signal::SIGCHLD => match waitpid(command, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(_, code)) => return code,
                Ok(WaitStatus::Signaled(_, s, _)) => return 128 + s as i32,
                _ => {}
            },
            Signal::SIGTERM if opts.kill_group => {
                // The command itself too: it may not have called setsid yet.
                let _ = kill(Pid::from_raw(-command.as_raw()), Signal::SIGKILL);
                let _ = kill(command, Signal::SIGKILL);
            }
            other => {
                let _ = kill(command, other);
            }
        }
    }
}

/// In the command: the payload's credentials, then exec. Returns the exit
/// code when that failed.
fn command(
    plan: &Plan,
    opts: &Options,
    env: &[CString],
    uid: u32,
    gid: u32,
    cwd: &std::path::Path,
) -> i32 {
    if opts.kill_group {
        let _ = nix::unistd::setsid();
    }
    if opts.console.is_some() {
        // Its own session, the pty on stdin its controlling terminal.
        let _ = nix::unistd::setsid();
        if let Err(e) = sys::set_controlling_tty() {
            eprintln!("isola exec: console: {e}");
            return exit::code(exit::SETUP);
        }
    }
    if let Err((step, msg)) = init::become_payload(plan, uid, gid, cwd) {
        eprintln!("isola exec: {step}: {msg}");
        return exit::code(exit::SETUP);
    }
    sys::reset_signal_dispositions();
    let _ = nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
    let path = match init::resolve(&opts.args[0], &plan.search_path) {
        Ok(p) => p,
        Err(e) => {
            let cmd = opts.args[0].to_string_lossy();
            match e {
                Errno::ENOENT => eprintln!("isola exec: {cmd}: command not found"),
                e => eprintln!("isola exec: {cmd}: {}", e.desc()),
            }
            return init::exec_exit_code(e);
        }
    };
    let e = match nix::unistd::execve(&path, &opts.args, env) {
        Err(e) => e,
        Ok(never) => match never {},
    };
    eprintln!("isola exec: {}: {}", path.to_string_lossy(), e.desc());
    init::exec_exit_code(e)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn namespace_flags_fit_setns() {
        assert!(i32::try_from(NS_FLAGS).is_ok());
        assert_eq!(
            NS_FLAGS & libc::CLONE_NEWPID as u64,
            libc::CLONE_NEWPID as u64
        );
    }

    #[test]
    fn raw_fd_of_a_pidfd() {
        let me = pidfd_of(nix::unistd::getpid()).unwrap();
        assert!(me.as_raw_fd() > 2);
    }
}
