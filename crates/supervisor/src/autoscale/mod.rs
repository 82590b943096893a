//! Autoscaling: how many replicas of a service run, decided from the
//! accept queue of the sockets `isola up` holds for it and the replicas'
//! CPU. `controller` decides (pure); this part keeps a controller per
//! autoscaled service, when the readings are due, and the replicas' CPU
//! between readings (`cpu`). The shell (`shell/autoscaling`) reads the
//! queues from the held sockets and the CPU from the sandboxes, and hands
//! decisions to the core.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::spec::stack::ServiceDef;

pub mod controller;
mod cpu;

use controller::{Census, Controller, Readings, Scale};
pub(crate) use cpu::{CpuMeter, Run};

/// How often the queues are read while some service autoscales: a tenth
/// of the shortest sensible `upAfterMs`, two syscalls per socket.
pub(crate) const READINGS_EVERY: Duration = Duration::from_millis(100);
/// How often the replicas' CPU is read for the `cpu` target (a cgroup
/// file per replica).
const CPU_EVERY: Duration = Duration::from_secs(1);

/// One autoscaled service.
#[derive(Debug)]
struct Group {
    ctl: Controller,
    cpu: CpuMeter,
    /// The last CPU reading, and when the next is due.
    cpu_now: Option<f64>,
    cpu_due: Instant,
    /// A connection arrived since the last readings.
    arrived: bool,
    /// Decisions so far, up and down (the metrics' counters).
    ups: u64,
    downs: u64,
}

/// What `status` shows of an autoscaled service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Bounds {
    pub(crate) min: u32,
    pub(crate) max: u32,
    pub(crate) pinned: Option<u32>,
}

/// The autoscaled services' controllers, by service name.
#[derive(Debug, Default)]
pub(crate) struct Autoscaler {
    groups: HashMap<String, Group>,
    /// When the next readings are due (none while nothing autoscales).
    next: Option<Instant>,
}

