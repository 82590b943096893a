//! DNS over TCP (RFC 7766) on each gateway: what a resolver asks when a
//! UDP answer came back cut. Each message is framed by its length (two
//! bytes); connections are few, bounded, never waited on (non-blocking,
//! EPOLLOUT while an answer is queued), and dropped when idle.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use nix::sys::socket::SockType;

use super::{token, Gateway};
use crate::shell::context::Ctx;
use crate::shell::reactor::Interest;

/// Keys: listeners `LISTENERS | network`, connections `CONNS | id`.
const LISTENERS: u64 = 2 << 32;
const CONNS: u64 = 3 << 32;
const KIND: u64 = !((1 << 32) - 1);
/// Connections at once, over all networks; past that a new one is shut.
const CONNS_MAX: usize = 64;
/// A connection that says nothing for this long goes (at the next accept).
const IDLE: Duration = Duration::from_secs(10);
/// The most a client may have sent and we not answered: one message.
const INBUF_MAX: usize = 2 + 65_535;
/// Answers queued for a slow reader, at most.
const OUTBUF_MAX: usize = 256 << 10;

struct Conn {
    stream: TcpStream,
    net: usize,
    peer: Ipv4Addr,
    inbuf: Vec<u8>,
    out: Vec<u8>,
    last: Instant,
}

/// A query that came over TCP: (connection, network, asker, message).
pub(super) type TcpQuery = (u64, usize, Ipv4Addr, Vec<u8>);

pub(super) struct TcpSide {
    listeners: Vec<Option<TcpListener>>,
    conns: HashMap<u64, Conn>,
    next: u64,
    /// Let go for a moment when we run out of fds, to take a pending
    /// connection and shut it (the listener would stay ready forever).
    reserve: Option<std::fs::File>,
}

