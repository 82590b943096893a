//! Replacing sandboxes without a gap (pure, like the rest of the core).
//!
//! - Overlap (`restart.mode: "overlap"`): a restart or a reload of a
//!   running service starts a *successor* — a service entry of its own,
//!   not yet under the name — beside the running sandbox. Once it is ready
//!   (readiness probe or notify; running if it has neither) the name moves
//!   to it and the old sandbox is stopped and forgotten. A successor that
//!   fails, or is not ready within `restart.readyTimeoutMs`, is stopped
//!   and forgotten instead; the old sandbox never stopped serving.
//! - Replicas (`replicas: N`) are services `web.1` … `web.N` of group
//!   `web`. A restart of the group rolls: one replica at a time, the next
//!   once the last is back and ready (`scale`: in `groups`).
//! - Requests naming a group (start, stop) are answered once every
//!   replica has settled.
//!
//! Everything here runs from [`Core::pump`] after each input, or from the
//! request methods; only services taking part are looked at.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::{ConnId, Core, Effect, Intent, Phase, Service, State};
use crate::spec::policy::RestartMode;
use crate::spec::stack::ServiceDef;

/// A rolling restart of a replicated service.
#[derive(Debug)]
pub(super) struct Roll {
    pub(super) group: String,
    /// Replicas still to restart, by name.
    pending: VecDeque<String>,
    /// The replica restarting now, and the `restarts` it will have once
    /// restarted.
    current: Option<(String, u32)>,
    /// Clients answered when it ends (a second restart of the group joins
    /// the roll in progress rather than starting another beside it).
    conns: Vec<ConnId>,
}

/// A client waiting for every replica of a group to settle.
#[derive(Debug)]
pub(super) struct GroupWait {
    conn: ConnId,
    members: Vec<String>,
    /// What the request asked for (running or stopped).
    want: State,
}

impl Core {
    /// The replicas of `group`, in stack order (successors excluded).
    pub fn group_members(&self, group: &str) -> Vec<usize> {
        self.services()
            .filter(|(_, s)| s.def.group.as_deref() == Some(group) && s.predecessor.is_none())
            .map(|(i, _)| i)
            .collect()
    }

    /// Running, and ready if it says when it is.
    pub(super) fn serving(s: &Service) -> bool {
        matches!(s.phase, Phase::Running { .. })
            && (s.health.ready || !s.def.policy.health.gates_readiness())
    }

    /// Restart service `i` the way its policy says: overlap when it runs
    /// and asks for it, else stop and start. No client waits here.
    pub(super) fn restart_one(&mut self, i: usize, now: Instant) {
        let Some(s) = self.service(i) else { return };
        let overlap = s.def.policy.restart.mode == RestartMode::Overlap
            && matches!(s.phase, Phase::Running { .. })
            && !self.shutting_down;
        if overlap {
            self.overlap(i, None, now);
            return;
        }
        match s.phase {
            Phase::Running { .. } | Phase::Launching { .. } | Phase::Stopping { .. } => {
                self.stop_with(i, Intent::Restart, now)
            }
            Phase::Queued => {}
            Phase::Backoff { .. } | Phase::Down(_) => {
                if let Some(s) = self.svc(i) {
                    s.forgive();
                }
                self.enter(i, Phase::Queued);
            }
        }
    }

    /// Start a successor of running service `i` (with `def`, a reload's
    /// new definition, or its own). A successor already on its way is
    /// kept (or, for a new definition, replaced).
    pub(super) fn overlap(&mut self, i: usize, def: Option<ServiceDef>, now: Instant) {
        let Some(s) = self.svc(i) else { return };
        s.overlap_failed = false;
        if let Some(j) = s.successor {
            if def.is_none() {
                return;
            }
            self.drop_successor(j, now);
        }
        let Some(s) = self.svc(i) else { return };
        let def = def.unwrap_or_else(|| s.def.clone());
        let timeout = Duration::from_millis(def.policy.restart.ready_timeout_ms);
        let mut next = Service::new(def);
        next.predecessor = Some(i);
        next.overlap_until = Some(now + timeout);
        let j = self.place(next);
        if let Some(s) = self.svc(i) {
            s.successor = Some(j);
        }
        self.successors.push(j);
        self.event(i, "overlap: starting a new sandbox beside this one".into());
        self.enter(j, Phase::Queued);
    }

