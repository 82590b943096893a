//! A sandbox's teardown: its init exited while processes were left in its
//! cgroup. They are killed, and the cgroup's emptying is waited for by
//! inotify on `cgroup.events` (again on every change: a process that
//! forked meanwhile is killed too); then the group is removed and the
//! core hears of the exit.

use std::time::{Duration, Instant};

use isola_runtime::cgroup::{Cgroup, REMOVE_RETRY};
use nix::sys::inotify::{AddWatchFlags, WatchDescriptor};

use super::{Sandboxes, Stage, Watch};
use crate::lifecycle::Exit;
use crate::shell::context::{Ctx, Input, ServiceIx};

/// How long a teardown waits for the processes left in a cgroup after
/// `cgroup.kill` (uninterruptible sleep, a stuck filesystem) before it
/// reports the exit anyway and leaves the group behind; the next start of
/// the service then fails (the group is in use) and backs off until it is
/// free.
const DRAIN_PATIENCE: Duration = Duration::from_secs(10);

pub(super) struct Draining {
    cgroup: Cgroup,
    exit: Exit,
    watch: Option<WatchDescriptor>,
    give_up_at: Instant,
    /// The group is empty but the kernel still calls it busy: try again.
    retry_at: Option<Instant>,
}

impl Draining {
    pub(super) fn watch(&self) -> Option<WatchDescriptor> {
        self.watch
    }

    /// Kill what is left (nothing to do on failure: the next change of
    /// `cgroup.events`, or the patience running out, decides).
    pub(super) fn kill(&self) {
        let _told_by_the_next_event = self.cgroup.kill();
    }

    fn deadline(&self) -> Instant {
        self.retry_at
            .map_or(self.give_up_at, |r| r.min(self.give_up_at))
    }
}

/// Where a check of a draining cgroup got to.
enum Drained {
    /// Processes are left (killed again), or the kernel still calls the
    /// group busy: when to look again (besides the next event).
    NotYet(Option<Instant>),
    /// Empty and removed, or removing it failed (why).
    Done(Option<String>),
}

impl Sandboxes {
    /// Service `i`'s init exited and left `cgroup` behind: wait for it to
    /// empty.
    pub(super) fn start_drain(
        &mut self,
        ctx: &mut Ctx<'_>,
        i: ServiceIx,
        cgroup: Cgroup,
        exit: Exit,
    ) {
        let watch = self
            .inotify
            .add_watch(&cgroup.events_path(), AddWatchFlags::IN_MODIFY)
            .ok();
        if let Some(w) = watch {
            self.watches.insert(w, (i, Watch::Emptied));
        }
        let d = Draining {
            cgroup,
            exit,
            watch,
            give_up_at: ctx.now + DRAIN_PATIENCE,
            retry_at: None,
        };
        if let Some(s) = self.services.get_mut(i) {
            s.stage = Stage::Draining(d);
            self.draining.insert(i);
        }
        self.check_drained(ctx, i);
    }

    /// Kill what is left of a draining sandbox; once its cgroup is empty,
    /// remove it and report the exit.
    pub(super) fn check_drained(&mut self, ctx: &mut Ctx<'_>, i: ServiceIx) {
        let Some(Stage::Draining(d)) = self.services.get_mut(i).map(|s| &mut s.stage) else {
            return;
        };
        match check(d, ctx.now) {
            Drained::NotYet(retry_at) => d.retry_at = retry_at,
            Drained::Done(why) => self.end_drain(ctx, i, why),
        }
    }

    fn end_drain(&mut self, ctx: &mut Ctx<'_>, i: ServiceIx, why: Option<String>) {
        let Some(s) = self.services.get_mut(i) else {
            return;
        };
        if !matches!(s.stage, Stage::Draining(_)) {
            return;
        }
        let Stage::Draining(d) = std::mem::replace(&mut s.stage, Stage::Idle) else {
            return;
        };
        self.draining.remove(&i);
        self.unwatch(d.watch);
        if let Some(msg) = why {
            ctx.out.event(i, msg);
        }
        ctx.out.input(Input::Exited(i, d.exit));
    }

    /// The timer: retry removals the kernel called busy; give up on groups
    /// that stayed populated too long.
    pub(crate) fn tick(&mut self, ctx: &mut Ctx<'_>) {
        let now = ctx.now;
        let ids: Vec<ServiceIx> = self.draining.iter().copied().collect();
        for i in ids {
            let Some(Stage::Draining(d)) = self.services.get_mut(i).map(|s| &mut s.stage) else {
                continue;
            };
            if d.give_up_at <= now {
                let msg = format!(
                    "teardown: {} still has processes {} s after cgroup.kill; leaving it behind",
                    d.cgroup.path().display(),
                    DRAIN_PATIENCE.as_secs()
                );
                self.end_drain(ctx, i, Some(msg));
            } else if d.retry_at.is_some_and(|t| t <= now) {
                d.retry_at = None;
                self.check_drained(ctx, i);
            }
        }
    }

    /// The nearest retry or give-up of a draining sandbox.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.draining
            .iter()
            .filter_map(|i| match &self.services.get(*i)?.stage {
                Stage::Draining(d) => Some(d.deadline()),
                _ => None,
            })
            .min()
    }
}

fn check(d: &Draining, now: Instant) -> Drained {
    // Empty, or gone: nothing left to wait for. Populated: killed again
    // on every change (a process that forked meanwhile).
    if let Ok(true) = d.cgroup.is_populated() {
        d.kill();
        return Drained::NotYet(d.retry_at);
    }
    match d.cgroup.try_remove() {
        Ok(false) => Drained::NotYet(Some(now + REMOVE_RETRY)),
        Ok(true) => Drained::Done(None),
        Err(e) => Drained::Done(Some(format!("teardown: {e}"))),
    }
}
