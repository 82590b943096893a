//! Helper processes: a fork that runs a closure (the supervisor's
//! spawner, the rootless networks' helper) and a `Command` set up to run
//! as a helper of ours (pasta).

use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::unistd::Pid;

use super::{close_fds_except, exit_now, fork};

/// Fork a helper process (the calling process must be single-threaded,
/// as isola's are): the child keeps only stdio and `keep`, runs `body` and
/// `_exit`s with its code, never returning into the caller's frames — so no
/// Rust owner of the fds it closed is ever dropped there. Returns the
/// child's pid; our copy of `keep` is closed.
///
/// # Safety
/// The caller must be single-threaded, and `body` must not use fds other
/// than stdio and `keep` (their owners' numbers are closed in the child).
pub(crate) unsafe fn fork_helper(
    keep: OwnedFd,
    body: impl FnOnce(OwnedFd) -> i32,
) -> Result<Pid, Errno> {
    // SAFETY: single-threaded caller (our contract); the child below leaves
    // only through exit_now.
    match unsafe { fork() }? {
        nix::unistd::ForkResult::Child => {
            // SAFETY: a fresh child that never returns into the caller's
            // frames, and `body` uses no fd but `keep` (our contract).
            if unsafe { close_fds_except(keep.as_raw_fd()) }.is_err() {
                exit_now(crate::exit::code(crate::exit::SETUP));
            }
            exit_now(body(keep))
        }
        nix::unistd::ForkResult::Parent { child } => Ok(child),
    }
}

/// EBUSY when this process runs more than one thread (a fork would copy
/// another thread's locks, the allocator's included, held forever).
pub(crate) fn check_single_threaded() -> Result<(), Errno> {
    let threads = std::fs::read_dir("/proc/self/task")
        .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))?
        .count();
    if threads == 1 {
        Ok(())
    } else {
        Err(Errno::EBUSY)
    }
}

/// [`fork_helper`] for code outside the runtime, checked: refused with
/// EBUSY in a process that runs more than one thread. `body` gets `keep`
/// and stdio only; any other fd it reached for is closed in the child, so
/// the worst a mistake there does is an EBADF.
pub fn spawn_helper(keep: OwnedFd, body: impl FnOnce(OwnedFd) -> i32) -> Result<Pid, Errno> {
    check_single_threaded()?;
    // SAFETY: single-threaded, checked just now (nothing here starts a
    // thread in between); `body`'s fd use is as documented above.
    unsafe { fork_helper(keep, body) }
}

/// Run `cmd` as a helper of ours (pasta): with no signal blocked, and
/// SIGTERM when we die. isola blocks the signals it reads from a
/// signalfd, and a blocked mask survives fork and exec: the helper would
/// never see SIGTERM, nor reap its own children on SIGCHLD.
pub fn as_helper(cmd: &mut std::process::Command) -> &mut std::process::Command {
    use std::os::unix::process::CommandExt;
    let parent = nix::unistd::getpid();
    // SAFETY: the closure runs in the child between fork and exec, and
    // only calls sigprocmask (a set on its stack), prctl and getppid:
    // async-signal-safe, no allocation, no lock.
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::signal::sigprocmask(
                nix::sys::signal::SigmaskHow::SIG_SETMASK,
                Some(&nix::sys::signal::SigSet::empty()),
                None,
            )?;
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM)?;
            // We died before the death signal was armed.
            if nix::unistd::getppid() != parent {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        })
    }
}

/// [`spawn_helper`], the child made our parent's child (CLONE_PARENT): a
/// supervisor under a keeper forks its spawner so, and the spawner's
/// clones (CLONE_PARENT again) are then the keeper's children, which
/// outlive the supervisor.
pub fn spawn_sibling_helper(
    keep: OwnedFd,
    body: impl FnOnce(OwnedFd) -> i32,
) -> Result<Pid, Errno> {
    check_single_threaded()?;
    // SAFETY: single-threaded, checked just now; the child leaves only
    // through exit_now, never returning into the caller's frames.
    match unsafe { super::clone3(0, None, true) }? {
        super::Forked::Child => {
            // SAFETY: a fresh child that never returns into the caller's
            // frames, and `body` uses no fd but `keep` (our contract).
            if unsafe { close_fds_except(keep.as_raw_fd()) }.is_err() {
                exit_now(crate::exit::code(crate::exit::SETUP));
            }
            exit_now(body(keep))
        }
        super::Forked::Parent { pid, .. } => Ok(pid),
    }
}

