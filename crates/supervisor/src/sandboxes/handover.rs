//! Sandboxes across an upgrade: a running sandbox's init stays our
//! unreaped child through the exec (the pid does not change, PDEATHSIG
//! does not fire), so the new binary takes it over by pid, and watches its
//! cgroup again. Only sandboxes at rest are handed over: none setting up,
//! none draining.

use std::os::fd::{OwnedFd, RawFd};

use isola_runtime::cgroup::Cgroup;
use isola_runtime::handover::Outgoing;
use isola_runtime::Sandbox;
use nix::errno::Errno;
use nix::sys::inotify::AddWatchFlags;
use nix::unistd::Pid;

use super::{Running, Sandboxes, Stage, Watch};
use crate::host::StackGroup;
use crate::shell::context::ServiceIx;
use crate::upgrade::snapshot::{RootRecord, RunningRecord, SandboxRecord};

impl Sandboxes {
    /// A sandbox in motion keeps an upgrade waiting (its name), or `None`.
    pub(crate) fn busy(&self) -> Option<String> {
        self.services.iter().find_map(|(_, s)| match s.stage {
            Stage::Starting(_) => Some(format!("{} is setting up", s.cgroup_name)),
            Stage::Draining(_) => Some(format!("{} is being torn down", s.cgroup_name)),
            Stage::Idle | Stage::Running(_) => None,
        })
    }

    /// The image roots held and set aside (see `ImageRoots::export`).
    pub(crate) fn export_roots(
        &self,
        out: &mut Outgoing,
        name_of: &dyn Fn(ServiceIx) -> Option<String>,
    ) -> Result<(Vec<RootRecord>, Vec<std::path::PathBuf>, bool), Errno> {
        self.roots.export(out, name_of)
    }

    /// An image root an older binary held (see `ImageRoots::adopt`).
    pub(crate) fn adopt_root(
        &mut self,
        rec: &RootRecord,
        lock: OwnedFd,
        users: &[(ServiceIx, &crate::spec::stack::ServiceDef)],
    ) -> Result<(), String> {
        self.roots.adopt(rec, lock, users)
    }

    pub(crate) fn adopt_gone_roots(&mut self, gone: &[std::path::PathBuf], cleared: bool) {
        self.roots.adopt_gone(gone, cleared);
    }

    /// Service `i`'s sandbox as the snapshot keeps it.
    pub(crate) fn export(&self, i: ServiceIx) -> Option<SandboxRecord> {
        let s = self.services.get(i)?;
        let running = s.running().map(|r| RunningRecord {
            pid: r.sandbox.pid().as_raw(),
            start_ms: r.start_ms,
            oom_seen: r.oom_seen,
        });
        Some(SandboxRecord {
            cgroup_name: s.cgroup_name.clone(),
            history: s.history.iter().copied().collect(),
            running,
        })
    }

    /// The stack's cgroup claim, kept across the exec (its flock with it).
    pub(crate) fn keep_group(&self, out: &mut Outgoing) -> Result<Option<RawFd>, Errno> {
        self.setup
            .group
            .as_ref()
            .map(|g| out.keep(g.lock_fd()))
            .transpose()
    }

    /// Service `i`'s sandbox as an older binary left it; the init's pid,
    /// for the reaper, when it runs.
    pub(crate) fn adopt(
        &mut self,
        ctx: &mut crate::shell::context::Ctx<'_>,
        i: ServiceIx,
        rec: &SandboxRecord,
    ) -> Option<Pid> {
        let stack_root = self.setup.stack_root.clone();
        let no_cgroup = self.setup.no_cgroup;
        let s = self.services.get_mut(i)?;
        s.cgroup_name = rec.cgroup_name.clone();
        s.history = rec.history.iter().copied().collect();
        let run = rec.running?;
        let pid = Pid::from_raw(run.pid);
        let cgroup = match no_cgroup {
            true => None,
            false => match Cgroup::open(&stack_root.join(&rec.cgroup_name)) {
                Ok(cg) => Some(cg),
                Err(e) => {
                    // Not expected (the group is ours and populated): the
                    // sandbox is signalled by pid, its OOM kills unseen.
                    ctx.out.note(format!("{}: cgroup: {e}", rec.cgroup_name));
                    None
                }
            },
        };
        let watch = cgroup.as_ref().and_then(|cg| {
            let path = cg.memory_events_path();
            self.inotify.add_watch(&path, AddWatchFlags::IN_MODIFY).ok()
        });
        if let Some(w) = watch {
            self.watches.insert(w, (i, Watch::OomKills));
        }
        s.stage = Stage::Running(Running {
            sandbox: Sandbox::adopt(&rec.cgroup_name, pid, cgroup),
            start_ms: run.start_ms,
            oom_seen: run.oom_seen,
            watch,
            stats: None,
        });
        Some(pid)
    }

    /// OOM kills of service `i`'s adopted sandbox that happened while no
    /// watch was on its `memory.events` (the exec's window): told now.
    pub(crate) fn catch_up_ooms(&mut self, ctx: &mut crate::shell::context::Ctx<'_>, i: ServiceIx) {
        self.count_ooms(ctx, i);
    }
}

/// The stack's cgroup claim an older binary held.
pub(crate) fn adopt_group(path: &std::path::Path, fd: OwnedFd) -> Result<StackGroup, String> {
    StackGroup::adopt(path, fd).map_err(|e| format!("{}: {e}", path.display()))
}
