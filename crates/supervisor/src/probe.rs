//! Running probes for the core ([`Effect::Probe`](crate::lifecycle::Effect)),
//! inside the loop and without blocking it.
//!
//! `tcp` and `http` probes are sockets, not processes: a socket belongs to
//! the network namespace it was created in, so the loop enters the
//! sandbox's namespace (setns on its own thread), creates a non-blocking
//! socket there and comes straight back; the connect and the exchange are
//! then epoll events like any other. `exec` probes are processes joined to
//! the sandbox (see [`crate::exec`]); their exit, reaped on SIGCHLD
//! (`reap`), is the event.
//! Every probe has a deadline ([`Probes::next_deadline`]); at it, a socket
//! is closed and a process group killed, and the probe counts as failed.

use std::collections::HashMap;
use std::fs::File;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::Instant;

use nix::errno::Errno;
use nix::sched::CloneFlags;
use nix::sys::epoll::{EpollEvent, EpollFlags};
use nix::sys::socket::{self, sockopt, AddressFamily, SockFlag, SockType, SockaddrIn, SockaddrIn6};
use nix::unistd::Pid;

use crate::health::{Check, ProbeKind};
use crate::reap::Child;
use crate::supervisor::{Supervisor, Token};

/// The most of an HTTP answer read: the status line is all a probe needs.
const MAX_HTTP_HEAD: usize = 4096;

/// Probes in flight, by id.
#[derive(Default)]
pub(crate) struct Probes {
    next_id: u64,
    inflight: HashMap<u64, InFlight>,
    /// Our own network namespace, to come back to after creating a socket
    /// in a sandbox's (opened at the first such probe).
    home_netns: Option<File>,
    /// Coming back to it failed (for the loop to report).
    stranded: Option<Errno>,
}

struct InFlight {
    service: usize,
    kind: ProbeKind,
    deadline: Instant,
    started: Instant,
    work: Work,
    /// Its result went to the core already (a timeout, a cancel); an exec
    /// probe's process is kept until it is reaped.
    reported: bool,
}

enum Work {
    Tcp(OwnedFd),
    Http {
        sock: OwnedFd,
        request: Vec<u8>,
        written: usize,
        head: Vec<u8>,
    },
    Exec(crate::exec::Joined),
}

/// How a probe ended: ok, and what to show.
type Verdict = (bool, String);

impl Probes {
    /// A socket for `host:port`, created in the network namespace of
    /// process `netns` (ours when `None`), connecting without blocking.
    fn connect_in(
        &mut self,
        netns: Option<Pid>,
        host: IpAddr,
        port: u16,
    ) -> Result<OwnedFd, String> {
        let family = match host {
            IpAddr::V4(_) => AddressFamily::Inet,
            IpAddr::V6(_) => AddressFamily::Inet6,
        };
        let flags = SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC;
        let sock = match netns {
            None => socket::socket(family, SockType::Stream, flags, None)
                .map_err(|e| format!("socket: {e}"))?,
            Some(pid) => self.socket_in_netns(pid, family, flags)?,
        };
        let addr = SocketAddr::new(host, port);
        let res = match addr {
            SocketAddr::V4(a) => socket::connect(sock.as_raw_fd(), &SockaddrIn::from(a)),
            SocketAddr::V6(a) => socket::connect(sock.as_raw_fd(), &SockaddrIn6::from(a)),
        };
        match res {
            Ok(()) | Err(Errno::EINPROGRESS) => Ok(sock),
            Err(e) => Err(connect_error(e)),
        }
    }

    fn socket_in_netns(
        &mut self,
        pid: Pid,
        family: AddressFamily,
        flags: SockFlag,
    ) -> Result<OwnedFd, String> {
        if self.home_netns.is_none() {
            let home = File::open("/proc/thread-self/ns/net")
                .map_err(|e| format!("our network namespace: {e}"))?;
            self.home_netns = Some(home);
        }
        let target = File::open(format!("/proc/{pid}/ns/net"))
            .map_err(|e| format!("the sandbox's network namespace: {e}"))?;
        nix::sched::setns(&target, CloneFlags::CLONE_NEWNET)
            .map_err(|e| format!("enter the sandbox's network namespace: {e}"))?;
        let sock = socket::socket(family, SockType::Stream, flags, None);
        if let Some(home) = &self.home_netns {
            if let Err(e) = nix::sched::setns(home, CloneFlags::CLONE_NEWNET) {
                self.stranded = Some(e);
            }
        }
        sock.map_err(|e| format!("socket: {e}"))
    }

    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.inflight
            .values()
            .filter(|p| !p.reported)
            .map(|p| p.deadline)
            .min()
    }
}

