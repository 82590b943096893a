//! The commands that talk to a running `isola up` over its control socket.

use std::path::Path;

use isola_supervisor::control::{Client, ClientError};
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

pub fn status(path: &Path, as_json: bool) -> Result<u8, Exit> {
    let resp = connect(path)?
        .request(&json!({"cmd": "status"}))
        .map_err(fail)?;
    let services = resp
        .get("services")
        .cloned()
        .unwrap_or(Value::Array(vec![]));
    if as_json {
        println!(
            "{}",
            serde_json::to_string_pretty(&services).unwrap_or_default()
        );
        return Ok(0);
    }
    println!(
        "{:<20} {:<9} {:>8} {:>8} {:>10} {:>10} {:>10}  LAST EXIT",
        "NAME", "STATE", "PID", "RESTARTS", "UPTIME", "MEMORY", "CPU"
    );
    for s in services.as_array().into_iter().flatten() {
        let num = |k: &str| s.get(k).and_then(Value::as_u64);
        let last = s.get("lastExit").filter(|v| !v.is_null()).map(|e| {
            let reason = e.get("reason").and_then(Value::as_str).unwrap_or("");
            match (
                e.get("code").and_then(Value::as_i64),
                e.get("signal").and_then(Value::as_i64),
            ) {
                (Some(c), _) => format!("{reason} {c}"),
                (_, Some(sig)) => format!("{reason} (signal {sig})"),
                _ => reason.to_string(),
            }
        });
        println!(
            "{:<20} {:<9} {:>8} {:>8} {:>10} {:>10} {:>10}  {}{}",
            s.get("name").and_then(Value::as_str).unwrap_or(""),
            s.get("state").and_then(Value::as_str).unwrap_or(""),
            num("pid")
                .map(|p| p.to_string())
                .unwrap_or_else(|| "-".into()),
            num("restarts").unwrap_or(0),
            num("uptimeMs").map(duration).unwrap_or_else(|| "-".into()),
            num("memoryCurrent")
                .map(bytes)
                .unwrap_or_else(|| "-".into()),
            num("cpuUsec")
                .map(|u| format!("{:.2}s", u as f64 / 1e6))
                .unwrap_or_else(|| "-".into()),
            last.unwrap_or_else(|| "-".into()),
            match num("oomKills") {
                Some(n) if n > 0 => format!(", {n} OOM kill(s)"),
                _ => String::new(),
            }
        );
    }
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
