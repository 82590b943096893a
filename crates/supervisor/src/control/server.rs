//! The supervisor's end of the control socket: accept (root or our own
//! uid only), frame requests, queue answers and streams.
//!
//! Every connection has a bounded output buffer: a client that stops
//! reading is dropped, with the reason on stderr, once more than
//! [`MAX_UNREAD`] bytes wait for it — nothing else slows down, and the
//! supervisor does not grow. One answer may be larger (`metrics` or
//! `status` of ten thousand services): it is kept whole, and the client
//! must read it down below the bound before it asks again. Requests are bounded too ([`MAX_REQUEST`]).
//! A line that is not a request is answered with an error here; requests
//! go to the caller.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::socket::sockopt::PeerCredentials;
use serde::Serialize;

use super::protocol::{short_error, Message, Request, Response};
use crate::lifecycle::ConnId;
use crate::shell::context::{Ctx, Input};
use crate::shell::reactor::{Interest, Part, Reactor, Readiness, Token};

/// Bytes a client may leave unread before it is dropped. A status reply
/// for a thousand services is about 300 KB: one always fits.
pub(crate) const MAX_UNREAD: usize = 4 << 20;
/// The longest request line.
const MAX_REQUEST: usize = 64 << 10;
/// How long the last answers at shutdown may take to go out.
const LAST_WRITE_TIMEOUT: Duration = Duration::from_secs(1);
/// The listener's key; connections count up from 1.
const LISTENER: u64 = 0;

/// Whose log a client follows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Follow {
    Service(String),
    /// Every service's (`isola logs -f` without a name).
    All,
}

/// Who a broadcast goes to.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Audience<'a> {
    /// Clients following this service's log.
    FollowersOf(&'a str),
    /// Clients following every service's log.
    FollowersOfAll,
    /// `isola events` subscribers.
    Subscribers,
}

struct Conn {
    stream: UnixStream,
    inbuf: Vec<u8>,
    out: Vec<u8>,
    /// Of `out`, the bytes of the last answer still unread: kept beyond
    /// the bound.
    answer: usize,
    follow: Option<Follow>,
    /// Subscribed to every service's supervisor events.
    events: bool,
}

impl Conn {
    fn is_in(&self, to: Audience<'_>) -> bool {
        match to {
            Audience::FollowersOf(name) => {
                matches!(&self.follow, Some(Follow::Service(n)) if n == name)
            }
            Audience::FollowersOfAll => self.follow == Some(Follow::All),
            Audience::Subscribers => self.events,
        }
    }

    /// Serialize one object into the output buffer, newline-terminated.
    fn queue(&mut self, msg: &impl Serialize) {
        let before = self.out.len();
        match serde_json::to_writer(&mut self.out, msg) {
            Ok(()) => self.out.push(b'\n'),
            Err(_) => self.out.truncate(before),
        }
    }

    /// Read what is there into `inbuf` (up to a bit past the longest
    /// request); false once the client hung up or the socket failed.
    fn read_in(&mut self) -> bool {
        let mut buf = [0u8; 4096];
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => return false,
                Ok(n) => self.inbuf.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => return true,
                Err(_) => return false,
            }
            if self.inbuf.len() > MAX_REQUEST {
                return true;
            }
        }
    }

    /// Complete lines out of `inbuf`.
    fn lines(&mut self) -> Vec<Vec<u8>> {
        let mut lines = Vec::new();
        while let Some(pos) = self.inbuf.iter().position(|b| *b == b'\n') {
            lines.push(self.inbuf.drain(..=pos).collect());
        }
        lines
    }

    fn describe(&self) -> String {
        match (&self.follow, self.events) {
            (Some(Follow::Service(name)), _) => format!("following the log of {name}"),
            (Some(Follow::All), _) => "following every log".to_string(),
            (None, true) => "subscribed to events".to_string(),
            (None, false) => "a client".to_string(),
        }
    }
}

/// Why a connection ended.
enum Closed {
    /// The client hung up (or the socket failed): nothing to say.
    Quietly,
    /// We dropped it, for this reason.
    Dropped(String),
}

/// A line a client sent: a request, or why it is not one (answered by
/// the caller in line order).
pub(crate) type Line = (ConnId, Result<Request, String>);

pub(crate) struct ControlServer {
    listener: UnixListener,
    /// Connections that ended while their last lines were being handled:
    /// closed at the end of the turn ([`ControlServer::end_turn`]), after
    /// those lines were answered.
    ending: Vec<(ConnId, Closed)>,
    conns: HashMap<ConnId, Conn>,
    next_conn: ConnId,
    /// Held open to be let go when we run out of fds.
    reserve_fd: Option<std::fs::File>,
    /// Refusing connections for want of fds (said once).
    shedding: bool,
}

