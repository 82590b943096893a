//! Outputs: where service output and supervisor lines go. Owns each
//! service's stdout/stderr pipes (read into its log file and echoed on our
//! stdout), the log files (through a bounded cache of open ones), and our
//! own stdout and stderr ([`Sink`]s that never block the loop), and the
//! copies of service lines for journald and syslog ([`Forwarders`], as
//! each service's `logging` says). What a client following a log gets is
//! the caller's to send: reads return the lines they read ([`Lines`]).

use std::collections::VecDeque;
use std::os::fd::{AsFd, OwnedFd};

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};

use crate::logs::{LineBuffer, LogConfig, LogFile};
use crate::shell::context::{Ctx, ServiceIx, ServiceMap};
use crate::shell::reactor::{Interest, Part, Token};
use crate::spec::logging::LogRoute;
use peek::{Peeked, Peeker};

mod forward;
mod handover;
mod peek;
mod sink;

pub(crate) use forward::{Forwarders, JOURNAL_SOCKET};
pub(crate) use sink::Sink;

/// Log files kept open at once, the most recently opened ones: a service
/// that writes keeps its log open, ten thousand quiet ones hold no fd.
pub(crate) const LOGS_OPEN: usize = 128;
/// Bytes read from a service pipe per read call.
const READ_CHUNK: usize = 16 * 1024;
/// Reads per wakeup of a live pipe: a service that writes as fast as we
/// read must not keep the loop from everything else (epoll is
/// level-triggered: the rest is reported again at once).
const READS_PER_WAKEUP: usize = 4;
/// Reads of a dead sandbox's pipe: what it wrote before it died, up to
/// 1 MiB (a leftover process still writing is cut off there).
const READS_WHEN_CLOSING: usize = 64;

/// A service's stream, or ours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    const BOTH: [Stream; 2] = [Stream::Stdout, Stream::Stderr];

    fn index(self) -> usize {
        match self {
            Stream::Stdout => 0,
            Stream::Stderr => 1,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// Which of our fds an event is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Key {
    Pipe(ServiceIx, Stream),
    Sink(Stream),
    /// A syslog receiver's connection, by its number.
    Forward(usize),
}

impl Key {
    /// The kind in the low two bits, the stream in the third, the number
    /// above.
    fn token(self) -> Token {
        let (n, kind, stream) = match self {
            Key::Pipe(i, s) => (i as u64, 0, s),
            Key::Sink(s) => (0, 1, s),
            Key::Forward(k) => (k as u64, 2, Stream::Stdout),
        };
        Token::new(Part::Outputs, n << 3 | (stream.index() as u64) << 2 | kind)
    }

    fn decode(key: u64) -> Option<Key> {
        let stream = Stream::BOTH[usize::from(key & 4 != 0)];
        let n = usize::try_from(key >> 3).ok()?;
        match key & 3 {
            0 => Some(Key::Pipe(n, stream)),
            1 => Some(Key::Sink(stream)),
            2 => Some(Key::Forward(n)),
            _ => None,
        }
    }
}

/// How much of a pipe to read now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reading {
    /// A live sandbox's: a few reads, the rest at the next wakeup.
    Live,
    /// A dead sandbox's: what is there, then it is closed.
    Closing,
}

/// The read end of a service's stdout or stderr.
struct Pipe {
    fd: OwnedFd,
    buf: LineBuffer,
}

/// The write ends a sandbox gets for its stdout and stderr (`None`: its
/// stderr goes to its stdout's pipe).
pub(crate) struct PipeEnds {
    pub(crate) stdout: OwnedFd,
    pub(crate) stderr: Option<OwnedFd>,
}

/// Lines a service wrote, for the clients following its log.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Lines {
    pub(crate) service: String,
    pub(crate) lines: Vec<String>,
}

struct ServiceOutput {
    /// Kept here too: a removed service's last lines are written after
    /// the core has let it go.
    name: String,
    replica: Option<u32>,
    /// Its sandbox's init, once started.
    pid: Option<i32>,
    log: LogFile,
    pipes: [Option<Pipe>; 2],
    route: LogRoute,
    /// The number of its syslog receiver among the forwarders'.
    syslog: Option<usize>,
}

