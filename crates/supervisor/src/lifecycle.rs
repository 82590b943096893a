//! The lifecycle of every service of a stack: one state machine, no I/O.
//!
//! Each service is in one [`Phase`], which carries the data that phase
//! needs (when it started, when to kill, why it is stopping). Inputs — a
//! client's request, the init's report, an exit, a timer, a reload — are
//! methods of [`Core`] taking the current time; they change phases and queue
//! [`Effect`]s (launch this sandbox, signal that one, emit an event, answer
//! a client) that the event loop executes. Every phase change goes through
//! [`Core::enter`], which keeps the count of launching sandboxes and answers
//! the clients waiting for a service once it has settled.
//!
//! ```text
//!            start / backoff over / restart
//!   Down ──────────────► Queued ──(slot free, deps started)──► Launching
//!    ▲ ▲                  │ stop                                │ init reports
//!    │ └──────────────────┘                          start failed│ ▼
//!    │                                     Backoff ◄──────── (exit) ◄── Running
//!    │        stopped / removed                ▲  restart policy   ▲       │ stop, OOM policy,
//!    └──────────────────────────── Stopping ───┘ (no intent)       │       │ shutdown
//!                                     ▲   (exit, with an intent)   │       ▼
//!                                     └────────────────────────────┴── Stopping
//! ```

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::lifecycle::exit_policy::LastExit;
use crate::spec::policy::OomPolicy;
use crate::spec::stack::ServiceDef;

pub mod exit_policy;
mod groups;
mod handover;
mod indices;
mod phase;
mod rollout;
mod run_health;
#[cfg(test)]
mod tests;
mod transitions;

pub use groups::GroupNow;
pub use phase::{ConnId, Down, Effect, Exit, Intent, Phase, Service, StartError, State};
pub use run_health::{Notice, ProbeResult, ProbeState, RunHealth};

/// The whole stack's lifecycle.
pub struct Core {
    services: Vec<Option<Service>>,
    /// Index of each service by name (dependencies are looked up per start).
    names: HashMap<String, usize>,
    /// Services in `Launching` (kept by [`Core::enter`]).
    launching: usize,
    /// Services in `Queued` (kept by [`Core::enter`]): no scan for starts
    /// when there is none.
    queued: usize,
    /// No service below this index is `Queued` (kept by [`Core::enter`] and
    /// `launch_queued`).
    first_queued: usize,
    /// Every service's next deadline, pushed whenever it may have changed
    /// ([`Core::touch`]); entries that no longer match are dropped when
    /// they come up. A thousand services probed every second cost a heap
    /// operation per probe, not a scan of all of them per event.
    timers: BinaryHeap<Reverse<(Instant, usize)>>,
    /// Where the probe grid starts (see `run_health::PROBE_GRID`).
    epoch: Instant,
    max_launching: usize,
    shutting_down: bool,
    down_waiters: Vec<ConnId>,
    /// Services waiting for resources when that was last reported.
    waiting_noted: usize,
    /// Down answered: the loop may end.
    finished: bool,
    effects: VecDeque<Effect>,
    /// xorshift state for backoff jitter (seeded by the caller: tests are
    /// deterministic).
    rng: u64,
    /// Overlap successors not yet ready (see `rollout`).
    successors: Vec<usize>,
    rolls: Vec<rollout::Roll>,
    group_waits: Vec<rollout::GroupWait>,
    /// Indices of forgotten services, reusable once the loop is done with
    /// the wakeup that forgot them ([`Core::recycle`]): a stack reloaded
    /// and overlapped a thousand times keeps tables as long as the most
    /// services it had at once.
    retired: Vec<usize>,
    free: Vec<usize>,
    /// Overlap successors whose service was removed before they took its
    /// name: stopped at the next `pump`.
    orphans: Vec<usize>,
    /// Autoscaled services as written, by name (see `groups`).
    templates: HashMap<String, ServiceDef>,
    /// What the loop adds to a replica made from one of them (its notify
    /// socket and files are its own, by its name).
    complete: Box<dyn Fn(&mut ServiceDef)>,
    /// The services with a fixed `replicas` as written, by name: what
    /// `isola scale` makes a replica of.
    replicated: HashMap<String, ServiceDef>,
    /// Their counts a person fixed (`isola scale NAME N`): a reload keeps
    /// exactly the replicas they have.
    pinned: HashMap<String, u32>,
}

