//! The control protocol: newline-delimited JSON over a Unix stream socket,
//! typed on both sides (the supervisor's server and the CLI's client).
//!
//! Requests, one object per line, tagged by `cmd`:
//!   {"cmd": "status"}
//!   {"cmd": "stop" | "start" | "restart", "name": "web"}
//!   {"cmd": "logs", "name": "web", "lines": 100, "follow": true}
//!   {"cmd": "events"}
//!   {"cmd": "down"}
//!   {"cmd": "metrics"}
//! Responses: `{"ok": true, …}` or `{"ok": false, "error": "…"}`, one per
//! request; `logs` with `follow` then streams `{"line": "…"}` objects and
//! `events` streams `{"time", "service", "event"}` objects.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::collections::VecDeque;
use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::lifecycle::exit_policy::Reason;
use crate::lifecycle::State;

pub const DEFAULT_SOCKET: &str = "/run/isola/isola.sock";

/// Lines of log history `logs` sends when the request does not say.
pub const DEFAULT_LOG_LINES: usize = 100;

/// `--socket`, else `$ISOLA_SOCKET`, else the default: root's
/// [`DEFAULT_SOCKET`], a user's `isola/isola.sock` in their runtime
/// directory ([`crate::user_dirs::runtime_dir`]).
pub fn socket_path(flag: Option<PathBuf>) -> PathBuf {
    flag.or_else(|| std::env::var_os("ISOLA_SOCKET").map(PathBuf::from))
        .unwrap_or_else(|| match isola_runtime::plan::rootless::unprivileged() {
            false => PathBuf::from(DEFAULT_SOCKET),
            true => crate::user_dirs::runtime_dir().join("isola/isola.sock"),
        })
}

fn default_log_lines() -> usize {
    DEFAULT_LOG_LINES
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "lowercase", deny_unknown_fields)]
pub enum Request {
    Status,
    Stop {
        name: String,
    },
    Start {
        name: String,
    },
    Restart {
        name: String,
    },
    /// One service's log, or every service's interleaved (`name` empty:
    /// lines then read `TIME NAME STREAM TEXT`).
    Logs {
        #[serde(default)]
        name: String,
        #[serde(default = "default_log_lines")]
        lines: usize,
        #[serde(default)]
        follow: bool,
        /// Only lines at or after this RFC 3339 time.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        since: Option<String>,
    },
    Events,
    Down,
    /// Where a running service's sandbox is, for `isola exec` to join it.
    Exec {
        name: String,
    },
    /// Change how many replicas a replicated service runs; for an
    /// autoscaled one, fix the count (`"auto"`: let it decide again).
    Scale {
        name: String,
        replicas: ScaleTo,
    },
    /// Change a service's limits live (a `linux.resources` object), kept
    /// until the next reload of the stack file.
    Update {
        name: String,
        resources: serde_json::Value,
    },
    /// The metrics, as `GET /metrics` serves them in the Prometheus text
    /// format.
    Metrics,
    /// The supervisor itself: pid, version, start, upgrades, stack.
    Info,
    /// Re-execute the supervisor from `binary` (default: the path it was
    /// started from), services untouched; answered by the new binary.
    Upgrade {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        binary: Option<PathBuf>,
    },
}

/// One answer to one request. Fields a command does not use are left out.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Response<'a> {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// `start`, `stop`, `restart`: the state the service settled in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<State>,
    /// `logs`: the history asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lines: Option<Vec<String>>,
    /// `status`.
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    pub services: Option<Vec<StatusRow<'a>>>,
    /// `exec`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<ExecTarget>,
    /// `metrics`: the Prometheus text format.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<String>,
    /// `info`, and `upgrade` (what the new binary is).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<Info>,
    /// `upgrade`: the version that was replaced.
    #[serde(
        default,
        rename = "upgradedFrom",
        skip_serializing_if = "Option::is_none"
    )]
    pub upgraded_from: Option<String>,
    /// `upgrade`: from the old binary's snapshot to the new one serving,
    /// the time no supervisor read the services' output and events.
    #[serde(
        default,
        rename = "unwatchedMs",
        skip_serializing_if = "Option::is_none"
    )]
    pub unwatched_ms: Option<u64>,
}

