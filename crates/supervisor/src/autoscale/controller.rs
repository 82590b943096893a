//! One autoscaled service's decisions (pure: the time is an argument, the
//! readings come in, a count goes out). Tested with a fake clock below.
//!
//! - Up by one when the held sockets' accept queue stayed above `backlog`
//!   for `upAfterMs`; by the ratio (`ceil(n·cpu/target)`, like Kubernetes'
//!   HPA) when the replicas' average CPU stayed above `cpu` as long.
//! - Down by one when for `downAfterMs` at most half of `backlog` waited
//!   and the CPU would stay below its target with one replica fewer (the
//!   hysteresis: a count that is just right does not flap).
//! - Nothing while a replica is starting or not ready yet: a scale-up is
//!   judged once it serves (a queue that stayed high all along adds the
//!   next one then), and a crashed replica restarting is still counted
//!   (its restart policy brings it back, not a new replica).
//! - `min: 0`: a connection while none runs starts one at once; none for
//!   `idleMs` and an empty queue: back to none.
//! - `isola scale NAME N` pins the count (nothing decided) until `isola
//!   scale NAME auto`.

use std::time::{Duration, Instant};

use crate::spec::autoscale::Autoscale;

/// What the replicas of the service are doing, as the core tells.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Census {
    /// Replicas wanted: every member but those being removed.
    pub wanted: u32,
    /// Some replica is queued, starting, or running but not ready yet; or
    /// a rolling restart goes through the group.
    pub settling: bool,
    /// A person stopped replicas (`isola stop`): theirs to start again.
    pub stopped: bool,
    /// Replicas running (for `status`; the decisions go by `wanted`).
    pub running: u32,
}

/// What the held sockets and the cgroups tell.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Readings {
    /// Connections waiting in the accept queues of the service's sockets.
    pub queued: u32,
    /// The replicas' average CPU, percent of one CPU, when it is read.
    pub cpu: Option<f64>,
    /// A connection arrived since the last readings.
    pub arrived: bool,
}

/// A change of the replica count, and why (the event's text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scale {
    pub from: u32,
    pub to: u32,
    pub why: String,
}

#[derive(Debug)]
pub struct Controller {
    def: Autoscale,
    /// `isola scale NAME N`: the count a person fixed.
    pinned: Option<u32>,
    /// Since when the queue has been above `backlog`, and the CPU above
    /// its target: two windows, either may add replicas.
    queue_since: Option<Instant>,
    cpu_since: Option<Instant>,
    /// Since when it could do with one fewer.
    low_since: Option<Instant>,
    /// Since when every replica serves (none while one starts).
    serving_since: Option<Instant>,
    last_arrival: Instant,
}

/// How long every replica must have served before a queue still above
/// adds another: a replica that just said READY may not have accepted
/// what waited for it yet.
const SETTLE: Duration = Duration::from_millis(200);

impl Controller {
    pub fn new(def: Autoscale, now: Instant) -> Controller {
        Controller {
            def,
            pinned: None,
            queue_since: None,
            cpu_since: None,
            low_since: None,
            serving_since: None,
            last_arrival: now,
        }
    }

    pub fn def(&self) -> &Autoscale {
        &self.def
    }

    /// A reload's definition; the windows and the idle time start again
    /// (arrivals were not watched under a `min` above 0).
    pub fn redefine(&mut self, def: Autoscale, now: Instant) {
        if def != self.def {
            self.def = def;
            self.forget_windows();
            self.last_arrival = now;
        }
    }

    fn forget_windows(&mut self) {
        self.queue_since = None;
        self.cpu_since = None;
        self.low_since = None;
    }

    pub fn pinned(&self) -> Option<u32> {
        self.pinned
    }

    /// `isola scale NAME N` (`Some`) or `isola scale NAME auto` (`None`).
    pub fn pin(&mut self, n: Option<u32>, now: Instant) {
        self.pinned = n;
        self.forget_windows();
        self.last_arrival = now;
    }

    /// Watch for arrivals (an event per connection while none runs, at
    /// most one per readings otherwise): only `min: 0` needs them.
    pub fn watches_arrivals(&self) -> bool {
        self.def.min == 0 && self.pinned.is_none()
    }

    /// The readings of one turn; a change of the count when one is due.
    pub fn decide(&mut self, c: Census, r: Readings, now: Instant) -> Option<Scale> {
        if r.arrived {
            self.last_arrival = now;
        }
        if self.pinned.is_some() || c.stopped {
            self.forget_windows();
            return None;
        }
        let n = c.wanted;
        if n == 0 && (r.arrived || r.queued > 0) {
            return self.scale(
                n,
                self.def.min.max(1),
                "a connection while scaled to zero".into(),
            );
        }
        if n < self.def.min {
            return self.scale(n, self.def.min, format!("below min {}", self.def.min));
        }
        if n > self.def.max {
            return self.scale(n, self.def.max, format!("above max {}", self.def.max));
        }
        if n == 0 || c.settling {
            // A queue that stays high while a new replica starts still
            // counts once it serves: a surge adds a replica per start,
            // not per start and upAfterMs.
            self.low_since = None;
            self.serving_since = None;
            return None;
        }
        let serving_since = *self.serving_since.get_or_insert(now);
        if let Some(s) = self.idle(n, r, now) {
            return Some(s);
        }
        self.up(n, r, serving_since, now)
            .or_else(|| self.down(n, r, now))
    }