pub(crate) struct Outputs {
    services: ServiceMap<ServiceOutput>,
    /// Services whose log file is open, oldest first.
    open_logs: VecDeque<ServiceIx>,
    /// Our stdout (service output) and stderr (events, notes).
    sinks: [Sink; 2],
    logs: LogConfig,
    /// Service output echoed on our stdout.
    echo: bool,
    forward: Forwarders,
    /// Lines taken from a pipe only once logged (`None`: read as they
    /// come, if the scratch pipe could not be made).
    peeker: Option<Peeker>,
}

/// Where our own lines go.
pub(crate) struct OwnSinks {
    pub(crate) stdout: Sink,
    pub(crate) stderr: Sink,
    /// Service output echoed on our stdout.
    pub(crate) echo: bool,
}

impl Outputs {
    pub(crate) fn new(logs: LogConfig, own: OwnSinks, forward: Forwarders) -> Outputs {
        Outputs {
            services: ServiceMap::default(),
            open_logs: VecDeque::new(),
            sinks: [own.stdout, own.stderr],
            logs,
            echo: own.echo,
            forward,
            peeker: Peeker::new().ok(),
        }
    }

    /// Service `i` is named `name`: its log file is checked (created) now.
    pub(crate) fn add(&mut self, i: ServiceIx, name: &str) -> std::io::Result<()> {
        let log = LogFile::open(&self.logs, name)?;
        let out = ServiceOutput {
            name: name.to_string(),
            replica: None,
            pid: None,
            log,
            pipes: [None, None],
            route: LogRoute::default(),
            syslog: None,
        };
        self.services.insert(i, out);
        Ok(())
    }

    /// Where service `i`'s lines go (at its add, and again at a reload:
    /// a change of `logging` needs no restart). `replica`: which one it
    /// is, for the JSON lines and journald.
    pub(crate) fn set_route(&mut self, i: ServiceIx, route: LogRoute, replica: Option<u32>) {
        let syslog = route.syslog.as_ref().map(|t| self.forward.syslog(t));
        let Some(out) = self.services.get_mut(i) else {
            return;
        };
        out.log.set_format(route.format, replica);
        out.replica = replica;
        out.route = route;
        out.syslog = syslog;
    }

    /// Service `i`'s sandbox runs as `pid` (what journald and syslog are
    /// told sent its lines).
    pub(crate) fn started(&mut self, i: ServiceIx, pid: i32) {
        if let Some(out) = self.services.get_mut(i) {
            out.pid = Some(pid);
        }
    }

    pub(crate) fn has(&self, i: ServiceIx) -> bool {
        self.services.get(i).is_some()
    }

    /// Service `i` is gone: its pipes close (what is left unread is lost:
    /// it was drained when its sandbox exited).
    pub(crate) fn forget(&mut self, ctx: &mut Ctx<'_>, i: ServiceIx) {
        self.close_pipes(ctx, i);
        self.services.remove(i);
        self.open_logs.retain(|j| *j != i);
    }

    /// Fresh pipes for a start of service `i`, our ends registered; with
    /// `merged`, its stderr goes to its stdout's pipe.
    pub(crate) fn open_pipes(
        &mut self,
        ctx: &mut Ctx<'_>,
        i: ServiceIx,
        merged: bool,
    ) -> Result<PipeEnds, Errno> {
        let streams: &[Stream] = if merged {
            &[Stream::Stdout]
        } else {
            &Stream::BOTH
        };
        let mut ends = Vec::with_capacity(2);
        for &stream in streams {
            match self.open_pipe(ctx, i, stream) {
                Ok(w) => ends.push(w),
                Err(e) => {
                    self.close_pipes(ctx, i);
                    return Err(e);
                }
            }
        }
        let mut ends = ends.into_iter();
        match ends.next() {
            Some(stdout) => Ok(PipeEnds {
                stdout,
                stderr: ends.next(),
            }),
            None => Err(Errno::EINVAL),
        }
    }

    fn open_pipe(
        &mut self,
        ctx: &mut Ctx<'_>,
        i: ServiceIx,
        stream: Stream,
    ) -> Result<OwnedFd, Errno> {
        let out = self.services.get_mut(i).ok_or(Errno::ENOENT)?;
        let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
        fcntl(&r, FcntlArg::F_SETFL(OFlag::O_NONBLOCK))?;
        ctx.reactor
            .add(r.as_fd(), Key::Pipe(i, stream).token(), Interest::Read)?;
        let pipe = Pipe {
            fd: r,
            buf: LineBuffer::default(),
        };
        if let Some(old) = out.pipes[stream.index()].replace(pipe) {
            ctx.reactor.remove(old.fd.as_fd());
        }
        Ok(w)
    }

