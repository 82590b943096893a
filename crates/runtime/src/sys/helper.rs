//! Helper processes: a fork that runs a closure (the supervisor's
//! spawner, the rootless networks' helper) and a `Command` set up to run
//! as a helper of ours (pasta).

use std::os::fd::{AsRawFd, OwnedFd};

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
