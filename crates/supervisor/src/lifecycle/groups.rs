//! How many replicas a replicated service runs (pure, like the rest of
//! the core): `isola scale`, the autoscaler's decisions, and what it is
//! told of a group (`census`).
//!
//! An autoscaled service may have no replica at all: its definition as
//! written (`templates`) is kept apart from its replicas, so a group at
//! zero still exists, scales up, and is reloaded. A reload keeps the
//! count the group has (the stack file says the bounds, not the count).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::rollout::replica_number;
use super::{Core, Down, Intent, Phase, ServiceDef};
use crate::autoscale::controller::Census;

/// An autoscaled group now: its census, and every replica (those being
/// removed too).
#[derive(Debug, Default)]
pub struct GroupNow {
    pub census: Census,
    pub members: Vec<usize>,
}

impl Core {
    /// The autoscaled services' definitions, from the stack file as read
    /// (at start and at each reload, before `reload`), and what completes
    /// a replica made from one.
    pub fn set_autoscaled(
        &mut self,
        defs: Vec<ServiceDef>,
        complete: impl Fn(&mut ServiceDef) + 'static,
    ) {
        self.templates = defs.into_iter().map(|d| (d.name.clone(), d)).collect();
        self.complete = Box::new(complete);
    }

    /// The services with a fixed `replicas` as written (at start and at
    /// each reload): `isola scale` makes its replicas from them, completed
    /// as the autoscaled ones' are.
    pub fn set_replicated(&mut self, defs: Vec<ServiceDef>) {
        self.replicated = defs.into_iter().map(|d| (d.name.clone(), d)).collect();
    }

    /// A replicated service as written: autoscaled, or with a fixed count.
    pub fn written(&self, name: &str) -> Option<&ServiceDef> {
        self.templates
            .get(name)
            .or_else(|| self.replicated.get(name))
    }

    /// `isola scale NAME N` fixed `group`'s count (`Some`), or the
    /// autoscaler decides again (`None`).
    pub fn pin(&mut self, group: &str, n: Option<u32>) {
        match n {
            Some(n) => self.pinned.insert(group.to_string(), n),
            None => self.pinned.remove(group),
        };
    }

    /// Replica `k` of `t` (a group's definition), completed.
    pub(super) fn made_replica(&self, t: &ServiceDef, k: u32) -> Option<ServiceDef> {
        let mut d = t.replica(k)?;
        (self.complete)(&mut d);
        Some(d)
    }

    /// Is `name` an autoscaled service?
    pub fn autoscaled(&self, name: &str) -> Option<&ServiceDef> {
        self.templates.get(name)
    }

    /// The autoscaled services.
    pub fn autoscaled_groups(&self) -> impl Iterator<Item = &str> {
        self.templates.keys().map(String::as_str)
    }

    /// The replicas of `group` that are wanted: every member but those
    /// being removed.
    fn wanted(&self, group: &str) -> Vec<usize> {
        self.group_members(group)
            .into_iter()
            .filter(|i| !self.service(*i).is_some_and(|s| removed(s.phase)))
            .collect()
    }

    /// What the autoscaler is told of `group` (the loop takes every
    /// group's at once: `groups_now`).
    #[cfg(test)]
    pub fn census(&self, group: &str, now: Instant) -> Census {
        self.groups_now(now)
            .remove(group)
            .map(|g| g.census)
            .unwrap_or_default()
    }

    /// Every autoscaled group's census and replicas, in one pass over the
    /// services (a reading of a thousand groups is not a thousand passes).
    pub fn groups_now(&self, now: Instant) -> HashMap<&str, GroupNow> {
        let mut out: HashMap<&str, GroupNow> = self
            .templates
            .keys()
            .map(|g| (g.as_str(), GroupNow::default()))
            .collect();
        for r in &self.rolls {
            if let Some(g) = out.get_mut(r.group.as_str()) {
                g.census.settling = true;
            }
        }
        for (i, s) in self.services() {
            let Some(g) = s.def.group.as_deref().and_then(|g| out.get_mut(g)) else {
                continue;
            };
            if s.predecessor.is_some() {
                continue;
            }
            g.members.push(i);
            if removed(s.phase) {
                continue;
            }
            // Starting, or not ready yet — for `readyTimeoutMs` at most: a
            // replica that never gets ready does not hold every decision.
            // (Queued, waiting for a slot or a dependency, has no time.)
            let limit = Duration::from_millis(s.def.policy.restart.ready_timeout_ms);
            // 0: no limit.
            let young =
                |since: Instant| limit.is_zero() || now.saturating_duration_since(since) < limit;
            let c = &mut g.census;
            c.wanted += 1;
            c.settling |= match s.phase {
                Phase::Queued => true,
                Phase::Launching { since, .. } => young(since),
                Phase::Running { since } => !Self::serving(s) && young(since),
                _ => false,
            };
            c.stopped |= s.phase == Phase::Down(Down::Stopped);
            c.running += u32::from(matches!(s.phase, Phase::Running { .. }));
        }
        out
    }