/// Fork `isola up` into its keeper and its supervisor. This process,
/// whose pid a shell or systemd knows, becomes the keeper: it closes
/// every fd but stdio and `keep`, runs `keeper` with `keep` and the
/// supervisor's pid, and exits with what it returns — never returning
/// into the caller's frames. The child returns, to supervise; its copy of
/// `keep` is closed. Refused with EBUSY in a process with more than one
/// thread. Call it before anything is buffered for output.
pub fn fork_keeper(keep: OwnedFd, keeper: impl FnOnce(OwnedFd, Pid) -> i32) -> Result<(), Errno> {
    check_single_threaded()?;
    // SAFETY: single-threaded (checked just now), so no lock of another
    // thread is copied into the child; the parent below never returns
    // into the caller's frames (exit_now), so no owner of the fds it
    // closes is dropped.
    match unsafe { fork() }? {
        nix::unistd::ForkResult::Child => {
            drop(keep);
            Ok(())
        }
        nix::unistd::ForkResult::Parent { child } => {
            // SAFETY: as above: this process image ends in exit_now.
            if unsafe { close_fds_except(keep.as_raw_fd()) }.is_err() {
                exit_now(crate::exit::code(crate::exit::SETUP));
            }
            exit_now(keeper(keep, child))
        }
    }
}

/// Start `exe` (an fd of a binary, O_PATH will do) with `argv` and
/// `env`, with each `(from, to)` fd of ours at number `to` and not
/// close-on-exec (a keeper hands a new supervisor the fds of the one that
/// died, at the numbers its snapshot names them by). Every `from`, and
/// `exe`, is first copied above `above` (which must exceed every `from`
/// and `to`), so no placement overwrites one still to be placed; the
/// copies and the `from`s are close-on-exec, gone after the exec. The
/// calling process must be single-threaded (checked). The child dies
/// with us (PDEATHSIG). Returns the pid.
pub fn spawn_with_fds_at(
    exe: std::os::fd::BorrowedFd<'_>,
    argv: &[std::ffi::CString],
    env: &[std::ffi::CString],
    moves: &[(RawFd, RawFd)],
    above: RawFd,
) -> Result<Pid, Errno> {
    check_single_threaded()?;
    // Made before the fork (fexecve still allocates its pointer arrays in
    // the child: safe, this process being single-threaded).
    let mut copies: Vec<RawFd> = Vec::with_capacity(moves.len());
    let parent = nix::unistd::getpid();
    // SAFETY: single-threaded (checked just now), so no lock is held in
    // the child; it leaves by exec or exit_now, never returning into the
    // caller's frames.
    match unsafe { fork() }? {
        nix::unistd::ForkResult::Parent { child } => Ok(child),
        nix::unistd::ForkResult::Child => {
            // It dies with us (PDEATHSIG crosses the exec), as the
            // process we replace it for did.
            let armed = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL);
            if armed.is_err() || nix::unistd::getppid() != parent {
                exit_now(crate::exit::code(crate::exit::SETUP));
            }
            let err = place_and_exec(exe.as_raw_fd(), argv, env, moves, above, &mut copies);
            exit_now(crate::exit::SIGNALED + err as i32)
        }
    }
}

/// The child's half of [`spawn_with_fds_at`]: returns only on failure.
fn place_and_exec(
    exe: RawFd,
    argv: &[std::ffi::CString],
    env: &[std::ffi::CString],
    moves: &[(RawFd, RawFd)],
    above: RawFd,
    copies: &mut Vec<RawFd>,
) -> Errno {
    let dup_above = |fd: RawFd| {
        // SAFETY: plain fcntl on an fd number of ours.
        Errno::result(unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, above) })
    };
    // Everything copied above every `to` first, then each put in place:
    // no dup3 can hit a copy still to be placed.
    let exe = match dup_above(exe) {
        Ok(fd) => fd,
        Err(e) => return e,
    };
    for (from, _) in moves {
        match dup_above(*from) {
            Ok(fd) => copies.push(fd),
            Err(e) => return e,
        }
    }
    for (copy, (_, to)) in copies.iter().zip(moves) {
        // SAFETY: both are fd numbers of ours; dup3 closes whatever `to`
        // was (a copy never: they are all above it).
        if unsafe { libc::dup3(*copy, *to, 0) } < 0 {
            return Errno::last();
        }
    }
    // SAFETY: `exe` is open (made just above) and this process image ends
    // here.
    let exe = unsafe { std::os::fd::BorrowedFd::borrow_raw(exe) };
    match nix::unistd::fexecve(exe, argv, env) {
        Err(e) => e,
        Ok(never) => match never {},
    }
}
