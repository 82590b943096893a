//! The new binary of an upgrade takes over: the stack parsed again from
//! the text the old one had loaded (a fresh spawner forked first, as at
//! `isola up`), every fd taken from the handover instead of opened, every
//! service put back in its phase with its sandbox, pipes and notify fds —
//! nothing started, nothing killed. Then the loop goes on; what happened
//! during the exec (exits, lines, datagrams) waits in the kernel for it.

use std::collections::{HashMap, HashSet};
use std::os::unix::net::UnixListener;
use std::time::Instant;

use isola_runtime::handover::Incoming;

use crate::held_sockets::HeldSockets;
use crate::host::{Inherited, PlanAdditions};
use crate::keeper::Channel;
use crate::metrics::server::BoundMetrics;
use crate::networks::Networks;
use crate::outputs::Sink;
use crate::reaper::Child;
use crate::sandboxes::spawner_plans::Build;
use crate::sandboxes::{self, Report};
use crate::shell::loading::{
    add_to_all, block_signals, check_stack, spawner_and_text, Checked, Loading, Prepared,
};
use crate::spec::stack::Stack;
use crate::supervisor::{ctx, stack_name, Config, Supervisor, UpError};
use crate::upgrade::snapshot::Snapshot;
use crate::upgrade::Upgrades;

/// How long the new spawner of a take-over waits before it builds its
/// plans, unless a start is asked sooner: past the answer to the client
/// that asked for the upgrade and those that wait for it.
const SPAWNER_BUILD_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

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
    check_names(&snap, &stack)?;
    check_held(&snap, &stack)?;
    check_roots(&snap, &stack)?;
    Ok(format!(
        "isola {} (takes over {} services from isola {})",
        crate::upgrade::VERSION,
        snap.services.len(),
        snap.version
    ))
}

/// Every service that runs is in the stack text, or a replica of a group
/// there (one `isola scale` or the autoscaler added).
fn check_names(snap: &Snapshot, stack: &Stack) -> Result<(), UpError> {
    let names: HashSet<&str> = stack.services.iter().map(|d| d.name.as_str()).collect();
    let groups: HashSet<&str> = (stack.autoscaled.iter())
        .chain(&stack.replicated)
        .map(|d| d.name.as_str())
        .collect();
    let known = |name: &str| {
        names.contains(name)
            || name.rsplit_once('.').is_some_and(|(g, k)| {
                groups.contains(g) && k.parse::<u32>().is_ok_and(|n| n >= 1 && n.to_string() == k)
            })
    };
    match snap.services.iter().find(|r| !known(&r.name)) {
        Some(gone) => Err(UpError::Setup(format!(
            "{}: runs, but the stack text has no such service",
            gone.name
        ))),
        None => Ok(()),
    }
}

/// Every held socket handed over is one the stack text lists.
fn check_held(snap: &Snapshot, stack: &Stack) -> Result<(), UpError> {
    let listed: HashSet<(&str, usize)> = stack
        .with_autoscaled()
        .flat_map(|d| (0..d.policy.sockets.len()).map(move |k| (d.group_name(), k)))
        .collect();
    match snap
        .held
        .iter()
        .find(|h| !listed.contains(&(h.group.as_str(), h.index)))
    {
        Some(h) => Err(UpError::Setup(format!(
            "services.{}.sockets[{}]: held, but not in the stack text",
            h.group, h.index
        ))),
        None => Ok(()),
    }
}

/// The stack text names images by reference: one pulled again since
/// would now name another image than the one its sandbox runs.
fn check_roots(snap: &Snapshot, stack: &Stack) -> Result<(), UpError> {
    let digests: HashMap<&str, String> = (stack.services.iter())
        .chain(&stack.autoscaled)
        .chain(&stack.replicated)
        .filter_map(|d| Some((d.name.as_str(), d.image.as_ref()?.record.digest.to_string())))
        .collect();
    // A replica the file does not list is its group's image.
    let of =
        |u: &str| (digests.get(u)).or_else(|| u.rsplit_once('.').and_then(|(g, _)| digests.get(g)));
    for root in &snap.roots {
        let now = root.users.iter().find_map(|u| of(u));
        if let Some(now) = now.filter(|d| **d != root.digest) {
            return Err(UpError::Setup(format!(
                "image root {}: its image was pulled again since it started ({} now names {now}): \
                 reload the stack (SIGHUP) first",
                root.name,
                root.users.join(", "),
            )));
        }
    }
    Ok(())
}

