//! The autoscaler at work in the loop: every `READINGS_EVERY` the queues
//! of the autoscaled services' held sockets (and, once a second for those
//! that scale on it, their replicas' CPU) go to their controllers, and a
//! decision goes to the core as a scale. The held listeners of a service
//! that may scale to zero wake the loop (`Part::Sockets`): with no replica
//! a connection starts one at once, waiting in the backlog until it
//! accepts; with some it keeps the service from being idle.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};

use crate::autoscale::controller::Census;
use crate::autoscale::{Bounds, Run};
use crate::control::{AutoscaleRow, History, ScaleTo, StatusRow};
use crate::lifecycle::{GroupNow, State};
use crate::spec::sockets::MAX_REPLICAS;
use crate::supervisor::Supervisor;

impl Supervisor {
    /// A watched listener woke the loop: a connection came.
    pub(crate) fn on_arrival(&mut self, key: u64) {
        let Some(group) = self.held.on_event(key).map(str::to_string) else {
            return;
        };
        if self.core.shutting_down() {
            return;
        }
        self.autoscaler.arrived(&group);
        // With no replica, not a moment to lose: decided now, not at the
        // next readings.
        let now = self.core.groups_now(self.now).remove(group.as_str());
        if let Some(g) = now.filter(|g| g.census.wanted == 0) {
            self.autoscale_one(&group, g);
        }
    }

    /// The readings, when due: a decision for every autoscaled service.
    pub(crate) fn autoscale_turn(&mut self) {
        // Going down: nothing more to scale.
        if !self.autoscaler.due(self.now) || self.core.shutting_down() {
            return;
        }
        let groups: Vec<(String, GroupNow)> = self
            .core
            .groups_now(self.now)
            .into_iter()
            .map(|(name, g)| (name.to_string(), g))
            .collect();
        for (group, g) in groups {
            self.autoscale_one(&group, g);
        }
        self.held.rearm(&self.reactor);
    }

    fn autoscale_one(&mut self, group: &str, g: GroupNow) {
        let now = self.now;
        if self.autoscaler.cpu_due(group, now) {
            let usec = self.replica_cpu(&g.members);
            self.autoscaler.cpu_read(group, &usec, now);
        }
        let queued = self.held.queued(group);
        if let Some(s) = self.autoscaler.decide(group, g.census, queued, now) {
            // Refused only while the stack goes down, which this turn
            // does not see start.
            let _going_down = self.core.autoscale(group, s.to, &s.why, now);
            self.update_network_members();
        }
    }

    /// Each running replica's CPU time, by run (none without a cgroup).
    fn replica_cpu(&self, members: &[usize]) -> Vec<(Run, u64)> {
        members
            .iter()
            .filter_map(|i| {
                let sb = self.sandboxes.snapshot(*i)?;
                let run = Run {
                    service: *i,
                    started_at_ms: sb.started_at_ms?,
                };
                Some((run, sb.stats.cpu_usec?))
            })
            .collect()
    }

    /// Which held sockets wake the loop on a connection: those of the
    /// services that may scale to zero (at start, after a reload or a
    /// pin).
    pub(crate) fn watch_arrivals(&mut self) {
        for group in self.autoscaler.groups() {
            let on = self.autoscaler.watches_arrivals(&group);
            self.held.watch(&self.reactor, &group, on);
        }
    }

    /// `isola scale NAME N|auto` on an autoscaled service: `None` for
    /// one that is not.
    pub(crate) fn pin_scale(&mut self, name: &str, to: ScaleTo) -> Option<Result<(), String>> {
        self.core.autoscaled(name)?;
        let n = match to {
            ScaleTo::Count(n) if n > MAX_REPLICAS => {
                return Some(Err(format!("{n}: must be 0 to {MAX_REPLICAS}")))
            }
            ScaleTo::Count(n) => Some(n),
            ScaleTo::Auto(_) => None,
        };
        if let Some(n) = n {
            if let Err(e) = self
                .core
                .autoscale(name, n, "pinned by isola scale", self.now)
            {
                return Some(Err(e));
            }
            self.update_network_members();
        }
        self.autoscaler.pin(name, n, self.now);
        self.core.pin(name, n);
        self.watch_arrivals();
        Some(Ok(()))
    }

    /// After a reload, which counts by the file: the pinned counts again.
    pub(crate) fn keep_pins(&mut self) {
        let now = self.now;
        for (group, n) in self.autoscaler.pins() {
            let wanted = self
                .core
                .groups_now(now)
                .get(group.as_str())
                .map(|g| g.census.wanted);
            if wanted.is_some_and(|w| w != n) {
                let _going_down = self.core.autoscale(&group, n, "pinned by isola scale", now);
            }
        }
        self.update_network_members();
    }

    /// `status` rows with the autoscaled services' counts, and a row for
    /// each one that has no replica.
    pub(crate) fn autoscale_rows<'a>(&self, mut rows: Vec<StatusRow<'a>>) -> Vec<StatusRow<'a>> {
        let mut counts: HashMap<String, AutoscaleRow> = HashMap::new();
        for (group, g) in self.core.groups_now(self.now) {
            let Some(b) = self.autoscaler.bounds(group) else {
                continue;
            };
            let row = count_row(g.census, b);
            // Once the last replica is gone (not while it stops).
            if g.members.is_empty() {
                rows.push(zero_row(group.to_string(), row));
            }
            counts.insert(group.to_string(), row);
        }
        for r in rows.iter_mut() {
            if let Some(c) = r.group.as_deref().and_then(|g| counts.get(g)) {
                r.autoscale = Some(*c);
            }
        }
        rows
    }
}

fn count_row(c: Census, b: Bounds) -> AutoscaleRow {
    AutoscaleRow {
        desired: c.wanted,
        running: c.running,
        min: b.min,
        max: b.max,
        pinned: b.pinned,
    }
}

/// The row of an autoscaled service while none of its replicas runs.
fn zero_row<'a>(name: String, count: AutoscaleRow) -> StatusRow<'a> {
    StatusRow {
        group: Some(Cow::Owned(name.clone())),
        name: Cow::Owned(name),
        state: State::ScaledToZero,
        pid: None,
        restarts: 0,
        uptime_ms: None,
        started_at_ms: None,
        last_exit: None,
        oom_kills: 0,
        waiting_for: None,
        memory_current: None,
        memory_peak: None,
        cpu_usec: None,
        history: History::Owned(Vec::new()),
        depends_on: Cow::Owned(Vec::new()),
        restart_policy: Cow::Borrowed("-"),
        health: Cow::Borrowed("-"),
        ready: false,
        probe: BTreeMap::new(),
        notify_status: None,
        replacing: None,
        limits: BTreeMap::new(),
        addresses: BTreeMap::new(),
        addresses6: BTreeMap::new(),
        autoscale: Some(count),
    }
}
