//! The control socket: accept (root or our own uid only), read requests,
//! answer them, stream logs and events to subscribers.
//!
//! Every connection has a bounded output buffer: a client that stops
//! reading is dropped, with the reason on stderr, once more than
//! [`MAX_UNREAD`] bytes wait for it — nothing else slows down, and the
//! supervisor does not grow. Requests are bounded too ([`MAX_REQUEST`]).

use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use nix::sys::epoll::{EpollEvent, EpollFlags};
use nix::sys::socket::sockopt::PeerCredentials;
use serde::Serialize;

use crate::control::{short_error, Message, Request, Response};
use crate::lifecycle::{ConnId, Core};
use crate::logs;
use crate::sockets;
use crate::supervisor::{Supervisor, Token};

/// Bytes a client may leave unread before it is dropped. A status reply
/// for a thousand services is about 300 KB: one always fits.
pub(crate) const MAX_UNREAD: usize = 4 << 20;
/// The longest request line.
const MAX_REQUEST: usize = 64 << 10;
/// How long the last answers at shutdown may take to go out.
const LAST_WRITE_TIMEOUT: Duration = Duration::from_secs(1);

/// `Conn::follow` of a client following every service (no service is
/// named so: names are never empty).
const FOLLOW_ALL: &str = "";

pub(crate) struct Conn {
    stream: UnixStream,
    inbuf: Vec<u8>,
    out: Vec<u8>,
    /// Following this service's log.
    follow: Option<String>,
    /// Subscribed to every service's supervisor events (`isola events`).
    pub(crate) events: bool,
}

impl Conn {
    pub(crate) fn follows(&self, name: &str) -> bool {
        self.follow.as_deref() == Some(name)
    }

    /// Following every service's log (`isola logs -f` without a name).
    pub(crate) fn follows_all(&self) -> bool {
        self.follow.as_deref() == Some(FOLLOW_ALL)
    }

    /// Serialize one object into the output buffer, newline-terminated.
    pub(crate) fn queue(&mut self, msg: &impl Serialize) {
        let before = self.out.len();
        match serde_json::to_writer(&mut self.out, msg) {
            Ok(()) => self.out.push(b'\n'),
            Err(_) => self.out.truncate(before),
        }
    }
}

fn no_such_service(verb: &str, name: &str) -> Response<'static> {
    Response::err(format!("{verb}: {name:?}: no such service"))
}

