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

use std::collections::{HashSet, VecDeque};
use std::time::{Duration, Instant};

use isola_runtime::init;
use nix::sys::signal::Signal;

use crate::decide::{self, LastExit, Next};
use crate::policy::OomPolicy;
use crate::stack::ServiceDef;

#[cfg(test)]
mod tests;

/// A control connection, as the event loop numbers them.
pub type ConnId = u64;

/// What `status` shows: derived from the phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Starting,
    Running,
    Backoff,
    Stopping,
    Stopped,
    Exited,
    Failed,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Starting => "starting",
            State::Running => "running",
            State::Backoff => "backoff",
            State::Stopping => "stopping",
            State::Stopped => "stopped",
            State::Exited => "exited",
            State::Failed => "failed",
        }
    }
}

/// Why a stop was asked for: decides what follows the exit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Intent {
    /// `isola stop`: stay down.
    Stop,
    /// The OOM policy `stop`: stay down, and the exit counts as an OOM kill.
    OomStop,
    /// `isola restart`, or a reload that changed the service.
    Restart,
    /// Removed from the stack by a reload.
    Remove,
    /// `isola down` / SIGTERM.
    Shutdown,
}

impl Intent {
    /// A later request replaces an earlier one, except that nothing undoes
    /// a removal or a shutdown (but a removal during shutdown still removes).
    fn then(self, later: Intent) -> Intent {
        match (self, later) {
            (Intent::Remove, _) => Intent::Remove,
            (Intent::Shutdown, Intent::Remove) => Intent::Remove,
            (Intent::Shutdown, _) => Intent::Shutdown,
            (_, later) => later,
        }
    }
}

/// How a service that is not alive ended up so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Down {
    /// Never started, or stopped on request or by its OOM policy.
    Stopped,
    /// Ended, and its restart policy says it stays down.
    Exited,
    /// Hit its start limit: down until `isola start`.
    Failed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Wants to start: waits for a start slot and for its dependencies to
    /// be done starting.
    Queued,
    /// Its init sets up. `then`: a stop asked meanwhile, applied as soon as
    /// the init has reported.
    Launching {
        since: Instant,
        then: Option<Intent>,
    },
    Running {
        since: Instant,
    },
    /// The stop signal went out; at `kill_at` the whole cgroup is killed
    /// (`None` once it was).
    Stopping {
        since: Instant,
        intent: Intent,
        kill_at: Option<Instant>,
    },
    /// Restarts at `until`.
    Backoff {
        until: Instant,
    },
    Down(Down),
}

impl Phase {
    pub fn state(self) -> State {
        match self {
            Phase::Queued | Phase::Launching { .. } => State::Starting,
            Phase::Running { .. } => State::Running,
            Phase::Stopping { .. } => State::Stopping,
            Phase::Backoff { .. } => State::Backoff,
            Phase::Down(Down::Stopped) => State::Stopped,
            Phase::Down(Down::Exited) => State::Exited,
            Phase::Down(Down::Failed) => State::Failed,
        }
    }

    /// Has (or is about to have) a sandbox.
    pub fn alive(self) -> bool {
        matches!(
            self,
            Phase::Queued
                | Phase::Launching { .. }
                | Phase::Running { .. }
                | Phase::Stopping { .. }
        )
    }

    /// A phase a waiting client can be answered in.
    fn settled(self) -> bool {
        matches!(
            self,
            Phase::Running { .. } | Phase::Backoff { .. } | Phase::Down(_)
        )
    }

    /// When this phase acts by itself.
    pub fn deadline(self) -> Option<Instant> {
        match self {
            Phase::Backoff { until } => Some(until),
            Phase::Stopping { kill_at, .. } => kill_at,
            _ => None,
        }
    }
}

