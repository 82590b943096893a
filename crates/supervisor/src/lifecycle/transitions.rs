//! How the core moves a service between phases: the one entry into a
//! phase ([`Core::enter`]), stops by intent, what follows an exit, and the
//! pump that launches queued services and carries a shutdown on.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use isola_runtime::init;

use super::exit_policy::{self, LastExit, Next, Reason};
use super::{ConnId, Core, Down, Effect, Intent, Phase, Service};
use crate::spec::health::Condition;

/// May a queued service start, as far as its dependencies go?
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Gate {
    Go,
    /// Not yet: waiting for this.
    Wait(String),
    /// A condition that can no longer be met: the service fails.
    Never(String),
}

impl Core {
    // ---- transitions -----------------------------------------------------

    /// The one way into a phase: keeps the launching count and answers the
    /// service's waiting clients once it has settled.
    pub(super) fn enter(&mut self, i: usize, phase: Phase) {
        self.enter_unsettled(i, phase);
        self.answer_if_settled(i);
    }

    /// [`Core::enter`] for a phase that is left again in the same input:
    /// its waiters are not answered.
    pub(super) fn enter_unsettled(&mut self, i: usize, phase: Phase) {
        let Some(s) = self.services.get_mut(i).and_then(Option::as_mut) else {
            return;
        };
        let was_launching = matches!(s.phase, Phase::Launching { .. });
        let is_launching = matches!(phase, Phase::Launching { .. });
        let was_queued = s.phase == Phase::Queued;
        let is_queued = phase == Phase::Queued;
        s.phase = phase;
        match (was_launching, is_launching) {
            (true, false) => self.launching -= 1,
            (false, true) => self.launching += 1,
            _ => {}
        }
        match (was_queued, is_queued) {
            (true, false) => self.queued -= 1,
            (false, true) => {
                self.queued += 1;
                self.first_queued = self.first_queued.min(i);
            }
            _ => {}
        }
        self.touch(i);
    }

    /// Change the data of the current phase (same phase, same count).
    pub(super) fn set(&mut self, i: usize, phase: Phase) {
        if let Some(s) = self.svc(i) {
            debug_assert_eq!(
                std::mem::discriminant(&s.phase),
                std::mem::discriminant(&phase)
            );
            s.phase = phase;
        }
        self.touch(i);
    }

    pub(super) fn answer_if_settled(&mut self, i: usize) {
        let Some(s) = self.services.get_mut(i).and_then(Option::as_mut) else {
            return;
        };
        if !s.phase.settled() {
            return;
        }
        let state = s.phase.state();
        for conn in s.waiters.drain(..) {
            self.effects.push_back(Effect::Answer(conn, state));
        }
    }

    /// Ask service `i` to stop for `intent`.
    pub(super) fn stop_with(&mut self, i: usize, intent: Intent, now: Instant) {
        let Some(s) = self.svc(i) else { return };
        match s.phase {
            Phase::Running { since } => {
                let sig = s.def.policy.stop.signal;
                let kill_at = now + s.def.policy.stop.timeout;
                self.enter(
                    i,
                    Phase::Stopping {
                        since,
                        intent,
                        kill_at: Some(kill_at),
                    },
                );
                // The init forwards these to the payload; anything else
                // (SIGKILL, SIGSTOP…) goes to the whole group at once.
                self.effects.push_back(if init::FORWARDED.contains(&sig) {
                    Effect::Signal(i, sig)
                } else {
                    Effect::KillGroup(i)
                });
                self.event(i, format!("stopping ({sig})"));
            }
            Phase::Launching { since, then } => {
                let then = Some(then.map_or(intent, |t| t.then(intent)));
                self.set(i, Phase::Launching { since, then });
            }
            Phase::Stopping {
                since,
                intent: current,
                kill_at,
            } => self.set(
                i,
                Phase::Stopping {
                    since,
                    intent: current.then(intent),
                    kill_at,
                },
            ),
            // Nothing runs: the stop is done.
            Phase::Queued | Phase::Backoff { .. } | Phase::Down(_) => self.after_stopped(i, intent),
        }
    }

