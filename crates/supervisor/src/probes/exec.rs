//! `exec` probes: a command run inside a running service's sandbox
//! through [`isola_runtime::join`] — the sandbox's cgroup, namespaces,
//! credentials, capabilities and seccomp, like the payload — with its
//! output to /dev/null. Its exit (reaped by the supervisor's reaper) is
//! the verdict.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd};
use std::path::Path;

use isola_runtime::join::{self, Target};
use isola_runtime::Plan;
use nix::unistd::Pid;

use crate::shell::context::Verdict;

/// Where an exec probe runs: a running sandbox.
pub(crate) struct Sandbox<'a> {
    /// Its init: our unreaped child, so its pid still names it.
    pub(crate) init: Pid,
    pub(crate) cgroup: Option<&'a Path>,
    pub(crate) plan: &'a Plan,
}

/// An exec probe's process (the runtime's waiter, our child).
pub(crate) struct Joined {
    inner: join::Joined,
}

impl Joined {
    /// Start `argv` in `sandbox`.
    pub(crate) fn spawn(argv: &[String], sandbox: &Sandbox<'_>) -> Result<Joined, String> {
        let args = argv
            .iter()
            .map(|a| CString::new(a.as_bytes()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| "argument with a NUL byte".to_string())?;
        let null = File::options()
            .read(true)
            .write(true)
            .open("/dev/null")
            .map_err(|e| format!("/dev/null: {e}"))?;
        let fd = null.as_raw_fd();
        // The pidfd lives only while the waiter joins.
        let init = join::pidfd_of(sandbox.init).map_err(|e| e.to_string())?;
        let target = Target {
            init: init.as_fd(),
            cgroup: sandbox.cgroup,
            plan: sandbox.plan,
        };
        let opts = join::Options {
            args,
            env: Vec::new(),
            user: None,
            cwd: None,
            stdio: Some([fd, fd, fd]),
            kill_group: true,
            detached: false,
            console: None,
        };
        join::spawn(&target, &opts)
            .map(|inner| Joined { inner })
            .map_err(|e| e.to_string())
    }

    /// Its pid: the supervisor reaps it with its other children.
    pub(crate) fn pid(&self) -> Pid {
        self.inner.pid()
    }

    /// Kill it and everything it started (its process group); it is
    /// reaped on the SIGCHLD that follows.
    pub(crate) fn kill(&self) {
        self.inner.terminate();
    }
}

/// An exec probe's verdict from its waiter's status: exit 0 is success.
pub(crate) fn verdict(code: i32) -> Verdict {
    match code {
        0 => Verdict::pass("exit code 0"),
        c if c > 128 => Verdict::fail(format!("killed by signal {}", c - 128)),
        c => Verdict::fail(format!("exit code {c}")),
    }
}