/// What the event loop does for the core.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// A service added by a reload: give it what a service needs (a log).
    Added(usize),
    /// Clone the service's sandbox; report with [`Core::started`] or
    /// [`Core::start_failed`].
    Launch(usize),
    /// Send this signal to the init, which forwards it to the payload (on
    /// failure, kill the group).
    Signal(usize, Signal),
    /// Kill every process of the service's cgroup.
    KillGroup(usize),
    /// A supervisor event of a service (stderr, its log, subscribers).
    Event(usize, String),
    /// A line about the supervisor itself.
    Note(String),
    /// Answer a waiting client: the service settled in this state.
    Answer(ConnId, State),
    /// `isola down` is done: answer it.
    AnswerDown(ConnId),
    /// The service was removed: drop what the loop holds for it.
    Forget(usize),
}

/// One service as the core sees it.
#[derive(Debug)]
pub struct Service {
    pub def: ServiceDef,
    /// Replaces `def` once the running sandbox has stopped (reload).
    next_def: Option<ServiceDef>,
    pub phase: Phase,
    pub restarts: u32,
    /// Consecutive restarts (for the backoff curve).
    streak: u32,
    /// Launch times within the start limit's interval.
    starts: VecDeque<Instant>,
    pub last_exit: Option<LastExit>,
    pub oom_kills: u64,
    /// Clients waiting for this service to settle.
    waiters: Vec<ConnId>,
}

impl Service {
    fn new(def: ServiceDef) -> Service {
        Service {
            def,
            next_def: None,
            phase: Phase::Down(Down::Stopped),
            restarts: 0,
            streak: 0,
            starts: VecDeque::new(),
            last_exit: None,
            oom_kills: 0,
            waiters: Vec::new(),
        }
    }

    /// A fresh start asked by a person: the crash streak and start limit
    /// count from zero again.
    fn forgive(&mut self) {
        self.streak = 0;
        self.starts.clear();
    }
}

/// How a sandbox ended, as the event loop measured it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    /// The payload's code, 128+N for signal N.
    pub code: i32,
    /// OOM kills in the sandbox's cgroup during this run.
    pub oom_kills: u64,
    /// Of those, the ones not yet reported through [`Core::oom_killed`].
    pub new_oom_kills: u64,
}

/// The whole stack's lifecycle.
pub struct Core {
    services: Vec<Option<Service>>,
    /// Services in `Launching` (kept by [`Core::enter`]).
    launching: usize,
    max_launching: usize,
    shutting_down: bool,
    down_waiters: Vec<ConnId>,
    /// Down answered: the loop may end.
    finished: bool,
    effects: VecDeque<Effect>,
    /// xorshift state for backoff jitter (seeded by the caller: tests are
    /// deterministic).
    rng: u64,
}