    /// Close service `i`'s pipes unread (its start failed before any
    /// payload could write).
    pub(crate) fn close_pipes(&mut self, ctx: &mut Ctx<'_>, i: ServiceIx) {
        let Some(out) = self.services.get_mut(i) else {
            return;
        };
        for p in out.pipes.iter_mut().filter_map(Option::take) {
            ctx.reactor.remove(p.fd.as_fd());
        }
    }

    /// One of our fds has news: lines a service wrote, or room on ours.
    pub(crate) fn on_event(&mut self, ctx: &mut Ctx<'_>, key: u64) -> Option<Lines> {
        match Key::decode(key)? {
            Key::Pipe(i, stream) => self.read(ctx, i, stream, Reading::Live),
            Key::Sink(stream) => {
                self.flush(ctx, stream);
                None
            }
            Key::Forward(k) => {
                self.forward.on_event(ctx, k);
                self.say_forward_notes(ctx);
                None
            }
        }
    }

    /// Service `i`'s sandbox is gone: read what its pipes hold, then close
    /// them.
    pub(crate) fn drain(&mut self, ctx: &mut Ctx<'_>, i: ServiceIx) -> Vec<Lines> {
        Stream::BOTH
            .into_iter()
            .filter_map(|s| self.read(ctx, i, s, Reading::Closing))
            .collect()
    }

    /// Read what is there; at EOF (or when closing) close. The lines go to
    /// the log and the echo here, and back to the caller.
    fn read(
        &mut self,
        ctx: &mut Ctx<'_>,
        i: ServiceIx,
        stream: Stream,
        how: Reading,
    ) -> Option<Lines> {
        let out = self.services.get_mut(i)?;
        let slot = &mut out.pipes[stream.index()];
        let p = slot.as_mut()?;
        let (mut lines, eof, take) = match (&mut self.peeker, how) {
            (Some(peeker), Reading::Live) => peek_lines(peeker, p),
            _ => {
                let (lines, eof) = read_lines(p, how);
                (lines, eof, 0)
            }
        };
        if eof || how == Reading::Closing {
            lines.extend(p.buf.finish());
            ctx.reactor.remove(p.fd.as_fd());
            *slot = None;
        }
        if !lines.is_empty() {
            self.log_lines(i, stream.as_str(), &lines);
        }
        // Logged: now out of the pipe (see `peek`).
        self.take(i, stream, take);
        if lines.is_empty() {
            return None;
        }
        self.forward_lines(ctx, i, stream, &lines);
        let service = self.services.get(i)?.name.clone();
        if self.echo {
            for l in &lines {
                self.sinks[0].line(&format!("{service} | {l}"));
            }
            self.flush(ctx, Stream::Stdout);
        }
        Some(Lines { service, lines })
    }

    /// `n` bytes of service `i`'s `stream`, peeked and logged, taken from
    /// its pipe.
    fn take(&mut self, i: ServiceIx, stream: Stream, n: usize) {
        let pipe = self
            .services
            .get_mut(i)
            .and_then(|o| o.pipes[stream.index()].as_mut());
        let (Some(peeker), Some(p), true) = (&self.peeker, pipe, n > 0) else {
            return;
        };
        if let Err((_, left)) = peeker.take(&p.fd, n) {
            // Read the rest instead (it is there: we saw it).
            let mut rest = vec![0; left];
            let _ = nix::unistd::read(&p.fd, &mut rest);
        }
    }

    /// Append lines to service `i`'s log, opening it through the bounded
    /// cache of open logs (the oldest opened is closed past [`LOGS_OPEN`]).
    fn log_lines(&mut self, i: ServiceIx, stream: &str, lines: &[String]) {
        let Some(out) = self.services.get_mut(i) else {
            return;
        };
        let mut opened = false;
        for l in lines {
            opened |= out.log.write_line(stream, l).unwrap_or(false);
        }
        if !opened {
            return;
        }
        self.open_logs.push_back(i);
        while self.open_logs.len() > LOGS_OPEN {
            let Some(j) = self.open_logs.pop_front() else {
                break;
            };
            if let Some(s) = self.services.get_mut(j) {
                s.log.close();
            }
        }
    }

    /// Copies for journald and syslog, where service `i`'s route says.
    fn forward_lines(&mut self, ctx: &mut Ctx<'_>, i: ServiceIx, stream: Stream, lines: &[String]) {
        let Some(out) = self.services.get(i) else {
            return;
        };
        let origin = forward::Origin {
            service: &out.name,
            replica: out.replica,
            pid: out.pid,
            stream,
        };
        self.forward
            .send(ctx, &out.route, out.syslog, &origin, lines);
        self.say_forward_notes(ctx);
    }