impl Core {
    /// The stack's services, in dependency order; up to `max_launching`
    /// sandboxes set up at once.
    pub fn new(defs: Vec<ServiceDef>, max_launching: usize, seed: u64) -> Core {
        let names = defs
            .iter()
            .enumerate()
            .map(|(i, d)| (d.name.clone(), i))
            .collect();
        Core {
            services: defs.into_iter().map(|d| Some(Service::new(d))).collect(),
            names,
            launching: 0,
            queued: 0,
            first_queued: 0,
            timers: BinaryHeap::new(),
            epoch: Instant::now(),
            max_launching: max_launching.max(1),
            shutting_down: false,
            down_waiters: Vec::new(),
            waiting_noted: 0,
            finished: false,
            effects: VecDeque::new(),
            rng: seed | 1,
            successors: Vec::new(),
            rolls: Vec::new(),
            group_waits: Vec::new(),
            retired: Vec::new(),
            free: Vec::new(),
            orphans: Vec::new(),
            templates: HashMap::new(),
            complete: Box::new(|_| {}),
            pinned: HashMap::new(),
            replicated: HashMap::new(),
        }
    }

    // ---- what the loop reads -------------------------------------------

    pub fn next_effect(&mut self) -> Option<Effect> {
        self.effects.pop_front()
    }

    pub fn len(&self) -> usize {
        self.services.len()
    }

    pub fn is_empty(&self) -> bool {
        self.services.iter().all(Option::is_none)
    }

    pub fn service(&self, i: usize) -> Option<&Service> {
        self.services.get(i).and_then(Option::as_ref)
    }

    /// The services that exist, with their index.
    pub fn services(&self) -> impl Iterator<Item = (usize, &Service)> {
        self.services
            .iter()
            .enumerate()
            .filter_map(|(i, s)| Some((i, s.as_ref()?)))
    }

    pub fn find(&self, name: &str) -> Option<usize> {
        self.names.get(name).copied()
    }

    /// The nearest time a phase acts by itself (backoff over, stop timeout,
    /// a probe due, a watchdog).
    pub fn next_deadline(&mut self) -> Option<Instant> {
        while let Some(Reverse((t, i))) = self.timers.peek().copied() {
            if self.deadline_of(i) == Some(t) {
                return Some(t);
            }
            self.timers.pop();
        }
        None
    }

