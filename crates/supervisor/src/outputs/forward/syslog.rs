//! RFC 5424 messages to a syslog receiver: a datagram each over UDP or a
//! unix socket, octet-counted frames (RFC 6587) over TCP. Never waits:
//! datagrams a full receiver refuses are dropped; a TCP connection is
//! made without blocking, keeps a bounded queue while the receiver is
//! slow, and after a failure is tried again on a line at least a second
//! later (no timer: a stack that writes nothing costs no wakeup).

use std::collections::VecDeque;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::{Duration, Instant, SystemTime};

use nix::errno::Errno;
use nix::sys::socket::{
    self, AddressFamily, MsgFlags, SockFlag, SockType, SockaddrStorage, UnixAddr,
};

use super::{Context, Drops, Origin};
use crate::logs::timestamp;
use crate::outputs::sink::SINK_LIMIT;
use crate::outputs::Key;
use crate::shell::context::Ctx;
use crate::shell::reactor::Interest;
use crate::spec::logging::SyslogTarget;

/// How long after a failure a receiver is tried again.
const RETRY: Duration = Duration::from_secs(1);
/// syslog's facility for what we send: daemon (3), as Docker's driver.
const FACILITY: u8 = 3;
/// RFC 5424 caps APP-NAME at 48 characters.
const APP_NAME_MAX: usize = 48;

enum Conn {
    /// Not connected; tried again on a line after `retry_at`.
    Down { retry_at: Instant },
    /// A connected datagram socket (UDP, unix).
    Datagram(OwnedFd),
    /// A TCP connection being made (`connected: false`) or made, and what
    /// waits to be written to it.
    Stream {
        fd: OwnedFd,
        connected: bool,
        queue: Queue,
    },
}

/// Frames waiting for a TCP receiver, bounded by [`SINK_LIMIT`] bytes.
#[derive(Default)]
struct Queue {
    frames: VecDeque<Vec<u8>>,
    bytes: usize,
    /// Of the first frame, bytes already written.
    sent: usize,
    /// Registered for EPOLLOUT.
    waiting: bool,
}

pub(super) struct Syslog {
    target: SyslogTarget,
    conn: Conn,
    drops: Drops,
}

impl Syslog {
    pub(super) fn new(target: SyslogTarget) -> Syslog {
        Syslog {
            target,
            conn: Conn::Down {
                retry_at: Instant::now(),
            },
            drops: Drops::default(),
        }
    }

    pub(super) fn target(&self) -> &SyslogTarget {
        &self.target
    }

    pub(super) fn dropped(&self) -> u64 {
        self.drops.total
    }

    fn sink(&self) -> String {
        format!("syslog {}", self.target)
    }

    pub(super) fn send(
        &mut self,
        ctx: &mut Ctx<'_>,
        k: usize,
        cx: &Context,
        origin: &Origin<'_>,
        line: &str,
        notes: &mut Vec<String>,
    ) {
        if let Conn::Down { retry_at } = self.conn {
            if Instant::now() < retry_at {
                return self.drops.dropped(1, &self.sink(), &"not connected", notes);
            }
            if let Err(e) = self.connect(ctx, k) {
                self.fail(ctx, notes, &e);
                return self.drops.dropped(1, &self.sink(), &e, notes);
            }
        }
        let msg = message(cx, origin, line);
        match &mut self.conn {
            Conn::Down { .. } => {}
            Conn::Datagram(fd) => match send(fd, msg.as_bytes()) {
                Ok(_) => self.drops.delivered(&self.sink(), notes),
                Err(Errno::EAGAIN) => self.drops.dropped(1, &self.sink(), &"full", notes),
                // One line too long for a datagram: that line only.
                Err(Errno::EMSGSIZE) => {
                    self.drops
                        .dropped(1, &self.sink(), &"a line too long", notes)
                }
                Err(e) => {
                    // Refused (a receiver that went away, or made its
                    // socket anew): connect again, a second from now.
                    self.conn = Conn::Down {
                        retry_at: Instant::now() + RETRY,
                    };
                    self.drops.dropped(1, &self.sink(), &e, notes);
                }
            },
            Conn::Stream { queue, .. } => {
                let frame = format!("{} {msg}", msg.len()).into_bytes();
                if queue.bytes + frame.len() > SINK_LIMIT {
                    return self.drops.dropped(1, &self.sink(), &"slow", notes);
                }
                queue.bytes += frame.len();
                queue.frames.push_back(frame);
                self.flush(ctx, k, notes);
            }
        }
    }

    /// Our fd can be written, or failed.
    pub(super) fn on_event(&mut self, ctx: &mut Ctx<'_>, k: usize, notes: &mut Vec<String>) {
        if let Conn::Stream { fd, connected, .. } = &mut self.conn {
            if !*connected {
                match socket::getsockopt(&*fd, socket::sockopt::SocketError) {
                    Ok(0) => *connected = true,
                    Ok(e) => return self.fail(ctx, notes, &Errno::from_raw(e)),
                    Err(e) => return self.fail(ctx, notes, &e),
                }
            }
        }
        self.flush(ctx, k, notes);
    }