    /// The service is down after a stop for `intent`: what the intent says next.
    pub(super) fn after_stopped(&mut self, i: usize, intent: Intent) {
        let shutting_down = self.shutting_down;
        let Some(s) = self.svc(i) else { return };
        if let Some(def) = s.next_def.take() {
            s.def = *def;
            s.forgive();
        }
        match intent {
            // A restart asked for just before a shutdown does not outlive it.
            Intent::Restart if !shutting_down => {
                s.restarts += 1;
                self.enter(i, Phase::Queued);
            }
            Intent::Remove => {
                let name = s_name(&self.services[i]);
                // An overlap's old sandbox: its name lives on in the new one.
                let replaced = self.names.get(&name) != Some(&i);
                self.event(i, if replaced { "replaced" } else { "removed" }.into());
                self.enter(i, Phase::Down(Down::Stopped));
                self.effects.push_back(Effect::Forget(i));
                if !replaced {
                    self.names.remove(&name);
                }
                self.retire(i);
            }
            _ => {
                self.event(i, "stopped".into());
                self.enter(i, Phase::Down(Down::Stopped));
                self.effects.push_back(Effect::DropFdStore(i));
            }
        }
    }

    /// A start ran into a shortage: wait on the restart curve and try again,
    /// whatever the restart policy and the start limit say (the service is
    /// not at fault); say how many wait, when that number has doubled.
    pub(super) fn postpone(&mut self, i: usize, why: &str, now: Instant) {
        let unit = self.random_unit();
        let Some(s) = self.svc(i) else { return };
        s.streak += 1;
        let delay = s.def.policy.restart.delay(s.streak, unit);
        s.waiting_for = Some(why.to_string());
        let msg = format!(
            "start postponed: {why}; retrying in {} ms",
            delay.as_millis()
        );
        self.event(i, msg);
        self.enter(i, Phase::Backoff { until: now + delay });
        let waiting = self
            .services()
            .filter(|(_, s)| s.waiting_for.is_some())
            .count();
        if waiting >= (2 * self.waiting_noted).max(1) {
            self.waiting_noted = waiting;
            self.effects.push_back(Effect::Note(format!(
                "{waiting} service(s) waiting for resources (file descriptors, memory, \
                 pids); each retries with backoff"
            )));
        }
    }

    /// Service `i` started (or stopped waiting): when the last one waiting
    /// for resources got them, say so.
    pub(super) fn got_resources(&mut self, i: usize) {
        let Some(s) = self.svc(i) else { return };
        if s.waiting_for.take().is_none() || self.waiting_noted == 0 {
            return;
        }
        if !self.services().any(|(_, s)| s.waiting_for.is_some()) {
            self.waiting_noted = 0;
            self.effects.push_back(Effect::Note(
                "every service that waited for resources has started".into(),
            ));
        }
    }

    /// After an exit (or a failed start): a stop's intent, else the restart
    /// policy, decides.
    pub(super) fn after_exit(
        &mut self,
        i: usize,
        code: i32,
        exit: LastExit,
        ran: Duration,
        intent: Option<Intent>,
        now: Instant,
    ) {
        let unit = self.random_unit();
        let shutting_down = self.shutting_down;
        let Some(s) = self.svc(i) else { return };
        s.last_exit = Some(exit);
        let what = describe(code, &exit);
        let (successor, predecessor) = (s.successor, s.predecessor);
        if intent.is_none() && predecessor.is_some() {
            // A successor that ends never restarts: the old sandbox serves.
            self.event(i, what.clone());
            self.enter(i, Phase::Down(Down::Exited));
            self.successor_failed(i, &what, now);
            return;
        }
        if intent.is_none() && successor.is_some() {
            self.event(i, what);
            self.promote_early(i);
            self.after_stopped(i, Intent::Remove);
            return;
        }
        if let Some(intent) = intent {
            self.event(i, what);
            self.after_stopped(i, intent);
            return;
        }
        if shutting_down {
            self.event(i, what);
            self.enter(i, Phase::Down(Down::Stopped));
            return;
        }
        let (phase, msg) = by_policy(s, &exit, what, ran, unit, now);
        self.event(i, msg);
        self.enter(i, phase);
    }

    /// After every input: launch what may launch, carry a shutdown on, and
    /// answer `isola down` once everything is down.
    pub(super) fn pump(&mut self, now: Instant) {
        if !self.successors.is_empty()
            || !self.rolls.is_empty()
            || !self.group_waits.is_empty()
            || !self.orphans.is_empty()
        {
            self.advance_rollouts(now);
        }
        if self.shutting_down {
            self.progress_shutdown(now);
        } else {
            self.launch_queued(now);
        }
    }

