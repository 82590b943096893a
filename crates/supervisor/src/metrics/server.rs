//! The metrics endpoint: a listener (TCP or unix) and its HTTP/1.1
//! connections, in the loop and never blocking it. A request head is
//! capped ([`MAX_HEAD`]), connections are capped ([`MAX_CONNS`]), every
//! answer says `Connection: close` and the connection ends once it went
//! out. `GET /metrics` goes to the caller as a [`Scrape`]; anything else
//! is answered here (404, 405, 400, 431).

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;

use nix::errno::Errno;

use super::exposition::Format;
use super::MetricsAddr;
use crate::shell::context::Ctx;
use crate::shell::reactor::{Interest, Part, Reactor, Readiness, Token};

/// The longest request head read.
const MAX_HEAD: usize = 8 << 10;
/// Scrapers connected at once; more are hung up on at once.
const MAX_CONNS: usize = 16;
const LISTENER: u64 = 0;

/// A scraper's request for the metrics, to be answered with
/// [`MetricsServer::answer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Scrape {
    pub(crate) conn: u64,
    pub(crate) format: Format,
    /// `HEAD`: the headers only.
    pub(crate) head_only: bool,
}

enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener, PathBuf),
}

enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    fn fd(&self) -> BorrowedFd<'_> {
        match self {
            Stream::Tcp(s) => s.as_fd(),
            Stream::Unix(s) => s.as_fd(),
        }
    }

    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
        }
    }

    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
        }
    }
}

/// Where a connection is.
enum Phase {
    /// Reading the request head.
    Reading(Vec<u8>),
    /// The caller is rendering its answer.
    Waiting,
    /// Writing the answer; closed once it is out.
    Writing(Vec<u8>),
}

struct HttpConn {
    stream: Stream,
    phase: Phase,
}

/// Bind `addr` (before anything starts: an address in use stops `isola
/// up` with nothing started). A unix socket file left by an earlier run
/// is replaced; any other file is not.
pub(crate) fn bind(addr: &MetricsAddr) -> Result<BoundMetrics, String> {
    let listener = match addr {
        MetricsAddr::Tcp(a) => {
            let l = TcpListener::bind(a).map_err(|e| format!("--metrics tcp://{a}: {e}"))?;
            Listener::Tcp(l)
        }
        MetricsAddr::Unix(p) => {
            let socket = std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_socket());
            if socket && UnixStream::connect(p).is_ok() {
                return Err(format!(
                    "--metrics unix://{}: another process listens there",
                    p.display()
                ));
            }
            if socket {
                let _ = std::fs::remove_file(p);
            }
            let l = UnixListener::bind(p)
                .map_err(|e| format!("--metrics unix://{}: {e}", p.display()))?;
            Listener::Unix(l, p.clone())
        }
    };
    let nonblocking = match &listener {
        Listener::Tcp(l) => l.set_nonblocking(true),
        Listener::Unix(l, _) => l.set_nonblocking(true),
    };
    nonblocking.map_err(|e| format!("--metrics: {e}"))?;
    Ok(BoundMetrics(listener))
}

/// A bound metrics listener, not serving yet.
pub(crate) struct BoundMetrics(Listener);

impl Drop for Listener {
    fn drop(&mut self) {
        if let Listener::Unix(_, p) = self {
            let _ = std::fs::remove_file(p);
        }
    }
}

impl BoundMetrics {
    /// The listener an older binary bound at `addr` (an upgrade).
    pub(crate) fn adopt(addr: &MetricsAddr, fd: std::os::fd::OwnedFd) -> BoundMetrics {
        BoundMetrics(match addr {
            MetricsAddr::Tcp(_) => Listener::Tcp(TcpListener::from(fd)),
            MetricsAddr::Unix(p) => Listener::Unix(UnixListener::from(fd), p.clone()),
        })
    }
}

pub(crate) struct MetricsServer {
    listener: Listener,
    conns: HashMap<u64, HttpConn>,
    next_conn: u64,
    /// Held open to be let go when we run out of fds.
    reserve: Option<std::fs::File>,
}

fn token(key: u64) -> Token {
    Token::new(Part::Metrics, key)
}