    /// `min: 0` and nothing arrived for `idleMs`: none need run.
    fn idle(&mut self, n: u32, r: Readings, now: Instant) -> Option<Scale> {
        let quiet = now.saturating_duration_since(self.last_arrival);
        let busy = r.cpu.zip(self.def.cpu).is_some_and(|(c, t)| c > t);
        if self.def.min > 0 || r.queued > 0 || busy || quiet < self.def.idle {
            return None;
        }
        self.scale(n, 0, format!("no connection for {}", ms(quiet)))
    }

    /// `serving_since`: the queue a new replica found is only judged once
    /// it had a moment to take it (`SETTLE`).
    fn up(&mut self, n: u32, r: Readings, serving_since: Instant, now: Instant) -> Option<Scale> {
        let queue_high = r.queued > self.def.backlog;
        let cpu_high = r.cpu.zip(self.def.cpu).filter(|(c, t)| c > t);
        let held = |since: &mut Option<Instant>, high: bool| {
            if !high {
                *since = None;
                return None;
            }
            let held = now.saturating_duration_since(*since.get_or_insert(now));
            Some(held)
        };
        let queue_held = held(&mut self.queue_since, queue_high);
        let cpu_held = held(&mut self.cpu_since, cpu_high.is_some());
        if queue_high || cpu_high.is_some() {
            self.low_since = None;
        }
        let settled = now.saturating_duration_since(serving_since) >= SETTLE.min(self.def.up_after);
        if !settled || n >= self.def.max {
            return None;
        }
        let due = |h: Option<Duration>| h.filter(|h| *h >= self.def.up_after);
        if let (Some((cpu, target)), Some(held)) = (cpu_high, due(cpu_held)) {
            // ceil(n·cpu/target): the fewest replicas at which the same
            // work would be at the target; one more at least.
            let work = f64::from(n) * cpu;
            let to = (n + 1..self.def.max)
                .find(|k| f64::from(*k) * target >= work)
                .unwrap_or(self.def.max);
            // The CPU of the count that was: judged again on readings of
            // the new count only.
            self.cpu_since = None;
            let why = format!("cpu {cpu:.0}% > {target:.0}% for {}", ms(held));
            return self.scale(n, to, why);
        }
        let held = due(queue_held)?;
        let why = format!(
            "accept queue {} > {} for {}",
            r.queued,
            self.def.backlog,
            ms(held)
        );
        self.scale(n, n + 1, why)
    }

    fn down(&mut self, n: u32, r: Readings, now: Instant) -> Option<Scale> {
        let cpu_low = match (r.cpu, self.def.cpu) {
            // Would the rest stay below the target without one?
            (Some(c), Some(t)) => n > 1 && c * f64::from(n) / f64::from(n - 1) < t,
            (None, Some(_)) => false,
            (_, None) => true,
        };
        // Low: at most half the backlog waits (a steady trickle of
        // connections is never an empty queue at every reading).
        let queue_low = r.queued.saturating_mul(2) <= self.def.backlog;
        if !queue_low || !cpu_low || n <= self.def.min.max(1) {
            self.low_since = None;
            return None;
        }
        let since = *self.low_since.get_or_insert(now);
        let held = now.saturating_duration_since(since);
        if held < self.def.down_after {
            return None;
        }
        let half = self.def.backlog / 2;
        let why = match r.cpu {
            Some(c) => format!(
                "accept queue {} ≤ {half} and cpu {c:.0}% for {}",
                r.queued,
                ms(held)
            ),
            None => format!("accept queue {} ≤ {half} for {}", r.queued, ms(held)),
        };
        self.scale(n, n - 1, why)
    }

    /// A change of the count. After one up the queue's window goes on (a
    /// surge adds a replica per start); after one down every window starts
    /// again.
    fn scale(&mut self, from: u32, to: u32, why: String) -> Option<Scale> {
        self.low_since = None;
        if to < from {
            self.forget_windows();
        }
        (from != to).then_some(Scale { from, to, why })
    }
}

/// `500 ms`, `30 s`.
fn ms(d: Duration) -> String {
    let ms = d.as_millis();
    if ms >= 10_000 {
        format!("{} s", ms / 1000)
    } else {
        format!("{ms} ms")
    }
}

#[cfg(test)]
mod tests;
