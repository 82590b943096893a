//! `resourceRules` at work: once a second, for the running services that
//! have rules (and only while some do: no timer otherwise), each rule's
//! metric is read from the sandbox's cgroup; one that stays above its
//! threshold for `forMs` restarts the service (the core stops it as for a
//! failed probe, with the reason `resource`) or is said as an event, once
//! per crossing.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::context::{Input, ServiceIx};
use crate::lifecycle::Phase;
use crate::sandboxes::Sandboxes;
use crate::spec::rules::{ResourceRule, RuleAction, RuleMetric};
use crate::supervisor::Supervisor;

/// How often rules are checked.
pub(crate) const CHECK_EVERY: Duration = Duration::from_secs(1);

/// One rule's window.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct Window {
    /// Since when the metric has been above, without a break.
    above_since: Option<Instant>,
    /// This crossing was acted on already.
    acted: bool,
}

impl Window {
    /// A reading at `now` (`None`: none to be had, as if below): true when
    /// the rule is to act now.
    fn observe(&mut self, value: Option<f64>, rule: &ResourceRule, now: Instant) -> bool {
        match value {
            Some(v) if v > rule.above => {
                let since = *self.above_since.get_or_insert(now);
                if self.acted || now.saturating_duration_since(since) < rule.for_ {
                    return false;
                }
                self.acted = true;
                true
            }
            _ => {
                *self = Window::default();
                false
            }
        }
    }
}

/// A watched service's rule windows and its last CPU reading.
#[derive(Debug, Default)]
struct Watched {
    windows: Vec<Window>,
    cpu: Option<(f64, Instant)>,
}

/// The services whose rules are checked, by index.
#[derive(Debug, Default)]
pub(crate) struct ResourceWatch {
    watched: BTreeMap<ServiceIx, Watched>,
    next: Option<Instant>,
    /// How often each rule of a service acted, over all its runs (the
    /// metrics' counter).
    acted: BTreeMap<ServiceIx, Vec<u64>>,
}

impl ResourceWatch {
    /// Service `i` starts a run with `rules` rules: fresh windows (none
    /// watched without rules).
    pub(crate) fn watch(&mut self, i: ServiceIx, rules: usize, now: Instant) {
        if rules == 0 {
            return self.unwatch(i);
        }
        let w = Watched {
            windows: vec![Window::default(); rules],
            cpu: None,
        };
        self.watched.insert(i, w);
        self.acted.entry(i).or_default().resize(rules, 0);
        self.next.get_or_insert(now + CHECK_EVERY);
    }

    /// Service `i` is gone: its counts go too.
    pub(crate) fn forget(&mut self, i: ServiceIx) {
        self.unwatch(i);
        self.acted.remove(&i);
    }

    /// Overlap: service `new` took the name of `old`, and its rules'
    /// counts with it.
    pub(crate) fn handed_over(&mut self, old: ServiceIx, new: ServiceIx) {
        if let Some(counts) = self.acted.remove(&old) {
            let to = self.acted.entry(new).or_default();
            to.resize(to.len().max(counts.len()), 0);
            for (t, c) in to.iter_mut().zip(counts) {
                *t += c;
            }
        }
    }

    /// How often each of service `i`'s rules acted.
    pub(crate) fn acted(&self, i: ServiceIx) -> &[u64] {
        self.acted.get(&i).map_or(&[], Vec::as_slice)
    }

    pub(crate) fn unwatch(&mut self, i: ServiceIx) {
        self.watched.remove(&i);
        if self.watched.is_empty() {
            self.next = None;
        }
    }

    /// The next check, while any service has rules.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.next
    }

    fn due(&mut self, now: Instant) -> bool {
        match self.next {
            Some(t) if t <= now => {
                self.next = Some(now + CHECK_EVERY);
                true
            }
            _ => false,
        }
    }
}

/// A metric's value for a rule: bytes for memory, percent otherwise.
fn reading(sb: &Sandboxes, i: ServiceIx, m: RuleMetric, w: &mut Watched) -> Option<f64> {
    let pressure = |file: &str| psi_some_avg10(&sb.cgroup_file(i, file)?);
    match m {
        RuleMetric::Memory => Some(sb.snapshot(i)?.stats.memory_current? as f64),
        RuleMetric::Cpu => {
            let usec = sb.snapshot(i)?.stats.cpu_usec? as f64;
            // The time of this very read: the loop's `now` is older by
            // whatever this turn did before.
            let now = Instant::now();
            let last = w.cpu.replace((usec, now));
            let (before, at) = last?;
            let us = now.saturating_duration_since(at).as_secs_f64() * 1e6;
            (us > 0.0).then(|| (usec - before).max(0.0) / us * 100.0)
        }
        RuleMetric::MemoryPressure => pressure("memory.pressure"),
        RuleMetric::CpuPressure => pressure("cpu.pressure"),
        RuleMetric::IoPressure => pressure("io.pressure"),
    }
}