impl MetricsServer {
    /// The listener's fd (an upgrade keeps it across the exec).
    pub(crate) fn listener_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        match &self.listener {
            Listener::Tcp(l) => l.as_fd(),
            Listener::Unix(l, _) => l.as_fd(),
        }
    }

    pub(crate) fn new(bound: BoundMetrics, reactor: &Reactor) -> Result<MetricsServer, Errno> {
        let fd = match &bound.0 {
            Listener::Tcp(l) => l.as_fd(),
            Listener::Unix(l, _) => l.as_fd(),
        };
        reactor.add(fd, token(LISTENER), Interest::Read)?;
        Ok(MetricsServer {
            listener: bound.0,
            conns: HashMap::new(),
            next_conn: LISTENER + 1,
            reserve: std::fs::File::open("/dev/null").ok(),
        })
    }

    /// One of our fds has news: the scrapes to answer.
    pub(crate) fn on_event(
        &mut self,
        ctx: &mut Ctx<'_>,
        key: u64,
        ready: Readiness,
    ) -> Vec<Scrape> {
        if key == LISTENER {
            self.accept(ctx);
            return Vec::new();
        }
        if ready.writable() {
            self.flush(ctx, key);
        }
        if !ready.readable() {
            return Vec::new();
        }
        // Waiting for its answer, only a hang-up or an error is reported:
        // the scraper went away.
        if self
            .conns
            .get(&key)
            .is_some_and(|c| matches!(c.phase, Phase::Waiting))
        {
            self.close(ctx, key);
            return Vec::new();
        }
        self.read_head(ctx, key).into_iter().collect()
    }

    /// Is scraper `conn` still connected (its scrape worth reading)?
    pub(crate) fn is_open(&self, conn: u64) -> bool {
        self.conns.contains_key(&conn)
    }

    fn accept(&mut self, ctx: &mut Ctx<'_>) {
        loop {
            let accepted = match &self.listener {
                Listener::Tcp(l) => l.accept().map(|(s, _)| Stream::Tcp(s)),
                Listener::Unix(l, _) => l.accept().map(|(s, _)| Stream::Unix(s)),
            };
            let stream = match accepted {
                Ok(s) => s,
                Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
                    return self.shed();
                }
                Err(_) => return,
            };
            if self.conns.len() >= MAX_CONNS && !self.evict_idle(ctx) {
                continue;
            }
            let nonblocking = match &stream {
                Stream::Tcp(s) => s.set_nonblocking(true),
                Stream::Unix(s) => s.set_nonblocking(true),
            };
            let id = self.next_conn;
            self.next_conn += 1;
            if nonblocking.is_err()
                || ctx
                    .reactor
                    .add(stream.fd(), token(id), Interest::Read)
                    .is_err()
            {
                continue;
            }
            let conn = HttpConn {
                stream,
                phase: Phase::Reading(Vec::new()),
            };
            self.conns.insert(id, conn);
        }
    }

    /// The table is full: the connection that has sat longest without a
    /// whole request goes (idle clients never lock scrapers out). False
    /// when all are being answered.
    fn evict_idle(&mut self, ctx: &mut Ctx<'_>) -> bool {
        let oldest = self
            .conns
            .iter()
            .filter(|(_, c)| matches!(c.phase, Phase::Reading(_)))
            .map(|(id, _)| *id)
            .min();
        match oldest {
            Some(id) => {
                self.close(ctx, id);
                true
            }
            None => false,
        }
    }

    /// Out of fds: the pending connection would keep the level-triggered
    /// listener readable forever. Let the reserve fd go, take the client
    /// and hang up on it, take the reserve back.
    fn shed(&mut self) {
        self.reserve = None;
        let _taken_and_dropped = match &self.listener {
            Listener::Tcp(l) => l.accept().map(drop),
            Listener::Unix(l, _) => l.accept().map(drop),
        };
        self.reserve = std::fs::File::open("/dev/null").ok();
    }

    /// Read the request head; once it is whole, a scrape for the caller
    /// or an answer from here.
    fn read_head(&mut self, ctx: &mut Ctx<'_>, id: u64) -> Option<Scrape> {
        let c = self.conns.get_mut(&id)?;
        // A client that sends more after its request: not read.
        let Phase::Reading(head) = &mut c.phase else {
            return None;
        };
        if !read_into(&mut c.stream, head) {
            self.close(ctx, id);
            return None;
        }
        let request = match head.windows(4).position(|w| w == b"\r\n\r\n") {
            Some(end) => parse_head(&head[..end]),
            None if head.len() > MAX_HEAD => Err(Refusal::TooLarge),
            None => return None,
        };
        match request {
            Ok((format, head_only)) => {
                c.phase = Phase::Waiting;
                // Nothing more is read from it; a hang-up still shows.
                if ctx
                    .reactor
                    .modify(c.stream.fd(), token(id), Interest::Hangup)
                    .is_err()
                {
                    self.close(ctx, id);
                    return None;
                }
                Some(Scrape {
                    conn: id,
                    format,
                    head_only,
                })
            }
            Err(r) => {
                let (status, text) = (r.status(), r.text());
                self.respond(ctx, id, status, "text/plain; charset=utf-8", text, false);
                None
            }
        }
    }

    /// Answer scrape `s` with `body`.
    pub(crate) fn answer(&mut self, ctx: &mut Ctx<'_>, s: Scrape, body: &str) {
        self.respond(
            ctx,
            s.conn,
            "200 OK",
            s.format.content_type(),
            body,
            s.head_only,
        );
    }

    fn respond(
        &mut self,
        ctx: &mut Ctx<'_>,
        id: u64,
        status: &str,
        content_type: &str,
        body: &str,
        head_only: bool,
    ) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        let allow = if status.starts_with("405") {
            "Allow: GET, HEAD\r\n"
        } else {
            ""
        };
        let mut out = format!(
            "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{allow}Connection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
        if !head_only {
            out.extend_from_slice(body.as_bytes());
        }
        c.phase = Phase::Writing(out);
        self.flush(ctx, id);
    }

    /// Write what the client takes; close once all is out.
    fn flush(&mut self, ctx: &mut Ctx<'_>, id: u64) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        let Phase::Writing(out) = &mut c.phase else {
            return;
        };
        while !out.is_empty() {
            match c.stream.write(out) {
                Ok(0) => break,
                Ok(n) => {
                    out.drain(..n);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(_) => return self.close(ctx, id),
            }
        }
        if out.is_empty() {
            return self.close(ctx, id);
        }
        if ctx
            .reactor
            .modify(c.stream.fd(), token(id), Interest::Write)
            .is_err()
        {
            self.close(ctx, id);
        }
    }

    fn close(&mut self, ctx: &mut Ctx<'_>, id: u64) {
        if let Some(c) = self.conns.remove(&id) {
            ctx.reactor.remove(c.stream.fd());
        }
    }

    #[cfg(test)]
    fn connections(&self) -> usize {
        self.conns.len()
    }
}

