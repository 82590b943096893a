//! CHECK, at a reload: each running sandbox's CNI networks as their ADD
//! left them, a few at a time; one that fails is reported broken (its
//! service restarts). Lists before CNI 0.4.0, or with `disableCheck`, are
//! not checked (their plugins refuse CHECK).

use nix::unistd::Pid;
use serde_json::Value;

use super::plugin::Verb;
use super::{CniRuns, Exited, Op, OpId, MAX_CHECKS};

impl CniRuns {
    /// Every sandbox whose ADDs are done: its networks queued for CHECK;
    /// the first few start now.
    pub(crate) fn check_all(&mut self) -> Vec<(Pid, OpId)> {
        let ready = self
            .starts
            .iter()
            .filter(|(_, s)| s.pending == 0 && s.failed.is_none() && !s.ending);
        let queued: Vec<_> = ready
            .flat_map(|(i, s)| {
                let each = s.attachments.iter().enumerate();
                each.filter(|(_, a)| a.check && a.result.is_some())
                    .map(move |(at, a)| (*i, at, a.clone()))
            })
            .collect();
        self.checks.extend(queued);
        self.more_checks()
    }

    /// CHECKs from the queue while there is room.
    fn more_checks(&mut self) -> Vec<(Pid, OpId)> {
        let mut spawned = Vec::new();
        while self.checking < MAX_CHECKS {
            let Some((i, at, a)) = self.checks.pop_front() else {
                break;
            };
            if let Ok(op) = self.spawn(i, Verb::Check, at, 0, &a, &a.netns) {
                self.checking += 1;
                spawned.push(op);
            }
        }
        spawned
    }

    pub(super) fn check_exited(&mut self, op: &Op, answer: Result<Value, String>) -> Exited {
        let mut out = Exited::default();
        let a = self.attachment_of(op).cloned();
        let next = op.plugin + 1;
        match (a, answer) {
            (Some(a), Ok(_)) if next < a.plugins.len() => {
                match self.spawn(op.service, Verb::Check, op.at, next, &a, &a.netns) {
                    Ok(spawned) => {
                        out.spawned.push(spawned);
                        return out;
                    }
                    Err(e) => out.broken = Some((op.service, e)),
                }
            }
            (Some(a), Err(e)) => {
                let why = format!("network {} ({}): CNI CHECK: {e}", a.network, a.ifname);
                out.broken = Some((op.service, why));
            }
            // Passed, or its sandbox went meanwhile.
            _ => {}
        }
        self.checking = self.checking.saturating_sub(1);
        out.spawned.extend(self.more_checks());
        out
    }
}