/// PSI's `some avg10=` (percent).
fn psi_some_avg10(text: &str) -> Option<f64> {
    let line = text.lines().find(|l| l.starts_with("some"))?;
    line.split_whitespace()
        .find_map(|f| f.strip_prefix("avg10="))?
        .parse()
        .ok()
}

/// `412.3M` for a memory value, `93.5%` for the others.
fn shown(m: RuleMetric, v: f64) -> String {
    match m {
        RuleMetric::Memory => format!("{:.1}M", v / (1024.0 * 1024.0)),
        _ => format!("{v:.1}%"),
    }
}

impl Supervisor {
    /// The timer: check the rules of every watched running service.
    pub(crate) fn check_rules(&mut self) {
        let now = self.now;
        if !self.rules.due(now) {
            return;
        }
        let ids: Vec<ServiceIx> = self.rules.watched.keys().copied().collect();
        for i in ids {
            if self.sandboxes.running(i).is_none() {
                continue;
            }
            // Stopping (a stop, a reload, the old sandbox of an overlap):
            // rules no longer apply.
            let Some(s) = self
                .core
                .service(i)
                .filter(|s| matches!(s.phase, Phase::Running { .. }))
            else {
                continue;
            };
            let Some(w) = self.rules.watched.get_mut(&i) else {
                continue;
            };
            for (k, rule) in s.def.policy.resource_rules.iter().enumerate() {
                let value = reading(&self.sandboxes, i, rule.metric, w);
                let Some(window) = w.windows.get_mut(k) else {
                    continue;
                };
                if !window.observe(value, rule, now) {
                    continue;
                }
                if let Some(n) = self.rules.acted.get_mut(&i).and_then(|a| a.get_mut(k)) {
                    *n += 1;
                }
                let why = format!(
                    "resource: {} {} above {} for {} ms (resourceRules[{k}])",
                    rule.metric.as_str(),
                    shown(rule.metric, value.unwrap_or_default()),
                    rule.above_text,
                    rule.for_.as_millis()
                );
                match rule.action {
                    RuleAction::Restart => self.outbox.input(Input::ResourceExceeded(i, why)),
                    RuleAction::Event => self.outbox.event(i, why),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(above: f64, for_ms: u64) -> ResourceRule {
        ResourceRule {
            metric: RuleMetric::Memory,
            above,
            above_text: above.to_string(),
            for_: Duration::from_millis(for_ms),
            action: RuleAction::Restart,
        }
    }

    /// Above for `forMs` without a break acts, once per crossing; a spike
    /// shorter than the window, or one reading below, starts it over.
    #[test]
    fn a_rule_acts_once_its_metric_stayed_above_for_the_window() {
        let r = rule(100.0, 3000);
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut w = Window::default();
        assert!(!w.observe(Some(150.0), &r, at(0)));
        assert!(!w.observe(Some(150.0), &r, at(2000)));
        // A dip: the window starts over.
        assert!(!w.observe(Some(50.0), &r, at(2500)));
        assert!(!w.observe(Some(150.0), &r, at(3000)));
        assert!(!w.observe(Some(150.0), &r, at(5999)));
        assert!(w.observe(Some(150.0), &r, at(6000)), "3 s above");
        assert!(!w.observe(Some(150.0), &r, at(7000)), "once per crossing");
        // No reading counts as below; equal is not above.
        assert!(!w.observe(None, &r, at(8000)));
        assert!(!w.observe(Some(100.0), &r, at(9000)));
        assert_eq!(w, Window::default());
        assert!(!w.observe(Some(101.0), &r, at(10_000)));
        assert!(
            w.observe(Some(101.0), &r, at(13_000)),
            "a new crossing acts again"
        );
    }

    #[test]
    fn checks_run_only_while_a_service_has_rules() {
        let mut rw = ResourceWatch::default();
        let t0 = Instant::now();
        assert_eq!(rw.deadline(), None);
        rw.watch(3, 0, t0);
        assert_eq!(rw.deadline(), None, "no rules, no timer");
        rw.watch(3, 2, t0);
        assert_eq!(rw.deadline(), Some(t0 + CHECK_EVERY));
        assert!(!rw.due(t0));
        assert!(rw.due(t0 + CHECK_EVERY));
        assert_eq!(rw.deadline(), Some(t0 + CHECK_EVERY * 2));
        rw.unwatch(3);
        assert_eq!(rw.deadline(), None);
    }

    #[test]
    fn pressure_lines() {
        let t = "some avg10=12.50 avg60=3.00 avg300=1.00 total=100\nfull avg10=1.00 avg60=0.00 avg300=0.00 total=5\n";
        assert_eq!(psi_some_avg10(t), Some(12.5));
        assert_eq!(shown(RuleMetric::Memory, 432_013_312.0), "412.0M");
        assert_eq!(shown(RuleMetric::Cpu, 93.46), "93.5%");
    }
}