    fn connect(&mut self, ctx: &mut Ctx<'_>, k: usize) -> Result<(), Errno> {
        let (family, kind) = match &self.target {
            SyslogTarget::Udp(a) => (family(a), SockType::Datagram),
            SyslogTarget::Tcp(a) => (family(a), SockType::Stream),
            SyslogTarget::Unix(_) => (AddressFamily::Unix, SockType::Datagram),
        };
        let flags = SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC;
        let fd = socket::socket(family, kind, flags, None)?;
        let connected = match &self.target {
            SyslogTarget::Udp(a) | SyslogTarget::Tcp(a) => {
                socket::connect(fd.as_raw_fd(), &SockaddrStorage::from(*a))
            }
            SyslogTarget::Unix(p) => socket::connect(fd.as_raw_fd(), &UnixAddr::new(p.as_path())?),
        };
        let connecting = match connected {
            Ok(()) => false,
            Err(Errno::EINPROGRESS) if kind == SockType::Stream => true,
            Err(e) => return Err(e),
        };
        if kind == SockType::Datagram {
            self.conn = Conn::Datagram(fd);
            return Ok(());
        }
        let mut queue = Queue::default();
        if connecting {
            ctx.reactor
                .add(fd.as_fd(), Key::Forward(k).token(), Interest::Write)?;
            queue.waiting = true;
        }
        self.conn = Conn::Stream {
            fd,
            connected: !connecting,
            queue,
        };
        Ok(())
    }

    /// Write queued frames until the socket takes no more.
    fn flush(&mut self, ctx: &mut Ctx<'_>, k: usize, notes: &mut Vec<String>) {
        let Conn::Stream {
            fd,
            connected: true,
            queue,
        } = &mut self.conn
        else {
            return;
        };
        let result = write_queue(fd, queue);
        match result {
            Ok(wrote) => {
                if wrote {
                    self.drops.delivered(&self.sink(), notes);
                }
                let Conn::Stream { fd, queue, .. } = &mut self.conn else {
                    return;
                };
                let idle = queue.frames.is_empty();
                if idle && queue.waiting {
                    ctx.reactor.remove(fd.as_fd());
                    queue.waiting = false;
                } else if !idle && !queue.waiting {
                    queue.waiting = ctx
                        .reactor
                        .add(fd.as_fd(), Key::Forward(k).token(), Interest::Write)
                        .is_ok();
                }
            }
            Err(e) => self.fail(ctx, notes, &e),
        }
    }

    /// The connection failed: what it held is dropped, and it is tried
    /// again a second from now.
    fn fail(&mut self, ctx: &mut Ctx<'_>, notes: &mut Vec<String>, why: &Errno) {
        let down = Conn::Down {
            retry_at: Instant::now() + RETRY,
        };
        if let Conn::Stream { fd, queue, .. } = std::mem::replace(&mut self.conn, down) {
            if queue.waiting {
                ctx.reactor.remove(fd.as_fd());
            }
            let lost = queue.frames.len() as u64;
            if lost > 0 {
                self.drops.dropped(lost, &self.sink(), why, notes);
            }
        }
    }
}

/// Write frames until EAGAIN or none are left; true if any was written
/// whole.
fn write_queue(fd: &OwnedFd, q: &mut Queue) -> Result<bool, Errno> {
    let mut wrote = false;
    while let Some(front) = q.frames.front() {
        match send(fd, &front[q.sent..]) {
            Ok(n) => {
                q.sent += n;
                if q.sent == front.len() {
                    q.bytes -= front.len();
                    q.sent = 0;
                    q.frames.pop_front();
                    wrote = true;
                }
            }
            Err(Errno::EAGAIN) => break,
            Err(Errno::EINTR) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(wrote)
}

fn send(fd: &OwnedFd, buf: &[u8]) -> Result<usize, Errno> {
    socket::send(
        fd.as_raw_fd(),
        buf,
        MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
    )
}

fn family(a: &std::net::SocketAddr) -> AddressFamily {
    match a {
        std::net::SocketAddr::V4(_) => AddressFamily::Inet,
        std::net::SocketAddr::V6(_) => AddressFamily::Inet6,
    }
}

/// `<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID SD MSG` (RFC 5424):
/// the service as APP-NAME (journald's SYSLOG_IDENTIFIER), the stream as
/// MSGID, who sent it in the registered `origin` element.
pub(super) fn message(cx: &Context, origin: &Origin<'_>, line: &str) -> String {
    let pri = FACILITY * 8 + origin.severity();
    let app: String = origin
        .service
        .chars()
        .filter(char::is_ascii_graphic)
        .take(APP_NAME_MAX)
        .collect();
    let procid = origin
        .pid
        .map_or_else(|| "-".to_string(), |p| p.to_string());
    format!(
        "<{pri}>1 {} {} {app} {procid} {} [origin software=\"isola\" swVersion=\"{}\"] {line}",
        timestamp(SystemTime::now()),
        cx.host,
        origin.stream.as_str(),
        env!("CARGO_PKG_VERSION"),
    )
}
