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
    let color = crate::view::color_wanted(&std::io::stdout());
    // Without a second sample, CPU % is the average since the start.
    let avg = |s: &StatusRow| crate::view::cpu_average(s);
    for line in crate::view::table(&services, &avg, color) {
        let _ = writeln!(out, "{line}");
    }
    let _ = out.flush();
    Ok(exit::OK)
}

/// The stack's status rows, for `top`: a closure over them, since they
/// borrow the reply.
pub(crate) fn with_status<T>(path: &Path, f: impl FnOnce(&[StatusRow]) -> T) -> Result<T, Exit> {
    let mut c = connect(path)?;
    let resp = c.request(&Request::Status).map_err(fail)?;
    Ok(f(resp.services.as_deref().unwrap_or_default()))
}