/// The supervisor, as `isola info` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Info {
    pub pid: i32,
    pub version: String,
    /// When the first supervisor of this stack's line of upgrades
    /// started (epoch ms): upgrades keep it.
    pub started_ms: u64,
    pub upgrades: u32,
    /// The stack's keeper (the pid a shell or systemd knows), and how
    /// many supervisors it started after one died.
    #[serde(default)]
    pub keeper: Option<i32>,
    #[serde(default)]
    pub recoveries: u32,
    pub stack: PathBuf,
    pub services: usize,
    /// The binary an upgrade without `--binary` execs.
    pub binary: PathBuf,
}

/// A running service's sandbox, as `isola exec` joins it: the init's pid
/// and cgroup, and the stack file (with the fingerprint of the service as
/// loaded) from which the CLI takes the service's credentials and seccomp.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExecTarget {
    pub pid: i32,
    pub cgroup: Option<PathBuf>,
    pub stack: PathBuf,
    pub fingerprint: u64,
    /// The image store its image services' roots come from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_store: Option<PathBuf>,
}

impl Response<'_> {
    pub fn ok() -> Response<'static> {
        Response {
            ok: true,
            ..Response::default()
        }
    }

    pub fn err(msg: impl Into<String>) -> Response<'static> {
        Response {
            ok: false,
            error: Some(msg.into()),
            ..Response::default()
        }
    }

    pub fn state(state: State) -> Response<'static> {
        Response {
            state: Some(state),
            ..Response::ok()
        }
    }
}

/// What a `logs -f` or `events` connection receives after its answer.
#[derive(Debug, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Message<'a> {
    Line {
        #[serde(borrow)]
        line: Cow<'a, str>,
    },
    Event {
        #[serde(borrow)]
        time: Cow<'a, str>,
        #[serde(borrow)]
        service: Cow<'a, str>,
        #[serde(borrow)]
        event: Cow<'a, str>,
    },
}

/// What `scale` asks for: a count, or `"auto"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ScaleTo {
    Count(u32),
    Auto(Auto),
}

/// The word `auto`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Auto {
    #[serde(rename = "auto")]
    Auto,
}

/// An autoscaled service's count, on each of its replicas' rows (and on
/// the service's own row while none runs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AutoscaleRow {
    /// Replicas wanted now (the last decision, or the pin).
    pub desired: u32,
    /// Replicas running.
    pub running: u32,
    pub min: u32,
    pub max: u32,
    /// `isola scale NAME N` fixed the count until `isola scale NAME auto`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pinned: Option<u32>,
}

/// One service in the `status` reply (the README documents the fields).
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusRow<'a> {
    #[serde(borrow)]
    pub name: Cow<'a, str>,
    pub state: State,
    pub pid: Option<i32>,
    pub restarts: u32,
    pub uptime_ms: Option<u64>,
    pub started_at_ms: Option<u64>,
    pub last_exit: Option<ExitRow>,
    pub oom_kills: u64,
    /// The shortage its last start ran into (EMFILE…), while it waits in
    /// backoff to try again.
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    pub waiting_for: Option<Cow<'a, str>>,
    pub memory_current: Option<u64>,
    pub memory_peak: Option<u64>,
    pub cpu_usec: Option<u64>,
    #[serde(borrow)]
    pub history: History<'a>,
    #[serde(borrow)]
    pub depends_on: Cow<'a, [String]>,
    #[serde(borrow)]
    pub restart_policy: Cow<'a, str>,
    /// `starting`, `healthy`, `unhealthy`, or `-` (nothing watches it, or
    /// it does not run).
    #[serde(default = "no_health")]
    pub health: Cow<'a, str>,
    /// Running, and its readiness gates (probe, notify) say so.
    #[serde(default)]
    pub ready: bool,
    /// The last result of each probe of this run, by probe name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub probe: BTreeMap<String, ProbeRow>,
    /// The service's last `STATUS=` notification.
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    pub notify_status: Option<Cow<'a, str>>,
    /// A replica's service (`web` for `web.3`).
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    pub group: Option<Cow<'a, str>>,
    /// An overlapping restart's new sandbox, not ready yet: the service
    /// it will take over from.
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    pub replacing: Option<Cow<'a, str>>,
    /// The cgroup files isola set for the service (its limits in force,
    /// `isola update`'s included), by file name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub limits: BTreeMap<String, String>,
    /// Its addresses on the stack's networks, by network (while it runs).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub addresses: BTreeMap<String, String>,
    /// Its IPv6 addresses, on the networks that have IPv6.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub addresses6: BTreeMap<String, String>,
    /// The count of an autoscaled service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscale: Option<AutoscaleRow>,
}

fn no_health() -> Cow<'static, str> {
    Cow::Borrowed("-")
}