/// Read what is there (up to a bit past [`MAX_HEAD`]); false once the
/// client hung up or the socket failed.
fn read_into(stream: &mut Stream, head: &mut Vec<u8>) -> bool {
    let mut buf = [0u8; 2048];
    while head.len() <= MAX_HEAD {
        match stream.read(&mut buf) {
            Ok(0) => return false,
            Ok(n) => head.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => return true,
            Err(_) => return false,
        }
    }
    true
}

/// Why a request is not answered with metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    BadRequest,
    NotFound,
    Method,
    TooLarge,
}

impl Refusal {
    fn status(self) -> &'static str {
        match self {
            Refusal::BadRequest => "400 Bad Request",
            Refusal::NotFound => "404 Not Found",
            Refusal::Method => "405 Method Not Allowed",
            Refusal::TooLarge => "431 Request Header Fields Too Large",
        }
    }

    fn text(self) -> &'static str {
        match self {
            Refusal::BadRequest => "bad request\n",
            Refusal::NotFound => "not found: the metrics are at /metrics\n",
            Refusal::Method => "only GET\n",
            Refusal::TooLarge => "request head too large\n",
        }
    }
}

/// The request line and the `Accept` header of a head (without its
/// blank line): the format asked for, and whether it is a HEAD.
fn parse_head(head: &[u8]) -> Result<(Format, bool), Refusal> {
    let text = std::str::from_utf8(head).map_err(|_| Refusal::BadRequest)?;
    let mut lines = text.split("\r\n");
    let mut parts = lines.next().unwrap_or_default().split(' ');
    let (method, target, proto) = (parts.next(), parts.next(), parts.next());
    let (Some(method), Some(target), Some(proto)) = (method, target, proto) else {
        return Err(Refusal::BadRequest);
    };
    if !proto.starts_with("HTTP/1.") || parts.next().is_some() {
        return Err(Refusal::BadRequest);
    }
    let path = target.split('?').next().unwrap_or_default();
    if path != "/metrics" {
        return Err(Refusal::NotFound);
    }
    let head_only = match method {
        "GET" => false,
        "HEAD" => true,
        _ => return Err(Refusal::Method),
    };
    let accept = lines.find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case("accept").then(|| v.trim())
    });
    Ok((Format::from_accept(accept), head_only))
}

#[cfg(test)]
mod tests;
