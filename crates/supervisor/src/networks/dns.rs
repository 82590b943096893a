//! The stack's nameserver, inside the supervisor's loop: a UDP socket on
//! each network's gateway address. A name of a service on that network
//! (its name, a replica's, an alias) is answered here — with the
//! addresses of the sandboxes that run it, TTL 0 (replicas come and go);
//! NODATA for other types (no IPv6). A single-label name that is not one
//! of the network's is not found: a service on another network stays
//! unknown. Anything else goes to the host's resolver and back, without
//! waiting: a slow upstream delays no one. Over UDP an answer longer than
//! 512 bytes (a big replica group) is cut (TC) and the resolver asks
//! again over TCP ([`tcp`]), on the same address.

use crate::upgrade::snapshot::DnsRecord;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::sys::socket::{SockType, SockaddrIn};

use crate::shell::context::Ctx;
use crate::shell::reactor::{Interest, Part, Token};

const TYPE_A: u16 = 1;
const TYPE_AAAA: u16 = 28;
const TYPE_ANY: u16 = 255;
const CLASS_IN: u16 = 1;
const RCODE_SERVFAIL: u8 = 2;
const RCODE_NXDOMAIN: u8 = 3;
const RCODE_REFUSED: u8 = 5;
/// Queries forwarded and not answered yet, at most (the oldest go).
const PENDING_MAX: usize = 1024;
/// How long a forwarded query waits for the upstream.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(5);
/// The upstream's key; networks' UDP sockets count from 0.
const UPSTREAM: u64 = 1 << 32;
/// The longest answer over UDP without EDNS (RFC 1035).
const UDP_MAX: usize = 512;

mod tcp;

use tcp::TcpSide;

/// A question: the name (lowercase, no final dot), its type, and where
/// the question section ends.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Question {
    pub(crate) id: u16,
    pub(crate) name: String,
    pub(crate) qtype: u16,
    end: usize,
}

/// A standard query with one question, else `None` (ignored).
pub(crate) fn parse_query(msg: &[u8]) -> Option<Question> {
    let id = u16::from_be_bytes([*msg.first()?, *msg.get(1)?]);
    let flags = u16::from_be_bytes([*msg.get(2)?, *msg.get(3)?]);
    let qdcount = u16::from_be_bytes([*msg.get(4)?, *msg.get(5)?]);
    // A response, or not a standard query.
    if flags & 0x8000 != 0 || flags & 0x7800 != 0 || qdcount != 1 {
        return None;
    }
    let mut at = 12;
    let mut labels = Vec::new();
    loop {
        let len = usize::from(*msg.get(at)?);
        at += 1;
        if len == 0 {
            break;
        }
        // No compression in a question we accept.
        if len > 63 {
            return None;
        }
        let label = msg.get(at..at + len)?;
        labels.push(String::from_utf8_lossy(label).to_ascii_lowercase());
        at += len;
    }
    let qtype = u16::from_be_bytes([*msg.get(at)?, *msg.get(at + 1)?]);
    let qclass = u16::from_be_bytes([*msg.get(at + 2)?, *msg.get(at + 3)?]);
    if qclass != CLASS_IN {
        return None;
    }
    Some(Question {
        id,
        name: labels.join("."),
        qtype,
        end: at + 4,
    })
}