    /// Launch queued services, in stack order, while slots are free; a
    /// service waits while a dependency's condition is not met yet, and
    /// fails (saying why) once it can no longer be met.
    pub(super) fn launch_queued(&mut self, now: Instant) {
        if self.queued == 0 {
            return;
        }
        // No service before `first_queued` is queued: a stack of 10,000
        // does not rescan the thousands already started at every start.
        let mut leading = true;
        for i in self.first_queued..self.services.len() {
            if self.launching >= self.max_launching {
                return;
            }
            let Some(s) = self.service(i) else { continue };
            if s.phase != Phase::Queued {
                if leading {
                    self.first_queued = i + 1;
                }
                continue;
            }
            leading = false;
            match self.dependency_gate(s) {
                Gate::Go => {}
                Gate::Wait(why) => {
                    if let Some(s) = self.svc(i) {
                        s.blocked_on = Some(why);
                    }
                    continue;
                }
                Gate::Never(why) => {
                    self.event(i, format!("not started: {why}"));
                    if let Some(s) = self.svc(i) {
                        s.blocked_on = Some(why);
                    }
                    self.enter(i, Phase::Down(Down::Failed));
                    continue;
                }
            }
            if let Some(s) = self.svc(i) {
                s.starts.push_back(now);
                s.blocked_on = None;
            }
            self.enter(
                i,
                Phase::Launching {
                    since: now,
                    then: None,
                },
            );
            self.effects.push_back(Effect::Launch(i));
        }
    }

    /// Whether `s` may start as far as its `dependsOn` conditions go.
    pub(super) fn dependency_gate(&self, s: &Service) -> Gate {
        let mut gate = Gate::Go;
        for d in &s.def.policy.depends_on {
            let Some(o) = self.find(&d.name).and_then(|j| self.service(j)) else {
                continue;
            };
            let name = &d.name;
            let this = match (d.condition, o.phase) {
                (Condition::Started, Phase::Queued | Phase::Launching { .. }) => {
                    Gate::Wait(format!("{name} to start"))
                }
                (Condition::Started, _) => Gate::Go,
                (Condition::Healthy, Phase::Running { .. }) if o.health.ready => Gate::Go,
                (Condition::Healthy, Phase::Down(Down::Exited | Down::Failed)) => {
                    Gate::Never(format!(
                        "{name} ({}) will not become healthy",
                        o.phase.state().as_str()
                    ))
                }
                (Condition::Healthy, _) => Gate::Wait(format!("{name} to be healthy")),
                (Condition::Completed, Phase::Down(Down::Exited)) => match o.last_exit {
                    Some(e) if e.reason == Reason::Exited && e.code == Some(0) => Gate::Go,
                    Some(e) => Gate::Never(format!(
                        "{name} did not complete: {}",
                        describe(e.code.unwrap_or(128 + e.signal.unwrap_or(0)), &e)
                    )),
                    None => Gate::Wait(format!("{name} to complete")),
                },
                (Condition::Completed, Phase::Down(Down::Failed)) => {
                    Gate::Never(format!("{name} did not complete: it failed"))
                }
                (Condition::Completed, _) => Gate::Wait(format!("{name} to complete")),
            };
            match this {
                Gate::Never(_) => return this,
                Gate::Wait(_) if gate == Gate::Go => gate = this,
                _ => {}
            }
        }
        gate
    }

