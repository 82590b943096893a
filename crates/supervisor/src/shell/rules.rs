//! `resourceRules` at work. Memory and CPU rules: once a second, for the
//! running services that have them (and only while some do: no timer
//! otherwise), the metric is read from the sandbox's cgroup. Pressure
//! rules: a PSI trigger each ([`pressure`]), the kernel says when. A rule
//! that stays above its threshold for `forMs` restarts the service (the
//! core stops it as for a failed probe, with the reason `resource`) or is
//! said as an event, once per crossing.

use std::collections::BTreeMap;
use std::path::Path;

use nix::errno::Errno;
use std::time::{Duration, Instant};

use super::context::{Ctx, Input, ServiceIx};
use super::reactor::{Interest, Part, Readiness, Token};
use crate::lifecycle::Phase;
use crate::sandboxes::Sandboxes;
use crate::spec::rules::{ResourceRule, RuleAction, RuleMetric};
use crate::supervisor::Supervisor;

mod pressure;

use pressure::Trigger;

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

/// A watched service's rule windows, its pressure rules' triggers (by
/// rule; `None`: read once a second) and its last CPU reading.
#[derive(Default)]
struct Watched {
    windows: Vec<Window>,
    triggers: Vec<Option<Trigger>>,
    cpu: Option<(f64, Instant)>,
}

impl Watched {
    /// Some rule is read once a second.
    fn polled(&self) -> bool {
        self.triggers.iter().any(Option::is_none)
    }
}

/// The token of rule `k`'s trigger of service `i`.
fn trigger_token(i: ServiceIx, k: usize) -> Token {
    Token::new(Part::Rules, (i as u64) << 16 | (k as u64 & 0xffff))
}

/// The services whose rules are checked, by index.
#[derive(Default)]
pub(crate) struct ResourceWatch {
    watched: BTreeMap<ServiceIx, Watched>,
    next: Option<Instant>,
    /// How often each rule of a service acted, over all its runs (the
    /// metrics' counter).
    acted: BTreeMap<ServiceIx, Vec<u64>>,
}

impl ResourceWatch {
    /// Service `i` starts a run in `cgroup` with `rules`: fresh windows,
    /// a trigger armed for each pressure rule (one that cannot be is read
    /// once a second instead, and said: the errors, by rule); none watched
    /// without rules.
    pub(crate) fn watch(
        &mut self,
        ctx: &mut Ctx<'_>,
        i: ServiceIx,
        rules: &[ResourceRule],
        cgroup: Option<&Path>,
    ) -> Vec<(usize, Errno)> {
        self.unwatch(i);
        if rules.is_empty() {
            return Vec::new();
        }
        let mut failed = Vec::new();
        let mut triggers = Vec::with_capacity(rules.len());
        for (k, r) in rules.iter().enumerate() {
            let armed = match (pressure_file(r.metric), cgroup) {
                (Some(file), Some(cg)) => arm(ctx, &cg.join(file), r.above, trigger_token(i, k))
                    .map_err(|e| failed.push((k, e)))
                    .ok(),
                _ => None,
            };
            triggers.push(armed);
        }
        let w = Watched {
            windows: vec![Window::default(); rules.len()],
            triggers,
            cpu: None,
        };
        if w.polled() {
            self.next.get_or_insert(ctx.now + CHECK_EVERY);
        }
        self.watched.insert(i, w);
        self.acted.entry(i).or_default().resize(rules.len(), 0);
        failed
    }

    /// Trigger `key` fired at `now` (or failed: it is dropped): the rule
    /// that is to act now, as (service, rule).
    fn fired(
        &mut self,
        key: u64,
        how: Readiness,
        rules: impl Fn(ServiceIx) -> Option<Vec<Duration>>,
        now: Instant,
    ) -> Option<(ServiceIx, usize)> {
        let i = usize::try_from(key >> 16).ok()?;
        let k = usize::try_from(key & 0xffff).ok()?;
        let slot = self.watched.get_mut(&i)?.triggers.get_mut(k)?;
        if how.failed() {
            // Its cgroup is gone (the run ended first): closing it takes
            // it out of the epoll set.
            *slot = None;
            return None;
        }
        let for_ = *rules(i)?.get(k)?;
        slot.as_mut()?.fired(now, for_).then_some((i, k))
    }