/// The answer to `q` (from `query`): A records of the IPv4 `addrs` for an
/// A question, AAAA records of the IPv6 ones for AAAA, both for ANY (none
/// of a kind: NODATA); `rcode` for a name not found. Longer than `limit`:
/// no records, and TC set (ask again over TCP).
pub(crate) fn answer(
    query: &[u8],
    q: &Question,
    addrs: &[IpAddr],
    rcode: u8,
    limit: usize,
) -> Vec<u8> {
    let rd = query.get(2).map_or(0, |b| b & 0x01);
    let wanted = |a: &&IpAddr| match a {
        IpAddr::V4(_) => matches!(q.qtype, TYPE_A | TYPE_ANY),
        IpAddr::V6(_) => matches!(q.qtype, TYPE_AAAA | TYPE_ANY),
    };
    let mut with: Vec<&IpAddr> = if rcode == 0 {
        addrs.iter().filter(wanted).collect()
    } else {
        Vec::new()
    };
    let size = |a: &&IpAddr| if a.is_ipv4() { 16 } else { 28 };
    let cut = q.end + with.iter().map(size).sum::<usize>() > limit;
    if cut {
        with.clear();
    }
    let mut out = Vec::with_capacity(q.end + with.iter().map(size).sum::<usize>());
    out.extend_from_slice(&q.id.to_be_bytes());
    // QR, AA, TC when cut, RD as asked; RA, and the code.
    out.push(0x84 | if cut { 0x02 } else { 0 } | rd);
    out.push(0x80 | rcode);
    out.extend_from_slice(&1u16.to_be_bytes());
    out.extend_from_slice(&u16::try_from(with.len()).unwrap_or(0).to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(query.get(12..q.end).unwrap_or_default());
    for a in with {
        let (kind, data) = match a {
            IpAddr::V4(v4) => (TYPE_A, v4.octets().to_vec()),
            IpAddr::V6(v6) => (TYPE_AAAA, v6.octets().to_vec()),
        };
        // The name: a pointer to the question's.
        out.extend_from_slice(&[0xc0, 0x0c]);
        out.extend_from_slice(&kind.to_be_bytes());
        out.extend_from_slice(&CLASS_IN.to_be_bytes());
        out.extend_from_slice(&0u32.to_be_bytes());
        out.extend_from_slice(&u16::try_from(data.len()).unwrap_or(0).to_be_bytes());
        out.extend_from_slice(&data);
    }
    out
}

/// The stack's names: (network asked on, who asks, name) → what it knows.
pub(crate) type Resolve<'a> = dyn Fn(usize, Ipv4Addr, &str) -> Lookup + 'a;

/// What the stack knows of a name on a network.
pub(crate) enum Lookup {
    /// One of the network's: these sandboxes run it (maybe none now), at
    /// these addresses (IPv6 too on an IPv6 network).
    Ours(Vec<IpAddr>),
    /// Not one of the network's.
    Unknown,
    /// Not answered: the asker is none of ours, or on internal networks
    /// only (its questions do not leave either).
    Refused,
}

/// Who asked: a datagram's sender, or one of our TCP connections.
#[derive(Debug, Clone, Copy)]
enum Asker {
    Udp(SocketAddr),
    Tcp(u64),
}

/// A query sent on to the upstream.
struct Pending {
    net: usize,
    asker: Asker,
    id: u16,
    /// The question as sent: an answer must repeat it.
    question: Vec<u8>,
    sent: Instant,
}

pub(crate) struct NameServer {
    /// By network, bound to its gateway's port 53.
    sockets: Vec<Option<UdpSocket>>,
    upstream: Option<UdpSocket>,
    pending: HashMap<u16, Pending>,
    /// xorshift state for the ids of forwarded queries (a sandbox must not
    /// guess them and forge the upstream's answer).
    rng: u32,
    tcp: TcpSide,
}

fn token(key: u64) -> Token {
    Token::new(Part::Names, key)
}

impl NameServer {
    /// Sockets on `gateways` (one per network), registered; the upstream
    /// is the host's first nameserver (none: other names fail).
    pub(crate) fn bind(
        ctx: &mut Ctx<'_>,
        at: &[Option<Gateway<'_>>],
    ) -> Result<NameServer, String> {
        let mut sockets = Vec::new();
        for (k, gw) in at.iter().enumerate() {
            let Some(gw) = gw else {
                sockets.push(None);
                continue;
            };
            let s = UdpSocket::from(socket_at(gw, SockType::Datagram)?);
            ctx.reactor
                .add(s.as_fd(), token(k as u64), Interest::Read)
                .map_err(|e| format!("nameserver: epoll: {e}"))?;
            sockets.push(Some(s));
        }
        let upstream = host_nameserver().and_then(|addr| {
            let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).ok()?;
            s.connect(addr).ok()?;
            s.set_nonblocking(true).ok()?;
            ctx.reactor
                .add(s.as_fd(), token(UPSTREAM), Interest::Read)
                .ok()?;
            Some(s)
        });
        Ok(NameServer {
            sockets,
            upstream,
            pending: HashMap::new(),
            rng: seed(),
            tcp: TcpSide::bind(ctx, at)?,
        })
    }

    /// Its sockets, kept across an upgrade's exec (queries forwarded and
    /// not answered yet are not: their askers retry).
    pub(crate) fn export(
        &self,
        out: &mut isola_runtime::handover::Outgoing,
    ) -> Result<DnsRecord, nix::errno::Errno> {
        let udp = (self.sockets.iter())
            .map(|s| s.as_ref().map(|s| out.keep(s.as_fd())).transpose())
            .collect::<Result<_, _>>()?;
        Ok(DnsRecord {
            udp,
            tcp: self.tcp.export(out)?,
            upstream: self
                .upstream
                .as_ref()
                .map(|s| out.keep(s.as_fd()))
                .transpose()?,
        })
    }

    /// The nameserver an older binary ran, on the sockets it handed over.
    pub(crate) fn adopt(
        ctx: &mut Ctx<'_>,
        rec: &DnsRecord,
        fds: &mut isola_runtime::handover::Incoming,
    ) -> Result<NameServer, String> {
        let mut take = |fd: Option<i32>| -> Result<Option<std::os::fd::OwnedFd>, String> {
            fd.map(|n| {
                fds.take(n)
                    .ok_or(format!("nameserver: fd {n} not handed over"))
            })
            .transpose()
        };
        let epoll = |e: nix::errno::Errno| format!("nameserver: epoll: {e}");
        let mut sockets = Vec::with_capacity(rec.udp.len());
        for (k, fd) in rec.udp.iter().enumerate() {
            let s = take(*fd)?.map(UdpSocket::from);
            if let Some(s) = &s {
                ctx.reactor
                    .add(s.as_fd(), token(k as u64), Interest::Read)
                    .map_err(epoll)?;
            }
            sockets.push(s);
        }
        let upstream = take(rec.upstream)?.map(UdpSocket::from);
        if let Some(s) = &upstream {
            ctx.reactor
                .add(s.as_fd(), token(UPSTREAM), Interest::Read)
                .map_err(epoll)?;
        }
        let tcp: Vec<_> = rec
            .tcp
            .iter()
            .map(|fd| take(*fd))
            .collect::<Result<_, _>>()?;
        Ok(NameServer {
            sockets,
            upstream,
            pending: HashMap::new(),
            rng: seed(),
            tcp: TcpSide::adopt(ctx, tcp)?,
        })
    }

    /// A socket of ours is readable: answer what came (`lookup`: the
    /// stack's names for one who asks on a network from an address).
    pub(crate) fn on_event(&mut self, ctx: &mut Ctx<'_>, key: u64, lookup: &Resolve<'_>) {
        if key == UPSTREAM {
            return self.relay_answers(ctx);
        }
        if let Some(queries) = self.tcp.on_event(ctx, key) {
            for (conn, net, from, query) in queries {
                if let Some(reply) = self.reply(net, from, Asker::Tcp(conn), &query, lookup) {
                    self.tcp.send(ctx, conn, &reply);
                }
            }
            return;
        }
        let Ok(net) = usize::try_from(key) else {
            return;
        };
        let mut buf = [0u8; 1500];
        // A few per wakeup; the rest is reported again (level-triggered).
        for _ in 0..64 {
            let Some(Ok((n, client))) = self
                .sockets
                .get(net)
                .and_then(Option::as_ref)
                .map(|s| s.recv_from(&mut buf))
            else {
                return;
            };
            let SocketAddr::V4(from) = client else {
                continue;
            };
            let query = buf[..n].to_vec();
            if let Some(reply) = self.reply(net, *from.ip(), Asker::Udp(client), &query, lookup) {
                if let Some(sock) = self.sockets.get(net).and_then(Option::as_ref) {
                    let _ = sock.send_to(&reply, client);
                }
            }
        }
    }

    /// The answer to `query`, or `None` when there is none to give now
    /// (not a query; sent on to the upstream).
    fn reply(
        &mut self,
        net: usize,
        from: Ipv4Addr,
        asker: Asker,
        query: &[u8],
        lookup: &Resolve<'_>,
    ) -> Option<Vec<u8>> {
        let q = parse_query(query)?;
        let limit = match asker {
            Asker::Udp(_) => UDP_MAX,
            Asker::Tcp(_) => usize::from(u16::MAX),
        };
        Some(match lookup(net, from, &q.name) {
            Lookup::Ours(addrs) => answer(query, &q, &addrs, 0, limit),
            Lookup::Refused => answer(query, &q, &[], RCODE_REFUSED, limit),
            Lookup::Unknown if !q.name.contains('.') => {
                answer(query, &q, &[], RCODE_NXDOMAIN, limit)
            }
            Lookup::Unknown => match self.forward(net, asker, query, &q) {
                Some(()) => return None,
                None => answer(query, &q, &[], RCODE_SERVFAIL, limit),
            },
        })
    }

    /// Send `query` on under an id of ours; `None` when there is no
    /// upstream to ask.
    fn forward(&mut self, net: usize, asker: Asker, query: &[u8], q: &Question) -> Option<()> {
        let up = self.upstream.as_ref()?;
        let now = Instant::now();
        self.pending
            .retain(|_, p| now.saturating_duration_since(p.sent) < FORWARD_TIMEOUT);
        if self.pending.len() >= PENDING_MAX {
            let oldest = self
                .pending
                .iter()
                .min_by_key(|(_, p)| p.sent)
                .map(|(k, _)| *k);
            oldest.map(|k| self.pending.remove(&k));
        }
        let id = loop {
            self.rng ^= self.rng << 13;
            self.rng ^= self.rng >> 17;
            self.rng ^= self.rng << 5;
            let id = u16::try_from(self.rng >> 16).unwrap_or(0);
            if !self.pending.contains_key(&id) {
                break id;
            }
        };
        let mut msg = query.to_vec();
        msg[..2].copy_from_slice(&id.to_be_bytes());
        up.send(&msg).ok()?;
        self.pending.insert(
            id,
            Pending {
                net,
                asker,
                id: q.id,
                question: query.get(12..q.end).unwrap_or_default().to_vec(),
                sent: now,
            },
        );
        Some(())
    }

    /// The upstream answered: back to whoever asked, under their id.
    fn relay_answers(&mut self, ctx: &mut Ctx<'_>) {
        let mut buf = [0u8; 4096];
        for _ in 0..64 {
            let Some(up) = self.upstream.as_ref() else {
                return;
            };
            let Ok(n) = up.recv(&mut buf) else { return };
            if n < 12 {
                continue;
            }
            let ours = u16::from_be_bytes([buf[0], buf[1]]);
            // Not an answer to what we asked: dropped, and what we asked
            // still waits for its own.
            let asked =
                |p: &Pending| buf.get(12..12 + p.question.len()) == Some(p.question.as_slice());
            if !self.pending.get(&ours).is_some_and(asked) {
                continue;
            }
            let Some(p) = self.pending.remove(&ours) else {
                continue;
            };
            buf[..2].copy_from_slice(&p.id.to_be_bytes());
            match p.asker {
                Asker::Udp(client) => {
                    if let Some(sock) = self.sockets.get(p.net).and_then(Option::as_ref) {
                        let _ = sock.send_to(&buf[..n], client);
                    }
                }
                Asker::Tcp(conn) => self.tcp.send(ctx, conn, &buf[..n]),
            }
        }
    }
}

/// Where the nameserver listens on one network.
pub(crate) struct Gateway<'a> {
    pub(crate) addr: Ipv4Addr,
    /// isola's bridge: only what comes in on it reaches the socket (the
    /// kernel would hand it a packet for its address from any network
    /// otherwise). `None` on a CNI network, whose bridge the plugins make
    /// at its first start: bound before the address exists.
    pub(crate) device: Option<&'a str>,
}