impl Autoscaler {
    /// The stack's autoscaled services (at start, at a reload): new ones
    /// get a controller, kept ones keep theirs (a pin, the windows unless
    /// their bounds changed), removed ones go.
    pub(crate) fn define(&mut self, defs: &[ServiceDef], now: Instant) {
        self.groups
            .retain(|name, _| defs.iter().any(|d| &d.name == name));
        for d in defs {
            let Some(a) = d.policy.autoscale.clone() else {
                continue;
            };
            match self.groups.get_mut(&d.name) {
                Some(g) => g.ctl.redefine(a, now),
                None => {
                    self.groups.insert(
                        d.name.clone(),
                        Group {
                            ctl: Controller::new(a, now),
                            cpu: CpuMeter::default(),
                            cpu_now: None,
                            cpu_due: now,
                            arrived: false,
                            ups: 0,
                            downs: 0,
                        },
                    );
                }
            }
        }
        self.next = (!self.groups.is_empty()).then(|| now + READINGS_EVERY);
    }

    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.next
    }

    /// Are the readings due? If so, the next ones are scheduled.
    pub(crate) fn due(&mut self, now: Instant) -> bool {
        match self.next {
            Some(t) if t <= now => {
                self.next = Some(now + READINGS_EVERY);
                true
            }
            _ => false,
        }
    }

    pub(crate) fn groups(&self) -> Vec<String> {
        self.groups.keys().cloned().collect()
    }

    /// Watch `group`'s sockets for arrivals?
    pub(crate) fn watches_arrivals(&self, group: &str) -> bool {
        self.groups
            .get(group)
            .is_some_and(|g| g.ctl.watches_arrivals())
    }

    /// A connection came to one of `group`'s sockets.
    pub(crate) fn arrived(&mut self, group: &str) {
        if let Some(g) = self.groups.get_mut(group) {
            g.arrived = true;
        }
    }

    /// Is the CPU of `group`'s replicas to be read now?
    pub(crate) fn cpu_due(&self, group: &str, now: Instant) -> bool {
        self.groups
            .get(group)
            .is_some_and(|g| g.ctl.def().cpu.is_some() && g.cpu_due <= now)
    }

    /// The replicas' CPU time now (`usec` by run): their average since
    /// the last reading becomes the CPU reading.
    pub(crate) fn cpu_read(&mut self, group: &str, usec: &[(Run, u64)], now: Instant) {
        if let Some(g) = self.groups.get_mut(group) {
            g.cpu_now = g.cpu.average(usec, now);
            g.cpu_due = now + CPU_EVERY;
        }
    }

    /// The readings of one turn for `group`: a change of its count when
    /// one is due.
    pub(crate) fn decide(
        &mut self,
        group: &str,
        census: Census,
        queued: u32,
        now: Instant,
    ) -> Option<Scale> {
        let g = self.groups.get_mut(group)?;
        let readings = Readings {
            queued,
            cpu: g.cpu_now,
            arrived: std::mem::take(&mut g.arrived),
        };
        let s = g.ctl.decide(census, readings, now)?;
        if s.to > s.from {
            g.ups += 1;
            // The CPU of the count that was says nothing of the new one:
            // read afresh (two readings) before it counts again.
            g.cpu = CpuMeter::default();
            g.cpu_now = None;
            g.cpu_due = now;
        } else {
            g.downs += 1;
        }
        Some(s)
    }

    /// `isola scale NAME N|auto`; false for a service that does not
    /// autoscale.
    pub(crate) fn pin(&mut self, group: &str, n: Option<u32>, now: Instant) -> bool {
        match self.groups.get_mut(group) {
            Some(g) => {
                g.ctl.pin(n, now);
                true
            }
            None => false,
        }
    }

    /// The services whose count a person pinned, and the count.
    pub(crate) fn pins(&self) -> Vec<(String, u32)> {
        self.groups
            .iter()
            .filter_map(|(name, g)| Some((name.clone(), g.ctl.pinned()?)))
            .collect()
    }

    pub(crate) fn bounds(&self, group: &str) -> Option<Bounds> {
        let g = self.groups.get(group)?;
        Some(Bounds {
            min: g.ctl.def().min,
            max: g.ctl.def().max,
            pinned: g.ctl.pinned(),
        })
    }

    /// Decisions so far by service: (up, down).
    pub(crate) fn decisions(&self) -> Vec<(&str, u64, u64)> {
        let mut out: Vec<_> = self
            .groups
            .iter()
            .map(|(n, g)| (n.as_str(), g.ups, g.downs))
            .collect();
        out.sort_unstable();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::autoscale::Autoscale;

    fn def(name: &str, a: Autoscale) -> ServiceDef {
        let text = serde_json::json!({"services": {name: {
            "process": {"args": ["true"]},
            "sockets": [{"name": "h", "listen": "tcp://127.0.0.1:18997"}],
            "autoscale": {"max": 8}}}})
        .to_string();
        let mut s = crate::spec::stack::parse(&text, std::path::Path::new("/")).unwrap();
        let mut d = s.autoscaled.remove(0);
        d.policy.autoscale = Some(a);
        d
    }

    fn bounds(min: u32, cpu: Option<f64>) -> Autoscale {
        Autoscale {
            min,
            max: 8,
            backlog: 4,
            cpu,
            up_after: Duration::from_millis(100),
            down_after: Duration::from_secs(60),
            idle: Duration::from_millis(500),
        }
    }

    fn busy(n: usize) -> Census {
        Census {
            wanted: u32::try_from(n).unwrap(),
            ..Census::default()
        }
    }

    #[test]
    fn after_a_cpu_scale_up_the_cpu_is_read_afresh() {
        let t0 = Instant::now();
        let mut a = Autoscaler::default();
        a.define(&[def("web", bounds(1, Some(50.0)))], t0);
        let run = |k: u64| Run {
            service: 1,
            started_at_ms: k,
        };
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        a.cpu_read("web", &[(run(0), 0)], at(0));
        a.cpu_read("web", &[(run(0), 1_000_000)], at(1000));
        assert_eq!(a.decide("web", busy(1), 0, at(1000)), None);
        let s = a.decide("web", busy(1), 0, at(1200)).expect("100% > 50%");
        assert_eq!(s.to, 2);
        // Nothing to go by until two fresh readings.
        assert!(a.cpu_due("web", at(1200)));
        assert_eq!(a.decide("web", busy(2), 0, at(2000)), None);
    }
}
