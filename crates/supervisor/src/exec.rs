//! Commands run inside a running service's sandbox: `exec` probes here,
//! and the information `isola exec` needs to do the same from the CLI.
//! Both go through [`isola_runtime::join`]: the sandbox's cgroup,
//! namespaces, credentials, capabilities and seccomp, like the payload.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd};

use isola_runtime::join::{self, Target};

use crate::control::{ExecTarget, Response};
use crate::lifecycle::Phase;
use crate::supervisor::Supervisor;

/// An exec probe's process (the runtime's waiter, our child).
pub(crate) struct Joined {
    inner: join::Joined,
}

impl Joined {
    /// Its pid: the supervisor reaps it with its other children (`reap`).
    pub(crate) fn pid(&self) -> nix::unistd::Pid {
        self.inner.pid()
    }

    /// Kill it and everything it started (its process group); it is
    /// reaped on the SIGCHLD that follows.
    pub(crate) fn kill(&self) {
        self.inner.terminate();
    }
}

/// An exec probe's verdict from its waiter's status: exit 0 is success.
pub(crate) fn verdict(code: i32) -> (bool, String) {
    match code {
        0 => (true, "exit code 0".to_string()),
        c if c > 128 => (false, format!("killed by signal {}", c - 128)),
        c => (false, format!("exit code {c}")),
    }
}

impl Supervisor {
    /// The `exec` request: where service `name`'s sandbox runs.
    pub(crate) fn exec_target(&self, name: &str) -> Response<'static> {
        let Some(i) = self.core.find(name) else {
            return Response::err(format!("exec: {name:?}: no such service"));
        };
        let Some(s) = self.core.service(i) else {
            return Response::err(format!("exec: {name:?}: no such service"));
        };
        let (Phase::Running { .. }, Some(run)) = (s.phase, self.running(i)) else {
            return Response::err(format!(
                "exec: {name}: not running ({})",
                s.phase.state().as_str()
            ));
        };
        let stack = std::fs::canonicalize(&self.cfg.stack_path)
            .unwrap_or_else(|_| self.cfg.stack_path.clone());
        Response {
            exec: Some(ExecTarget {
                pid: run.sandbox.pid().as_raw(),
                cgroup: run.sandbox.cgroup().map(|c| c.path().to_path_buf()),
                stack,
                fingerprint: s.def.fingerprint,
            }),
            ..Response::ok()
        }
    }

    /// Start exec probe `argv` in service `i`'s sandbox.
    pub(crate) fn exec_probe(&self, i: usize, argv: &[String]) -> Result<Joined, String> {
        let s = self.core.service(i).ok_or("removed")?;
        let run = self.running(i).ok_or("not running")?;
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
        // The init is our unreaped child: its pid still names it. The pidfd
        // lives only while the waiter joins.
        let init = join::pidfd_of(run.sandbox.pid()).map_err(|e| e.to_string())?;
        let target = Target {
            init: init.as_fd(),
            cgroup: run.sandbox.cgroup().map(|c| c.path()),
            plan: &s.def.plan,
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
}