    /// Successor `j` is let go (stopped if it runs) without touching its
    /// predecessor.
    fn drop_successor(&mut self, j: usize, now: Instant) {
        self.successors.retain(|x| *x != j);
        let Some(s) = self.svc(j) else { return };
        let pred = s.predecessor.take();
        s.overlap_until = None;
        if let Some(p) = pred.and_then(|p| self.svc(p)) {
            p.successor = None;
        }
        self.stop_with(j, Intent::Remove, now);
    }

    /// Successor `j` failed (exited, failed to start, not ready in time):
    /// it goes, the old sandbox stays, and whoever waits hears `failed`.
    pub(super) fn successor_failed(&mut self, j: usize, why: &str, now: Instant) {
        let Some(pred) = self.service(j).and_then(|s| s.predecessor) else {
            return;
        };
        self.drop_successor(j, now);
        self.event(
            pred,
            format!("overlap: the new sandbox {why}; this one keeps serving"),
        );
        if let Some(p) = self.svc(pred) {
            p.overlap_failed = true;
            for conn in std::mem::take(&mut p.waiters) {
                self.effects.push_back(Effect::Answer(conn, State::Failed));
            }
        }
    }

    /// The old sandbox of an overlap ended by itself before its successor
    /// was ready: the successor takes the name now.
    pub(super) fn promote_early(&mut self, i: usize) {
        let Some(j) = self.service(i).and_then(|s| s.successor) else {
            return;
        };
        self.event(
            i,
            "overlap: exited before the new sandbox was ready; the new one takes over".into(),
        );
        self.take_name(i, j);
    }

    /// The name, the counters and the waiting clients of `i` move to `j`.
    fn take_name(&mut self, i: usize, j: usize) {
        self.successors.retain(|x| *x != j);
        let Some(old) = self.svc(i) else { return };
        old.successor = None;
        let (restarts, oom, probe_failures, waiters) = (
            old.restarts + 1,
            old.oom_kills,
            old.probe_failures,
            std::mem::take(&mut old.waiters),
        );
        let name = old.def.name.clone();
        let Some(new) = self.svc(j) else { return };
        new.predecessor = None;
        new.overlap_until = None;
        new.restarts = restarts;
        new.oom_kills = oom;
        for (n, o) in new.probe_failures.iter_mut().zip(probe_failures) {
            *n += o;
        }
        new.waiters.extend(waiters);
        self.names.insert(name, j);
        self.effects.push_back(Effect::HandedOver(i, j));
        self.answer_if_settled(j);
    }

    /// After every input: successors that became ready take over, ones
    /// that ended give up; rolling restarts move on; group waits are
    /// answered.
    pub(super) fn advance_rollouts(&mut self, now: Instant) {
        for j in std::mem::take(&mut self.orphans) {
            if self.service(j).is_some() {
                self.event(
                    j,
                    "overlap: its service was removed; stopping the new sandbox".into(),
                );
                self.stop_with(j, Intent::Remove, now);
            }
        }
        // A shutdown stops successors like everything else.
        let successors = if self.shutting_down {
            Vec::new()
        } else {
            self.successors.clone()
        };
        for j in successors {
            let Some(s) = self.service(j) else { continue };
            let Some(i) = s.predecessor else { continue };
            if Self::serving(s) {
                self.event(j, "overlap: ready; stopping the old sandbox".into());
                self.take_name(i, j);
                self.stop_with(i, Intent::Remove, now);
            } else if matches!(s.phase, Phase::Down(_))
                // Postponed for a shortage (its cgroup still held by an
                // older sandbox of the service, say) it waits; failed, not.
                || (matches!(s.phase, Phase::Backoff { .. }) && s.waiting_for.is_none())
            {
                self.successor_failed(j, "did not start", now);
            } else if s.overlap_until.is_some_and(|t| t <= now) {
                let ms = s.def.policy.restart.ready_timeout_ms;
                self.successor_failed(j, &format!("was not ready within {ms} ms"), now);
            }
        }
        if !self.rolls.is_empty() && self.shutting_down {
            // Cut short: nothing restarts during a shutdown.
            for roll in std::mem::take(&mut self.rolls) {
                for c in roll.conns {
                    self.effects.push_back(Effect::Answer(c, State::Stopping));
                }
            }
        }
        if !self.rolls.is_empty() {
            self.advance_rolls(now);
        }
        if !self.group_waits.is_empty() {
            self.answer_group_waits();
        }
    }

    /// A client went away: nobody to answer in rollouts.
    pub(super) fn forget_rollout_conn(&mut self, conn: ConnId) {
        for r in &mut self.rolls {
            r.conns.retain(|c| *c != conn);
        }
        self.group_waits.retain(|w| w.conn != conn);
    }

