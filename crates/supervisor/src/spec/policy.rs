//! Supervision policy of one service: the `restart`, `oom`, `stop`,
//! `dependsOn` and health fields beside its OCI body, with their defaults.

use std::time::Duration;

use isola_runtime::SpecError;
use nix::sys::signal::Signal;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::autoscale::{self, Autoscale};
use super::field;
use super::health::{self, Dependency, Health, Notify};
use super::logging::{self, Logging};
use super::networks::{self, Attachment};
use super::rules::{self, ResourceRule};
use super::sockets::{self, SocketDef};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    No,
    Always,
    OnFailure,
    UnlessStopped,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OomPolicy {
    Continue,
    Stop,
    Kill,
    Restart,
}

/// Where a service's stderr goes (`stderr`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stderr {
    /// Its own pipe: log lines say `stderr`.
    #[default]
    Separate,
    /// Into stdout's pipe (`2>&1`, systemd's `StandardError=inherit`): one
    /// fd less for the supervisor, lines in the order they were written.
    Stdout,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct StartLimit {
    pub burst: u32,
    pub interval_ms: u64,
}

impl Default for StartLimit {
    fn default() -> Self {
        StartLimit {
            burst: 5,
            interval_ms: 10_000,
        }
    }
}

/// How `isola restart` and a reload replace a running sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RestartMode {
    /// Stop the old sandbox, then start the new one.
    #[default]
    Replace,
    /// Start the new one, wait until it is ready, then stop the old one.
    Overlap,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Restart {
    pub policy: RestartPolicy,
    pub mode: RestartMode,
    /// `overlap`: how long the new sandbox may take to get ready before
    /// it is given up and the old one kept.
    pub ready_timeout_ms: u64,
    pub success_exit_codes: Vec<i32>,
    pub delay_ms: u64,
    pub max_delay_ms: u64,
    pub steps: u32,
    pub reset_after_ms: u64,
    pub jitter: f64,
    pub limit: StartLimit,
}

impl Default for Restart {
    fn default() -> Self {
        Restart {
            policy: RestartPolicy::OnFailure,
            mode: RestartMode::Replace,
            ready_timeout_ms: DEFAULT_READY_TIMEOUT_MS,
            success_exit_codes: vec![0],
            delay_ms: 100,
            max_delay_ms: 30_000,
            steps: 10,
            reset_after_ms: 10_000,
            jitter: 0.0,
            limit: StartLimit::default(),
        }
    }
}

impl Restart {
    /// Delay before restart `n` (n ≥ 1), before jitter: systemd's
    /// RestartSteps curve, `delay · (max/delay)^((n−1)/steps)`, pinned at
    /// `maxDelayMs` from restart `steps + 1` on.
    pub fn base_delay(&self, n: u32) -> Duration {
        let n = n.max(1);
        if self.steps == 0 || self.delay_ms == 0 || self.max_delay_ms <= self.delay_ms {
            return Duration::from_millis(if self.steps == 0 {
                self.delay_ms
            } else {
                self.max_delay_ms.min(self.delay_ms)
            });
        }
        if n > self.steps {
            return Duration::from_millis(self.max_delay_ms);
        }
        let ratio = self.max_delay_ms as f64 / self.delay_ms as f64;
        let ms = self.delay_ms as f64 * ratio.powf(f64::from(n - 1) / f64::from(self.steps));
        Duration::from_secs_f64(ms / 1000.0)
    }

