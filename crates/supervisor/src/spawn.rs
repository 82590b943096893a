//! How a sandbox is cloned: by the spawner when it knows the service as it
//! is now, else here in the supervisor; and the cgroup it gets (an
//! overlap's successor takes the name its predecessor does not hold).

use std::os::fd::RawFd;
use std::path::Path;

use isola_runtime::listen::Listen;
use isola_runtime::sandbox::Starting;
use isola_runtime::{exit, sandbox};
use nix::errno::Errno;
use nix::sys::signal::Signal;

use crate::lifecycle::StartError;
use crate::spawner::{self, Answer, Spawner};
use crate::stack::ServiceDef;
use crate::supervisor::Supervisor;

/// Marks the cgroup of an overlap's successor while the old sandbox holds
/// the service's own name.
pub(crate) const SUCCESSOR_SUFFIX: &str = "..next";

/// Fork the spawner now, while this process holds the plans and little
/// else: right after the stack is loaded, before the supervisor builds its
/// own state (every init is a copy of the spawner, and maps — then drops —
/// whatever heap the spawner has). `defs` are indexed like the core's
/// services.
pub(crate) fn fork_spawner(
    defs: &[ServiceDef],
    stack_root: &Path,
    no_cgroup: bool,
) -> Result<Spawner, Errno> {
    let supervisor = nix::unistd::getpid();
    Spawner::fork(|sock| {
        // In the child, which holds only `sock` and stdio.
        if nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).is_err()
            || nix::unistd::getppid() != supervisor
        {
            return i32::from(exit::FAILURE);
        }
        // The plans as loaded, borrowed: no plan is cloned (and freed)
        // per request, which rewrote heap pages that every earlier init,
        // a copy of the spawner, then kept as private copies.
        let table: Vec<Option<spawner::Entry>> = defs
            .iter()
            .map(|d| {
                Some(spawner::Entry {
                    fingerprint: d.fingerprint,
                    plan: &d.plan,
                    name: &d.name,
                })
            })
            .collect();
        spawner::serve(sock, &table, |name, stdio| {
            options(name, stack_root, no_cgroup, stdio, true)
        })
    })
}

/// Where and how a service is cloned. `sibling` when the spawner clones it.
fn options<'a>(
    name: &'a str,
    cgroup_root: &'a Path,
    no_cgroup: bool,
    stdio: [RawFd; 3],
    sibling: bool,
) -> sandbox::Options<'a> {
    sandbox::Options {
        name,
        cgroup_root,
        no_cgroup,
        stdio: Some(stdio),
        sibling,
        pass_fds: &[],
        listen: Listen::default(),
        detach: None,
        hook_state: None,
    }
}

impl Supervisor {
    /// Clone service `i`'s init: through the spawner when it knows the
    /// service as it is now, else here.
    pub(crate) fn spawn_sandbox(
        &mut self,
        i: usize,
        stdio: [RawFd; 3],
        pass: &[RawFd],
        listen: Listen,
    ) -> Result<Starting, StartError> {
        let gone = || StartError {
            code: exit::code(exit::SETUP),
            why: "service removed".to_string(),
            transient: false,
        };
        let cg_name = self.cgroup_name(i).ok_or_else(gone)?;
        if let Some(slot) = self.slot(i) {
            slot.cgroup_name.clone_from(&cg_name);
        }
        // The spawner names groups after the services it knows; a
        // successor (always a service it does not know) is cloned here.
        let live = self.core.service(i).is_some_and(|s| s.def.live_limits);
        if let Some(sp) = self.spawner.as_ref().filter(|_| !live) {
            let s = self.core.service(i).ok_or_else(gone)?;
            let cgroup = (!self.cfg.no_cgroup).then(|| self.stack_root.join(&cg_name));
            let index = u32::try_from(i).map_err(|_| gone())?;
            let start = spawner::Start {
                index,
                fingerprint: s.def.fingerprint,
                stdio,
                pass,
                listen,
            };
            match sp.request(&start, &s.def.name, cgroup) {
                Ok(Answer::Started(st)) => return Ok(st),
                Ok(Answer::Failed {
                    code,
                    message,
                    transient,
                }) => {
                    return Err(StartError {
                        code,
                        why: message,
                        transient,
                    })
                }
                Ok(Answer::Unknown) => {}
                Err(e) => {
                    self.note(&format!(
                        "spawner: {e}; starting sandboxes in-process from now on"
                    ));
                    self.spawner = None;
                }
            }
        }
        let def = &self.core.service(i).ok_or_else(gone)?.def;
        let mut opts = options(&cg_name, &self.stack_root, self.cfg.no_cgroup, stdio, false);
        opts.pass_fds = pass;
        opts.listen = listen;
        sandbox::spawn(&def.plan, &opts).map_err(|e| StartError::from(&e))
    }

    /// Service `i`'s cgroup directory name: its own, but an overlap's
    /// successor takes whichever of `NAME` and `NAME..next` the sandbox it
    /// replaces does not hold (names with `..` are not service names).
    fn cgroup_name(&self, i: usize) -> Option<String> {
        let s = self.core.service(i)?;
        let name = &s.def.name;
        let Some(p) = s.predecessor else {
            return Some(name.clone());
        };
        let theirs = self.slots.get(p)?.as_ref()?.cgroup_name.as_str();
        Some(if theirs == name {
            format!("{name}{SUCCESSOR_SUFFIX}")
        } else {
            name.clone()
        })
    }
}