impl TcpSide {
    pub(super) fn bind(ctx: &mut Ctx<'_>, at: &[Option<Gateway<'_>>]) -> Result<TcpSide, String> {
        let mut listeners = Vec::new();
        for (k, gw) in at.iter().enumerate() {
            let Some(gw) = gw else {
                listeners.push(None);
                continue;
            };
            let fd = super::socket_at(gw, SockType::Stream)?;
            nix::sys::socket::listen(&fd, nix::sys::socket::Backlog::MAXCONN)
                .map_err(|e| format!("nameserver on {}:53 (tcp): {e}", gw.addr))?;
            let l = TcpListener::from(fd);
            ctx.reactor
                .add(l.as_fd(), token(LISTENERS | k as u64), Interest::Read)
                .map_err(|e| format!("nameserver: epoll: {e}"))?;
            listeners.push(Some(l));
        }
        Ok(TcpSide {
            listeners,
            conns: HashMap::new(),
            next: 0,
            reserve: std::fs::File::open("/dev/null").ok(),
        })
    }

    /// The listeners, kept across an upgrade's exec (connections are not:
    /// a client asks again).
    pub(super) fn export(
        &self,
        out: &mut isola_runtime::handover::Outgoing,
    ) -> Result<Vec<Option<i32>>, nix::errno::Errno> {
        (self.listeners.iter())
            .map(|l| l.as_ref().map(|l| out.keep(l.as_fd())).transpose())
            .collect()
    }

    /// The listeners an older binary had.
    pub(super) fn adopt(
        ctx: &mut Ctx<'_>,
        fds: Vec<Option<std::os::fd::OwnedFd>>,
    ) -> Result<TcpSide, String> {
        let mut listeners = Vec::with_capacity(fds.len());
        for (k, fd) in fds.into_iter().enumerate() {
            let l = fd.map(TcpListener::from);
            if let Some(l) = &l {
                ctx.reactor
                    .add(l.as_fd(), token(LISTENERS | k as u64), Interest::Read)
                    .map_err(|e| format!("nameserver: epoll: {e}"))?;
            }
            listeners.push(l);
        }
        Ok(TcpSide {
            listeners,
            conns: HashMap::new(),
            next: 0,
            reserve: std::fs::File::open("/dev/null").ok(),
        })
    }

    /// An event of ours: the queries it brought (`None`: not ours).
    pub(super) fn on_event(&mut self, ctx: &mut Ctx<'_>, key: u64) -> Option<Vec<TcpQuery>> {
        match key & KIND {
            LISTENERS => {
                self.accept(ctx, usize::try_from(key & !KIND).ok()?);
                Some(Vec::new())
            }
            CONNS => Some(self.read(ctx, key & !KIND)),
            _ => None,
        }
    }

    fn accept(&mut self, ctx: &mut Ctx<'_>, net: usize) {
        let now = Instant::now();
        let idle: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, c)| now.saturating_duration_since(c.last) > IDLE)
            .map(|(id, _)| *id)
            .collect();
        for id in idle {
            self.close(ctx, id);
        }
        let Some(l) = self.listeners.get(net).and_then(Option::as_ref) else {
            return;
        };
        loop {
            let (stream, peer) = match l.accept() {
                Ok(c) => c,
                Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
                    self.reserve = None;
                    let _ = l.accept();
                    self.reserve = std::fs::File::open("/dev/null").ok();
                    return;
                }
                Err(_) => return,
            };
            let SocketAddr::V4(peer) = peer else { continue };
            if self.conns.len() >= CONNS_MAX || stream.set_nonblocking(true).is_err() {
                continue;
            }
            self.next += 1;
            let id = self.next;
            if ctx
                .reactor
                .add(stream.as_fd(), token(CONNS | id), Interest::Read)
                .is_err()
            {
                continue;
            }
            let conn = Conn {
                stream,
                net,
                peer: *peer.ip(),
                inbuf: Vec::new(),
                out: Vec::new(),
                last: now,
            };
            self.conns.insert(id, conn);
        }
    }

    /// Read what came; the whole messages in it. A connection that ends,
    /// fails or sends more than a message at a time is closed.
    fn read(&mut self, ctx: &mut Ctx<'_>, id: u64) -> Vec<TcpQuery> {
        let mut out = Vec::new();
        // Writable, maybe: what waits goes first.
        self.flush(ctx, id);
        let Some(c) = self.conns.get_mut(&id) else {
            return out;
        };
        let mut buf = [0u8; 4096];
        let open = loop {
            match c.stream.read(&mut buf) {
                Ok(0) => break false,
                Ok(n) => c.inbuf.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => break true,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => break false,
            }
            if c.inbuf.len() > INBUF_MAX {
                break false;
            }
        };
        c.last = Instant::now();
        while c.inbuf.len() >= 2 {
            let len = usize::from(u16::from_be_bytes([c.inbuf[0], c.inbuf[1]]));
            if c.inbuf.len() < 2 + len {
                break;
            }
            let msg: Vec<u8> = c.inbuf.drain(..2 + len).skip(2).collect();
            out.push((id, c.net, c.peer, msg));
        }
        if !open {
            // What came before the end is still answered, if it can be
            // (its answers are dropped with the connection otherwise).
            self.close(ctx, id);
        }
        out
    }

    /// Queue an answer for connection `id` and write what it takes.
    pub(super) fn send(&mut self, ctx: &mut Ctx<'_>, id: u64, msg: &[u8]) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        let Ok(len) = u16::try_from(msg.len()) else {
            return;
        };
        if c.out.len() + 2 + msg.len() > OUTBUF_MAX {
            return self.close(ctx, id);
        }
        c.out.extend_from_slice(&len.to_be_bytes());
        c.out.extend_from_slice(msg);
        self.flush(ctx, id);
    }

    fn flush(&mut self, ctx: &mut Ctx<'_>, id: u64) {
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
                Err(_) => return self.close(ctx, id),
            }
        }
        let interest = if c.out.is_empty() {
            Interest::Read
        } else {
            Interest::ReadWrite
        };
        let _ = ctx
            .reactor
            .modify(c.stream.as_fd(), token(CONNS | id), interest);
    }

    fn close(&mut self, ctx: &mut Ctx<'_>, id: u64) {
        if let Some(c) = self.conns.remove(&id) {
            ctx.reactor.remove(c.stream.as_fd());
        }
    }
}