/// The listening sockets and the cgroup claim, as the older binary held
/// them.
struct Listeners {
    metrics: Option<BoundMetrics>,
    listener: UnixListener,
    group: Option<crate::host::StackGroup>,
}

fn take_listeners(cfg: &Config, snap: &Snapshot, fds: &mut Incoming) -> Result<Listeners, UpError> {
    let mut taken = |fd: i32, what: &str| {
        fds.take(fd)
            .ok_or_else(|| UpError::Setup(format!("{what}: fd {fd} not handed over")))
    };
    let metrics = match (&cfg.metrics, snap.metrics) {
        (Some(addr), Some(fd)) => Some(BoundMetrics::adopt(addr, taken(fd, "--metrics")?)),
        _ => None,
    };
    let listener = UnixListener::from(taken(snap.control, "control socket")?);
    let group = match snap.group {
        Some(fd) => {
            let root = cfg.cgroup_root.join(stack_name(&cfg.stack_path));
            let fd = taken(fd, "the stack's cgroup")?;
            Some(sandboxes::adopt_group(&root, fd).map_err(UpError::Setup)?)
        }
        None => None,
    };
    Ok(Listeners {
        metrics,
        listener,
        group,
    })
}

impl Supervisor {
    /// Take over from the older binary whose handover is `fds`.
    pub fn resume(cfg: Config, mut fds: Incoming) -> Result<Supervisor, UpError> {
        let snap = Snapshot::decode(&fds.payload).map_err(UpError::Setup)?;
        let additions = PlanAdditions {
            inherited: Inherited::from_record(snap.inherited),
            no_cgroup: cfg.no_cgroup.is_some(),
            socket: cfg.socket.clone(),
        };
        block_signals()?;
        let (stack, spawner, stack_text) = spawner_and_text(
            &cfg,
            &additions,
            snap.stack_text.clone(),
            Build::WhenIdle(SPAWNER_BUILD_AFTER),
        )?;
        let running = snap.running();
        let Checked { stack, stats_cap } = check_stack(&cfg, stack, Loading::Reload { running })?;
        let held = HeldSockets::adopt(stack.with_autoscaled(), &snap.held, &mut fds)
            .map_err(UpError::Setup)?;
        let Listeners {
            metrics,
            listener,
            group,
        } = take_listeners(&cfg, &snap, &mut fds)?;
        let nets = stack.networks.clone();
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
        sup.take_over(&snap, nets, &mut fds)?;
        Ok(sup)
    }

    /// The services, their roots and the clients, as the older binary had
    /// them; the client that asked is answered.
    fn take_over(
        &mut self,
        snap: &Snapshot,
        nets: Vec<crate::spec::networks::NetworkDef>,
        fds: &mut Incoming,
    ) -> Result<(), UpError> {
        self.upgrades = Upgrades::resumed(snap);
        let recovered = self.cfg.keeper.as_ref().is_some_and(Channel::recovered);
        if recovered {
            self.upgrades.recovered(snap);
        }
        self.restore_membership(snap)?;
        self.adopt_networks(snap, nets, fds)?;
        self.adopt_roots(snap, fds)?;
        self.adopt_services(snap, fds)?;
        let asked = self.control.adopt(&self.reactor, &snap.conns, fds);
        self.control.resume_writes(ctx!(self));
        // The keeper holds the last supervisor's last snapshot, if any
        // (older than this state, as any snapshot may be): the clients
        // that wait for us are answered before the first of ours is
        // taken (at 10,000 services it costs the loop ~100 ms).
        if let Some(k) = self.keeper.as_mut() {
            k.not_now(std::time::Duration::ZERO);
        }
        if let Some(conn) = asked {
            self.answer_upgrade(conn, snap.version.clone(), snap.taken_ms);
        }
        self.outbox.note(match recovered {
            true => format!(
                "keeper: took over {} services after the supervisor died ({} times so far)",
                snap.services.len(),
                self.upgrades.recoveries()
            ),
            false => format!(
                "upgrade: took over {} services from isola {} ({} upgrades so far)",
                snap.services.len(),
                snap.version,
                snap.upgrades
            ),
        });
        Ok(())
    }