    /// `isola scale GROUP N`: add replicas (the lowest free numbers) or
    /// stop and remove the highest. A fixed count holds until the next
    /// reload, which goes by the stack file.
    pub fn scale(&mut self, group: &str, n: u32, now: Instant) -> Result<String, String> {
        let have = self.resize(group, n, None, now)?;
        Ok(format!("{group}: {have} → {n} replicas"))
    }

    /// The autoscaler's decision (or a pin): `to` replicas, because
    /// `why`. Refused while the stack goes down.
    pub fn autoscale(
        &mut self,
        group: &str,
        to: u32,
        why: &str,
        now: Instant,
    ) -> Result<(), String> {
        self.resize(group, to, Some(why), now).map(|_| ())
    }

    /// `n` replicas of `group`; how many it had.
    fn resize(
        &mut self,
        group: &str,
        n: u32,
        why: Option<&str>,
        now: Instant,
    ) -> Result<u32, String> {
        if self.shutting_down {
            return Err(format!("{group}: the stack is going down"));
        }
        let members = self.wanted(group);
        // The group's definition as written, completed per replica; else
        // (a stack loaded without them: tests) the first replica's.
        let written = self
            .templates
            .get(group)
            .or_else(|| self.replicated.get(group));
        let (template, made) = match written {
            Some(t) => (Some(t), true),
            None => (
                members
                    .first()
                    .and_then(|i| self.service(*i))
                    .map(|s| &s.def),
                false,
            ),
        };
        let template = template.cloned().ok_or_else(|| {
            format!("{group}: not a replicated service (give it \"replicas\" in the stack file)")
        })?;
        let have = members.len();
        let want = n as usize;
        let msg = match why {
            Some(why) => format!("scale {have} → {want}: {why}"),
            None => format!("scaled from {have} to {want} replicas"),
        };
        // Said before what it does (under a replica's name: the first
        // one, or the first new one when there was none).
        if have > 0 {
            self.event_group(group, &msg);
        }
        let mut numbered: Vec<(u32, usize)> = members
            .iter()
            .filter_map(|i| Some((replica_number(&self.service(*i)?.def.name)?, *i)))
            .collect();
        numbered.sort_unstable();
        if want > have {
            let mut k = 1;
            for _ in have..want {
                while numbered.iter().any(|(x, _)| *x == k) || self.taken(group, k) {
                    k += 1;
                }
                let def = match made {
                    true => self.made_replica(&template, k),
                    false => template.replica(k),
                };
                if let Some(def) = def {
                    let i = self.add_service(def);
                    self.enter(i, Phase::Queued);
                    numbered.push((k, i));
                }
            }
        } else {
            for (_, i) in numbered.iter().rev().take(have - want) {
                self.stop_with(*i, Intent::Remove, now);
            }
        }
        if have == 0 {
            self.event_group(group, &msg);
        }
        self.pump(now);
        u32::try_from(have).map_err(|_| "too many replicas".into())
    }

    /// A replica name still held by one being removed (its sandbox is
    /// still going): a new one takes the next number.
    fn taken(&self, group: &str, k: u32) -> bool {
        self.find(&crate::spec::stack::replica_name(group, k))
            .is_some()
    }

    /// A reload's definitions, with the replicas the autoscaled groups
    /// have now (at most their new `max`): the stack file lists only the
    /// first `min`.
    pub(super) fn keep_scaled(&self, defs: &mut Vec<ServiceDef>) {
        for (group, t) in &self.templates {
            let max = t.policy.autoscale.as_ref().map_or(0, |a| a.max) as usize;
            let mut numbers: Vec<u32> = self
                .wanted(group)
                .into_iter()
                .filter_map(|i| replica_number(&self.service(i)?.def.name))
                .collect();
            numbers.sort_unstable();
            let pinned = self.pinned.contains_key(group);
            if pinned {
                // Exactly the replicas it has, whatever `min` and `max`
                // say: no start and stop for a count that stays.
                defs.retain(|d| d.group_name() != group);
            } else {
                numbers.truncate(max);
            }
            for k in numbers {
                if !defs
                    .iter()
                    .any(|d| d.replica_number() == Some(k) && d.group_name() == group)
                {
                    defs.extend(self.made_replica(t, k));
                }
            }
        }
    }
}

/// On its way out of the group: stopping to be removed, or asked to be
/// while its init still sets up.
fn removed(p: Phase) -> bool {
    matches!(
        p,
        Phase::Stopping {
            intent: Intent::Remove,
            ..
        } | Phase::Launching {
            then: Some(Intent::Remove),
            ..
        }
    )
}