/// A nonblocking socket bound to port 53 of `gw`.
pub(super) fn socket_at(gw: &Gateway<'_>, kind: SockType) -> Result<OwnedFd, String> {
    use nix::sys::socket::{bind, setsockopt, socket, sockopt, AddressFamily, SockFlag};
    let what = |e: nix::errno::Errno| format!("nameserver on {}:53: {e}", gw.addr);
    let flags = SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC;
    let s = socket(AddressFamily::Inet, kind, flags, None).map_err(what)?;
    if kind == SockType::Stream {
        setsockopt(&s, sockopt::ReuseAddr, &true).map_err(what)?;
    }
    match gw.device {
        Some(dev) => setsockopt(&s, sockopt::BindToDevice, &std::ffi::OsString::from(dev)),
        None => setsockopt(&s, sockopt::IpFreebind, &true),
    }
    .map_err(what)?;
    bind(
        s.as_raw_fd(),
        &SockaddrIn::from(SocketAddrV4::new(gw.addr, 53)),
    )
    .map_err(what)?;
    Ok(s)
}

/// A seed for the ids of forwarded queries (never 0: xorshift stays 0).
fn seed() -> u32 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    (t.subsec_nanos() ^ std::process::id().rotate_left(16)) | 1
}

/// The host's first IPv4 nameserver (`/etc/resolv.conf`), port 53.
fn host_nameserver() -> Option<SocketAddr> {
    let text = std::fs::read_to_string("/etc/resolv.conf").ok()?;
    text.lines().find_map(|l| {
        let mut w = l.split_whitespace();
        (w.next()? == "nameserver").then_some(())?;
        let ip: Ipv4Addr = w.next()?.parse().ok()?;
        Some(SocketAddr::from((ip, 53)))
    })
}

#[cfg(test)]
mod tests;