    /// The services as they ran, not as the file lists them: replicas
    /// `isola scale` or the autoscaler added are made again, the file's
    /// that were scaled away are let go, and the counts a person fixed
    /// hold again.
    fn restore_membership(&mut self, snap: &Snapshot) -> Result<(), UpError> {
        let listed: HashSet<&str> = snap.services.iter().map(|r| r.name.as_str()).collect();
        let unlisted: Vec<usize> = self
            .core
            .services()
            .filter(|(_, s)| !listed.contains(s.def.name.as_str()))
            .map(|(i, _)| i)
            .collect();
        for i in unlisted {
            self.core.drop_unlisted(i);
        }
        for rec in &snap.services {
            if self.core.find(&rec.name).is_none() && self.core.add_replica(&rec.name).is_none() {
                return Err(UpError::Setup(format!(
                    "{}: runs, but the stack text has no such service",
                    rec.name
                )));
            }
        }
        for (group, n) in &snap.pins {
            self.core.pin(group, Some(*n));
            self.autoscaler.pin(group, Some(*n), self.now);
        }
        // The parts give the new replicas what a service needs, and drop
        // what they made for the ones let go.
        self.settle();
        self.core.recycle();
        self.watch_arrivals();
        Ok(())
    }

    /// The stack's networks as they ran (bridges, rules and addresses
    /// untouched), the nameserver on its sockets.
    fn adopt_networks(
        &mut self,
        snap: &Snapshot,
        nets: Vec<crate::spec::networks::NetworkDef>,
        fds: &mut Incoming,
    ) -> Result<(), UpError> {
        let Some(rec) = &snap.networks else {
            return Ok(());
        };
        let stack_root = self.cfg.cgroup_root.join(stack_name(&self.cfg.stack_path));
        let core = &self.core;
        let index_of = |name: &str| core.find(name);
        let mut n = Networks::adopt(
            ctx!(self),
            (rec, nets),
            (&stack_root, &self.cfg.socket),
            &index_of,
            fds,
        )
        .map_err(UpError::Setup)?;
        n.adopted(self.core.services().map(|(_, s)| &s.def))
            .map_err(UpError::Setup)?;
        self.networks = Some(n);
        Ok(())
    }

    /// The image roots, held without a moment unheld (`rmi` and `prune`
    /// never see them free).
    fn adopt_roots(&mut self, snap: &Snapshot, fds: &mut Incoming) -> Result<(), UpError> {
        for rec in &snap.roots {
            let lock = fds.take(rec.fd).ok_or_else(|| {
                UpError::Setup(format!(
                    "image root {}: fd {} not handed over",
                    rec.name, rec.fd
                ))
            })?;
            let users: Vec<_> = rec
                .users
                .iter()
                .filter_map(|n| {
                    let i = self.core.find(n)?;
                    Some((i, &self.core.service(i)?.def))
                })
                .collect();
            self.sandboxes
                .adopt_root(rec, lock, &users)
                .map_err(UpError::Setup)?;
        }
        self.sandboxes
            .adopt_gone_roots(&snap.roots_gone, snap.roots_cleared);
        Ok(())
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
            let adopted = self.sandboxes.adopt(ctx!(self), i, &rec.sandbox);
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
