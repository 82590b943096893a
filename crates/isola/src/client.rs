//! The commands that talk to a running `isola up` over its control socket.

use std::io::Write;
use std::path::Path;

use isola_runtime::exit;
use isola_supervisor::control::{Client, ClientError, Message, Request, StatusRow};

use crate::Exit;

fn fail(e: ClientError) -> Exit {
    Exit(exit::FAILURE, e.to_string())
}

fn connect(path: &Path) -> Result<Client, Exit> {
    Client::connect(path).map_err(fail)
}

/// `stop`, `start`, `restart`: the state the service settled in.
pub(crate) fn lifecycle(path: &Path, req: Request) -> Result<u8, Exit> {
    let name = match &req {
        Request::Stop { name } | Request::Start { name } | Request::Restart { name } => {
            name.clone()
        }
        _ => String::new(),
    };
    let mut c = connect(path)?;
    let resp = c.request(&req).map_err(fail)?;
    println!("{name}: {}", resp.state.map(|s| s.as_str()).unwrap_or("ok"));
    Ok(exit::OK)
}

pub(crate) fn scale(path: &Path, name: &str, replicas: u32) -> Result<u8, Exit> {
    let req = Request::Scale {
        name: name.to_string(),
        replicas,
    };
    connect(path)?.request(&req).map_err(fail)?;
    println!("{name}: {replicas} replicas");
    Ok(exit::OK)
}

pub(crate) fn update(path: &Path, name: &str, resources: serde_json::Value) -> Result<u8, Exit> {
    let req = Request::Update {
        name: name.to_string(),
        resources,
    };
    connect(path)?.request(&req).map_err(fail)?;
    println!("{name}: limits updated");
    Ok(exit::OK)
}

pub(crate) fn down(path: &Path) -> Result<u8, Exit> {
    connect(path)?.request(&Request::Down).map_err(fail)?;
    println!("all services stopped");
    Ok(exit::OK)
}

pub(crate) fn logs(path: &Path, name: &str, lines: usize, follow: bool) -> Result<u8, Exit> {
    let mut c = connect(path)?;
    let req = Request::Logs {
        name: name.to_string(),
        lines,
        follow,
    };
    let resp = c.request(&req).map_err(fail)?;
    for l in resp.lines.iter().flatten() {
        println!("{l}");
    }
    if follow {
        while let Some(m) = c.next_message().map_err(fail)? {
            if let Message::Line { line } = m {
                println!("{line}");
            }
        }
    }
    Ok(exit::OK)
}

pub(crate) fn events(path: &Path, json: bool) -> Result<u8, Exit> {
    let mut c = connect(path)?;
    c.request(&Request::Events).map_err(fail)?;
    let out = std::io::stdout();
    while let Some(m) = c.next_message().map_err(fail)? {
        let Message::Event {
            time,
            service,
            event,
        } = &m
        else {
            continue;
        };
        let mut out = out.lock();
        let written = if json {
            serde_json::to_string(&m)
                .map_err(std::io::Error::other)
                .and_then(|t| writeln!(out, "{t}"))
        } else {
            writeln!(out, "{time} {service} {event}")
        };
        // Each event as it comes (a pipe would otherwise hold it back);
        // a reader that went away ends us quietly.
        if written.and_then(|()| out.flush()).is_err() {
            return Ok(exit::OK);
        }
    }
    Ok(exit::OK)
}

pub(crate) fn status(path: &Path, as_json: bool) -> Result<u8, Exit> {
    let mut c = connect(path)?;
    let resp = c.request(&Request::Status).map_err(fail)?;
    let services = resp.services.unwrap_or_default();
    if as_json {
        let text = serde_json::to_string_pretty(&services)
            .map_err(|e| Exit(exit::FAILURE, format!("status: {e}")))?;
        println!("{text}");
        return Ok(exit::OK);
    }
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let _ = writeln!(
        out,
        "{:<20} {:<9} {:<9} {:>8} {:>8} {:>10} {:>10} {:>10}  LAST EXIT",
        "NAME", "STATE", "HEALTH", "PID", "RESTARTS", "UPTIME", "MEMORY", "CPU"
    );
    for s in &services {
        let _ = writeln!(out, "{}", table_row(s));
    }
    let _ = out.flush();
    Ok(exit::OK)
}

fn table_row(s: &StatusRow) -> String {
    let last = s.last_exit.as_ref().map(|e| {
        let reason = serde_json::to_value(e.reason)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        let how = match (e.code, e.signal) {
            (Some(c), _) => format!("{reason} {c}"),
            (_, Some(sig)) => format!("{reason} (signal {sig})"),
            _ => reason,
        };
        match &e.message {
            Some(m) => format!("{how}: {m}"),
            None => how,
        }
    });
    format!(
        "{:<20} {:<9} {:<9} {:>8} {:>8} {:>10} {:>10} {:>10}  {}{}{}",
        s.name,
        s.state.as_str(),
        s.health,
        s.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
        s.restarts,
        s.uptime_ms.map(duration).unwrap_or_else(|| "-".into()),
        s.memory_current.map(bytes).unwrap_or_else(|| "-".into()),
        s.cpu_usec
            .map(|u| format!("{:.2}s", u as f64 / 1e6))
            .unwrap_or_else(|| "-".into()),
        last.unwrap_or_else(|| "-".into()),
        match s.oom_kills {
            0 => String::new(),
            n => format!(", {n} OOM kill(s)"),
        },
        match &s.notify_status {
            Some(st) => format!("  [{st}]"),
            None => String::new(),
        }
    )
}

fn duration(ms: u64) -> String {
    match ms / 1000 {
        s if s < 60 => format!("{}.{}s", s, ms % 1000 / 100),
        s if s < 3600 => format!("{}m{}s", s / 60, s % 60),
        s => format!("{}h{}m", s / 3600, s % 3600 / 60),
    }
}

fn bytes(b: u64) -> String {
    const KIB: f64 = 1024.0;
    match b {
        b if b < 1 << 10 => format!("{b}B"),
        b if b < 1 << 20 => format!("{:.1}K", b as f64 / KIB),
        b if b < 1 << 30 => format!("{:.1}M", b as f64 / (KIB * KIB)),
        b => format!("{:.1}G", b as f64 / (KIB * KIB * KIB)),
    }
}