impl Supervisor {
    /// The core's `Probe`: start probe `kind` of service `i`.
    pub(crate) fn start_probe(&mut self, i: usize, kind: ProbeKind) {
        let now = Instant::now();
        let Some(init) = self.running(i).map(|r| r.sandbox.pid()) else {
            return self
                .core
                .probe_done(i, kind, false, "not running".into(), now);
        };
        // The spec is borrowed, not cloned (a thousand probes a second):
        // sockets come from `self.probes`, a field apart from the core.
        let Some(s) = self.core.service(i) else {
            return;
        };
        let Some(spec) = s.def.policy.health.probe(kind) else {
            return;
        };
        let own_netns = s.def.plan.new_net_ns()
            || s.def
                .plan
                .join
                .iter()
                .any(|(f, _)| f.contains(CloneFlags::CLONE_NEWNET));
        let netns = own_netns.then_some(init);
        let timeout = spec.timeout;
        let probes = &mut self.probes;
        let started = match &spec.check {
            Check::Tcp { host, port } => probes.connect_in(netns, *host, *port).map(Work::Tcp),
            Check::Http {
                host,
                port,
                path,
                headers,
            } => probes
                .connect_in(netns, *host, *port)
                .map(|sock| Work::Http {
                    sock,
                    request: http_request(*host, *port, path, headers),
                    written: 0,
                    head: Vec::new(),
                }),
            Check::Exec(argv) => self.exec_probe(i, argv).map(Work::Exec),
        };
        if let Some(e) = self.probes.stranded.take() {
            // Cannot happen to root; if it did, every later socket of ours
            // would be made in the wrong namespace: say it loudly.
            self.note(&format!(
                "probe: cannot return to our network namespace: {e}"
            ));
        }
        let work = match started {
            Ok(w) => w,
            Err(msg) => return self.core.probe_done(i, kind, false, msg, now),
        };
        let id = self.probes.next_id;
        self.probes.next_id += 1;
        match &work {
            Work::Tcp(s) | Work::Http { sock: s, .. } => {
                let ev = EpollEvent::new(EpollFlags::EPOLLOUT, Token::Probe(id).encode());
                if let Err(e) = self.epoll.add(s.as_fd(), ev) {
                    return self
                        .core
                        .probe_done(i, kind, false, format!("epoll: {e}"), now);
                }
            }
            Work::Exec(j) => {
                self.children.insert(j.pid().as_raw(), Child::Probe(id));
            }
        }
        self.probes.inflight.insert(
            id,
            InFlight {
                service: i,
                kind,
                deadline: now + timeout,
                started: now,
                work,
                reported: false,
            },
        );
    }

    /// A probe's socket or process has news.
    pub(crate) fn on_probe(&mut self, id: u64) {
        let Some(p) = self.probes.inflight.get_mut(&id) else {
            return;
        };
        let verdict = match &mut p.work {
            Work::Tcp(sock) => Some(match socket_error(sock) {
                None => (true, "connected".to_string()),
                Some(e) => (false, connect_error(e)),
            }),
            Work::Http {
                sock,
                request,
                written,
                head,
            } => http_progress(&self.epoll, id, sock, request, written, head),
            // Decided by its exit (`probe_exited`).
            Work::Exec(_) => None,
        };
        if let Some((ok, msg)) = verdict {
            self.probe_decided(id, ok, msg);
        }
    }

    /// Exec probe `id`'s waiter was reaped with this exit code.
    pub(crate) fn probe_exited(&mut self, id: u64, code: i32) {
        let (ok, msg) = crate::exec::verdict(code);
        self.probe_decided(id, ok, msg);
    }

    /// Probe `id` is over: tell the core, unless a timeout or a cancel
    /// told it already.
    fn probe_decided(&mut self, id: u64, ok: bool, msg: String) {
        let Some(p) = self.probes.inflight.remove(&id) else {
            return;
        };
        self.release(&p.work);
        if !p.reported {
            self.core
                .probe_done(p.service, p.kind, ok, msg, Instant::now());
        }
    }

    /// Stop watching a probe's fd (an exec probe's waiter is no fd: it is
    /// reaped with our other children).
    fn release(&self, work: &Work) {
        if let Work::Tcp(sock) | Work::Http { sock, .. } = work {
            let _ = self.epoll.delete(sock);
        }
    }

    /// End probe `id` before it decided: a socket is closed now, a process
    /// killed with what it started (and reaped on the SIGCHLD after).
    fn abandon(&mut self, id: u64) -> Option<(usize, ProbeKind)> {
        let p = self.probes.inflight.get_mut(&id)?;
        let was = (!p.reported).then_some((p.service, p.kind));
        p.reported = true;
        if let Work::Exec(j) = &p.work {
            j.kill();
            return was;
        }
        if let Some(p) = self.probes.inflight.remove(&id) {
            self.release(&p.work);
        }
        was
    }

    /// The timer: probes past their timeout fail (and their processes die).
    pub(crate) fn probe_tick(&mut self, now: Instant) {
        let late: Vec<(u64, u128)> = self
            .probes
            .inflight
            .iter()
            .filter(|(_, p)| !p.reported && p.deadline <= now)
            .map(|(id, p)| {
                (
                    *id,
                    p.deadline.saturating_duration_since(p.started).as_millis(),
                )
            })
            .collect();
        for (id, ms) in late {
            if let Some((i, kind)) = self.abandon(id) {
                let msg = format!("timed out after {ms} ms");
                self.core.probe_done(i, kind, false, msg, now);
            }
        }
    }