    /// Service `i`'s run ended: its triggers close (their cgroup goes).
    pub(crate) fn run_ended(&mut self, i: ServiceIx) {
        self.unwatch(i);
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
        if !self.watched.values().any(Watched::polled) {
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

/// What a rule saw when it acted.
enum Seen {
    /// The value read at the last check (`412.0M`, `93.5%`).
    Read(String),
    /// A PSI trigger's events, a window apart.
    Triggered,
}

/// A trigger on `file`, registered as `token`.
fn arm(ctx: &mut Ctx<'_>, file: &Path, percent: f64, token: Token) -> Result<Trigger, Errno> {
    let t = Trigger::arm(file, percent)?;
    ctx.reactor.add(t.fd(), token, Interest::Priority)?;
    Ok(t)
}

/// The cgroup file of a pressure metric.
fn pressure_file(m: RuleMetric) -> Option<&'static str> {
    match m {
        RuleMetric::MemoryPressure => Some("memory.pressure"),
        RuleMetric::CpuPressure => Some("cpu.pressure"),
        RuleMetric::IoPressure => Some("io.pressure"),
        RuleMetric::Memory | RuleMetric::Cpu => None,
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
        // Memory and CPU from stat files kept open (within the spare fd
        // budget), not opened for each check.
        self.sandboxes.open_stats();
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
            let mut acts = Vec::new();
            for (k, rule) in s.def.policy.resource_rules.iter().enumerate() {
                if w.triggers.get(k).is_some_and(Option::is_some) {
                    continue;
                }
                let value = reading(&self.sandboxes, i, rule.metric, w);
                let Some(window) = w.windows.get_mut(k) else {
                    continue;
                };
                if window.observe(value, rule, now) {
                    let seen = shown(rule.metric, value.unwrap_or_default());
                    acts.push((k, Seen::Read(seen)));
                }
            }
            for (k, seen) in acts {
                self.rule_acts(i, k, &seen);
            }
        }
    }

    /// A PSI trigger fired (`key`, from the reactor).
    pub(crate) fn on_trigger(&mut self, key: u64, how: Readiness) {
        let core = &self.core;
        let for_of = |i: ServiceIx| {
            let s = core
                .service(i)
                .filter(|s| matches!(s.phase, Phase::Running { .. }))?;
            Some(s.def.policy.resource_rules.iter().map(|r| r.for_).collect())
        };
        if let Some((i, k)) = self.rules.fired(key, how, for_of, self.now) {
            self.rule_acts(i, k, &Seen::Triggered);
        }
    }

    /// Rule `k` of service `i` held for its `forMs`: count it, then
    /// restart or tell.
    fn rule_acts(&mut self, i: ServiceIx, k: usize, seen: &Seen) {
        let Some(rule) = self
            .core
            .service(i)
            .and_then(|s| s.def.policy.resource_rules.get(k))
        else {
            return;
        };
        if let Some(n) = self.rules.acted.get_mut(&i).and_then(|a| a.get_mut(k)) {
            *n += 1;
        }
        let metric = rule.metric.as_str();
        let above = &rule.above_text;
        let what = match seen {
            Seen::Read(v) => format!("{metric} {v} above {above}"),
            Seen::Triggered => format!(
                "{metric} above {above} of each {} s",
                pressure::WINDOW.as_secs()
            ),
        };
        let why = format!(
            "resource: {what} for {} ms (resourceRules[{k}])",
            rule.for_.as_millis()
        );
        match rule.action {
            RuleAction::Restart => self.outbox.input(Input::ResourceExceeded(i, why)),
            RuleAction::Event => self.outbox.event(i, why),
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
    fn checks_run_only_while_a_service_has_rules_read_once_a_second() {
        let mut h = crate::shell::context::testing::Harness::new();
        let mut rw = ResourceWatch::default();
        let t0 = h.ctx().now;
        assert_eq!(rw.deadline(), None);
        rw.watch(&mut h.ctx(), 3, &[], None);
        assert_eq!(rw.deadline(), None, "no rules, no timer");
        rw.watch(&mut h.ctx(), 3, &[rule(1.0, 10), rule(2.0, 10)], None);
        assert_eq!(rw.deadline(), Some(t0 + CHECK_EVERY));
        assert!(!rw.due(t0));
        assert!(rw.due(t0 + CHECK_EVERY));
        assert_eq!(rw.deadline(), Some(t0 + CHECK_EVERY * 2));
        rw.run_ended(3);
        assert_eq!(rw.deadline(), None);
    }

    /// A pressure rule whose trigger cannot be armed is read once a
    /// second, and the reason is given.
    #[test]
    fn a_pressure_rule_without_a_trigger_is_read_instead() {
        let mut h = crate::shell::context::testing::Harness::new();
        let mut rw = ResourceWatch::default();
        let mut r = rule(20.0, 1000);
        r.metric = RuleMetric::MemoryPressure;
        let nowhere = Path::new("/nonexistent-cgroup");
        let failed = rw.watch(&mut h.ctx(), 1, &[r], Some(nowhere));
        assert_eq!(failed, vec![(0, Errno::ENOENT)]);
        assert!(rw.deadline().is_some(), "read once a second instead");
    }

    #[test]
    fn pressure_lines() {
        let t = "some avg10=12.50 avg60=3.00 avg300=1.00 total=100\nfull avg10=1.00 avg60=0.00 avg300=0.00 total=5\n";
        assert_eq!(psi_some_avg10(t), Some(12.5));
        assert_eq!(shown(RuleMetric::Memory, 432_013_312.0), "412.0M");
        assert_eq!(shown(RuleMetric::Cpu, 93.46), "93.5%");
    }
}
