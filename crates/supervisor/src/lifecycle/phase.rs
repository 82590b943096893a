//! The lifecycle's vocabulary: a service's [`Phase`] and the [`State`]
//! `status` shows, why a stop was asked ([`Intent`]), what the core asks
//! the loop to do ([`Effect`]), and a [`Service`] as the core holds it.

use std::collections::VecDeque;
use std::time::Instant;

use nix::sys::signal::Signal;

use super::run_health::RunHealth;
use crate::lifecycle::exit_policy::{LastExit, Reason};
use crate::spec::health::ProbeKind;
use crate::spec::stack::ServiceDef;

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
    /// An autoscaled service with no replica (only on its own row).
    #[serde(rename = "scaled to zero")]
    ScaledToZero,
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
            State::ScaledToZero => "scaled to zero",
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
    /// A failed probe or a missed watchdog: the exit goes to the restart
    /// policy like a crash.
    Unhealthy,
}

impl Intent {
    /// A later request replaces an earlier one, except that nothing undoes
    /// a removal or a shutdown (but a removal during shutdown still removes).
    pub(super) fn then(self, later: Intent) -> Intent {
        match (self, later) {
            (Intent::Remove, _) => Intent::Remove,
            (Intent::Shutdown, Intent::Remove) => Intent::Remove,
            (Intent::Shutdown, _) => Intent::Shutdown,
            // A person's (or the OOM policy's) stop outranks a health kill.
            (earlier, Intent::Unhealthy) => earlier,
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
    pub(super) fn settled(self) -> bool {
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
    /// Run this probe of the running sandbox; report with [`Core::probe_done`].
    Probe(usize, ProbeKind),
    /// Overlap: service `.1` took the name of `.0`, whose sandbox is being
    /// stopped; what the loop holds for the name (notify socket, fd store)
    /// moves.
    HandedOver(usize, usize),
    /// Stopped on purpose: the fds it stored (`FDSTORE=1`) are let go.
    DropFdStore(usize),
}

/// One service as the core sees it.
#[derive(Debug)]
pub struct Service {
    pub def: ServiceDef,
    /// Replaces `def` once the running sandbox has stopped (reload).
    pub(super) next_def: Option<Box<ServiceDef>>,
    pub phase: Phase,
    pub restarts: u32,
    /// Consecutive restarts (for the backoff curve).
    pub(super) streak: u32,
    /// Launch times within the start limit's interval.
    pub(super) starts: VecDeque<Instant>,
    pub last_exit: Option<LastExit>,
    /// What the last exit's reason does not say: the probe and its error.
    pub last_exit_message: Option<String>,
    pub oom_kills: u64,
    /// Failed results of each probe (by `ProbeKind::index`), over every
    /// run (the metrics' counters).
    pub probe_failures: [u64; 3],
    /// The shortage its last start ran into, while it waits to retry.
    pub waiting_for: Option<String>,
    /// The dependency condition it waits for (queued), or that can no
    /// longer be met (failed).
    pub blocked_on: Option<String>,
    /// Health of the current (or last) run.
    pub health: RunHealth,
    /// Why the health kill in progress was made.
    pub(super) health_kill: Option<(Reason, String)>,
    /// Clients waiting for this service to settle.
    pub(super) waiters: Vec<ConnId>,
    /// Overlap: the sandbox started to replace this one, not yet ready.
    pub successor: Option<usize>,
    /// Overlap: the service this successor will replace once ready.
    pub predecessor: Option<usize>,
    /// Overlap: when a successor that is not ready yet is given up.
    pub(super) overlap_until: Option<Instant>,
    /// The last overlap gave up its successor.
    pub(super) overlap_failed: bool,
}

impl Service {
    pub(super) fn new(def: ServiceDef) -> Service {
        Service {
            def,
            next_def: None,
            phase: Phase::Down(Down::Stopped),
            restarts: 0,
            streak: 0,
            starts: VecDeque::new(),
            last_exit: None,
            last_exit_message: None,
            oom_kills: 0,
            probe_failures: [0; 3],
            waiting_for: None,
            blocked_on: None,
            health: RunHealth::default(),
            health_kill: None,
            waiters: Vec::new(),
            successor: None,
            predecessor: None,
            overlap_until: None,
            overlap_failed: false,
        }
    }

    /// A fresh start asked by a person: the crash streak and start limit
    /// count from zero again.
    pub(super) fn forgive(&mut self) {
        self.streak = 0;
        self.starts.clear();
    }
}

/// Why a launch produced no running payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartError {
    /// The exit code it counts as (125 setup, 126, 127).
    pub code: i32,
    pub why: String,
    /// A shortage (EMFILE, ENFILE, EAGAIN, ENOMEM, ENOSPC): the service is
    /// not at fault; it waits in backoff and is never `failed` for it.
    pub transient: bool,
}

impl From<&isola_runtime::Error> for StartError {
    fn from(e: &isola_runtime::Error) -> StartError {
        StartError {
            code: e.exit_code(),
            why: e.to_string(),
            transient: e.is_transient(),
        }
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