    /// Service `i`'s sandbox ended: its probes end with it, unreported
    /// (the core starts afresh with the next run).
    pub(crate) fn cancel_probes(&mut self, i: usize) {
        let ids: Vec<u64> = self
            .probes
            .inflight
            .iter()
            .filter(|(_, p)| p.service == i && !p.reported)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.abandon(id);
        }
    }
}

/// SO_ERROR of a connecting socket: `None` once connected.
fn socket_error(sock: &OwnedFd) -> Option<Errno> {
    match socket::getsockopt(sock, sockopt::SocketError) {
        Ok(0) => None,
        Ok(e) => Some(Errno::from_raw(e)),
        Err(e) => Some(e),
    }
}

fn connect_error(e: Errno) -> String {
    match e {
        Errno::ECONNREFUSED => "connection refused".into(),
        Errno::ENETUNREACH => "network unreachable".into(),
        e => format!("connect: {}", e.desc()),
    }
}

fn http_request(host: IpAddr, port: u16, path: &str, headers: &[(String, String)]) -> Vec<u8> {
    let host_header = match host {
        IpAddr::V6(h) => format!("[{h}]:{port}"),
        IpAddr::V4(h) => format!("{h}:{port}"),
    };
    let mut req = format!("GET {path} HTTP/1.1\r\n");
    let has = |name: &str| headers.iter().any(|(k, _)| k.eq_ignore_ascii_case(name));
    if !has("host") {
        req.push_str(&format!("Host: {host_header}\r\n"));
    }
    if !has("user-agent") {
        req.push_str("User-Agent: isola-probe\r\n");
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("Connection: close\r\n\r\n");
    req.into_bytes()
}

/// One step of an HTTP probe: connected → write the request → read the
/// status line. `Some` once it is decided.
fn http_progress(
    epoll: &nix::sys::epoll::Epoll,
    id: u64,
    sock: &OwnedFd,
    request: &[u8],
    written: &mut usize,
    head: &mut Vec<u8>,
) -> Option<Verdict> {
    if *written < request.len() {
        if let Some(e) = socket_error(sock) {
            return Some((false, connect_error(e)));
        }
        match nix::unistd::write(sock, &request[*written..]) {
            Ok(n) => *written += n,
            Err(Errno::EAGAIN | Errno::EINTR) => return None,
            Err(e) => return Some((false, format!("send: {}", e.desc()))),
        }
        if *written == request.len() {
            let mut ev = EpollEvent::new(EpollFlags::EPOLLIN, Token::Probe(id).encode());
            if let Err(e) = epoll.modify(sock, &mut ev) {
                return Some((false, format!("epoll: {e}")));
            }
        }
        return None;
    }
    let mut buf = [0u8; 1024];
    loop {
        match nix::unistd::read(sock, &mut buf) {
            Ok(0) => {
                return Some(parse_status(head).unwrap_or_else(|| {
                    (false, "connection closed before a status line".to_string())
                }))
            }
            Ok(n) => {
                head.extend_from_slice(&buf[..n]);
                if let Some(v) = parse_status(head) {
                    return Some(v);
                }
                if head.len() >= MAX_HTTP_HEAD {
                    return Some((false, "no HTTP status line".to_string()));
                }
            }
            Err(Errno::EAGAIN) => return None,
            Err(Errno::EINTR) => {}
            Err(e) => return Some((false, format!("receive: {}", e.desc()))),
        }
    }
}

/// `HTTP/1.1 503 …` → failed, "503". `None` while the line is incomplete.
fn parse_status(head: &[u8]) -> Option<Verdict> {
    let end = head.windows(2).position(|w| w == b"\r\n")?;
    let line = String::from_utf8_lossy(&head[..end]);
    let mut parts = line.split_whitespace();
    let proto = parts.next().unwrap_or_default();
    let code = parts.next().and_then(|c| c.parse::<u16>().ok());
    match code {
        Some(c) if proto.starts_with("HTTP/") => Some(((200..400).contains(&c), c.to_string())),
        _ => Some((false, format!("not an HTTP answer: {:?}", truncate(&line)))),
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(60).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines() {
        assert_eq!(
            parse_status(b"HTTP/1.1 200 OK\r\n"),
            Some((true, "200".into()))
        );
        assert_eq!(
            parse_status(b"HTTP/1.0 302 Found\r\nLoc"),
            Some((true, "302".into()))
        );
        assert_eq!(
            parse_status(b"HTTP/1.1 503 Busy\r\n"),
            Some((false, "503".into()))
        );
        assert_eq!(parse_status(b"HTTP/1.1 200"), None);
        assert!(!parse_status(b"SSH-2.0-OpenSSH\r\n").unwrap().0);
    }

    #[test]
    fn requests_name_the_host_and_close() {
        let r = http_request(
            "127.0.0.1".parse().unwrap(),
            8080,
            "/healthz",
            &[("X-Probe".into(), "1".into())],
        );
        let r = String::from_utf8(r).unwrap();
        assert!(r.starts_with("GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n"));
        assert!(r.contains("X-Probe: 1\r\n"));
        assert!(r.ends_with("Connection: close\r\n\r\n"));
    }
}