/// A probe's last result.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProbeRow {
    /// Epoch ms.
    pub time_ms: u64,
    pub ok: bool,
    pub message: String,
    /// Consecutive failures up to this result.
    pub failures: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExitRow {
    pub reason: Reason,
    pub code: Option<i32>,
    pub signal: Option<i32>,
    /// For `unhealthy` and `watchdog`: the probe and its last error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// One run of a service: when it was launched and when it ended (epoch ms).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Run {
    pub start_ms: u64,
    pub exit_ms: Option<u64>,
}

/// A service's recent runs: serialized from where the supervisor keeps
/// them (no copy per row of a thousand-row status), read into a vector.
#[derive(Debug)]
pub enum History<'a> {
    Borrowed(&'a VecDeque<Run>),
    Owned(Vec<Run>),
}

impl History<'_> {
    pub fn runs(&self) -> Vec<Run> {
        match self {
            History::Borrowed(d) => d.iter().copied().collect(),
            History::Owned(v) => v.clone(),
        }
    }
}

impl Serialize for History<'_> {
    fn serialize<S: serde::Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        match self {
            History::Borrowed(d) => ser.collect_seq(d.iter()),
            History::Owned(v) => ser.collect_seq(v.iter()),
        }
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for History<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Vec::<Run>::deserialize(d).map(History::Owned)
    }
}

/// The first line of a serde error, without serde_json's position suffix
/// (a request is one line; the column says nothing to a person).
pub fn short_error(e: &serde_json::Error) -> String {
    let text = isola_runtime::spec::strip_position(&e.to_string());
    isola_runtime::error::one_line(&text).into_owned()
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no isola supervisor is listening on {0}")]
    NotListening(PathBuf),
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
    #[error("{0}")]
    Refused(String),
    #[error("bad response from supervisor: {0}")]
    Protocol(String),
}

pub struct Client {
    path: PathBuf,
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    line: String,
}

impl Client {
    pub fn connect(path: &Path) -> Result<Client, ClientError> {
        let s = UnixStream::connect(path).map_err(|e| match e.kind() {
            ErrorKind::NotFound | ErrorKind::ConnectionRefused => {
                ClientError::NotListening(path.to_owned())
            }
            _ => ClientError::Io(path.to_owned(), e),
        })?;
        let writer = s
            .try_clone()
            .map_err(|e| ClientError::Io(path.to_owned(), e))?;
        Ok(Client {
            path: path.to_owned(),
            reader: BufReader::new(s),
            writer,
            line: String::new(),
        })
    }

    /// Send one request and read its response; `Refused` when `ok` is
    /// false. The response borrows from the client's line buffer.
    pub fn request(&mut self, req: &Request) -> Result<Response<'_>, ClientError> {
        self.send(req)?;
        if !self.next_line()? {
            return Err(ClientError::Protocol("connection closed".into()));
        }
        let resp: Response =
            serde_json::from_str(&self.line).map_err(|e| ClientError::Protocol(short_error(&e)))?;
        if resp.ok {
            Ok(resp)
        } else {
            Err(ClientError::Refused(
                resp.error.unwrap_or_else(|| "request refused".into()),
            ))
        }
    }

    /// The next streamed message, `None` when the supervisor closed the
    /// connection.
    pub fn next_message(&mut self) -> Result<Option<Message<'_>>, ClientError> {
        if !self.next_line()? {
            return Ok(None);
        }
        serde_json::from_str(&self.line)
            .map(Some)
            .map_err(|e| ClientError::Protocol(short_error(&e)))
    }

    fn send(&mut self, req: &Request) -> Result<(), ClientError> {
        let mut line = serde_json::to_vec(req).map_err(|e| ClientError::Protocol(e.to_string()))?;
        line.push(b'\n');
        if let Err(e) = self.writer.write_all(&line) {
            // A refused peer is told why and hung up on, possibly before our
            // request went out: the reason is still there to read.
            if !matches!(e.kind(), ErrorKind::BrokenPipe | ErrorKind::ConnectionReset) {
                return Err(ClientError::Io(self.path.clone(), e));
            }
        }
        Ok(())
    }

    fn next_line(&mut self) -> Result<bool, ClientError> {
        self.line.clear();
        let n = self
            .reader
            .read_line(&mut self.line)
            .map_err(|e| ClientError::Io(self.path.clone(), e))?;
        Ok(n > 0)
    }
}

#[cfg(test)]
mod tests;
