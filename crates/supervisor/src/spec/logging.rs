//! `logging`, at the top of a stack file (for every service) and on a
//! service (field by field over the stack's): the format of the log files
//! and where else each line goes — journald's native socket, a syslog
//! receiver. The files stay the source of truth; the others get copies.

use std::net::SocketAddr;
use std::path::PathBuf;

use isola_runtime::SpecError;
use serde_json::Value;

/// How a log file's lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// `TIME STREAM TEXT` (what `isola logs` prints).
    #[default]
    Text,
    /// One JSON object per line: `time`, `service`, `stream`, `replica`?,
    /// `msg` (for Loki, Vector, Fluent Bit and friends).
    Json,
}

/// A syslog receiver: RFC 5424 messages over one of these.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SyslogTarget {
    /// One datagram per message.
    Udp(SocketAddr),
    /// Octet-counted frames (RFC 6587) on one connection.
    Tcp(SocketAddr),
    /// One datagram per message (`/dev/log`).
    Unix(PathBuf),
}

impl std::fmt::Display for SyslogTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SyslogTarget::Udp(a) => write!(f, "udp://{a}"),
            SyslogTarget::Tcp(a) => write!(f, "tcp://{a}"),
            SyslogTarget::Unix(p) => write!(f, "unix://{}", p.display()),
        }
    }
}

/// A field of a service's `logging` as written: absent (the stack's
/// applies) or given.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Setting<T> {
    #[default]
    Inherit,
    Set(T),
}

impl<T: Clone> Setting<T> {
    fn over(&self, base: &Setting<T>) -> Setting<T> {
        match self {
            Setting::Set(v) => Setting::Set(v.clone()),
            Setting::Inherit => base.clone(),
        }
    }

    fn or(self, default: T) -> T {
        match self {
            Setting::Set(v) => v,
            Setting::Inherit => default,
        }
    }
}

/// `logging` as written on a service or at the top of the stack.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Logging {
    pub format: Setting<LogFormat>,
    pub journald: Setting<bool>,
    /// `Set(None)`: `"syslog": null`, off even where the stack says one.
    pub syslog: Setting<Option<SyslogTarget>>,
}

/// Where a service's lines go, once the stack's defaults are applied.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LogRoute {
    pub format: LogFormat,
    pub journald: bool,
    pub syslog: Option<SyslogTarget>,
}

impl Logging {
    /// This service's fields, the stack's where it says nothing.
    pub fn over(&self, stack: &Logging) -> Logging {
        Logging {
            format: self.format.over(&stack.format),
            journald: self.journald.over(&stack.journald),
            syslog: self.syslog.over(&stack.syslog),
        }
    }

    pub fn route(&self) -> LogRoute {
        LogRoute {
            format: self.format.clone().or(LogFormat::Text),
            journald: self.journald.clone().or(false),
            syslog: self.syslog.clone().or(None),
        }
    }
}

/// Read `logging` at `path` (`logging`, `services.web.logging`).
pub fn parse(v: &Value, path: &str) -> Result<Logging, SpecError> {
    let Value::Object(m) = v else {
        return Err(SpecError::new(path, format!("{v}: want an object")));
    };
    let mut l = Logging::default();
    for (k, v) in m {
        let at = format!("{path}.{k}");
        match k.as_str() {
            "format" => l.format = Setting::Set(parse_format(v, &at)?),
            "journald" => match v {
                Value::Bool(b) => l.journald = Setting::Set(*b),
                _ => return Err(SpecError::new(at, format!("{v}: want true or false"))),
            },
            "syslog" => {
                l.syslog = Setting::Set(match v {
                    Value::Null => None,
                    Value::String(s) => Some(parse_syslog(s, &at)?),
                    _ => return Err(SpecError::new(at, format!("{v}: {SYSLOG_FORMS}"))),
                })
            }
            _ => {
                return Err(SpecError::new(
                    at,
                    "unknown field (format, journald, syslog)",
                ))
            }
        }
    }
    Ok(l)
}

