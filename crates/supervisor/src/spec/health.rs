//! Health fields of a service: `probes` (startup, liveness, readiness),
//! `notify` and `watchdogMs`, and the conditions of `dependsOn`. Parsed and
//! checked here, before anything starts; the lifecycle core acts on them and
//! [`crate::probe`] runs the checks.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use isola_runtime::SpecError;
use serde::Deserialize;
use serde_json::Value;

use super::field;

/// Kubernetes' defaults, in ms.
const DEFAULT_PERIOD_MS: u64 = 10_000;
const DEFAULT_TIMEOUT_MS: u64 = 1_000;
const DEFAULT_FAILURE_THRESHOLD: u32 = 3;
/// Probes reach the service on its own loopback unless told otherwise.
const DEFAULT_HOST: &str = "127.0.0.1";
/// The lowest fd a `notify: {"fd": N}` may name (0–2 are stdio).
const MIN_NOTIFY_FD: i32 = 3;
/// Above this a probe's text (path, header) is a mistake, not a request.
const MAX_HTTP_FIELD: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ProbeKind {
    Startup,
    Liveness,
    Readiness,
}

impl ProbeKind {
    pub const ALL: [ProbeKind; 3] = [
        ProbeKind::Startup,
        ProbeKind::Liveness,
        ProbeKind::Readiness,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ProbeKind::Startup => "startup",
            ProbeKind::Liveness => "liveness",
            ProbeKind::Readiness => "readiness",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// What a probe checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// A command run inside the sandbox; exit 0 is success.
    Exec(Vec<String>),
    /// A TCP connection accepted in the service's network namespace.
    Tcp { host: IpAddr, port: u16 },
    /// An HTTP/1.1 GET answered with a status in 200–399.
    Http {
        host: IpAddr,
        port: u16,
        path: String,
        headers: Vec<(String, String)>,
    },
}

impl Check {
    /// `http :8080/healthz`, `tcp :5432`, `exec pg_isready`: for events.
    pub fn describe(&self) -> String {
        let at = |host: &IpAddr, port: &u16| {
            if host.to_string() == DEFAULT_HOST {
                format!(":{port}")
            } else {
                format!("{host}:{port}")
            }
        };
        match self {
            Check::Exec(argv) => format!("exec {}", argv.join(" ")),
            Check::Tcp { host, port } => format!("tcp {}", at(host, port)),
            Check::Http {
                host, port, path, ..
            } => format!("http {}{path}", at(host, port)),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    pub check: Check,
    pub initial_delay: Duration,
    pub period: Duration,
    pub timeout: Duration,
    pub failure_threshold: u32,
    pub success_threshold: u32,
}

/// How a service says it is ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Notify {
    /// sd_notify(3) datagrams on `$NOTIFY_SOCKET`.
    Systemd,
    /// s6 style: a newline written to this fd of the payload.
    Fd(i32),
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Health {
    /// Indexed by [`ProbeKind::index`]; boxed, as most services have none
    /// (a stack of 10,000 keeps this once per service).
    pub probes: [Option<Box<Probe>>; 3],
    pub notify: Option<Notify>,
    pub watchdog: Option<Duration>,
}

impl Health {
    pub fn probe(&self, kind: ProbeKind) -> Option<&Probe> {
        self.probes[kind.index()].as_deref()
    }

    /// The service says when it is ready (else it is ready once running).
    pub fn gates_readiness(&self) -> bool {
        self.notify.is_some() || self.probe(ProbeKind::Readiness).is_some()
    }

    /// Anything to show in a HEALTH column.
    pub fn watched(&self) -> bool {
        self.probes.iter().any(Option::is_some) || self.notify.is_some() || self.watchdog.is_some()
    }
}

/// What a dependent waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Condition {
    /// Its sandbox runs (the array form of `dependsOn`).
    Started,
    /// It is ready: running, and its readiness probe or notify said so.
    Healthy,
    /// It exited with code 0.
    Completed,
}

impl Condition {
    pub fn as_str(self) -> &'static str {
        match self {
            Condition::Started => "started",
            Condition::Healthy => "healthy",
            Condition::Completed => "completed",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dependency {
    pub name: String,
    pub condition: Condition,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ProbeJson {
    exec: Option<Vec<String>>,
    tcp: Option<TcpJson>,
    http: Option<HttpJson>,
    initial_delay_ms: Option<u64>,
    period_ms: Option<u64>,
    timeout_ms: Option<u64>,
    failure_threshold: Option<u32>,
    success_threshold: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TcpJson {
    port: i64,
    host: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpJson {
    port: i64,
    path: Option<String>,
    host: Option<String>,
    scheme: Option<String>,
    headers: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum NotifyJson {
    Name(String),
    Fd { fd: i64 },
}

/// `probes`, `notify` and `watchdogMs` of one service; `prefix` names the
/// service in errors (`services.web.`).
pub fn parse(sup: &serde_json::Map<String, Value>, prefix: &str) -> Result<Health, SpecError> {
    let mut h = Health::default();
    if let Some(v) = sup.get("probes") {
        let path = format!("{prefix}probes");
        let probes: serde_json::Map<String, Value> = field(v, &path)?;
        for (name, raw) in &probes {
            let kind = ProbeKind::ALL
                .into_iter()
                .find(|k| k.as_str() == name)
                .ok_or_else(|| {
                    SpecError::new(
                        format!("{path}.{name}"),
                        "unknown field (startup, liveness or readiness)",
                    )
                })?;
            let path = format!("{path}.{name}");
            h.probes[kind.index()] = Some(Box::new(parse_probe(raw, kind, &path)?));
        }
    }
    if let Some(v) = sup.get("notify") {
        let path = format!("{prefix}notify");
        h.notify = Some(match field::<NotifyJson>(v, &path) {
            Ok(NotifyJson::Name(n)) if n == "systemd" => Notify::Systemd,
            Ok(NotifyJson::Fd { fd })
                if (i64::from(MIN_NOTIFY_FD)..=i64::from(i32::MAX)).contains(&fd) =>
            {
                Notify::Fd(i32::try_from(fd).unwrap_or(MIN_NOTIFY_FD))
            }
            Ok(NotifyJson::Fd { fd }) => {
                return Err(SpecError::new(
                    format!("{path}.fd"),
                    format!("{fd}: must be {MIN_NOTIFY_FD} or more (0-2 are stdio)"),
                ))
            }
            _ => {
                return Err(SpecError::new(
                    path,
                    format!("{v}: expected \"systemd\" or {{\"fd\": N}}"),
                ))
            }
        });
    }
    if let Some(v) = sup.get("watchdogMs") {
        let path = format!("{prefix}watchdogMs");
        let ms: u64 = field(v, &path)?;
        if ms == 0 {
            return Err(SpecError::new(path, "0: must be at least 1"));
        }
        if h.notify != Some(Notify::Systemd) {
            return Err(SpecError::new(
                path,
                format!("{ms}: needs \"notify\": \"systemd\" (the pings arrive on its socket)"),
            ));
        }
        h.watchdog = Some(Duration::from_millis(ms));
    }
    Ok(h)
}

/// `dependsOn`: `["db"]` (started) or `{"db": "healthy", "migrate": "completed"}`.
pub fn parse_dependencies(v: &Value, path: &str) -> Result<Vec<Dependency>, SpecError> {
    match v {
        Value::Array(_) => {
            let names: Vec<String> = field(v, path)?;
            Ok(names
                .into_iter()
                .map(|name| Dependency {
                    name,
                    condition: Condition::Started,
                })
                .collect())
        }
        Value::Object(m) => m
            .iter()
            .map(|(name, c)| {
                let cpath = format!("{path}.{name}");
                let condition = match c.as_str() {
                    Some("started") => Condition::Started,
                    Some("healthy") => Condition::Healthy,
                    Some("completed") => Condition::Completed,
                    _ => {
                        return Err(SpecError::new(
                            cpath,
                            format!("{c}: unknown condition (started, healthy or completed)"),
                        ))
                    }
                };
                Ok(Dependency {
                    name: name.clone(),
                    condition,
                })
            })
            .collect(),
        _ => Err(SpecError::new(
            path,
            format!("{v}: expected [\"name\", …] or {{\"name\": \"started|healthy|completed\"}}"),
        )),
    }
}

fn parse_probe(v: &Value, kind: ProbeKind, path: &str) -> Result<Probe, SpecError> {
    let mut p: ProbeJson = field(v, path)?;
    let given = [p.exec.is_some(), p.tcp.is_some(), p.http.is_some()];
    let check = match (p.exec.take(), p.tcp.take(), p.http.take()) {
        (Some(argv), None, None) => exec_check(argv, path)?,
        (None, Some(t), None) => Check::Tcp {
            host: host(t.host.as_deref(), &format!("{path}.tcp.host"))?,
            port: port(t.port, &format!("{path}.tcp.port"))?,
        },
        (None, None, Some(h)) => http_check(h, &format!("{path}.http"))?,
        _ => {
            let n = given.iter().filter(|g| **g).count();
            return Err(SpecError::new(
                path,
                if n == 0 {
                    "needs one of exec, tcp or http".to_string()
                } else {
                    "exactly one of exec, tcp or http, not several".to_string()
                },
            ));
        }
    };
    let (failure_threshold, success_threshold) = thresholds(&p, kind, path)?;
    let ms = |v: Option<u64>, default: u64, name: &str| -> Result<Duration, SpecError> {
        match v.unwrap_or(default) {
            0 if name != "initialDelayMs" => Err(SpecError::new(
                format!("{path}.{name}"),
                "0: must be at least 1",
            )),
            n => Ok(Duration::from_millis(n)),
        }
    };
    Ok(Probe {
        check,
        initial_delay: ms(p.initial_delay_ms, 0, "initialDelayMs")?,
        period: ms(p.period_ms, DEFAULT_PERIOD_MS, "periodMs")?,
        timeout: ms(p.timeout_ms, DEFAULT_TIMEOUT_MS, "timeoutMs")?,
        failure_threshold,
        success_threshold,
    })
}

fn exec_check(argv: Vec<String>, path: &str) -> Result<Check, SpecError> {
    if argv.first().is_none_or(String::is_empty) {
        return Err(SpecError::new(
            format!("{path}.exec"),
            "must name a command",
        ));
    }
    if let Some(bad) = argv.iter().find(|a| a.contains('\0')) {
        return Err(SpecError::new(
            format!("{path}.exec"),
            format!("{bad:?}: contains a NUL byte"),
        ));
    }
    Ok(Check::Exec(argv))
}

/// An `http` probe; `hp` is its path in errors.
fn http_check(h: HttpJson, hp: &str) -> Result<Check, SpecError> {
    if let Some(s) = h
        .scheme
        .as_deref()
        .filter(|s| !s.eq_ignore_ascii_case("http"))
    {
        return Err(SpecError::new(
            format!("{hp}.scheme"),
            format!("{s}: only \"http\" is supported"),
        ));
    }
    let path_s = h.path.unwrap_or_else(|| "/".into());
    if !path_s.starts_with('/') || !printable(&path_s) {
        return Err(SpecError::new(
            format!("{hp}.path"),
            format!("{path_s:?}: must start with / and hold no spaces or control characters"),
        ));
    }
    let headers: Vec<(String, String)> = h.headers.unwrap_or_default().into_iter().collect();
    for (k, val) in &headers {
        let ok_name = !k.is_empty() && k.bytes().all(|b| b.is_ascii_graphic() && b != b':');
        if !ok_name || val.chars().any(char::is_control) || val.len() > MAX_HTTP_FIELD {
            return Err(SpecError::new(
                format!("{hp}.headers.{k}"),
                format!("{val:?}: not a valid header"),
            ));
        }
    }
    Ok(Check::Http {
        host: host(h.host.as_deref(), &format!("{hp}.host"))?,
        port: port(h.port, &format!("{hp}.port"))?,
        path: path_s,
        headers,
    })
}

/// `failureThreshold` and `successThreshold` (above 1 for readiness only).
fn thresholds(p: &ProbeJson, kind: ProbeKind, path: &str) -> Result<(u32, u32), SpecError> {
    let threshold = |v: Option<u32>, default: u32, name: &str| -> Result<u32, SpecError> {
        match v.unwrap_or(default) {
            0 => Err(SpecError::new(
                format!("{path}.{name}"),
                "0: must be at least 1",
            )),
            n => Ok(n),
        }
    };
    let failure = threshold(
        p.failure_threshold,
        DEFAULT_FAILURE_THRESHOLD,
        "failureThreshold",
    )?;
    let success = threshold(p.success_threshold, 1, "successThreshold")?;
    if success != 1 && kind != ProbeKind::Readiness {
        return Err(SpecError::new(
            format!("{path}.successThreshold"),
            format!("{success}: must be 1 for a {} probe", kind.as_str()),
        ));
    }
    Ok((failure, success))
}

fn printable(s: &str) -> bool {
    s.len() <= MAX_HTTP_FIELD && s.bytes().all(|b| b.is_ascii_graphic())
}

fn port(p: i64, path: &str) -> Result<u16, SpecError> {
    match u16::try_from(p) {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(SpecError::new(path, format!("{p}: must be 1-65535"))),
    }
}

fn host(h: Option<&str>, path: &str) -> Result<IpAddr, SpecError> {
    let h = h.unwrap_or(DEFAULT_HOST);
    // No name lookups in the supervisor's loop: an address, or localhost.
    let h = if h == "localhost" { DEFAULT_HOST } else { h };
    h.parse()
        .map_err(|_| SpecError::new(path, format!("{h}: expected an IP address")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> serde_json::Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    fn health(v: Value) -> Result<Health, SpecError> {
        parse(&obj(v), "services.web.")
    }

    #[test]
    fn probes_with_kubernetes_defaults() {
        let h = health(json!({
            "probes": {
                "startup": {"exec": ["pg_isready"], "periodMs": 1000, "failureThreshold": 30},
                "liveness": {"http": {"port": 8080, "path": "/healthz"}, "periodMs": 2000},
                "readiness": {"tcp": {"port": 5432}, "successThreshold": 2}
            },
            "notify": "systemd",
            "watchdogMs": 5000
        }))
        .unwrap();
        let s = h.probe(ProbeKind::Startup).unwrap();
        assert_eq!(s.check, Check::Exec(vec!["pg_isready".into()]));
        assert_eq!(s.failure_threshold, 30);
        assert_eq!(s.timeout, Duration::from_secs(1));
        let l = h.probe(ProbeKind::Liveness).unwrap();
        assert_eq!(l.check.describe(), "http :8080/healthz");
        assert_eq!(l.failure_threshold, 3);
        let r = h.probe(ProbeKind::Readiness).unwrap();
        assert_eq!(r.period, Duration::from_secs(10));
        assert_eq!(r.success_threshold, 2);
        assert_eq!(h.notify, Some(Notify::Systemd));
        assert_eq!(h.watchdog, Some(Duration::from_secs(5)));
        assert!(h.gates_readiness());
        assert_eq!(
            health(json!({"notify": {"fd": 3}})).unwrap().notify,
            Some(Notify::Fd(3))
        );
    }

    #[test]
    fn bad_health_fields_name_the_field() {
        let cases = [
            (
                json!({"probes": {"liveness": {"exec": ["x"], "tcp": {"port": 1}}}}),
                "services.web.probes.liveness: exactly one of exec, tcp or http",
            ),
            (
                json!({"probes": {"liveness": {"periodMs": 5}}}),
                "services.web.probes.liveness: needs one of",
            ),
            (
                json!({"probes": {"readiness": {"tcp": {"port": 0}}}}),
                "services.web.probes.readiness.tcp.port: 0: must be 1-65535",
            ),
            (
                json!({"probes": {"readiness": {"http": {"port": 70000}}}}),
                "services.web.probes.readiness.http.port: 70000: must be 1-65535",
            ),
            (
                json!({"probes": {"liveness": {"tcp": {"port": 1}, "successThreshold": 2}}}),
                "services.web.probes.liveness.successThreshold: 2: must be 1 for a liveness probe",
            ),
            (
                json!({"probes": {"startup": {"tcp": {"port": 1}, "failureThreshold": 0}}}),
                "services.web.probes.startup.failureThreshold: 0: must be at least 1",
            ),
            (
                json!({"probes": {"alive": {"tcp": {"port": 1}}}}),
                "services.web.probes.alive: unknown field",
            ),
            (
                json!({"probes": {"liveness": {"http": {"port": 1, "scheme": "https"}}}}),
                "services.web.probes.liveness.http.scheme: https: only",
            ),
            (
                json!({"probes": {"liveness": {"tcp": {"port": 1, "host": "db.local"}}}}),
                "services.web.probes.liveness.tcp.host: db.local: expected an IP address",
            ),
            (
                json!({"notify": {"fd": 2}}),
                "services.web.notify.fd: 2: must be 3 or more",
            ),
            (
                json!({"notify": "upstart"}),
                "services.web.notify: \"upstart\": expected",
            ),
            (
                json!({"watchdogMs": 0}),
                "services.web.watchdogMs: 0: must be at least 1",
            ),
        ];
        for (v, want) in cases {
            let e = health(v.clone()).unwrap_err().to_string();
            assert!(e.starts_with(want), "{v}\n got {e}\nwant {want}");
        }
    }

    #[test]
    fn dependency_forms() {
        let d = parse_dependencies(&json!(["db"]), "dependsOn").unwrap();
        assert_eq!(d[0].condition, Condition::Started);
        let d = parse_dependencies(
            &json!({"db": "healthy", "migrate": "completed"}),
            "dependsOn",
        )
        .unwrap();
        assert_eq!(d.len(), 2);
        assert!(d
            .iter()
            .any(|d| d.name == "db" && d.condition == Condition::Healthy));
        let e = parse_dependencies(&json!({"db": "ready"}), "services.web.dependsOn").unwrap_err();
        assert_eq!(
            e.to_string(),
            "services.web.dependsOn.db: \"ready\": unknown condition (started, healthy or completed)"
        );
    }
}