    /// The delay with jitter applied; `unit` is a uniform sample in [0, 1).
    pub fn delay(&self, n: u32, unit: f64) -> Duration {
        let base = self.base_delay(n).as_secs_f64();
        let factor = 1.0 + self.jitter * (2.0 * unit - 1.0);
        Duration::from_secs_f64((base * factor).max(0.0))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stop {
    pub signal: Signal,
    pub timeout: Duration,
}

impl Default for Stop {
    fn default() -> Self {
        Stop {
            signal: Signal::SIGTERM,
            timeout: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct StopJson {
    signal: Option<Value>,
    timeout_ms: Option<u64>,
}

/// `restart.readyTimeoutMs` when not given.
const DEFAULT_READY_TIMEOUT_MS: u64 = 60_000;

#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub restart: Restart,
    pub oom: OomPolicy,
    pub stop: Stop,
    pub depends_on: Vec<Dependency>,
    pub health: Health,
    /// Listening sockets held by the supervisor (`sockets`).
    pub sockets: Vec<SocketDef>,
    /// `fdStoreMax`: fds kept for the service across its restarts.
    pub fd_store_max: u32,
    /// `replicas`: `None` for a plain service, else how many.
    pub replicas: Option<u32>,
    /// `autoscale`: how many replicas run is decided as it goes.
    pub autoscale: Option<Autoscale>,
    pub stderr: Stderr,
    /// `resourceRules`: limits on what it uses for long.
    pub resource_rules: Vec<ResourceRule>,
    /// `logging`, over the stack's once the stack file is read.
    pub logging: Logging,
    /// `networks`: the stack networks it is on, in order (eth0, eth1, …).
    pub networks: Vec<Attachment>,
}

impl Policy {
    /// Runs as replicas `NAME.1`…: fixed or autoscaled.
    pub fn replicated(&self) -> bool {
        self.replicas.is_some() || self.autoscale.is_some()
    }

    /// fds the payload gets at 3… before any `notify.fd`: the sockets,
    /// then the fd store.
    pub fn passed_fds(&self) -> usize {
        self.sockets.len() + self.fd_store_max as usize
    }
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            restart: Restart::default(),
            oom: OomPolicy::Restart,
            stop: Stop::default(),
            depends_on: Vec::new(),
            health: Health::default(),
            sockets: Vec::new(),
            fd_store_max: 0,
            replicas: None,
            autoscale: None,
            stderr: Stderr::Separate,
            resource_rules: Vec::new(),
            logging: Logging::default(),
            networks: Vec::new(),
        }
    }
}

/// Read the supervision fields; `prefix` names the service in errors
/// (`services.web.`).
pub fn parse(sup: &Map<String, Value>, prefix: &str) -> Result<Policy, SpecError> {
    let mut p = Policy::default();
    if let Some(v) = sup.get("restart") {
        p.restart = parse_restart(v, &format!("{prefix}restart"))?;
    }
    if let Some(v) = sup.get("oom") {
        p.oom = field(v, &format!("{prefix}oom"))?;
    }
    if let Some(v) = sup.get("stop") {
        p.stop = parse_stop(v, &format!("{prefix}stop"))?;
    }
    if let Some(v) = sup.get("dependsOn") {
        p.depends_on = health::parse_dependencies(v, &format!("{prefix}dependsOn"))?;
    }
    p.health = health::parse(sup, prefix)?;
    p.sockets = sockets::parse(sup, prefix)?;
    p.fd_store_max = sockets::parse_fd_store(sup, prefix)?;
    if sup.contains_key("replicas") {
        p.replicas = Some(sockets::parse_replicas(sup, prefix)?);
    }
    if let Some(v) = sup.get("autoscale") {
        let path = format!("{prefix}autoscale");
        p.autoscale = Some(autoscale::parse(
            v,
            &path,
            &p.sockets,
            p.replicas.is_some(),
        )?);
    }
    if let Some(v) = sup.get("stderr") {
        p.stderr = field(v, &format!("{prefix}stderr"))?;
    }
    if let Some(v) = sup.get("resourceRules") {
        p.resource_rules = rules::parse(v, &format!("{prefix}resourceRules"))?;
    }
    if let Some(v) = sup.get("logging") {
        p.logging = logging::parse(v, &format!("{prefix}logging"))?;
    }
    if let Some(v) = sup.get("networks") {
        p.networks = networks::parse_service(v, &format!("{prefix}networks"))?;
    }
    check_zero_downtime(&p, prefix)?;
    Ok(p)
}

/// `restart`, its numbers in range.
fn parse_restart(v: &Value, path: &str) -> Result<Restart, SpecError> {
    let r: Restart = field(v, path)?;
    if !(0.0..=1.0).contains(&r.jitter) {
        return Err(SpecError::new(
            format!("{path}.jitter"),
            format!("{}: must be between 0 and 1", r.jitter),
        ));
    }
    if r.max_delay_ms < r.delay_ms {
        return Err(SpecError::new(
            format!("{path}.maxDelayMs"),
            format!("{}: below delayMs {}", r.max_delay_ms, r.delay_ms),
        ));
    }
    if r.limit.burst == 0 {
        return Err(SpecError::new(
            format!("{path}.limit.burst"),
            "0: must be at least 1",
        ));
    }
    Ok(r)
}

/// `stop`: the signal by name or number, the timeout.
fn parse_stop(v: &Value, path: &str) -> Result<Stop, SpecError> {
    let s: StopJson = field(v, path)?;
    let mut stop = Stop::default();
    if let Some(sig) = s.signal {
        stop.signal = parse_signal(&sig).ok_or_else(|| {
            let shown = sig
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| sig.to_string());
            SpecError::new(format!("{path}.signal"), format!("{shown}: unknown signal"))
        })?;
    }
    if let Some(t) = s.timeout_ms {
        stop.timeout = Duration::from_millis(t);
    }
    Ok(stop)
}

/// Fields that only make sense together.
fn check_zero_downtime(p: &Policy, prefix: &str) -> Result<(), SpecError> {
    if p.fd_store_max > 0 && p.health.notify != Some(Notify::Systemd) {
        return Err(SpecError::new(
            format!("{prefix}fdStoreMax"),
            format!(
                "{}: needs \"notify\": \"systemd\" (FDSTORE=1 comes over sd_notify)",
                p.fd_store_max
            ),
        ));
    }
    if let Some(Notify::Fd(fd)) = p.health.notify {
        let first_free = isola_runtime::listen::FIRST_FD as usize + p.passed_fds();
        if usize::try_from(fd).is_ok_and(|fd| fd < first_free) {
            return Err(SpecError::new(
                format!("{prefix}notify.fd"),
                format!(
                    "{fd}: sockets and the fd store take 3 to {}; use {first_free} or more",
                    first_free - 1
                ),
            ));
        }
    }
    Ok(())
}

/// A restart mode that has nothing to overlap: the new sandbox could not
/// serve while the old one still does.
pub fn overlap_warning(p: &Policy, prefix: &str) -> Option<String> {
    (p.restart.mode == RestartMode::Overlap && p.sockets.is_empty() && !p.replicated()).then(|| {
        format!("{prefix}restart.mode: overlap: no sockets and no replicas, nothing to overlap (the new sandbox must bind its own port with SO_REUSEPORT)")
    })
}

/// "SIGTERM", "TERM" or 15.
pub fn parse_signal(v: &Value) -> Option<Signal> {
    match v {
        Value::Number(n) => Signal::try_from(i32::try_from(n.as_i64()?).ok()?).ok(),
        Value::String(s) => {
            let name = if s.starts_with("SIG") {
                s.clone()
            } else {
                format!("SIG{s}")
            };
            name.parse().ok()
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sup(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn defaults() {
        let p = parse(&Map::new(), "").unwrap();
        assert_eq!(p.restart.policy, RestartPolicy::OnFailure);
        assert_eq!(p.oom, OomPolicy::Restart);
        assert_eq!(p.stop.signal, Signal::SIGTERM);
        assert_eq!(p.stop.timeout, Duration::from_secs(10));
        assert_eq!(p.stderr, Stderr::Separate);
        let p = parse(&sup(json!({"stderr": "stdout"})), "").unwrap();
        assert_eq!(p.stderr, Stderr::Stdout);
    }

    #[test]
    fn restart_delays_follow_the_steps_formula() {
        let r = Restart {
            delay_ms: 100,
            max_delay_ms: 30_000,
            steps: 10,
            ..Default::default()
        };
        assert_eq!(r.base_delay(1), Duration::from_millis(100));
        let d6 = r.base_delay(6).as_secs_f64() * 1000.0;
        let want = 100.0 * 300f64.powf(0.5);
        assert!((d6 - want).abs() < 0.01, "{d6} vs {want}");
        assert_eq!(r.base_delay(11), Duration::from_millis(30_000));
        assert_eq!(r.base_delay(50), Duration::from_millis(30_000));
        let j = Restart {
            jitter: 0.5,
            ..r.clone()
        };
        assert_eq!(j.delay(1, 0.0), Duration::from_millis(50));
        assert_eq!(j.delay(1, 1.0), Duration::from_millis(150));
    }

    #[test]
    fn bad_values_name_the_field() {
        let e = parse(
            &sup(json!({"restart": {"policy": "sometimes"}})),
            "services.web.",
        )
        .unwrap_err();
        assert_eq!(e.field, "services.web.restart.policy");
        let e = parse(&sup(json!({"restart": {"delayMS": 1}})), "").unwrap_err();
        assert_eq!(e.field, "restart.delayMS");
        let e = parse(&sup(json!({"oom": "explode"})), "").unwrap_err();
        assert_eq!(e.field, "oom");
        let e = parse(&sup(json!({"stop": {"signal": "SIGFLY"}})), "").unwrap_err();
        assert_eq!(e.to_string(), "stop.signal: SIGFLY: unknown signal");
        let e = parse(&sup(json!({"restart": {"jitter": 2.0}})), "").unwrap_err();
        assert_eq!(e.field, "restart.jitter");
        let e = parse(&sup(json!({"stderr": "null"})), "services.web.").unwrap_err();
        assert_eq!(e.to_string(), "services.web.stderr: `null`: unknown value");
    }

    #[test]
    fn signals() {
        assert_eq!(parse_signal(&json!("SIGKILL")), Some(Signal::SIGKILL));
        assert_eq!(parse_signal(&json!("INT")), Some(Signal::SIGINT));
        assert_eq!(parse_signal(&json!(15)), Some(Signal::SIGTERM));
        assert_eq!(parse_signal(&json!("NOPE")), None);
    }
}