fn token(key: u64) -> Token {
    Token::new(Part::Control, key)
}

impl ControlServer {
    /// Serve on `listener` (bound and listening, non-blocking).
    pub(crate) fn new(listener: UnixListener, reactor: &Reactor) -> Result<ControlServer, Errno> {
        reactor.add(listener.as_fd(), token(LISTENER), Interest::Read)?;
        Ok(ControlServer {
            listener,
            conns: HashMap::new(),
            ending: Vec::new(),
            next_conn: LISTENER + 1,
            reserve_fd: std::fs::File::open("/dev/null").ok(),
            shedding: false,
        })
    }

    /// One of our fds has news: the lines it brought, in order. Call
    /// [`ControlServer::end_turn`] once they are answered.
    pub(crate) fn on_event(&mut self, ctx: &mut Ctx<'_>, key: u64, ready: Readiness) -> Vec<Line> {
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
        self.read_lines(key)
    }

    fn accept(&mut self, ctx: &mut Ctx<'_>) {
        loop {
            let stream = match self.listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
                    return self.shed_connection(ctx);
                }
                Err(_) => return,
            };
            if !allowed(ctx, &stream) {
                continue;
            }
            self.shedding = false;
            let id = self.next_conn;
            self.next_conn += 1;
            // A blocking client socket would let one client stall the loop.
            let registered = stream
                .set_nonblocking(true)
                .map_err(|e| format!("O_NONBLOCK: {e}"))
                .and_then(|()| {
                    ctx.reactor
                        .add(stream.as_fd(), token(id), Interest::Read)
                        .map_err(|e| format!("epoll: {e}"))
                });
            if let Err(e) = registered {
                ctx.out
                    .note(format!("refused control connection {id}: {e}"));
                continue;
            }
            let conn = Conn {
                stream,
                inbuf: Vec::new(),
                out: Vec::new(),
                answer: 0,
                follow: None,
                events: false,
            };
            self.conns.insert(id, conn);
        }
    }

    /// Out of fds: the pending connection would keep the (level-triggered)
    /// listener readable forever. Free the reserve fd, accept the client
    /// and hang up on it at once, take the reserve back; say so once per
    /// shortage.
    fn shed_connection(&mut self, ctx: &mut Ctx<'_>) {
        self.reserve_fd = None;
        if let Ok((stream, _)) = self.listener.accept() {
            drop(stream);
        }
        self.reserve_fd = std::fs::File::open("/dev/null").ok();
        if !self.shedding {
            self.shedding = true;
            ctx.out
                .note("out of file descriptors: refusing control connections until some are free");
        }
    }

    fn read_lines(&mut self, id: ConnId) -> Vec<Line> {
        let Some(c) = self.conns.get_mut(&id) else {
            return Vec::new();
        };
        let mut closed = (!c.read_in()).then_some(Closed::Quietly);
        let lines = c.lines();
        if c.inbuf.len() > MAX_REQUEST {
            closed = Some(Closed::Dropped("a request line longer than 64 KiB".into()));
        }
        if let Some(why) = closed {
            self.ending.push((id, why));
        }
        lines
            .into_iter()
            .map(|line| {
                let req = serde_json::from_slice::<Request>(&line)
                    .map_err(|e| format!("bad request: {}", short_error(&e)));
                (id, req)
            })
            .collect()
    }

    /// The lines of this turn are answered: connections that ended go.
    pub(crate) fn end_turn(&mut self, ctx: &mut Ctx<'_>) {
        for (id, why) in std::mem::take(&mut self.ending) {
            if let Closed::Dropped(why) = why {
                ctx.out
                    .note(format!("dropped control connection {id}: {why}"));
            }
            self.drop_conn(ctx, id);
        }
    }

    /// Queue an answer for a connection and write what it takes now. An
    /// answer of any size is kept, one at a time: a client that asks again
    /// with more than the bound still unread is dropped.
    pub(crate) fn send(&mut self, ctx: &mut Ctx<'_>, id: ConnId, msg: &impl Serialize) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        if c.out.len() > MAX_UNREAD {
            return self.drop_unread(ctx, id);
        }
        c.queue(msg);
        c.answer = c.out.len();
        self.flush(ctx, id);
    }

    /// Queue `msg` for `id` without sending it: [`ControlServer::flush_all`]
    /// does, at the stack's end, once what the answer says is true (`isola
    /// down` answered after the stack's cgroups and networks are gone).
    pub(crate) fn answer_last(&mut self, id: ConnId, msg: &impl Serialize) {
        if let Some(c) = self.conns.get_mut(&id) {
            c.queue(msg);
            c.answer = c.out.len();
        }
    }

    fn drop_unread(&mut self, ctx: &mut Ctx<'_>, id: ConnId) {
        let Some(c) = self.conns.get(&id) else {
            return;
        };
        let (what, unread) = (c.describe(), c.out.len());
        ctx.out.note(format!(
            "dropped control connection {id} ({what}): {unread} bytes unread, more than \
             the {MAX_UNREAD} a client may leave"
        ));
        self.drop_conn(ctx, id);
    }

    /// Connection `id` is still there.
    pub(crate) fn is_open(&self, id: ConnId) -> bool {
        self.conns.contains_key(&id)
    }

    /// Is anyone in `to` listening? (Nothing is built for nobody.)
    pub(crate) fn has(&self, to: Audience<'_>) -> bool {
        self.conns.values().any(|c| c.is_in(to))
    }

    /// One message to every connection in `to`: serialized once, only
    /// when someone listens.
    pub(crate) fn broadcast(&mut self, ctx: &mut Ctx<'_>, to: Audience<'_>, msg: &Message<'_>) {
        let ids: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| c.is_in(to))
            .map(|(id, _)| *id)
            .collect();
        if ids.is_empty() {
            return;
        }
        let Ok(mut line) = serde_json::to_vec(msg) else {
            return;
        };
        line.push(b'\n');
        for id in ids {
            if let Some(c) = self.conns.get_mut(&id) {
                c.out.extend_from_slice(&line);
            }
            self.flush(ctx, id);
        }
    }

    /// From now on, connection `id` gets `isola events`' stream.
    pub(crate) fn subscribe(&mut self, id: ConnId) {
        if let Some(c) = self.conns.get_mut(&id) {
            c.events = true;
        }
    }

    /// From now on, connection `id` gets the lines of the log(s) `follow`.
    pub(crate) fn follow(&mut self, id: ConnId, follow: Follow) {
        if let Some(c) = self.conns.get_mut(&id) {
            c.follow = Some(follow);
        }
    }

    /// Write what the client takes now; wait for EPOLLOUT for the rest, or
    /// drop a client that has let too much pile up.
    fn flush(&mut self, ctx: &mut Ctx<'_>, id: ConnId) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        while !c.out.is_empty() {
            match c.stream.write(&c.out) {
                Ok(0) => break,
                Ok(n) => {
                    c.out.drain(..n);
                    c.answer = c.answer.saturating_sub(n);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(_) => return self.drop_conn(ctx, id),
            }
        }
        if c.out.len() > MAX_UNREAD + c.answer {
            return self.drop_unread(ctx, id);
        }
        let interest = if c.out.is_empty() {
            Interest::Read
        } else {
            Interest::ReadWrite
        };
        if let Err(e) = ctx.reactor.modify(c.stream.as_fd(), token(id), interest) {
            ctx.out
                .note(format!("dropped control connection {id}: epoll: {e}"));
            self.drop_conn(ctx, id);
        }
    }

    /// The connection is over: nobody to answer there (the core forgets
    /// its waits).
    fn drop_conn(&mut self, ctx: &mut Ctx<'_>, id: ConnId) {
        if let Some(c) = self.conns.remove(&id) {
            ctx.reactor.remove(c.stream.as_fd());
        }
        ctx.out.input(Input::ConnClosed(id));
    }

    /// At exit: give pending answers a last, blocking chance to go out.
    pub(crate) fn flush_all(&mut self) {
        for c in self.conns.values_mut() {
            let _ = c.stream.set_nonblocking(false);
            let _ = c.stream.set_write_timeout(Some(LAST_WRITE_TIMEOUT));
            let _ = c.stream.write_all(&c.out);
            c.out.clear();
        }
    }

    #[cfg(test)]
    fn connections(&self) -> usize {
        self.conns.len()
    }
}

/// Root or our own uid may connect; anyone else is told why, in one line,
/// and the refusal is noted.
fn allowed(ctx: &mut Ctx<'_>, stream: &UnixStream) -> bool {
    let creds = nix::sys::socket::getsockopt(stream, PeerCredentials);
    let me = nix::unistd::geteuid().as_raw();
    if matches!(&creds, Ok(c) if c.uid() == 0 || c.uid() == me) {
        return true;
    }
    let (uid, pid) = creds.map(|c| (c.uid(), c.pid())).unwrap_or((u32::MAX, -1));
    ctx.out.note(format!(
        "refused a control connection from uid {uid} (pid {pid})"
    ));
    let reply = Response::err(format!(
        "permission denied: uid {uid} may not control this supervisor"
    ));
    if let Ok(mut line) = serde_json::to_vec(&reply) {
        line.push(b'\n');
        let _ = stream.set_nonblocking(true);
        let mut s = stream;
        let _ = s.write_all(&line);
    }
    false
}

mod handover;
#[cfg(test)]
mod tests;
