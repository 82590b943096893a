//! A sandbox's launch: cloned by the spawner when it knows the service as
//! it is now, else here in the supervisor; in the cgroup it gets (an
//! overlap's successor takes the name its predecessor does not hold).

use std::os::fd::RawFd;

use isola_runtime::exit;
use isola_runtime::listen::Listen;
use isola_runtime::sandbox::{self, Starting};
use nix::unistd::Pid;

use super::{spawner_plans, sync_token, Sandboxes, Stage};
use crate::lifecycle::StartError;
use crate::shell::context::{Ctx, ServiceIx};
use crate::shell::reactor::Interest;
use crate::spawner::{self, Answer};
use crate::spec::stack::ServiceDef;

/// Marks the cgroup of an overlap's successor while the old sandbox holds
/// the service's own name.
pub(crate) const SUCCESSOR_SUFFIX: &str = "..next";

/// What a launch is given.
pub(crate) struct Launch<'a> {
    pub(crate) def: &'a ServiceDef,
    /// The sandbox an overlap's successor replaces.
    pub(crate) predecessor: Option<ServiceIx>,
    /// stdin, stdout, stderr.
    pub(crate) stdio: [RawFd; 3],
    /// fds passed at the numbers the plan says (`notify: {"fd": N}`).
    pub(crate) pass: &'a [RawFd],
    /// Held sockets and stored fds, at 3, 4, … with `LISTEN_FDS`.
    pub(crate) listen: Listen<'a>,
    /// The stack networks it is on (its init makes the interfaces).
    pub(crate) net: isola_runtime::net::Networking<'a>,
}

fn gone() -> StartError {
    StartError {
        code: exit::code(exit::SETUP),
        why: "service removed".to_string(),
        transient: false,
    }
}

impl Sandboxes {
    /// The core's `Launch`: clone service `i`'s sandbox; its init reports
    /// on the sync socket (registered here). The init's pid, for the
    /// reaper.
    pub(crate) fn launch(
        &mut self,
        ctx: &mut Ctx<'_>,
        i: ServiceIx,
        l: Launch<'_>,
    ) -> Result<Pid, StartError> {
        let cg_name = self.cgroup_name(l.def, l.predecessor)?;
        self.roots.ensure(i, l.def)?;
        let s = self.services.get_mut(i).ok_or_else(gone)?;
        s.cgroup_name.clone_from(&cg_name);
        s.record_start();
        let started = self.spawn(ctx, &cg_name, &l).and_then(|st| {
            match ctx.reactor.add(st.sync_fd(), sync_token(i), Interest::Read) {
                Ok(()) => Ok(st),
                // Dropping it kills and removes the sandbox.
                Err(e) => Err(StartError {
                    code: exit::code(exit::SETUP),
                    why: format!("epoll: {e}"),
                    transient: isola_runtime::error::is_shortage(e),
                }),
            }
        });
        let s = self.services.get_mut(i).ok_or_else(gone)?;
        match started {
            Ok(st) => {
                let pid = st.pid();
                s.stage = Stage::Starting(st);
                Ok(pid)
            }
            Err(e) => {
                s.record_exit();
                Err(e)
            }
        }
    }

    /// Clone the init: through the spawner when it knows the service as
    /// it is now, else here.
    fn spawn(
        &mut self,
        ctx: &mut Ctx<'_>,
        cg_name: &str,
        l: &Launch<'_>,
    ) -> Result<Starting, StartError> {
        let def = l.def;
        // The spawner builds services as the file it holds has them, and
        // names their groups after them: one whose limits `isola update`
        // changed, one a reload read, and an overlap's successor in
        // `NAME..next` are cloned here.
        let known = def
            .entry
            .filter(|_| !def.live_limits && cg_name == def.name);
        if let (Some(sp), Some(entry)) = (self.setup.spawner.as_ref(), known) {
            let cgroup = (!self.setup.no_cgroup).then(|| self.setup.stack_root.join(cg_name));
            let start = spawner::Start {
                entry,
                replica: def.replica_number().unwrap_or(0),
                fingerprint: def.fingerprint,
                stdio: l.stdio,
                pass: l.pass,
                listen: l.listen,
                net: l.net,
            };
            match sp.request(&start, &def.name, cgroup) {
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
                    ctx.out.note(format!(
                        "spawner: {e}; starting sandboxes in-process from now on"
                    ));
                    self.setup.spawner = None;
                }
            }
        }
        let mut opts = spawner_plans::options(
            cg_name,
            &self.setup.stack_root,
            self.setup.no_cgroup,
            l.stdio,
            self.setup.siblings,
        );
        opts.pass_fds = l.pass;
        opts.listen = l.listen;
        opts.net = l.net;
        sandbox::spawn(&def.plan, &opts).map_err(|e| StartError::from(&e))
    }

    /// A service's cgroup directory name: its own, but an overlap's
    /// successor takes whichever of `NAME` and `NAME..next` no sandbox of
    /// the service holds now (names with `..` are not service names). With
    /// both held — the sandbox it replaces, and an older one still being
    /// torn down — the start waits, as for any shortage.
    fn cgroup_name(
        &self,
        def: &ServiceDef,
        predecessor: Option<ServiceIx>,
    ) -> Result<String, StartError> {
        let name = &def.name;
        if predecessor.is_none() {
            return Ok(name.clone());
        }
        let held = |cg: &str| {
            self.services
                .iter()
                .any(|(_, s)| s.cgroup_name == cg && !matches!(s.stage, Stage::Idle))
        };
        let next = format!("{name}{SUCCESSOR_SUFFIX}");
        match (held(name), held(&next)) {
            (false, _) => Ok(name.clone()),
            (true, false) => Ok(next),
            (true, true) => Err(StartError {
                code: exit::code(exit::SETUP),
                why: format!(
                    "cgroups {name} and {next} are both held by sandboxes of the service still running or stopping"
                ),
                transient: true,
            }),
        }
    }
}
