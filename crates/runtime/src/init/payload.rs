//! Starting the payload from the init: the command resolved with the
//! payload's PATH, a vfork-style child that resets signals, takes its
//! terminal when it has one, hides every fd but the passed ones and execs.

use std::ffi::CString;
use std::os::fd::{OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::signal::{SigSet, SigmaskHow};
use nix::sys::wait::waitpid;
use nix::unistd::{ForkResult, Pid};

use super::{step, Failure, PayloadFds};
use crate::ipc::listen::{self, PidSlot};
use crate::plan::Plan;
use crate::{exit, sys};

/// Start the payload (vfork-style: see [`sys::vfork_exec`]). An exec
/// failure comes back over a CLOEXEC pipe as the errno (EOF means the exec
/// happened).
/// With `terminal`, stdin is a pty slave that becomes the payload's
/// controlling terminal.
pub(super) fn spawn_payload(plan: &Plan, fds: &PayloadFds, terminal: bool) -> Result<Pid, Failure> {
    let path = resolve(&plan.args[0], &plan.search_path)
        .map_err(|e| Failure::Exec(e, exec_exit_code(e)))?;
    let argv: Vec<*const libc::c_char> = plan
        .args
        .iter()
        .map(|a| a.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    // Socket activation: the spec's own LISTEN_* give way to ours.
    let pid_slot = PidSlot::new();
    let listen_env = match fds.listen {
        Some(l) => Some(
            listen::fixed_env(l.fds.len(), l.names)
                .ok_or_else(|| ("exec", format!("LISTEN_FDNAMES={}: a NUL", l.names)))?,
        ),
        None => None,
    };
    let envp = payload_envp(&plan.env, listen_env.as_ref(), &pid_slot);
    let (rd, wr) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(step("exec", "pipe"))?;
    let keep = fds.all;
    let with_pid = listen_env.is_some();
    let child = || {
        if with_pid {
            // Our pid in the payload's PID namespace: the payload's own.
            pid_slot.fill(nix::unistd::getpid().as_raw().unsigned_abs());
        }
        let errno = exec_payload(&path, &argv, &envp, keep, terminal);
        let _ = nix::unistd::write(&wr, &(errno as i32).to_ne_bytes());
        exec_exit_code(errno)
    };
    #[allow(unsafe_code)]
    // SAFETY: `child` makes syscalls only (exec_payload is written for a
    // vfork child: no allocation, no lock); argv/envp/path were prepared above
    // and outlive it.
    let vforked = unsafe { sys::vfork_exec(child) };
    let child = match vforked {
        Ok(pid) => pid,
        // A seccomp profile may refuse clone with CLONE_VM; fork(2) is the
        // older way and a separate syscall. (Not clone3: seccomp profiles,
        // Docker's too, answer it with ENOSYS.)
        Err(_) => match {
            #[allow(unsafe_code)]
            // SAFETY: the init is single-threaded; the child leaves by
            // exit_now after its exec failed.
            unsafe {
                sys::fork()
            }
        }
        .map_err(step("exec", "fork"))?
        {
            ForkResult::Child => sys::exit_now(child()),
            ForkResult::Parent { child } => child,
        },
    };
    drop(wr);
    exec_status(&rd, child)
}

/// The exec's outcome off the CLOEXEC pipe: EOF (it happened) or the
/// child's errno (then the child is reaped).
fn exec_status(rd: &OwnedFd, child: Pid) -> Result<Pid, Failure> {
    let mut buf = [0u8; 4];
    let n = loop {
        match nix::unistd::read(rd, &mut buf) {
            Err(Errno::EINTR) => continue,
            r => break r.map_err(step("exec", "read exec status"))?,
        }
    };
    if n == 4 {
        let errno = Errno::from_raw(i32::from_ne_bytes(buf));
        let _ = waitpid(child, None);
        return Err(Failure::Exec(errno, exec_exit_code(errno)));
    }
    Ok(child)
}

/// The payload's environment as an `envp` array: the spec's, or with
/// socket activation (`listen`) its LISTEN_* replaced by ours and the
/// LISTEN_PID slot the child fills in.
fn payload_envp(
    env: &[CString],
    listen: Option<&[CString; 2]>,
    pid_slot: &PidSlot,
) -> Vec<*const libc::c_char> {
    let nul = std::iter::once(std::ptr::null());
    match listen {
        None => env.iter().map(|a| a.as_ptr()).chain(nul).collect(),
        Some(extra) => env
            .iter()
            .filter(|e| !listen::is_protocol_variable(e.as_bytes()))
            .chain(extra)
            .map(|a| a.as_ptr())
            .chain(std::iter::once(pid_slot.as_ptr()))
            .chain(nul)
            .collect(),
    }
}

pub(crate) fn exec_exit_code(e: Errno) -> i32 {
    match e {
        Errno::ENOENT | Errno::ENOTDIR => exit::code(exit::NOT_FOUND),
        _ => exit::code(exit::NOT_EXECUTABLE),
    }
}

/// In the payload child: restore signals, hide inherited fds, exec.
/// Returns only on failure. Makes syscalls only (it may run in a vfork
/// child, on the init's memory).
fn exec_payload(
    path: &CString,
    argv: &[*const libc::c_char],
    envp: &[*const libc::c_char],
    keep: &[RawFd],
    terminal: bool,
) -> Errno {
    sys::reset_signal_dispositions();
    if terminal {
        // A session of its own, with the pty as its terminal (as a login).
        if let Err(e) = nix::unistd::setsid() {
            return e;
        }
        if let Err(e) = sys::set_controlling_tty() {
            return e;
        }
    }
    if let Err(e) =
        nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)
    {
        return e;
    }
    // Mark everything above stdio close-on-exec but the passed fds: the
    // error pipe stays usable until the exec succeeds, nothing else crosses.
    // The init closed every fd but the passed ones first thing
    // (close_fds_except_all) and opens only close-on-exec ones since: a
    // seccomp profile without close_range (runtime-tools' default one)
    // refusing this leaves nothing exposed, so it is no failure.
    match sys::cloexec_from_except(3, keep) {
        Ok(()) | Err(Errno::EPERM | Errno::ENOSYS) => {}
        Err(e) => return e,
    }
    #[allow(unsafe_code)]
    // SAFETY: argv and envp are the null-terminated arrays spawn_payload
    // built from the plan's CStrings, which outlive the call.
    let errno = unsafe { sys::execve_prepared(path, argv, envp) };
    errno
}

/// execvpe semantics, but with the payload's PATH, not ours.
pub(crate) fn resolve(arg0: &CString, search_path: &[PathBuf]) -> Result<CString, Errno> {
    let cmd = arg0.as_bytes();
    if cmd.contains(&b'/') {
        return Ok(arg0.clone());
    }
    let mut denied = false;
    for dir in search_path {
        let cand = dir.join(std::ffi::OsStr::from_bytes(cmd));
        match nix::unistd::access(&cand, nix::unistd::AccessFlags::X_OK) {
            Ok(()) if !Path::new(&cand).is_dir() => {
                return CString::new(cand.as_os_str().as_bytes()).map_err(|_| Errno::EINVAL);
            }
            Ok(()) | Err(Errno::EACCES) => denied = true,
            Err(_) => {}
        }
    }
    Err(if denied { Errno::EACCES } else { Errno::ENOENT })
}