    /// Service `i`'s own next deadline.
    fn deadline_of(&self, i: usize) -> Option<Instant> {
        let s = self.service(i)?;
        let own = match s.phase {
            Phase::Running { .. } => s.health.next_deadline(),
            p => p.deadline(),
        };
        match (own, s.overlap_until) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Service `i`'s deadline may have changed: file it.
    pub(super) fn touch(&mut self, i: usize) {
        if let Some(t) = self.deadline_of(i) {
            self.timers.push(Reverse((t, i)));
        }
    }

    pub fn shutting_down(&self) -> bool {
        self.shutting_down
    }

    /// Shut down and every service down: the loop may end.
    pub fn finished(&self) -> bool {
        self.finished
    }

    // ---- inputs ----------------------------------------------------------

    /// `isola up`: start every service, in dependency order.
    pub fn start_all(&mut self, now: Instant) {
        self.epoch = now;
        for i in 0..self.services.len() {
            if self.phase(i).is_some_and(|p| !p.alive()) {
                self.enter(i, Phase::Queued);
            }
        }
        self.pump(now);
    }

    /// `isola start NAME`.
    pub fn start(&mut self, i: usize, conn: ConnId, now: Instant) {
        self.wait(i, conn);
        self.start_one(i);
        self.pump(now);
    }

    /// Start service `i` unless it runs (no client waits here).
    pub(super) fn start_one(&mut self, i: usize) {
        let Some(phase) = self.phase(i) else { return };
        if let Some(s) = self.svc(i) {
            s.blocked_on = None;
        }
        match phase {
            Phase::Running { .. } => self.answer_if_settled(i),
            Phase::Queued => {}
            Phase::Launching { since, then } => {
                let then = then.filter(|t| matches!(t, Intent::Remove | Intent::Shutdown));
                self.set(i, Phase::Launching { since, then });
            }
            Phase::Stopping {
                since,
                intent,
                kill_at,
            } => self.set(
                i,
                Phase::Stopping {
                    since,
                    intent: intent.then(Intent::Restart),
                    kill_at,
                },
            ),
            Phase::Backoff { .. } | Phase::Down(_) => {
                if let Some(s) = self.svc(i) {
                    s.forgive();
                }
                self.enter(i, Phase::Queued);
            }
        }
    }

    /// `isola stop NAME` (an overlap on its way is given up too).
    pub fn stop(&mut self, i: usize, conn: ConnId, now: Instant) {
        // Before this client waits: the overlap's own clients hear that it
        // failed, this one hears `stopped` once the sandbox is down.
        if let Some(j) = self.service(i).and_then(|s| s.successor) {
            self.successor_failed(j, "was stopped with it", now);
        }
        self.wait(i, conn);
        self.stop_with(i, Intent::Stop, now);
        self.pump(now);
    }

    /// `isola restart NAME`: overlapping when its policy says so.
    pub fn restart(&mut self, i: usize, conn: ConnId, now: Instant) {
        if self.phase(i).is_none() {
            return;
        }
        self.wait(i, conn);
        self.restart_one(i, now);
        self.pump(now);
    }

    /// SIGTERM, SIGINT or `isola down` (`conn` answered once all is down).
    pub fn shutdown(&mut self, conn: Option<ConnId>, now: Instant) {
        if let Some(c) = conn {
            self.down_waiters.push(c);
        }
        if !self.shutting_down {
            self.shutting_down = true;
            self.effects.push_back(Effect::Note(match conn {
                Some(_) => "shutting down (isola down)".into(),
                None => "shutting down".into(),
            }));
        }
        self.pump(now);
    }

    /// The launch of service `i` did not produce a sandbox, or its init
    /// reported a setup or exec failure: an exit with that code, judged by
    /// the restart policy like any other — unless it was a shortage, which
    /// only postpones the start.
    pub fn start_failed(&mut self, i: usize, e: StartError, now: Instant) {
        let Some(Phase::Launching { then, .. }) = self.phase(i) else {
            return;
        };
        if e.transient && then.is_none() && !self.shutting_down {
            self.postpone(i, &e.why, now);
        } else {
            self.event(i, format!("start failed: {}", e.why));
            let exit = LastExit::classify(e.code, 0, false);
            if let Some(s) = self.svc(i) {
                s.last_exit_message = None;
            }
            self.after_exit(i, e.code, exit, Duration::ZERO, then, now);
        }
        self.pump(now);
    }

    /// The init of service `i` started its payload (host pid `pid`).
    pub fn started(&mut self, i: usize, pid: i32, now: Instant) {
        let Some(Phase::Launching { since, then }) = self.phase(i) else {
            return;
        };
        // Not settled yet if a stop is pending: its waiters wait for it.
        self.enter_unsettled(i, Phase::Running { since });
        self.got_resources(i);
        self.event(i, format!("running (pid {pid})"));
        self.begin_health(i, now);
        match then {
            // Asked to stop (or restart, or go) while it set up.
            Some(intent) => self.stop_with(i, intent, now),
            None => self.answer_if_settled(i),
        }
        self.pump(now);
    }

    /// Service `i`'s sandbox is gone: its init exited and its cgroup is empty.
    pub fn exited(&mut self, i: usize, exit: Exit, now: Instant) {
        let (since, intent) = match self.phase(i) {
            Some(Phase::Running { since }) => (since, None),
            Some(Phase::Stopping { since, intent, .. }) => (since, Some(intent)),
            _ => return,
        };
        let mut last =
            LastExit::classify(exit.code, exit.oom_kills, intent == Some(Intent::OomStop));
        let Some(s) = self.svc(i) else { return };
        s.oom_kills += exit.new_oom_kills;
        s.health.ready = false;
        s.health.watchdog_at = None;
        let health_kill = s.health_kill.take();
        s.last_exit_message = None;
        // A health kill is judged by the restart policy, as a failure.
        let intent = match (intent, health_kill) {
            (Some(Intent::Unhealthy), Some((reason, why))) => {
                last.reason = reason;
                s.last_exit_message = Some(why);
                None
            }
            (Some(Intent::Unhealthy), None) => None,
            (intent, _) => intent,
        };
        let ran = now.saturating_duration_since(since);
        self.after_exit(i, exit.code, last, ran, intent, now);
        self.pump(now);
    }

    /// The kernel's OOM killer killed `new` processes of service `i`'s
    /// sandbox (the payload may survive it); `memory_max` for the message.
    pub fn oom_killed(&mut self, i: usize, new: u64, memory_max: &str, now: Instant) {
        let Some(s) = self.svc(i) else { return };
        if new == 0 {
            return;
        }
        s.oom_kills += new;
        let stop = s.def.policy.oom == OomPolicy::Stop;
        self.event(
            i,
            format!("oom-kill: the kernel killed {new} process(es) (memory.max={memory_max})"),
        );
        if stop {
            match self.phase(i) {
                Some(Phase::Running { .. }) => self.stop_with(i, Intent::OomStop, now),
                Some(Phase::Stopping {
                    since,
                    intent: Intent::Stop,
                    kill_at,
                }) => self.set(
                    i,
                    Phase::Stopping {
                        since,
                        intent: Intent::OomStop,
                        kill_at,
                    },
                ),
                _ => {}
            }
        }
        self.pump(now);
    }

    /// Time passed: backoffs that are over restart, stop timeouts kill,
    /// probes that are due run, watchdogs expire.
    pub fn tick(&mut self, now: Instant) {
        let mut due = Vec::new();
        while let Some(Reverse((t, i))) = self.timers.peek().copied() {
            if t > now {
                break;
            }
            self.timers.pop();
            if self.deadline_of(i) == Some(t) && !due.contains(&i) {
                due.push(i);
            }
        }
        for i in due {
            match self.phase(i) {
                Some(Phase::Running { .. }) => {
                    self.check_watchdog(i, now);
                    self.due_probes(i, now);
                }
                Some(Phase::Backoff { until }) if until <= now => {
                    if let Some(s) = self.svc(i) {
                        s.restarts += 1;
                    }
                    self.enter(i, Phase::Queued);
                }
                Some(Phase::Stopping {
                    since,
                    intent,
                    kill_at: Some(t),
                }) if t <= now => {
                    self.set(
                        i,
                        Phase::Stopping {
                            since,
                            intent,
                            kill_at: None,
                        },
                    );
                    self.event(i, "stop timeout: killing the whole sandbox".into());
                    self.effects.push_back(Effect::KillGroup(i));
                }
                _ => {}
            }
            self.touch(i);
        }
        self.pump(now);
    }

    /// SIGHUP with a valid stack file: restart changed services, start new
    /// ones, stop and remove the ones no longer there, leave the rest alone.
    /// `isola update`: service `i`'s limits from now on (the caller wrote
    /// them to a running sandbox's cgroup); a file already set is replaced.
    pub fn set_live_limits(
        &mut self,
        i: usize,
        files: &[isola_runtime::cgroup::limits::CgroupFile],
    ) {
        let Some(s) = self.svc(i) else { return };
        let plan = &mut s.def.plan;
        for f in files {
            match plan.cgroup_files.iter_mut().find(|g| g.file == f.file) {
                Some(g) => g.value.clone_from(&f.value),
                None => plan.cgroup_files.push(f.clone()),
            }
        }
        s.def.live_limits = true;
    }

    pub fn reload(&mut self, mut defs: Vec<ServiceDef>, now: Instant) {
        self.keep_scaled(&mut defs);
        for i in 0..self.services.len() {
            let gone = self
                .service(i)
                .is_some_and(|s| !defs.iter().any(|d| d.name == s.def.name));
            if gone {
                self.stop_with(i, Intent::Remove, now);
            }
        }
        for def in defs {
            let Some(i) = self.find(&def.name) else {
                let i = self.add_service(def);
                self.enter(i, Phase::Queued);
                continue;
            };
            let Some(s) = self.svc(i) else { continue };
            let same = s.def.fingerprint == def.fingerprint
                && s.def.networks_fingerprint == def.networks_fingerprint;
            if same && !s.def.live_limits {
                continue;
            }
            let overlap = def.policy.restart.mode == crate::spec::policy::RestartMode::Overlap;
            match s.phase {
                Phase::Queued => s.def = def,
                Phase::Stopping { .. } => s.next_def = Some(Box::new(def)),
                Phase::Running { .. } if overlap => {
                    self.event(i, "changed: overlapping".into());
                    self.overlap(i, Some(def), now);
                }
                Phase::Running { .. } | Phase::Launching { .. } => {
                    s.next_def = Some(Box::new(def));
                    self.event(i, "changed: restarting".into());
                    self.stop_with(i, Intent::Restart, now);
                }
                Phase::Backoff { .. } | Phase::Down(_) => {
                    s.def = def;
                    s.forgive();
                    self.event(i, "changed".into());
                    self.enter(i, Phase::Queued);
                }
            }
        }
        self.pump(now);
    }

    /// A client went away: nobody to answer there.
    pub fn forget_conn(&mut self, conn: ConnId) {
        self.forget_rollout_conn(conn);
        self.down_waiters.retain(|c| *c != conn);
        for s in self.services.iter_mut().flatten() {
            s.waiters.retain(|c| *c != conn);
        }
    }
}
