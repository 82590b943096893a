//! Every child of the supervisor is reaped here, when SIGCHLD arrives
//! through the signalfd: the inits of its sandboxes (clones of the spawner
//! with CLONE_PARENT, or its own) and exec probes' waiters. A running
//! sandbox costs the supervisor no pidfd: its init is an unreaped child,
//! so its pid cannot be reused, and signals go by pid.

use nix::errno::Errno;
use nix::sys::wait::{waitid, Id, WaitPidFlag, WaitStatus};

use isola_runtime::ExitStatus;

use crate::supervisor::Supervisor;

/// Whose exit a child's is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Child {
    /// The init of service `i`'s sandbox (setting up or running).
    Init(usize),
    /// The waiter of exec probe `id`.
    Probe(u64),
}

impl Supervisor {
    /// Collect every child that exited and tell its owner. Children we do
    /// not know (the spawner, a child whose owner gave up) are just reaped.
    pub(crate) fn reap_children(&mut self) {
        let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::__WALL;
        loop {
            let ws = match waitid(Id::All, flags) {
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
                Err(Errno::EINTR) => continue,
                Err(_) => return,
                Ok(ws) => ws,
            };
            let (Some(pid), Some(status)) = (ws.pid(), ExitStatus::from_wait(ws)) else {
                continue;
            };
            match self.children.remove(&pid.as_raw()) {
                Some(Child::Init(i)) => self.init_exited(i, pid, status),
                Some(Child::Probe(id)) => self.probe_exited(id, status.code()),
                None => {}
            }
        }
    }
}