impl Supervisor {
    pub(crate) fn on_accept(&mut self) {
        loop {
            let stream = match self.listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
                    return self.shed_connection();
                }
                Err(_) => return,
            };
            let creds = nix::sys::socket::getsockopt(&stream, PeerCredentials);
            let me = nix::unistd::geteuid().as_raw();
            let allowed = matches!(&creds, Ok(c) if c.uid() == 0 || c.uid() == me);
            let _ = stream.set_nonblocking(true);
            if !allowed {
                let (uid, pid) = creds.map(|c| (c.uid(), c.pid())).unwrap_or((u32::MAX, -1));
                self.note(&format!(
                    "refused a control connection from uid {uid} (pid {pid})"
                ));
                let reply = Response::err(format!(
                    "permission denied: uid {uid} may not control this supervisor"
                ));
                if let Ok(mut line) = serde_json::to_vec(&reply) {
                    line.push(b'\n');
                    let mut s = stream;
                    let _ = s.write_all(&line);
                }
                continue;
            }
            self.shedding = false;
            let id = self.next_conn;
            self.next_conn += 1;
            let ev = EpollEvent::new(EpollFlags::EPOLLIN, Token::Conn(id).encode());
            if self.epoll.add(stream.as_fd(), ev).is_err() {
                continue;
            }
            self.conns.insert(
                id,
                Conn {
                    stream,
                    inbuf: Vec::new(),
                    out: Vec::new(),
                    follow: None,
                    events: false,
                },
            );
        }
    }

    /// Out of fds: the pending connection would keep the (level-triggered)
    /// listener readable forever. Free the reserve fd, accept the client
    /// and hang up on it at once, take the reserve back; say so once per
    /// shortage.
    fn shed_connection(&mut self) {
        self.reserve_fd = None;
        if let Ok((stream, _)) = self.listener.accept() {
            drop(stream);
        }
        self.reserve_fd = std::fs::File::open("/dev/null").ok();
        if !self.shedding {
            self.shedding = true;
            self.note("out of file descriptors: refusing control connections until some are free");
        }
    }

    pub(crate) fn on_conn(&mut self, id: ConnId, flags: EpollFlags) {
        if flags.contains(EpollFlags::EPOLLOUT) {
            self.flush(id);
        }
        if !flags.intersects(EpollFlags::EPOLLIN | EpollFlags::EPOLLHUP | EpollFlags::EPOLLERR) {
            return;
        }
        let mut requests = Vec::new();
        let mut closed = None;
        if let Some(c) = self.conns.get_mut(&id) {
            let mut buf = [0u8; 4096];
            loop {
                match c.stream.read(&mut buf) {
                    Ok(0) => {
                        closed = Some("");
                        break;
                    }
                    Ok(n) => c.inbuf.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(_) => {
                        closed = Some("");
                        break;
                    }
                }
                if c.inbuf.len() > MAX_REQUEST {
                    break;
                }
            }
            while let Some(pos) = c.inbuf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = c.inbuf.drain(..=pos).collect();
                requests.push(line);
            }
            if c.inbuf.len() > MAX_REQUEST {
                closed = Some("a request line longer than 64 KiB");
            }
        }
        for line in requests {
            match serde_json::from_slice::<Request>(&line) {
                Ok(req) => self.handle(id, req),
                Err(e) => self.send(
                    id,
                    &Response::err(format!("bad request: {}", short_error(&e))),
                ),
            }
        }
        if let Some(why) = closed {
            if !why.is_empty() {
                self.note(&format!("dropped control connection {id}: {why}"));
            }
            self.drop_conn(id);
        }
    }

    /// Answer a request now, or register the connection to be answered
    /// when the service settles (the core's `Answer`).
    fn handle(&mut self, id: ConnId, req: Request) {
        let now = Instant::now();
        match req {
            Request::Status => self.status_reply(id),
            Request::Down => self.core.shutdown(Some(id), now),
            Request::Events => {
                if let Some(c) = self.conns.get_mut(&id) {
                    c.events = true;
                }
                self.send(id, &Response::ok());
            }
            Request::Exec { name } => {
                let reply = self.exec_target(&name);
                self.send(id, &reply);
            }
            Request::Stop { name } => {
                self.on_service(id, "stop", &name, Core::stop, |c, g, id, t| {
                    c.group_request(g, true, id, t)
                })
            }
            Request::Start { name } => {
                self.on_service(id, "start", &name, Core::start, |c, g, id, t| {
                    c.group_request(g, false, id, t)
                })
            }
            Request::Restart { name } => {
                self.on_service(id, "restart", &name, Core::restart, Core::restart_group)
            }
            Request::Scale { name, replicas } => {
                let reply = if replicas == 0 || replicas > sockets::MAX_REPLICAS {
                    Response::err(format!(
                        "scale: {replicas}: must be 1 to {}",
                        sockets::MAX_REPLICAS
                    ))
                } else if self.core.find(&name).is_some()
                    && self.core.group_members(&name).is_empty()
                {
                    Response::err(format!("scale: {name}: not a replicated service (give it \"replicas\" in the stack file)"))
                } else {
                    match self.core.scale(&name, replicas, now) {
                        Ok(_) => Response::ok(),
                        Err(e) => Response::err(format!("scale: {e}")),
                    }
                };
                self.send(id, &reply);
            }
            Request::Update { name, resources } => {
                let reply = self.update_limits(&name, &resources);
                self.send(id, &reply);
            }
            Request::Logs {
                name,
                lines,
                follow,
                since,
            } => {
                if name.is_empty() {
                    let mut names: Vec<String> = self
                        .core
                        .services()
                        .map(|(_, s)| s.def.name.clone())
                        .collect();
                    names.sort();
                    names.dedup();
                    let tail = logs::tail_all(
                        &self.cfg.logs.dir,
                        &names,
                        lines,
                        self.cfg.logs.files,
                        since.as_deref(),
                    );
                    if follow {
                        if let Some(c) = self.conns.get_mut(&id) {
                            c.follow = Some(FOLLOW_ALL.to_string());
                        }
                    }
                    let reply = Response {
                        lines: Some(tail),
                        ..Response::ok()
                    };
                    return self.send(id, &reply);
                }
                if self.core.find(&name).is_none() {
                    let members = self.core.group_members(&name);
                    if let (Some(first), Some(last)) = (members.first(), members.last()) {
                        let n = |i: &usize| {
                            self.core
                                .service(*i)
                                .map(|s| s.def.name.clone())
                                .unwrap_or_default()
                        };
                        let msg = format!(
                            "logs: {name}: has replicas, each with its own log: name one ({} … {})",
                            n(first),
                            n(last)
                        );
                        return self.send(id, &Response::err(msg));
                    }
                    return self.send(id, &no_such_service("logs", &name));
                }
                let tail = logs::tail_since(
                    &self.cfg.logs.dir,
                    &name,
                    lines,
                    self.cfg.logs.files,
                    since.as_deref(),
                );
                if follow {
                    if let Some(c) = self.conns.get_mut(&id) {
                        c.follow = Some(name);
                    }
                }
                let reply = Response {
                    lines: Some(tail),
                    ..Response::ok()
                };
                self.send(id, &reply);
            }
        }
    }

    /// A request about one service, or every replica of one: the core
    /// answers once it (or all of them) settled.
    fn on_service(
        &mut self,
        id: ConnId,
        verb: &str,
        name: &str,
        act: impl FnOnce(&mut Core, usize, ConnId, Instant),
        act_group: impl FnOnce(&mut Core, &str, ConnId, Instant),
    ) {
        match self.core.find(name) {
            Some(i) => act(&mut self.core, i, id, Instant::now()),
            None if !self.core.group_members(name).is_empty() => {
                act_group(&mut self.core, name, id, Instant::now())
            }
            None => self.send(id, &no_such_service(verb, name)),
        }
    }

    /// Queue one object for a connection and write what it takes now.
    pub(crate) fn send(&mut self, id: ConnId, msg: &impl Serialize) {
        if let Some(c) = self.conns.get_mut(&id) {
            c.queue(msg);
        }
        self.flush(id);
    }

    /// One message to every connection `to` selects (log followers,
    /// `events` subscribers): serialized once, only when someone listens.
    pub(crate) fn broadcast(&mut self, to: impl Fn(&Conn) -> bool, msg: &Message<'_>) {
        let ids: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| to(c))
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
            self.flush(id);
        }
    }

    /// Write what the client takes now; wait for EPOLLOUT for the rest, or
    /// drop a client that has let too much pile up.
    pub(crate) fn flush(&mut self, id: ConnId) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        while !c.out.is_empty() {
            match c.stream.write(&c.out) {
                Ok(0) => break,
                Ok(n) => {
                    c.out.drain(..n);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(_) => return self.drop_conn(id),
            }
        }
        if c.out.len() > MAX_UNREAD {
            let what = match (&c.follow, c.events) {
                (Some(name), _) => format!("following the log of {name}"),
                (None, true) => "subscribed to events".to_string(),
                (None, false) => "a client".to_string(),
            };
            let unread = c.out.len();
            self.note(&format!(
                "dropped control connection {id} ({what}): {unread} bytes unread, more than \
                 the {MAX_UNREAD} a client may leave"
            ));
            return self.drop_conn(id);
        }
        let flags = if c.out.is_empty() {
            EpollFlags::EPOLLIN
        } else {
            EpollFlags::EPOLLIN | EpollFlags::EPOLLOUT
        };
        let mut ev = EpollEvent::new(flags, Token::Conn(id).encode());
        let _ = self.epoll.modify(c.stream.as_fd(), &mut ev);
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

    pub(crate) fn drop_conn(&mut self, id: ConnId) {
        if let Some(c) = self.conns.remove(&id) {
            let _ = self.epoll.delete(c.stream.as_fd());
        }
        self.core.forget_conn(id);
    }
}