    /// Drop queued starts; stop every service whose dependents are all
    /// down (reverse dependency order, as far as it can go now).
    pub(super) fn progress_shutdown(&mut self, now: Instant) {
        for i in 0..self.services.len() {
            if self.phase(i) == Some(Phase::Queued) {
                self.enter(i, Phase::Down(Down::Stopped));
            }
        }
        // One pass per round over names that still have a live dependent
        // (not a scan of every service per service: a thousand services
        // stop in linear time). A round that took a service down may free
        // its dependencies: go again.
        loop {
            let needed: HashSet<&str> = self
                .services()
                .filter(|(_, s)| s.phase.alive())
                .flat_map(|(_, s)| s.def.policy.depends_on.iter().map(|d| d.name.as_str()))
                .collect();
            let ready: Vec<usize> = self
                .services()
                .filter(|(_, s)| {
                    let stoppable = match s.phase {
                        Phase::Running { .. } | Phase::Backoff { .. } => true,
                        Phase::Stopping { intent, .. } => intent == Intent::Restart,
                        _ => false,
                    };
                    stoppable && !needed.contains(s.def.name.as_str())
                })
                .map(|(i, _)| i)
                .collect();
            let mut freed = false;
            for i in ready.into_iter().rev() {
                self.stop_with(i, Intent::Shutdown, now);
                freed |= self.phase(i).is_some_and(|p| !p.alive());
            }
            if !freed {
                break;
            }
        }
        if !self.finished && !self.services().any(|(_, s)| s.phase.alive()) {
            self.finished = true;
            for conn in std::mem::take(&mut self.down_waiters) {
                self.effects.push_back(Effect::AnswerDown(conn));
            }
        }
    }

    // ---- helpers ---------------------------------------------------------

    pub(super) fn svc(&mut self, i: usize) -> Option<&mut Service> {
        self.services.get_mut(i).and_then(Option::as_mut)
    }

    pub(super) fn phase(&self, i: usize) -> Option<Phase> {
        self.service(i).map(|s| s.phase)
    }

    pub(super) fn wait(&mut self, i: usize, conn: ConnId) {
        if let Some(s) = self.svc(i) {
            s.waiters.push(conn);
        }
    }

    pub(super) fn event(&mut self, i: usize, msg: String) {
        self.effects.push_back(Effect::Event(i, msg));
    }

    /// A uniform sample in [0, 1) (xorshift64*).
    pub(super) fn random_unit(&mut self) -> f64 {
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        let x = self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d);
        // The top 53 bits make an exact f64 in [0, 1).
        (x >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn s_name(s: &Option<Service>) -> String {
    s.as_ref().map(|s| s.def.name.clone()).unwrap_or_default()
}

/// An exit in words, for events.
fn describe(code: i32, exit: &LastExit) -> String {
    match exit.reason {
        exit_policy::Reason::Exited => format!("exited with code {code}"),
        exit_policy::Reason::Signaled => format!("killed by signal {}", code - 128),
        exit_policy::Reason::OomKill if exit.signal == Some(libc::SIGKILL) => {
            "killed by the OOM killer".to_string()
        }
        exit_policy::Reason::OomKill => format!("ended by signal {} after an OOM kill", code - 128),
        exit_policy::Reason::Unhealthy
        | exit_policy::Reason::Watchdog
        | exit_policy::Reason::Resource
        | exit_policy::Reason::Network => {
            let how = if code > 128 {
                format!("signal {}", code - 128)
            } else {
                format!("code {code}")
            };
            let what = match exit.reason {
                exit_policy::Reason::Resource => "its resource use",
                exit_policy::Reason::Network => "its network",
                _ => "its health",
            };
            format!("stopped for {what} ({how})")
        }
    }
}

/// An exit no one asked for, judged by the service's restart policy: the
/// phase it goes to and what to say.
fn by_policy(
    s: &mut Service,
    exit: &LastExit,
    what: String,
    ran: Duration,
    unit: f64,
    now: Instant,
) -> (Phase, String) {
    let window = Duration::from_millis(s.def.policy.restart.limit.interval_ms);
    while s
        .starts
        .front()
        .is_some_and(|t| now.saturating_duration_since(*t) > window)
    {
        s.starts.pop_front();
    }
    let cx = exit_policy::Context {
        run: ran,
        recent_starts: s.starts.len(),
        streak: s.streak,
        unit,
    };
    match exit_policy::after_exit(&s.def.policy, exit, &cx) {
        Next::Exited => (Phase::Down(Down::Exited), what),
        Next::Stopped => (
            Phase::Down(Down::Stopped),
            format!("{what}; stopped by its OOM policy"),
        ),
        Next::Failed => {
            let l = &s.def.policy.restart.limit;
            let msg = format!(
                "{what}; failed: more than {} starts within {} ms (isola start {} to retry)",
                l.burst, l.interval_ms, s.def.name
            );
            (Phase::Down(Down::Failed), msg)
        }
        Next::Restart { delay, streak } => {
            s.streak = streak;
            let msg = format!("{what}; restarting in {} ms", delay.as_millis());
            (Phase::Backoff { until: now + delay }, msg)
        }
    }
}
