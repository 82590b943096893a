//! The reaper: every child of the supervisor is collected here when
//! SIGCHLD arrives through the signalfd — the inits of its sandboxes
//! (clones of the spawner with CLONE_PARENT, or its own) and exec probes'
//! waiters — and its exit goes to whoever registered it. A running sandbox
//! costs the supervisor no pidfd: its init is an unreaped child, so its
//! pid cannot be reused, and signals go by pid.

use std::collections::HashMap;

use isola_runtime::ExitStatus;
use nix::errno::Errno;
use nix::sys::wait::{waitid, Id, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::probes::ProbeId;
use crate::shell::context::ServiceIx;

/// Whose exit a child's is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Child {
    /// The init of a service's sandbox (setting up or running).
    Init(ServiceIx),
    /// The waiter of an exec probe.
    Probe(ProbeId),
    /// A CNI plugin at work for a sandbox.
    Plugin(crate::networks::CniOp),
    /// A new binary reading the snapshot an upgrade would hand it.
    UpgradeCheck,
}

/// A child's exit, for its owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Reaped {
    pub(crate) child: Child,
    pub(crate) pid: Pid,
    pub(crate) status: ExitStatus,
}

#[derive(Default)]
pub(crate) struct Reaper {
    children: HashMap<i32, Child>,
}

impl Reaper {
    /// `pid` is `child`: tell its owner when it exits.
    pub(crate) fn watch(&mut self, pid: Pid, child: Child) {
        self.children.insert(pid.as_raw(), child);
    }

    /// Whose `pid` was, told once (the keeper reaped it for us).
    pub(crate) fn take(&mut self, pid: Pid) -> Option<Child> {
        self.children.remove(&pid.as_raw())
    }

    /// The inits watched.
    pub(crate) fn inits(&self) -> impl Iterator<Item = (Pid, Child)> + '_ {
        self.children
            .iter()
            .filter(|(_, c)| matches!(c, Child::Init(_)))
            .map(|(p, c)| (Pid::from_raw(*p), *c))
    }

    /// `pid` is no one's any more (its owner reaped it, or let it go).
    pub(crate) fn forget(&mut self, pid: Pid) {
        self.children.remove(&pid.as_raw());
    }

    /// Collect every child that exited: those with an owner, to be told.
    /// Children we do not know (the spawner, a child whose owner gave up)
    /// are just reaped.
    pub(crate) fn reap(&mut self) -> Vec<Reaped> {
        let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::__WALL;
        let mut out = Vec::new();
        loop {
            let ws = match waitid(Id::All, flags) {
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return out,
                Err(Errno::EINTR) => continue,
                Err(_) => return out,
                Ok(ws) => ws,
            };
            let (Some(pid), Some(status)) = (ws.pid(), ExitStatus::from_wait(ws)) else {
                continue;
            };
            if let Some(child) = self.children.remove(&pid.as_raw()) {
                out.push(Reaped { child, pid, status });
            }
        }
    }
}
