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

/// Start the binary behind fd `exe.0` (O_PATH will do) with `argv` and
/// `env`, each `(from, to)` of `moves` placed at number `to` and not
/// close-on-exec (a keeper hands a new supervisor the fds of the one that
/// died, at the numbers its snapshot names them by); `exe` itself goes to
/// `exe.1` for the exec, and is close-on-exec. The `to`s must be distinct
/// and not `exe.1`; no copy above them is needed, so a process near its
/// fd limit can do it. The calling process must be single-threaded
/// (checked). The child dies with us (PDEATHSIG). Returns the pid.
pub fn spawn_with_fds_at(
    exe: (RawFd, RawFd),
    argv: &[std::ffi::CString],
    env: &[std::ffi::CString],
    moves: &[(RawFd, RawFd)],
) -> Result<Pid, Errno> {
    check_single_threaded()?;
    let parent = nix::unistd::getpid();
    let mut all = moves.to_vec();
    all.push(exe);
    // SAFETY: single-threaded (checked just now), so no lock is held in
    // the child (it allocates, as fexecve does); it leaves by exec or
    // exit_now, never returning into the caller's frames.
    match unsafe { fork() }? {
        nix::unistd::ForkResult::Parent { child } => Ok(child),
        nix::unistd::ForkResult::Child => {
            // It dies with us (PDEATHSIG crosses the exec), as the
            // process we replace it for did.
            let armed = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL);
            if armed.is_err() || nix::unistd::getppid() != parent {
                exit_now(crate::exit::code(crate::exit::SETUP));
            }
            let err = match place(&mut all) {
                Ok(()) => exec_placed(exe.1, argv, env),
                Err(e) => e,
            };
            exit_now(crate::exit::SIGNALED + err as i32)
        }
    }
}

/// Every `(from, to)` at `to`, not close-on-exec: a parallel move. A
/// move goes once no other still needs its `to` as a `from`; a cycle is
/// broken by copying one `from` to a number no move goes to.
fn place(moves: &mut [(RawFd, RawFd)]) -> Result<(), Errno> {
    use std::collections::HashMap;
    let mut by_from: HashMap<RawFd, usize> =
        moves.iter().enumerate().map(|(i, m)| (m.0, i)).collect();
    let by_to: HashMap<RawFd, usize> = moves.iter().enumerate().map(|(i, m)| (m.1, i)).collect();
    let mut done = vec![false; moves.len()];
    let mut ready: Vec<usize> = (0..moves.len())
        .filter(|&i| by_from.get(&moves[i].1).is_none_or(|&j| j == i))
        .collect();
    let mut left = moves.len();
    while left > 0 {
        while let Some(i) = ready.pop() {
            let (from, to) = moves[i];
            if done[i] {
                continue;
            }
            let r = match from == to {
                // SAFETY: plain fcntl on an fd number of ours.
                true => unsafe { libc::fcntl(from, libc::F_SETFD, 0) },
                // SAFETY: plain dup3 on fd numbers of ours; it closes
                // what `to` was, which no move still needs.
                false => unsafe { libc::dup3(from, to, 0) },
            };
            Errno::result(r)?;
            done[i] = true;
            left -= 1;
            by_from.remove(&from);
            if let Some(&j) = by_to.get(&from) {
                ready.push(j);
            }
        }
        if let Some(i) = (0..moves.len()).find(|&i| !done[i]) {
            let from = moves[i].0;
            let spare = spare_number(&by_to)?;
            // SAFETY: as above; `spare` is free and no move's `to`.
            Errno::result(unsafe { libc::dup3(from, spare, libc::O_CLOEXEC) })?;
            by_from.remove(&from);
            by_from.insert(spare, i);
            moves[i].0 = spare;
            // The move that goes to `from` may go now; this one when
            // the move whose `from` is its `to` went.
            if let Some(&j) = by_to.get(&from) {
                ready.push(j);
            }
        }
    }
    Ok(())
}

/// The lowest free fd number that no move goes to, below our limit.
fn spare_number(to: &std::collections::HashMap<RawFd, usize>) -> Result<RawFd, Errno> {
    let limit = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map_or(RawFd::MAX, |(soft, _)| {
            RawFd::try_from(soft).unwrap_or(RawFd::MAX)
        });
    (3..limit)
        // SAFETY: F_GETFD only reads an fd's flags (EBADF: free).
        .find(|n| !to.contains_key(n) && unsafe { libc::fcntl(*n, libc::F_GETFD) } < 0)
        .ok_or(Errno::EMFILE)
}

/// fexecve the binary at `exe`, made close-on-exec first.
fn exec_placed(exe: RawFd, argv: &[std::ffi::CString], env: &[std::ffi::CString]) -> Errno {
    // SAFETY: plain fcntl on an fd number of ours.
    unsafe { libc::fcntl(exe, libc::F_SETFD, libc::FD_CLOEXEC) };
    // SAFETY: `exe` is open (just placed) and this process image ends
    // here.
    let exe = unsafe { std::os::fd::BorrowedFd::borrow_raw(exe) };
    match nix::unistd::fexecve(exe, argv, env) {
        Err(e) => e,
        Ok(never) => match never {},
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::IntoRawFd;

    fn ino(fd: RawFd) -> Option<u64> {
        // SAFETY: a test's own fd numbers, only looked at.
        let b = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
        nix::sys::stat::fstat(b).ok().map(|s| s.st_ino)
    }

    #[test]
    fn a_parallel_move_places_chains_and_cycles_without_losing_one() {
        // Numbers far above what the test harness uses.
        let at = |n: RawFd| 900 + n;
        let mut pipes = Vec::new();
        for k in 0..4 {
            let (r, w) = nix::unistd::pipe().expect("pipe");
            drop(w);
            let fd = r.into_raw_fd();
            // SAFETY: our own fds, moved to numbers nothing else uses.
            assert!(unsafe { libc::dup3(fd, at(k), libc::O_CLOEXEC) } == at(k));
            let _ = nix::unistd::close(fd);
            pipes.push(ino(at(k)).expect("open"));
        }
        // 0 ↔ 1 (a cycle), 2 → 3 → 5 (a chain), 4 stays nothing.
        let mut moves = vec![
            (at(0), at(1)),
            (at(1), at(0)),
            (at(3), at(5)),
            (at(2), at(3)),
        ];
        place(&mut moves).expect("placed");
        assert_eq!(ino(at(1)), Some(pipes[0]));
        assert_eq!(ino(at(0)), Some(pipes[1]));
        assert_eq!(ino(at(5)), Some(pipes[3]));
        assert_eq!(ino(at(3)), Some(pipes[2]));
        for n in [0, 1, 3, 5] {
            // SAFETY: F_GETFD only reads flags.
            let flags = unsafe { libc::fcntl(at(n), libc::F_GETFD) };
            assert_eq!(flags & libc::FD_CLOEXEC, 0, "{n} crosses the exec");
        }
        for n in 0..8 {
            let _ = nix::unistd::close(at(n));
        }
    }
}