impl Core {
    /// The stack's services, in dependency order; up to `max_launching`
    /// sandboxes set up at once.
    pub fn new(defs: Vec<ServiceDef>, max_launching: usize, seed: u64) -> Core {
        Core {
            services: defs.into_iter().map(|d| Some(Service::new(d))).collect(),
            launching: 0,
            max_launching: max_launching.max(1),
            shutting_down: false,
            down_waiters: Vec::new(),
            finished: false,
            effects: VecDeque::new(),
            rng: seed | 1,
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
        self.services()
            .find(|(_, s)| s.def.name == name)
            .map(|(i, _)| i)
    }

    /// The nearest time a phase acts by itself (backoff over, stop timeout).
    pub fn next_deadline(&self) -> Option<Instant> {
        self.services()
            .filter_map(|(_, s)| s.phase.deadline())
            .min()
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
        for i in 0..self.services.len() {
            if self.phase(i).is_some_and(|p| !p.alive()) {
                self.enter(i, Phase::Queued);
            }
        }
        self.pump(now);
    }

    /// `isola start NAME`.
    pub fn start(&mut self, i: usize, conn: ConnId, now: Instant) {
        let Some(phase) = self.phase(i) else { return };
        self.wait(i, conn);
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
        self.pump(now);
    }

    /// `isola stop NAME`.
    pub fn stop(&mut self, i: usize, conn: ConnId, now: Instant) {
        self.wait(i, conn);
        self.stop_with(i, Intent::Stop, now);
        self.pump(now);
    }

    /// `isola restart NAME`.
    pub fn restart(&mut self, i: usize, conn: ConnId, now: Instant) {
        let Some(phase) = self.phase(i) else { return };
        self.wait(i, conn);
        match phase {
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
    /// the restart policy like any other.
    pub fn start_failed(&mut self, i: usize, code: i32, why: &str, now: Instant) {
        let Some(Phase::Launching { then, .. }) = self.phase(i) else {
            return;
        };
        self.event(i, format!("start failed: {why}"));
        let exit = LastExit::classify(code, 0, false);
        self.after_exit(i, code, exit, Duration::ZERO, then, now);
        self.pump(now);
    }

    /// The init of service `i` started its payload (host pid `pid`).
    pub fn started(&mut self, i: usize, pid: i32, now: Instant) {
        let Some(Phase::Launching { since, then }) = self.phase(i) else {
            return;
        };
        // Not settled yet if a stop is pending: its waiters wait for it.
        self.enter_unsettled(i, Phase::Running { since });
        self.event(i, format!("running (pid {pid})"));
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
        if let Some(s) = self.svc(i) {
            s.oom_kills += exit.new_oom_kills;
        }
        let last = LastExit::classify(exit.code, exit.oom_kills, intent == Some(Intent::OomStop));
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

    /// Time passed: backoffs that are over restart, stop timeouts kill.
    pub fn tick(&mut self, now: Instant) {
        for i in 0..self.services.len() {
            match self.phase(i) {
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
        }
        self.pump(now);
    }

    /// SIGHUP with a valid stack file: restart changed services, start new
    /// ones, stop and remove the ones no longer there, leave the rest alone.
    pub fn reload(&mut self, defs: Vec<ServiceDef>, now: Instant) {
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
                self.services.push(Some(Service::new(def)));
                let i = self.services.len() - 1;
                self.effects.push_back(Effect::Added(i));
                self.enter(i, Phase::Queued);
                continue;
            };
            let Some(s) = self.svc(i) else { continue };
            if s.def.fingerprint == def.fingerprint {
                continue;
            }
            match s.phase {
                Phase::Queued => s.def = def,
                Phase::Stopping { .. } => s.next_def = Some(def),
                Phase::Running { .. } | Phase::Launching { .. } => {
                    s.next_def = Some(def);
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
        self.down_waiters.retain(|c| *c != conn);
        for s in self.services.iter_mut().flatten() {
            s.waiters.retain(|c| *c != conn);
        }
    }

    // ---- transitions -----------------------------------------------------

    /// The one way into a phase: keeps the launching count and answers the
    /// service's waiting clients once it has settled.
    fn enter(&mut self, i: usize, phase: Phase) {
        self.enter_unsettled(i, phase);
        self.answer_if_settled(i);
    }

    /// [`Core::enter`] for a phase that is left again in the same input:
    /// its waiters are not answered.
    fn enter_unsettled(&mut self, i: usize, phase: Phase) {
        let Some(s) = self.services.get_mut(i).and_then(Option::as_mut) else {
            return;
        };
        let was_launching = matches!(s.phase, Phase::Launching { .. });
        let is_launching = matches!(phase, Phase::Launching { .. });
        s.phase = phase;
        match (was_launching, is_launching) {
            (true, false) => self.launching -= 1,
            (false, true) => self.launching += 1,
            _ => {}
        }
    }

    /// Change the data of the current phase (same phase, same count).
    fn set(&mut self, i: usize, phase: Phase) {
        if let Some(s) = self.svc(i) {
            debug_assert_eq!(
                std::mem::discriminant(&s.phase),
                std::mem::discriminant(&phase)
            );
            s.phase = phase;
        }
    }

    fn answer_if_settled(&mut self, i: usize) {
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
    fn stop_with(&mut self, i: usize, intent: Intent, now: Instant) {
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
    fn after_stopped(&mut self, i: usize, intent: Intent) {
        let shutting_down = self.shutting_down;
        let Some(s) = self.svc(i) else { return };
        if let Some(def) = s.next_def.take() {
            s.def = def;
            s.forgive();
        }
        match intent {
            // A restart asked for just before a shutdown does not outlive it.
            Intent::Restart if !shutting_down => {
                s.restarts += 1;
                self.enter(i, Phase::Queued);
            }
            Intent::Remove => {
                self.event(i, "removed".into());
                self.enter(i, Phase::Down(Down::Stopped));
                self.effects.push_back(Effect::Forget(i));
                self.services[i] = None;
            }
            _ => {
                self.event(i, "stopped".into());
                self.enter(i, Phase::Down(Down::Stopped));
            }
        }
    }

    /// After an exit (or a failed start): a stop's intent, else the restart
    /// policy, decides.
    fn after_exit(
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
        let window = Duration::from_millis(s.def.policy.restart.limit.interval_ms);
        while s
            .starts
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) > window)
        {
            s.starts.pop_front();
        }
        let cx = decide::Context {
            run: ran,
            recent_starts: s.starts.len(),
            streak: s.streak,
            unit,
        };
        let (phase, msg) = match decide::after_exit(&s.def.policy, &exit, &cx) {
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
        };
        self.event(i, msg);
        self.enter(i, phase);
    }

    /// After every input: launch what may launch, carry a shutdown on, and
    /// answer `isola down` once everything is down.
    fn pump(&mut self, now: Instant) {
        if self.shutting_down {
            self.progress_shutdown(now);
        } else {
            self.launch_queued(now);
        }
    }

    /// Launch queued services, in stack order, while slots are free; a
    /// service waits while one of its dependencies is starting.
    fn launch_queued(&mut self, now: Instant) {
        for i in 0..self.services.len() {
            if self.launching >= self.max_launching {
                return;
            }
            let Some(s) = self.service(i) else { continue };
            if s.phase != Phase::Queued || self.waits_for_dependency(s) {
                continue;
            }
            if let Some(s) = self.svc(i) {
                s.starts.push_back(now);
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

    fn waits_for_dependency(&self, s: &Service) -> bool {
        s.def.policy.depends_on.iter().any(|d| {
            self.services().any(|(_, o)| {
                &o.def.name == d && matches!(o.phase, Phase::Queued | Phase::Launching { .. })
            })
        })
    }

    /// Drop queued starts; stop every service whose dependents are all
    /// down (reverse dependency order, as far as it can go now).
    fn progress_shutdown(&mut self, now: Instant) {
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
                .flat_map(|(_, s)| s.def.policy.depends_on.iter().map(String::as_str))
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

    fn svc(&mut self, i: usize) -> Option<&mut Service> {
        self.services.get_mut(i).and_then(Option::as_mut)
    }

    fn phase(&self, i: usize) -> Option<Phase> {
        self.service(i).map(|s| s.phase)
    }

    fn wait(&mut self, i: usize, conn: ConnId) {
        if let Some(s) = self.svc(i) {
            s.waiters.push(conn);
        }
    }

    fn event(&mut self, i: usize, msg: String) {
        self.effects.push_back(Effect::Event(i, msg));
    }

    /// A uniform sample in [0, 1) (xorshift64*).
    fn random_unit(&mut self) -> f64 {
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        let x = self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d);
        // The top 53 bits make an exact f64 in [0, 1).
        (x >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// An exit in words, for events.
fn describe(code: i32, exit: &LastExit) -> String {
    match exit.reason {
        decide::Reason::Exited => format!("exited with code {code}"),
        decide::Reason::Signaled => format!("killed by signal {}", code - 128),
        decide::Reason::OomKill if exit.signal == Some(libc::SIGKILL) => {
            "killed by the OOM killer".to_string()
        }
        decide::Reason::OomKill => format!("ended by signal {} after an OOM kill", code - 128),
    }
}
