//! The new binary of an upgrade takes over: the stack parsed again from
//! the text the old one had loaded (a fresh spawner forked first, as at
//! `isola up`), every fd taken from the handover instead of opened, every
//! service put back in its phase with its sandbox, pipes and notify fds —
//! nothing started, nothing killed. Then the loop goes on; what happened
//! during the exec (exits, lines, datagrams) waits in the kernel for it.

use std::os::unix::net::UnixListener;
use std::time::Instant;

use isola_runtime::handover::Incoming;

use crate::held_sockets::HeldSockets;
use crate::host::{Inherited, PlanAdditions};
use crate::metrics::server::BoundMetrics;
use crate::outputs::Sink;
use crate::reaper::Child;
use crate::sandboxes::{self, Report};
use crate::shell::loading::{
    add_to_all, block_signals, check_stack, spawner_and_text, Checked, Loading, Prepared,
};
use crate::supervisor::{ctx, stack_name, Config, Supervisor, UpError};
use crate::upgrade::snapshot::Snapshot;
use crate::upgrade::Upgrades;

/// What an upgrade's new binary checks before the old one execs it (run
/// by `isola handover-check` with the old one's arguments, on a copy of
/// the snapshot): the format, the stack text, the host's room for it —
/// what would make `resume` fail after the exec, when the old binary is
/// gone and a failure takes every service down.
pub fn check_resume(cfg: &Config, payload: &[u8]) -> Result<String, UpError> {
    let snap = Snapshot::decode(payload).map_err(UpError::Setup)?;
    let base_dir = isola_runtime::spec::base_dir(&cfg.stack_path);
    let stack = crate::spec::stack::parse_with(&snap.stack_text, &base_dir, &cfg.images())?;
    let Checked { stack, .. } = check_stack(
        cfg,
        stack,
        Loading::Reload {
            running: snap.running(),
        },
    )?;
    let names: std::collections::HashSet<&str> =
        stack.services.iter().map(|d| d.name.as_str()).collect();
    if let Some(gone) = snap
        .services
        .iter()
        .find(|r| !names.contains(r.name.as_str()))
    {
        return Err(UpError::Setup(format!(
            "{}: runs, but the stack text has no such service",
            gone.name
        )));
    }
    Ok(format!(
        "isola {} (takes over {} services from isola {})",
        crate::upgrade::VERSION,
        snap.services.len(),
        snap.version
    ))
}

impl Supervisor {
    /// Take over from the older binary whose handover is `fds`.
    pub fn resume(cfg: Config, mut fds: Incoming) -> Result<Supervisor, UpError> {
        let snap = Snapshot::decode(&fds.payload).map_err(UpError::Setup)?;
        let additions = PlanAdditions {
            inherited: Inherited::from_record(snap.inherited),
            no_cgroup: cfg.no_cgroup,
            socket: cfg.socket.clone(),
        };
        block_signals()?;
        let (stack, spawner, stack_text) =
            spawner_and_text(&cfg, &additions, snap.stack_text.clone())?;
        let running = snap.running();
        let Checked { stack, stats_cap } = check_stack(&cfg, stack, Loading::Reload { running })?;
        let held = HeldSockets::adopt(stack.with_autoscaled(), &snap.held, &mut fds)
            .map_err(UpError::Setup)?;
        let taken = |fds: &mut Incoming, fd: i32, what: &str| {
            fds.take(fd)
                .ok_or_else(|| UpError::Setup(format!("{what}: fd {fd} not handed over")))
        };
        let metrics = match (&cfg.metrics, snap.metrics) {
            (Some(addr), Some(fd)) => {
                Some(BoundMetrics::adopt(addr, taken(&mut fds, fd, "--metrics")?))
            }
            _ => None,
        };
        let listener = UnixListener::from(taken(&mut fds, snap.control, "control socket")?);
        let group = match snap.group {
            Some(fd) => {
                let root = cfg.cgroup_root.join(stack_name(&cfg.stack_path));
                let fd = taken(&mut fds, fd, "the stack's cgroup")?;
                Some(sandboxes::adopt_group(&root, fd).map_err(UpError::Setup)?)
            }
            None => None,
        };
        let mut defs = stack.services;
        add_to_all(&additions, &mut defs);
        let prepared = Prepared {
            additions,
            defs,
            autoscaled: stack.autoscaled,
            replicated: stack.replicated,
            held,
            listener,
            metrics,
            stderr: Sink::stderr(),
            group,
            spawner,
            stats_cap,
            networks: None,
            stack_text,
        };
        let mut sup = Supervisor::assemble(cfg, prepared)?;
        sup.upgrades = Upgrades::resumed(&snap);
        sup.adopt_services(&snap, &mut fds)?;
        let asked = sup.control.adopt(&sup.reactor, &snap.conns, &mut fds);
        sup.control.resume_writes(ctx!(sup));
        if let Some(conn) = asked {
            sup.answer_upgrade(conn, snap.version.clone());
        }
        sup.outbox.note(format!(
            "upgrade: took over {} services from isola {} ({} upgrades so far)",
            snap.services.len(),
            snap.version,
            snap.upgrades
        ));
        Ok(sup)
    }

    /// Every service back in its phase, on its sandbox, pipes and notify
    /// fds.
    fn adopt_services(&mut self, snap: &Snapshot, fds: &mut Incoming) -> Result<(), UpError> {
        let now = Instant::now();
        for rec in &snap.services {
            let Some(i) = self.core.find(&rec.name) else {
                return Err(UpError::Setup(format!(
                    "{}: in the snapshot, not in the stack",
                    rec.name
                )));
            };
            let store_max = self
                .core
                .service(i)
                .map_or(0, |s| s.def.policy.fd_store_max);
            self.core.restore(i, &rec.core, now);
            let adopted = self.sandboxes.adopt(i, &rec.sandbox);
            self.outputs
                .adopt(ctx!(self), i, &rec.output, fds)
                .map_err(UpError::Setup)?;
            self.readiness
                .adopt(ctx!(self), (i, &rec.name, store_max), &rec.ready, fds)
                .map_err(UpError::Setup)?;
            if let Some(pid) = adopted {
                self.reaper.watch(pid, Child::Init(i));
                self.sandboxes.catch_up_ooms(ctx!(self), i);
                self.on_report(i, Report::Running);
            }
        }
        Ok(())
    }
}
