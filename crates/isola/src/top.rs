//! `isola top`: the status table full-screen, redrawn every second, CPU %
//! from the `cpuUsec` deltas between two redraws; `q` (or Ctrl-C) quits and
//! gives the terminal back as it was.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::os::fd::AsFd;
use std::path::Path;
use std::time::{Duration, Instant};

use isola_runtime::exit;
use isola_supervisor::control::StatusRow;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::termios::{self, LocalFlags, SetArg, Termios};

use crate::Exit;

/// Between redraws.
const REFRESH: Duration = Duration::from_secs(1);
/// The alternate screen, the cursor hidden; and back.
const ENTER: &str = "\x1b[?1049h\x1b[?25l";
const LEAVE: &str = "\x1b[?25h\x1b[?1049l";
const CTRL_C: u8 = 3;

/// The terminal's settings, put back however `top` ends.
struct Raw {
    saved: Termios,
}

impl Drop for Raw {
    fn drop(&mut self) {
        let mut out = std::io::stdout();
        let _ = out.write_all(LEAVE.as_bytes());
        let _ = out.flush();
        let _ = termios::tcsetattr(std::io::stdin().as_fd(), SetArg::TCSANOW, &self.saved);
    }
}

pub(crate) fn top(socket: &Path) -> Result<u8, Exit> {
    let stdin = std::io::stdin();
    if !stdin.is_terminal() || !std::io::stdout().is_terminal() {
        return Err(Exit(
            exit::USAGE,
            "top: needs a terminal (use isola status --json in scripts)".into(),
        ));
    }
    let saved = termios::tcgetattr(stdin.as_fd())
        .map_err(|e| Exit(exit::FAILURE, format!("top: terminal: {e}")))?;
    let mut raw = saved.clone();
    // Keys one at a time, not echoed; output processing (\n → \r\n) stays.
    raw.local_flags
        .remove(LocalFlags::ICANON | LocalFlags::ECHO | LocalFlags::ISIG);
    termios::tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw)
        .map_err(|e| Exit(exit::FAILURE, format!("top: terminal: {e}")))?;
    let _guard = Raw { saved };
    let mut out = std::io::stdout();
    let _ = out.write_all(ENTER.as_bytes());
    let color = crate::view::color_wanted(&out);
    let mut last: HashMap<String, (u64, Instant)> = HashMap::new();
    loop {
        let now = Instant::now();
        let screen = crate::client::with_status(socket, |rows| {
            let cpu = |s: &StatusRow| {
                let (prev, at) = last.get(s.name.as_ref())?;
                let dt = now.duration_since(*at).as_micros() as f64;
                let used = s.cpu_usec?.checked_sub(*prev)? as f64;
                (dt > 0.0).then(|| used * 100.0 / dt)
            };
            let running = rows.iter().filter(|r| r.pid.is_some()).count();
            let mut lines = vec![format!(
                "isola top — {} services, {running} with a sandbox — q quits",
                rows.len()
            )];
            lines.push(String::new());
            lines.extend(crate::view::table(rows, &cpu, color));
            let samples: Vec<(String, u64)> = rows
                .iter()
                .filter_map(|r| Some((r.name.to_string(), r.cpu_usec?)))
                .collect();
            (lines, samples)
        });
        let text = match screen {
            Ok((lines, samples)) => {
                last = samples.into_iter().map(|(n, c)| (n, (c, now))).collect();
                lines.join("\r\n")
            }
            Err(Exit(_, msg)) => format!("isola top: {msg}\r\n(q quits)"),
        };
        let _ = write!(out, "\x1b[H\x1b[2J{text}");
        let _ = out.flush();
        if quit_within(REFRESH) {
            return Ok(exit::OK);
        }
    }
}

/// Wait up to `d` for a key; true when it says quit.
fn quit_within(d: Duration) -> bool {
    let stdin = std::io::stdin();
    let deadline = Instant::now() + d;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
        let mut fds = [PollFd::new(stdin.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(ms)) {
            Ok(0) => return false,
            Ok(_) => {
                let mut buf = [0u8; 64];
                match nix::unistd::read(stdin.as_fd(), &mut buf) {
                    Ok(0) => return true,
                    Ok(n) => {
                        if buf[..n].iter().any(|b| matches!(*b, b'q' | b'Q' | CTRL_C)) {
                            return true;
                        }
                    }
                    Err(_) => return true,
                }
            }
            Err(nix::errno::Errno::EINTR) => {}
            Err(_) => return true,
        }
    }
}