fn parse_format(v: &Value, at: &str) -> Result<LogFormat, SpecError> {
    match v.as_str() {
        Some("text") => Ok(LogFormat::Text),
        Some("json") => Ok(LogFormat::Json),
        _ => Err(SpecError::new(
            at,
            format!("{v}: unknown value (text, json)"),
        )),
    }
}

const SYSLOG_FORMS: &str = "want udp://IP[:PORT], tcp://IP[:PORT] or unix:///PATH (null: none)";

/// The default port of syslog over UDP (RFC 5426) and, as rsyslog and
/// Docker's syslog driver take it, over TCP.
const SYSLOG_PORT: u16 = 514;

/// `udp://127.0.0.1:514`, `tcp://[::1]`, `unix:///dev/log`. Addresses are
/// IP literals: a name would be resolved in the loop, which never waits
/// on DNS.
pub fn parse_syslog(s: &str, at: &str) -> Result<SyslogTarget, SpecError> {
    let bad = || SpecError::new(at, format!("`{s}`: {SYSLOG_FORMS}"));
    let (scheme, rest) = s.split_once("://").ok_or_else(bad)?;
    if scheme == "unix" {
        return match rest {
            p if p.starts_with('/') && p.len() > 1 => Ok(SyslogTarget::Unix(PathBuf::from(p))),
            _ => Err(bad()),
        };
    }
    let addr = rest
        .parse::<SocketAddr>()
        .or_else(|_| {
            rest.trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<std::net::IpAddr>()
                .map(|ip| SocketAddr::new(ip, SYSLOG_PORT))
        })
        .map_err(|_| bad())?;
    if addr.port() == 0 {
        return Err(bad());
    }
    match scheme {
        "udp" => Ok(SyslogTarget::Udp(addr)),
        "tcp" => Ok(SyslogTarget::Tcp(addr)),
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn err(v: Value) -> String {
        parse(&v, "logging").unwrap_err().to_string()
    }

    #[test]
    fn a_service_overrides_the_stack_field_by_field() {
        let stack = parse(
            &json!({"format": "json", "syslog": "udp://127.0.0.1:514"}),
            "logging",
        )
        .unwrap();
        let svc = parse(&json!({"journald": true, "syslog": null}), "x").unwrap();
        let r = svc.over(&stack).route();
        assert_eq!(r.format, LogFormat::Json);
        assert!(r.journald);
        assert_eq!(r.syslog, None);
        let r = Logging::default().over(&stack).route();
        assert_eq!(
            r.syslog,
            Some(SyslogTarget::Udp("127.0.0.1:514".parse().unwrap()))
        );
        assert_eq!(Logging::default().route(), LogRoute::default());
    }

    #[test]
    fn syslog_addresses() {
        let ok = [
            ("udp://127.0.0.1", "udp://127.0.0.1:514"),
            ("tcp://127.0.0.1:6514", "tcp://127.0.0.1:6514"),
            ("tcp://[::1]", "tcp://[::1]:514"),
            ("unix:///dev/log", "unix:///dev/log"),
        ];
        for (s, want) in ok {
            assert_eq!(parse_syslog(s, "x").unwrap().to_string(), want);
        }
        for s in [
            "udp://logs.example:514",
            "http://127.0.0.1:514",
            "127.0.0.1:514",
            "unix://dev/log",
            "udp://127.0.0.1:0",
            "tcp://127.0.0.1:99999",
        ] {
            let e = parse_syslog(s, "logging.syslog").unwrap_err().to_string();
            assert!(
                e.starts_with(&format!("logging.syslog: `{s}`: want udp://")),
                "{e}"
            );
        }
    }

    #[test]
    fn bad_fields_are_named() {
        assert_eq!(
            err(json!({"format": "xml"})),
            "logging.format: \"xml\": unknown value (text, json)"
        );
        assert_eq!(
            err(json!({"journald": "yes"})),
            "logging.journald: \"yes\": want true or false"
        );
        assert!(err(json!({"syslog": 514})).starts_with("logging.syslog: 514: want udp://"));
        assert_eq!(
            err(json!({"driver": "gelf"})),
            "logging.driver: unknown field (format, journald, syslog)"
        );
        assert_eq!(err(json!([])), "logging: []: want an object");
    }
}
