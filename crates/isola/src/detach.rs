//! `isola up -d STACK`: the supervisor in the background (its own session,
//! its output in `<log dir>/isola-up.log`), and this command returns once
//! every service is up — running and ready, or exited with 0 — or prints
//! which are not and exits 1 (the supervisor stays: `isola status`, `logs`
//! and `down` reach it as always).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use isola_runtime::exit;
use isola_supervisor::control::{Client, Request, StatusRow};
use isola_supervisor::lifecycle::State;

use crate::Exit;

/// Set in the background supervisor's environment: it starts a session of
/// its own (no terminal's hangup reaches it as a reload).
pub(crate) const DETACHED_ENV: &str = "ISOLA_UP_DETACHED";
/// Between looks at the stack's status.
const LOOK: Duration = Duration::from_millis(100);

pub(crate) fn up_detached(log_dir: &Path, socket: &Path, wait: Duration) -> Result<u8, Exit> {
    let fail =
        |what: &str, e: &dyn std::fmt::Display| Exit(exit::FAILURE, format!("up -d: {what}: {e}"));
    std::fs::create_dir_all(log_dir).map_err(|e| fail(&log_dir.display().to_string(), &e))?;
    let log_path = log_dir.join("isola-up.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| fail(&log_path.display().to_string(), &e))?;
    let args: Vec<_> = std::env::args_os()
        .skip(1)
        .filter(|a| a != "-d" && a != "--detach")
        .collect();
    let exe = std::env::current_exe().map_err(|e| fail("current_exe", &e))?;
    let mut child = Command::new(exe)
        .args(&args)
        .env(DETACHED_ENV, "1")
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(|e| fail("log", &e))?)
        .stderr(log)
        .spawn()
        .map_err(|e| fail("start the supervisor", &e))?;
    let deadline = Instant::now() + wait;
    let mut last: Vec<String> = Vec::new();
    loop {
        if let Ok(Some(st)) = child.try_wait() {
            let tail = std::fs::read_to_string(&log_path).unwrap_or_default();
            let tail: Vec<&str> = tail.lines().rev().take(5).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            return Err(Exit(
                exit::FAILURE,
                format!("up -d: the supervisor exited ({st}): {}", tail.join(" / ")),
            ));
        }
        if let Some(l) = look(socket) {
            if l.not_up.is_empty() {
                println!(
                    "{} services up (supervisor pid {}, log {})",
                    l.total,
                    child.id(),
                    log_path.display()
                );
                return Ok(exit::OK);
            }
            if l.failed {
                return Err(not_up_exit(&l.not_up));
            }
            last = l.not_up;
        }
        if Instant::now() >= deadline {
            return Err(not_up_exit(&last));
        }
        std::thread::sleep(LOOK);
    }
}

fn not_up_exit(not_up: &[String]) -> Exit {
    Exit(
        exit::FAILURE,
        format!(
            "up -d: not up: {} (the supervisor keeps running: isola status, isola down)",
            not_up.join(", ")
        ),
    )
}

/// The stack as `status` shows it now.
struct Look {
    total: usize,
    not_up: Vec<String>,
    failed: bool,
}

fn look(socket: &Path) -> Option<Look> {
    let mut c = Client::connect(socket).ok()?;
    let resp = c.request(&Request::Status).ok()?;
    let rows = resp.services?;
    Some(Look {
        total: rows.len(),
        not_up: rows.iter().filter(|r| !is_up(r)).map(describe).collect(),
        failed: rows.iter().any(|r| r.state == State::Failed),
    })
}

fn is_up(r: &StatusRow) -> bool {
    match r.state {
        State::Running => r.ready,
        State::Exited => r.last_exit.as_ref().is_some_and(|e| e.code == Some(0)),
        // Nothing to wait for: it starts when a connection comes.
        State::ScaledToZero => true,
        _ => false,
    }
}

fn describe(r: &StatusRow) -> String {
    match (&r.last_exit, r.state) {
        (Some(e), State::Failed | State::Backoff | State::Exited) => {
            let why = e
                .message
                .clone()
                .or_else(|| e.code.map(|c| format!("exit {c}")))
                .or_else(|| e.signal.map(|s| format!("signal {s}")))
                .unwrap_or_default();
            format!("{} ({}: {why})", r.name, r.state.as_str())
        }
        _ => format!("{} ({})", r.name, r.state.as_str()),
    }
}