    fn say_forward_notes(&mut self, ctx: &mut Ctx<'_>) {
        for n in self.forward.take_notes() {
            self.note(ctx, &n);
        }
    }

    /// A supervisor event of service `i`: on stderr and in its log. Its
    /// name, for the clients to tell (`None`: no such service here).
    pub(crate) fn event(&mut self, ctx: &mut Ctx<'_>, i: ServiceIx, msg: &str) -> Option<String> {
        let name = self.services.get(i)?.name.clone();
        self.sinks[1].line(&format!("isola: {name}: {msg}"));
        self.flush(ctx, Stream::Stderr);
        self.log_lines(i, "isola", std::slice::from_ref(&msg.to_string()));
        Some(name)
    }

    /// A line about the supervisor itself, on stderr.
    pub(crate) fn note(&mut self, ctx: &mut Ctx<'_>, msg: &str) {
        self.sinks[1].line(&format!("isola: {msg}"));
        self.flush(ctx, Stream::Stderr);
    }

    /// Lines dropped since we started, by sink: our stdout and stderr
    /// (a slow reader), journald and syslog (full, slow or absent).
    pub(crate) fn lines_dropped(&self) -> [(&'static str, u64); 4] {
        let [journald, syslog] = self.forward.dropped();
        [
            ("stdout", self.sinks[0].dropped_total()),
            ("stderr", self.sinks[1].dropped_total()),
            journald,
            syslog,
        ]
    }

    /// Our stderr, for a progress line drawn in place (flush after).
    pub(crate) fn stderr(&mut self) -> &mut Sink {
        &mut self.sinks[1]
    }

    /// Write what our `stream` takes now; wait for EPOLLOUT when it takes
    /// no more (a sink that cannot be polled waits for the next write).
    pub(crate) fn flush(&mut self, ctx: &mut Ctx<'_>, stream: Stream) {
        let sink = &mut self.sinks[stream.index()];
        let done = sink.write_some();
        if done != sink.waiting {
            return;
        }
        let Some(fd) = sink.pollable() else {
            return;
        };
        if done {
            ctx.reactor.remove(fd);
            sink.waiting = false;
        } else if ctx
            .reactor
            .add(fd, Key::Sink(stream).token(), Interest::Write)
            .is_ok()
        {
            sink.waiting = true;
        }
    }

    /// At exit: a last, bounded chance for what our sinks hold.
    pub(crate) fn finish(&mut self) {
        for s in &mut self.sinks {
            s.flush_blocking();
        }
    }

    #[cfg(test)]
    fn open_log_count(&self) -> usize {
        self.services
            .iter()
            .filter(|(_, s)| s.log.is_open())
            .count()
    }
}

/// Up to a wakeup's worth of lines from `p`; true at its end (EOF, or an
/// error that will not go away — the level-triggered epoll would report
/// it forever).
fn read_lines(p: &mut Pipe, how: Reading) -> (Vec<String>, bool) {
    let mut lines = Vec::new();
    let mut buf = [0u8; READ_CHUNK];
    let reads = match how {
        Reading::Live => READS_PER_WAKEUP,
        Reading::Closing => READS_WHEN_CLOSING,
    };
    for _ in 0..reads {
        match nix::unistd::read(&p.fd, &mut buf) {
            Ok(0) => return (lines, true),
            Ok(n) => p.buf.push(&buf[..n], &mut lines),
            Err(Errno::EINTR) => {}
            Err(Errno::EAGAIN) => return (lines, false),
            Err(_) => return (lines, true),
        }
    }
    (lines, false)
}

/// One wakeup's lines of a live pipe through the peeker: also how many
/// bytes to take from the pipe once they are logged.
fn peek_lines(peeker: &mut Peeker, p: &mut Pipe) -> (Vec<String>, bool, usize) {
    let mut lines = Vec::new();
    match peeker.peek(&p.fd) {
        Ok(Peeked::Data { bytes, take }) => {
            p.buf.push(bytes, &mut lines);
            (lines, false, take)
        }
        Ok(Peeked::Empty) => (lines, false, 0),
        Ok(Peeked::End) | Err(_) => (lines, true, 0),
    }
}

#[cfg(test)]
mod tests;
