//! Where output goes: each service's stdout/stderr pipes are read into its
//! log file, to clients following that log, and echoed on the supervisor's
//! own stdout; supervisor events go to stderr, the log and subscribers.
//!
//! Our stdout and stderr may be slow pipes (a pager, a stalled terminal,
//! a full journal): they are written without blocking, through a bounded
//! buffer, and what does not fit is counted and dropped — a flood of
//! output never holds the loop up.

use std::fs::OpenOptions;
use std::io::{ErrorKind, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::time::SystemTime;

use nix::errno::Errno;
use nix::sys::epoll::{EpollEvent, EpollFlags};
use nix::sys::socket::MsgFlags;

use crate::control::Message;
use crate::logs::{self, LineBuffer};
use crate::supervisor::{Supervisor, Token};

/// Bytes a sink keeps while its reader is slow; past that, lines are dropped.
const SINK_LIMIT: usize = 1 << 20;
/// Log files kept open at once, the most recently opened ones: a service
/// that writes keeps its log open, ten thousand quiet ones hold no fd.
pub(crate) const LOGS_OPEN: usize = 128;
/// How long the last output may take to go out at exit.
const LAST_FLUSH: std::time::Duration = std::time::Duration::from_secs(1);
/// Bytes read from a service pipe per read call.
const READ_CHUNK: usize = 16 * 1024;
/// Reads per wakeup of a live pipe: a service that writes as fast as we
/// read must not keep the loop from everything else (epoll is
/// level-triggered: the rest is reported again at once).
const READS_PER_WAKEUP: usize = 4;
/// Reads of a dead sandbox's pipe: what it wrote before it died, up to
/// 1 MiB (a leftover process still writing is cut off there).
const READS_WHEN_CLOSING: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    pub(crate) fn from_index(k: usize) -> Stream {
        if k == 0 {
            Stream::Stdout
        } else {
            Stream::Stderr
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// The read end of a service's stdout or stderr.
pub(crate) struct Pipe {
    fd: OwnedFd,
    buf: LineBuffer,
    stream: Stream,
}

impl Pipe {
    pub(crate) fn new(fd: OwnedFd, stream: Stream) -> Pipe {
        Pipe {
            fd,
            buf: LineBuffer::default(),
            stream,
        }
    }
}

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
    /// Registered for EPOLLOUT (waiting to be writable).
    waiting: bool,
}

impl Sink {
    pub(crate) fn stdout() -> Sink {
        Sink::new(Std::Out(std::io::stdout()))
    }

    pub(crate) fn stderr() -> Sink {
        Sink::new(Std::Err(std::io::stderr()))
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
            waiting: false,
        }
    }

    /// Queue one line (a newline is added); dropped when the buffer is full.
    pub(crate) fn line(&mut self, text: &str) {
        if self.buf.len() + text.len() + 1 > SINK_LIMIT {
            self.dropped += 1;
            return;
        }
        self.report_dropped();
        self.buf.extend_from_slice(text.as_bytes());
        self.buf.push(b'\n');
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
    fn write_some(&mut self) -> bool {
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

    fn pollable(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        match &self.writer {
            Writer::Reopened(f) => Some(f.as_fd()),
            Writer::Socket(_) | Writer::Plain(_) => None,
        }
    }
}

impl Supervisor {
    /// Write what sink `k` (0 stdout, 1 stderr) can take; wait for
    /// EPOLLOUT when it takes no more.
    pub(crate) fn flush_sink(&mut self, k: usize) {
        let Some(sink) = self.sinks.get_mut(k) else {
            return;
        };
        let done = sink.write_some();
        if done != sink.waiting {
            return;
        }
        let Some(fd) = sink.pollable() else {
            // Not pollable: what did not go out waits for the next write.
            return;
        };
        let tok = Token::Sink(k).encode();
        let res = if done {
            self.epoll.delete(fd)
        } else {
            self.epoll
                .add(fd, EpollEvent::new(EpollFlags::EPOLLOUT, tok))
        };
        if res.is_ok() || done {
            sink.waiting = !done;
        }
    }

    fn slot_name(&self, i: usize) -> Option<String> {
        self.slots.get(i)?.as_ref().map(|s| s.name.clone())
    }

    /// A supervisor event: on stderr, in the service's log, to the log's
    /// followers and to `events` subscribers.
    pub(crate) fn event(&mut self, i: usize, msg: &str) {
        let Some(name) = self.slot_name(i) else {
            return;
        };
        self.sinks[1].line(&format!("isola: {name}: {msg}"));
        self.flush_sink(1);
        self.log_lines(i, "isola", std::slice::from_ref(&msg.to_string()));
        let line = format!("isola: {msg}");
        self.broadcast(
            |c| c.follows(&name),
            &Message::Line {
                line: line.as_str().into(),
            },
        );
        let time = logs::timestamp(SystemTime::now());
        self.broadcast(
            |c| c.events,
            &Message::Event {
                time: time.as_str().into(),
                service: name.as_str().into(),
                event: msg.into(),
            },
        );
    }

    /// Append lines to service `i`'s log, opening it through the bounded
    /// cache of open logs (the oldest opened is closed past [`LOGS_OPEN`]).
    fn log_lines(&mut self, i: usize, stream: &str, lines: &[String]) {
        let Some(slot) = self.slot(i) else { return };
        let mut opened = false;
        for l in lines {
            opened |= slot.log.write_line(stream, l).unwrap_or(false);
        }
        if !opened {
            return;
        }
        self.open_logs.push_back(i);
        while self.open_logs.len() > LOGS_OPEN {
            let Some(j) = self.open_logs.pop_front() else {
                break;
            };
            if let Some(s) = self.slot(j) {
                s.log.close();
            }
        }
    }

    pub(crate) fn drain_pipes(&mut self, i: usize) {
        for k in 0..2 {
            self.read_pipe(i, k, true);
        }
    }

    /// Read what is there; at EOF (or when draining a dead sandbox) close.
    pub(crate) fn read_pipe(&mut self, i: usize, k: usize, closing: bool) {
        let Some(slot) = self.slots.get_mut(i).and_then(Option::as_mut) else {
            return;
        };
        let Some(p) = slot.pipes.get_mut(k).and_then(Option::as_mut) else {
            return;
        };
        let mut lines = Vec::new();
        let mut buf = [0u8; READ_CHUNK];
        let mut eof = false;
        let reads = if closing {
            READS_WHEN_CLOSING
        } else {
            READS_PER_WAKEUP
        };
        for _ in 0..reads {
            match nix::unistd::read(&p.fd, &mut buf) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => p.buf.push(&buf[..n], &mut lines),
                Err(Errno::EINTR) => {}
                Err(Errno::EAGAIN) => break,
                // Any other error will not go away: treat it as the end, or
                // the level-triggered epoll would report it forever.
                Err(_) => {
                    eof = true;
                    break;
                }
            }
        }
        let stream = p.stream;
        if eof || closing {
            if let Some(last) = p.buf.finish() {
                lines.push(last);
            }
            let _ = self.epoll.delete(p.fd.as_fd());
            slot.pipes[k] = None;
        }
        if lines.is_empty() {
            return;
        }
        self.log_lines(i, stream.as_str(), &lines);
        let Some(name) = self.slot_name(i) else {
            return;
        };
        if self.cfg.echo {
            for l in &lines {
                self.sinks[0].line(&format!("{name} | {l}"));
            }
            self.flush_sink(0);
        }
        for l in &lines {
            self.broadcast(
                |c| c.follows(&name),
                &Message::Line {
                    line: l.as_str().into(),
                },
            );
        }
        if self.conns.values().any(crate::server::Conn::follows_all) {
            for l in &lines {
                let line = format!("{name} | {l}");
                self.broadcast(
                    crate::server::Conn::follows_all,
                    &Message::Line {
                        line: line.as_str().into(),
                    },
                );
            }
        }
    }
}
