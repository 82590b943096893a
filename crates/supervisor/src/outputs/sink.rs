//! The supervisor's own stdout and stderr. Our stdout and stderr may be slow pipes (a pager, a stalled terminal,
//! a full journal): they are written without blocking, through a bounded
//! buffer, and what does not fit is counted and dropped — a flood of
//! output never holds the loop up.

use std::fs::OpenOptions;
use std::io::{ErrorKind, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};

use nix::sys::socket::MsgFlags;

/// Bytes a sink keeps while its reader is slow; past that, lines are dropped.
pub(crate) const SINK_LIMIT: usize = 1 << 20;
/// How long the last output may take to go out at exit.
const LAST_FLUSH: std::time::Duration = std::time::Duration::from_secs(1);

/// Our stdout or stderr, as the process holds it.
enum Std {
    Out(std::io::Stdout),
    Err(std::io::Stderr),
}

impl Std {
    fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        match self {
            Std::Out(o) => o.as_fd(),
            Std::Err(e) => e.as_fd(),
        }
    }
}

/// How a sink writes without blocking.
enum Writer {
    /// Our own open file description of the same pipe or terminal, with
    /// O_NONBLOCK (setting it on fd 1 itself would change it for every
    /// process sharing that description).
    Reopened(std::fs::File),
    /// A socket (the journal): `send` with MSG_DONTWAIT.
    Socket(Std),
    /// A regular file never blocks for long; anything we cannot reopen is
    /// written as it is.
    Plain(Std),
}

/// The supervisor's stdout or stderr.
pub(crate) struct Sink {
    writer: Writer,
    buf: Vec<u8>,
    /// Lines dropped since the last report.
    dropped: u64,
    /// Lines dropped since we started.
    dropped_total: u64,
    /// Registered for EPOLLOUT (waiting to be writable).
    pub(super) waiting: bool,
}

impl Sink {
    pub(crate) fn stdout() -> Sink {
        Sink::new(Std::Out(std::io::stdout()))
    }

    pub(crate) fn stderr() -> Sink {
        Sink::new(Std::Err(std::io::stderr()))
    }

    /// A sink writing to `file` without blocking (tests: a pipe).
    #[cfg(test)]
    pub(crate) fn to_file(file: std::fs::File) -> Sink {
        Sink {
            writer: Writer::Reopened(file),
            buf: Vec::new(),
            dropped: 0,
            dropped_total: 0,
            waiting: false,
        }
    }

    fn new(std: Std) -> Sink {
        let path = format!("/proc/self/fd/{}", std.fd().as_raw_fd());
        let kind = std::fs::metadata(&path).map(|m| m.file_type());
        let writer = match kind {
            Ok(t) if t.is_socket() => Writer::Socket(std),
            Ok(t) if t.is_file() => Writer::Plain(std),
            Ok(_) => match OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
                .open(&path)
            {
                Ok(f) => Writer::Reopened(f),
                Err(_) => Writer::Plain(std),
            },
            Err(_) => Writer::Plain(std),
        };
        Sink {
            writer,
            buf: Vec::new(),
            dropped: 0,
            dropped_total: 0,
            waiting: false,
        }
    }

    /// Queue one line (a newline is added); dropped when the buffer is full.
    pub(crate) fn line(&mut self, text: &str) {
        if self.buf.len() + text.len() + 1 > SINK_LIMIT {
            self.dropped += 1;
            self.dropped_total += 1;
            return;
        }
        self.report_dropped();
        self.buf.extend_from_slice(text.as_bytes());
        self.buf.push(b'\n');
    }

    /// Lines dropped since we started.
    pub(crate) fn dropped_total(&self) -> u64 {
        self.dropped_total
    }

    /// Queue text without a newline (a progress line redrawn with `\r`);
    /// dropped when the buffer is full.
    pub(crate) fn partial(&mut self, text: &str) {
        if self.buf.len() + text.len() <= SINK_LIMIT {
            self.buf.extend_from_slice(text.as_bytes());
        }
    }

    /// Say how many lines were dropped, in the output itself, at the point
    /// where they are missing.
    fn report_dropped(&mut self) {
        if self.dropped > 0 {
            let note = format!(
                "isola: {} line(s) of output dropped: this output was not read fast enough\n",
                self.dropped
            );
            self.buf.extend_from_slice(note.as_bytes());
            self.dropped = 0;
        }
    }

    /// Write what the reader takes now; true when all went out (and the
    /// count of dropped lines with it).
    pub(super) fn write_some(&mut self) -> bool {
        loop {
            if self.buf.is_empty() {
                if self.dropped == 0 {
                    return true;
                }
                self.report_dropped();
            }
            let res = match &mut self.writer {
                Writer::Reopened(f) => f.write(&self.buf).map_err(|e| e.kind()),
                Writer::Socket(std) => {
                    nix::sys::socket::send(std.fd().as_raw_fd(), &self.buf, MsgFlags::MSG_DONTWAIT)
                        .map_err(|e| std::io::Error::from(e).kind())
                }
                Writer::Plain(std) => nix::unistd::write(std.fd(), &self.buf)
                    .map_err(|e| std::io::Error::from(e).kind()),
            };
            match res {
                Ok(0) => return false,
                Ok(n) => {
                    self.buf.drain(..n);
                }
                Err(ErrorKind::Interrupted) => {}
                Err(ErrorKind::WouldBlock) => return false,
                // A reader that went away: nothing will ever go out.
                Err(_) => {
                    self.buf.clear();
                    self.dropped = 0;
                    return true;
                }
            }
        }
    }

    /// Write what goes out now, without waiting for the rest.
    pub(crate) fn try_flush(&mut self) {
        let _ = self.write_some();
    }

    /// At exit: a last chance for what is queued, for at most
    /// [`LAST_FLUSH`] (a reader that never reads must not keep us alive).
    pub(crate) fn flush_blocking(&mut self) {
        let deadline = std::time::Instant::now() + LAST_FLUSH;
        while !self.write_some() {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return;
            }
            let fd = match &self.writer {
                Writer::Reopened(f) => f.as_fd(),
                Writer::Socket(std) | Writer::Plain(std) => std.fd(),
            };
            let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
            let mut fds = [nix::poll::PollFd::new(fd, nix::poll::PollFlags::POLLOUT)];
            if nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(ms)).is_err() {
                return;
            }
        }
    }

    pub(super) fn pollable(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        match &self.writer {
            Writer::Reopened(f) => Some(f.as_fd()),
            Writer::Socket(_) | Writer::Plain(_) => None,
        }
    }
}
