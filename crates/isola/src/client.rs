//! The commands that talk to a running `isola up` over its control socket.

use std::io::Write;
use std::path::Path;

use isola_runtime::exit;
use isola_supervisor::control::{Client, ClientError, Message, Request, ScaleTo, StatusRow};

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

pub(crate) fn scale(path: &Path, name: &str, replicas: ScaleTo) -> Result<u8, Exit> {
    let req = Request::Scale {
        name: name.to_string(),
        replicas,
    };
    connect(path)?.request(&req).map_err(fail)?;
    match replicas {
        ScaleTo::Count(n) => println!("{name}: {n} replicas"),
        ScaleTo::Auto(_) => println!("{name}: autoscaled"),
    }
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

/// `isola logs`: one service's lines, or (`name` `None`) every service's
/// interleaved by time as `NAME | …`; `since` cuts the history (a duration
/// back from now, `10m`, or an RFC 3339 time); `timestamps` keeps each
/// line's time (followed lines get the time they arrive).
pub(crate) fn logs(
    path: &Path,
    name: Option<&str>,
    lines: usize,
    follow: bool,
    since: Option<&str>,
    timestamps: bool,
) -> Result<u8, Exit> {
    let since = since.map(since_time).transpose()?;
    let mut c = connect(path)?;
    let req = Request::Logs {
        name: name.unwrap_or_default().to_string(),
        lines,
        follow,
        since,
    };
    let resp = c.request(&req).map_err(fail)?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for l in resp.lines.iter().flatten() {
        // A log line is `TIME STREAM TEXT`; every service's, `TIME NAME STREAM TEXT`.
        let (time, rest) = l.split_once(' ').unwrap_or(("", l.as_str()));
        let shown = match name {
            Some(_) => rest.to_string(),
            None => match rest.split_once(' ') {
                Some((svc, text)) => format!("{svc} | {text}"),
                None => rest.to_string(),
            },
        };
        let _ = match timestamps {
            true => writeln!(out, "{time} {shown}"),
            false => writeln!(out, "{shown}"),
        };
    }
    let _ = out.flush();
    drop(out);
    if follow {
        while let Some(m) = c.next_message().map_err(fail)? {
            if let Message::Line { line } = m {
                if timestamps {
                    let now = isola_supervisor::logs::timestamp(std::time::SystemTime::now());
                    println!("{now} {line}");
                } else {
                    println!("{line}");
                }
            }
        }
    }
    Ok(exit::OK)
}

/// `--since`: `30s`, `10m`, `2h`, `1d` back from now, or an RFC 3339 time.
fn since_time(text: &str) -> Result<String, Exit> {
    let bad = || {
        Exit(
            exit::USAGE,
            format!("--since {text:?}: use a duration (30s, 10m, 2h, 1d) or a time (2026-11-22T10:00:00Z)"),
        )
    };
    if text.contains('T') && text.starts_with(|c: char| c.is_ascii_digit()) {
        return Ok(text.to_string());
    }
    let (num, unit) = text.split_at(text.len().saturating_sub(1));
    let n: u64 = num.parse().map_err(|_| bad())?;
    let secs = match unit {
        "s" => n,
        "m" => n.saturating_mul(60),
        "h" => n.saturating_mul(3600),
        "d" => n.saturating_mul(86_400),
        _ => return Err(bad()),
    };
    let t = std::time::SystemTime::now()
        .checked_sub(std::time::Duration::from_secs(secs))
        .ok_or_else(bad)?;
    Ok(isola_supervisor::logs::timestamp(t))
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
    let color = crate::view::color_wanted(&std::io::stdout());
    // Without a second sample, CPU % is the average since the start.
    let avg = |s: &StatusRow| crate::view::cpu_average(s);
    for line in crate::view::table(&services, &avg, color) {
        let _ = writeln!(out, "{line}");
    }
    let _ = out.flush();
    Ok(exit::OK)
}

pub(crate) fn metrics(path: &Path) -> Result<u8, Exit> {
    let mut c = connect(path)?;
    let resp = c.request(&Request::Metrics).map_err(fail)?;
    print!("{}", resp.metrics.unwrap_or_default());
    Ok(exit::OK)
}

/// The stack's status rows, for `top`: a closure over them, since they
/// borrow the reply.
pub(crate) fn with_status<T>(path: &Path, f: impl FnOnce(&[StatusRow]) -> T) -> Result<T, Exit> {
    let mut c = connect(path)?;
    let resp = c.request(&Request::Status).map_err(fail)?;
    Ok(f(resp.services.as_deref().unwrap_or_default()))
}
