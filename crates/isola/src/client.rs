//! The commands that talk to a running `isola up` over its control socket.

use std::borrow::Cow;
use std::io::Write;
use std::path::Path;

use isola_supervisor::control::{Client, ClientError};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::Exit;

fn fail(e: ClientError) -> Exit {
    Exit(1, e.to_string())
}

fn connect(path: &Path) -> Result<Client, Exit> {
    Client::connect(path).map_err(fail)
}

pub fn simple(path: &Path, cmd: &str, name: &str) -> Result<u8, Exit> {
    let resp = connect(path)?
        .request(&json!({"cmd": cmd, "name": name}))
        .map_err(fail)?;
    println!(
        "{name}: {}",
        resp.get("state").and_then(Value::as_str).unwrap_or("ok")
    );
    Ok(0)
}

pub fn down(path: &Path) -> Result<u8, Exit> {
    connect(path)?
        .request(&json!({"cmd": "down"}))
        .map_err(fail)?;
    println!("all services stopped");
    Ok(0)
}

pub fn logs(path: &Path, name: &str, lines: usize, follow: bool) -> Result<u8, Exit> {
    let mut c = connect(path)?;
    let resp = c
        .request(&json!({"cmd": "logs", "name": name, "lines": lines, "follow": follow}))
        .map_err(fail)?;
    for l in resp
        .get("lines")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        println!("{}", l.as_str().unwrap_or_default());
    }
    if follow {
        while let Some(v) = c.next_message().map_err(fail)? {
            if let Some(l) = v.get("line").and_then(Value::as_str) {
                println!("{l}");
            }
        }
    }
    Ok(0)
}

pub fn events(path: &Path, json: bool) -> Result<u8, Exit> {
    let mut c = connect(path)?;
    c.request(&json!({"cmd": "events"})).map_err(fail)?;
    let out = std::io::stdout();
    while let Some(v) = c.next_message().map_err(fail)? {
        let mut out = out.lock();
        let written = if json {
            writeln!(out, "{v}")
        } else {
            let field = |k: &str| {
                v.get(k)
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string()
            };
            writeln!(
                out,
                "{} {} {}",
                field("time"),
                field("service"),
                field("event")
            )
        };
        // Each event as it comes (a pipe would otherwise hold it back);
        // a reader that went away ends us quietly.
        if written.and_then(|()| out.flush()).is_err() {
            return Ok(0);
        }
    }
    Ok(0)
}

/// The part of a `status` row the table shows; the rest is skipped
/// unparsed (a thousand services are a thousand rows).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Row<'a> {
    #[serde(borrow)]
    name: Cow<'a, str>,
    #[serde(borrow)]
    state: Cow<'a, str>,
    pid: Option<u64>,
    restarts: Option<u64>,
    uptime_ms: Option<u64>,
    memory_current: Option<u64>,
    cpu_usec: Option<u64>,
    #[serde(borrow)]
    last_exit: Option<LastExitRow<'a>>,
    oom_kills: Option<u64>,
}

#[derive(Deserialize)]
struct LastExitRow<'a> {
    #[serde(borrow)]
    reason: Cow<'a, str>,
    code: Option<i64>,
    signal: Option<i64>,
}

#[derive(Deserialize)]
struct Reply<'a> {
    ok: bool,
    error: Option<String>,
    #[serde(borrow, default)]
    services: Vec<Row<'a>>,
}

pub fn status(path: &Path, as_json: bool) -> Result<u8, Exit> {
    let req = json!({"cmd": "status"});
    if as_json {
        let resp = connect(path)?.request(&req).map_err(fail)?;
        let services = resp.get("services").cloned().unwrap_or(json!([]));
        println!(
            "{}",
            serde_json::to_string_pretty(&services).unwrap_or_default()
        );
        return Ok(0);
    }
    let line = connect(path)?.request_line(&req).map_err(fail)?;
    let reply: Reply = serde_json::from_str(&line)
        .map_err(|e| Exit(1, format!("bad response from supervisor: {e}")))?;
    if !reply.ok {
        return Err(Exit(
            1,
            reply.error.unwrap_or_else(|| "request refused".into()),
        ));
    }
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let _ = writeln!(
        out,
        "{:<20} {:<9} {:>8} {:>8} {:>10} {:>10} {:>10}  LAST EXIT",
        "NAME", "STATE", "PID", "RESTARTS", "UPTIME", "MEMORY", "CPU"
    );
    for s in &reply.services {
        let last = s.last_exit.as_ref().map(|e| match (e.code, e.signal) {
            (Some(c), _) => format!("{} {c}", e.reason),
            (_, Some(sig)) => format!("{} (signal {sig})", e.reason),
            _ => e.reason.to_string(),
        });
        let _ = writeln!(
            out,
            "{:<20} {:<9} {:>8} {:>8} {:>10} {:>10} {:>10}  {}{}",
            s.name,
            s.state,
            s.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
            s.restarts.unwrap_or(0),
            s.uptime_ms.map(duration).unwrap_or_else(|| "-".into()),
            s.memory_current.map(bytes).unwrap_or_else(|| "-".into()),
            s.cpu_usec
                .map(|u| format!("{:.2}s", u as f64 / 1e6))
                .unwrap_or_else(|| "-".into()),
            last.unwrap_or_else(|| "-".into()),
            match s.oom_kills {
                Some(n) if n > 0 => format!(", {n} OOM kill(s)"),
                _ => String::new(),
            }
        );
    }
    let _ = out.flush();
    Ok(0)
}

fn duration(ms: u64) -> String {
    match ms / 1000 {
        s if s < 60 => format!("{}.{}s", s, ms % 1000 / 100),
        s if s < 3600 => format!("{}m{}s", s / 60, s % 60),
        s => format!("{}h{}m", s / 3600, s % 3600 / 60),
    }
}

fn bytes(b: u64) -> String {
    match b {
        b if b < 1 << 10 => format!("{b}B"),
        b if b < 1 << 20 => format!("{:.1}K", b as f64 / 1024.0),
        b if b < 1 << 30 => format!("{:.1}M", b as f64 / 1048576.0),
        b => format!("{:.1}G", b as f64 / 1073741824.0),
    }
}