    /// `isola restart GROUP`: one replica at a time.
    pub fn restart_group(&mut self, group: &str, conn: ConnId, now: Instant) {
        if let Some(roll) = self.rolls.iter_mut().find(|r| r.group == group) {
            roll.conns.push(conn);
            return;
        }
        let pending = self
            .group_members(group)
            .into_iter()
            .filter_map(|i| Some(self.service(i)?.def.name.clone()))
            .collect();
        self.rolls.push(Roll {
            group: group.to_string(),
            pending,
            current: None,
            conns: vec![conn],
        });
        self.event_group(group, "rolling restart, one replica at a time");
        self.pump(now);
    }

    fn advance_rolls(&mut self, now: Instant) {
        let mut k = 0;
        while k < self.rolls.len() {
            if self.step_roll(k, now) {
                let roll = self.rolls.remove(k);
                for c in roll.conns {
                    self.effects.push_back(Effect::Answer(c, State::Running));
                }
            } else {
                k += 1;
            }
        }
    }

    /// Move roll `k` on; true once it is over.
    fn step_roll(&mut self, k: usize, now: Instant) -> bool {
        if let Some((name, target)) = self.rolls[k].current.clone() {
            let Some(s) = self.find(&name).and_then(|i| self.service(i)) else {
                self.rolls[k].current = None;
                return false;
            };
            let back = Self::serving(s) && s.restarts >= target && s.successor.is_none();
            let failed =
                s.overlap_failed || matches!(s.phase, Phase::Backoff { .. } | Phase::Down(_));
            if failed {
                let state = if s.overlap_failed {
                    State::Failed
                } else {
                    s.phase.state()
                };
                let roll = &mut self.rolls[k];
                let left = roll.pending.len();
                let (group, conns) = (roll.group.clone(), std::mem::take(&mut roll.conns));
                roll.pending.clear();
                roll.current = None;
                for c in conns {
                    self.effects.push_back(Effect::Answer(c, state));
                }
                self.event_group(
                    &group,
                    &format!(
                        "rolling restart stopped at {name} ({}); {left} replica(s) not restarted",
                        state.as_str()
                    ),
                );
                return true;
            }
            if !back {
                return false;
            }
            self.rolls[k].current = None;
        }
        while let Some(name) = self.rolls[k].pending.pop_front() {
            let Some(i) = self.find(&name) else { continue };
            let Some(s) = self.service(i) else { continue };
            let target = match s.phase {
                Phase::Running { .. } => s.restarts + 1,
                _ => s.restarts,
            };
            self.rolls[k].current = Some((name, target));
            self.restart_one(i, now);
            return false;
        }
        true
    }

    /// `isola stop GROUP` / `isola start GROUP`: every replica; answered
    /// once all have settled.
    pub fn group_request(&mut self, group: &str, stop: bool, conn: ConnId, now: Instant) {
        let members = self.group_members(group);
        let names = members
            .iter()
            .filter_map(|i| Some(self.service(*i)?.def.name.clone()))
            .collect();
        for i in members {
            if stop {
                self.stop_with(i, Intent::Stop, now);
            } else {
                self.start_one(i);
            }
        }
        self.group_waits.push(GroupWait {
            conn,
            members: names,
            want: if stop { State::Stopped } else { State::Running },
        });
        self.pump(now);
    }

    fn answer_group_waits(&mut self) {
        let mut k = 0;
        while k < self.group_waits.len() {
            let states: Option<Vec<State>> = self.group_waits[k]
                .members
                .iter()
                .filter_map(|n| self.find(n).and_then(|i| self.service(i)))
                .map(|s| s.phase.settled().then(|| s.phase.state()))
                .collect();
            match states {
                Some(states) => {
                    let w = self.group_waits.remove(k);
                    // What was asked for, or the first replica that did not
                    // get there.
                    let state = states.into_iter().find(|s| *s != w.want).unwrap_or(w.want);
                    self.effects.push_back(Effect::Answer(w.conn, state));
                }
                None => k += 1,
            }
        }
    }

    /// An event under the group's first replica's name (each replica's
    /// own events say the rest).
    pub(super) fn event_group(&mut self, group: &str, msg: &str) {
        if let Some(i) = self.group_members(group).first().copied() {
            self.event(i, format!("{group}: {msg}"));
        }
    }
}

/// 3 for `web.3`.
pub(super) fn replica_number(name: &str) -> Option<u32> {
    name.rsplit_once('.')?.1.parse().ok()
}
