//! Commands run inside a running service's sandbox: `exec` probes here,
//! and the information `isola exec` needs to do the same from the CLI.
//! Both go through [`isola_runtime::join`]: the sandbox's cgroup,
//! namespaces, credentials, capabilities and seccomp, like the payload.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::fs::OpenOptionsExt;

use isola_runtime::join::{self, Target};

use crate::supervisor::Supervisor;

/// An exec probe's process (the runtime's waiter, our child).
pub(crate) struct Joined {
    inner: join::Joined,
}

impl Joined {
    pub(crate) fn pidfd(&self) -> BorrowedFd<'_> {
        self.inner.pidfd()
    }

    /// Its verdict once it exited (and is reaped): exit 0 is success.
    pub(crate) fn verdict(&self) -> Option<(bool, String)> {
        self.inner.try_wait().map(|code| match code {
            0 => (true, "exit code 0".to_string()),
            c if c > 128 => (false, format!("killed by signal {}", c - 128)),
            c => (false, format!("exit code {c}")),
        })
    }

    /// Kill it and everything it started (its process group); it is
    /// reaped when its pidfd says it exited.
    pub(crate) fn kill(&self) {
        self.inner.terminate();
    }
}

impl Supervisor {
    /// Start exec probe `argv` in service `i`'s sandbox.
    pub(crate) fn exec_probe(&self, i: usize, argv: &[String]) -> Result<Joined, String> {
        let s = self.core.service(i).ok_or("removed")?;
        let run = self
            .slots
            .get(i)
            .and_then(Option::as_ref)
            .and_then(|s| s.running.as_ref())
            .ok_or("not running")?;
        let args = argv
            .iter()
            .map(|a| CString::new(a.as_bytes()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| "argument with a NUL byte".to_string())?;
        let cgroup = match run.sandbox.cgroup() {
            Some(cg) => Some(
                std::fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
                    .open(cg.path())
                    .map_err(|e| format!("{}: {e}", cg.path().display()))?,
            ),
            None => None,
        };
        let null = File::options()
            .read(true)
            .write(true)
            .open("/dev/null")
            .map_err(|e| format!("/dev/null: {e}"))?;
        let fd = null.as_raw_fd();
        let target = Target {
            init: run.sandbox.pidfd(),
            cgroup: cgroup.as_ref().map(|c| c.as_fd()),
            plan: &s.def.plan,
        };
        let opts = join::Options {
            args,
            env: Vec::new(),
            user: None,
            cwd: None,
            stdio: Some([fd, fd, fd]),
            kill_group: true,
        };
        join::spawn(&target, &opts)
            .map(|inner| Joined { inner })
            .map_err(|e| e.to_string())
    }
}
