//! Probes: running the core's health checks ([`Effect::Probe`]) inside the
//! loop and without blocking it. Owns the probes in flight, their sockets
//! (registered here) and deadlines; a result goes to the core as
//! [`Input::ProbeDone`].
//!
//! `tcp` and `http` probes are sockets, not processes: a socket belongs to
//! the network namespace it was created in, so the loop enters the
//! sandbox's namespace (setns on its own thread), creates a non-blocking
//! socket there and comes straight back; the connect and the exchange are
//! then epoll events like any other. `exec` probes are processes joined to
//! the sandbox ([`exec`]); their exit, reaped on SIGCHLD by the reaper,
//! is the event. Every probe has a deadline ([`Probes::next_deadline`]);
//! at it, a socket is closed and a process group killed, and the probe
//! counts as failed.
//!
//! [`Effect::Probe`]: crate::lifecycle::Effect::Probe

use std::collections::HashMap;
use std::fs::File;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::Instant;

use nix::errno::Errno;
use nix::sched::CloneFlags;
use nix::sys::socket::{self, sockopt, AddressFamily, SockFlag, SockType, SockaddrIn, SockaddrIn6};
use nix::unistd::Pid;

use crate::shell::context::{Ctx, Input, ServiceIx, Verdict};
use crate::shell::reactor::{Interest, Part, Token};
use crate::spec::health::{Check, Probe, ProbeKind};

pub(crate) mod exec;
mod http;

use exec::Joined;

/// A probe in flight, by the id it got when it started.
pub(crate) type ProbeId = u64;

struct InFlight {
    service: ServiceIx,
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
    Http(http::Exchange),
    Exec(Joined),
}

impl Work {
    fn sock(&self) -> Option<&OwnedFd> {
        match self {
            Work::Tcp(s) => Some(s),
            Work::Http(x) => Some(&x.sock),
            Work::Exec(_) => None,
        }
    }
}

/// Where a probe runs.
pub(crate) enum Target<'a> {
    /// A socket, in the network namespace of process `netns` (ours when
    /// `None`).
    Socket { netns: Option<Pid> },
    /// A command in a running sandbox.
    Exec(exec::Sandbox<'a>),
}

/// An exec probe's process, for the reaper.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Waiter {
    pub(crate) id: ProbeId,
    pub(crate) pid: Pid,
}

#[derive(Default)]
pub(crate) struct Probes {
    next_id: ProbeId,
    inflight: HashMap<ProbeId, InFlight>,
    /// Our own network namespace, to come back to after creating a socket
    /// in a sandbox's (opened at the first such probe).
    home_netns: Option<File>,
}

fn token(id: ProbeId) -> Token {
    Token::new(Part::Probes, id)
}

impl Probes {
    /// Start probe `kind` (`spec`) of service `i` at `target`. An exec
    /// probe's process is returned for the reaper; any failure to start
    /// is the probe's result.
    pub(crate) fn start(
        &mut self,
        ctx: &mut Ctx<'_>,
        i: ServiceIx,
        kind: ProbeKind,
        spec: &Probe,
        target: &Target<'_>,
    ) -> Option<Waiter> {
        let work = match self.begin(ctx, &spec.check, target) {
            Ok(w) => w,
            Err(msg) => {
                done(ctx, i, kind, Verdict::fail(msg));
                return None;
            }
        };
        let id = self.next_id;
        self.next_id += 1;
        if let Some(s) = work.sock() {
            if let Err(e) = ctx.reactor.add(s.as_fd(), token(id), Interest::Write) {
                done(ctx, i, kind, Verdict::fail(format!("epoll: {e}")));
                return None;
            }
        }
        let waiter = match &work {
            Work::Exec(j) => Some(Waiter { id, pid: j.pid() }),
            Work::Tcp(_) | Work::Http(_) => None,
        };
        let p = InFlight {
            service: i,
            kind,
            deadline: ctx.now + spec.timeout,
            started: ctx.now,
            work,
            reported: false,
        };
        self.inflight.insert(id, p);
        waiter
    }

    fn begin(
        &mut self,
        ctx: &mut Ctx<'_>,
        check: &Check,
        target: &Target<'_>,
    ) -> Result<Work, String> {
        match (check, target) {
            (Check::Tcp { host, port }, Target::Socket { netns }) => {
                self.connect_in(ctx, *netns, *host, *port).map(Work::Tcp)
            }
            (
                Check::Http {
                    host,
                    port,
                    path,
                    headers,
                },
                Target::Socket { netns },
            ) => {
                let sock = self.connect_in(ctx, *netns, *host, *port)?;
                let request = http::request(*host, *port, path, headers);
                Ok(Work::Http(http::Exchange::new(sock, request)))
            }
            (Check::Exec(argv), Target::Exec(sandbox)) => {
                Joined::spawn(argv, sandbox).map(Work::Exec)
            }
            _ => Err("no such probe target".into()),
        }
    }

    /// A socket for `host:port`, created in the network namespace of
    /// process `netns` (ours when `None`), connecting without blocking.
    fn connect_in(
        &mut self,
        ctx: &mut Ctx<'_>,
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
            Some(pid) => self.socket_in_netns(ctx, pid, family, flags)?,
        };
        let res = match SocketAddr::new(host, port) {
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
        ctx: &mut Ctx<'_>,
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
                // Cannot happen to root; if it did, every later socket of
                // ours would be made in the wrong namespace: say it loudly.
                ctx.out.note(format!(
                    "probe: cannot return to our network namespace: {e}"
                ));
            }
        }
        sock.map_err(|e| format!("socket: {e}"))
    }

    /// A probe's socket has news.
    pub(crate) fn on_event(&mut self, ctx: &mut Ctx<'_>, id: ProbeId) {
        let Some(p) = self.inflight.get_mut(&id) else {
            return;
        };
        let verdict = match &mut p.work {
            Work::Tcp(sock) => Some(match socket_error(sock) {
                None => Verdict::pass("connected"),
                Some(e) => Verdict::fail(connect_error(e)),
            }),
            Work::Http(x) => x.progress(ctx.reactor, token(id)),
            // Decided by its exit (`exited`).
            Work::Exec(_) => None,
        };
        if let Some(v) = verdict {
            self.decided(ctx, id, v);
        }
    }

    /// Exec probe `id`'s waiter was reaped with this exit code.
    pub(crate) fn exited(&mut self, ctx: &mut Ctx<'_>, id: ProbeId, code: i32) {
        self.decided(ctx, id, exec::verdict(code));
    }

    /// Probe `id` is over: tell the core, unless a timeout or a cancel
    /// told it already.
    fn decided(&mut self, ctx: &mut Ctx<'_>, id: ProbeId, verdict: Verdict) {
        let Some(p) = self.inflight.remove(&id) else {
            return;
        };
        if let Some(s) = p.work.sock() {
            ctx.reactor.remove(s.as_fd());
        }
        if !p.reported {
            done(ctx, p.service, p.kind, verdict);
        }
    }

    /// End probe `id` before it decided: a socket is closed now, a process
    /// killed with what it started (and reaped on the SIGCHLD after). The
    /// probe, unless it was reported already.
    fn abandon(&mut self, ctx: &mut Ctx<'_>, id: ProbeId) -> Option<(ServiceIx, ProbeKind)> {
        let p = self.inflight.get_mut(&id)?;
        let was = (!p.reported).then_some((p.service, p.kind));
        p.reported = true;
        if let Work::Exec(j) = &p.work {
            j.kill();
            return was;
        }
        if let Some(p) = self.inflight.remove(&id) {
            if let Some(s) = p.work.sock() {
                ctx.reactor.remove(s.as_fd());
            }
        }
        was
    }

    /// The timer: probes past their timeout fail (and their processes die).
    pub(crate) fn tick(&mut self, ctx: &mut Ctx<'_>) {
        let now = ctx.now;
        let late: Vec<(ProbeId, u128)> = self
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
            if let Some((i, kind)) = self.abandon(ctx, id) {
                done(
                    ctx,
                    i,
                    kind,
                    Verdict::fail(format!("timed out after {ms} ms")),
                );
            }
        }
    }

    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.inflight
            .values()
            .filter(|p| !p.reported)
            .map(|p| p.deadline)
            .min()
    }

    /// Service `i`'s sandbox ended: its probes end with it, unreported
    /// (the core starts afresh with the next run).
    pub(crate) fn cancel(&mut self, ctx: &mut Ctx<'_>, i: ServiceIx) {
        let ids: Vec<ProbeId> = self
            .inflight
            .iter()
            .filter(|(_, p)| p.service == i && !p.reported)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.abandon(ctx, id);
        }
    }

    /// No probe is in flight (an upgrade waits for that: an exec probe's
    /// waiter would outlive the deadline that ends it).
    pub(crate) fn idle(&self) -> bool {
        self.inflight.is_empty()
    }

    #[cfg(test)]
    fn in_flight(&self) -> usize {
        self.inflight.len()
    }
}

fn done(ctx: &mut Ctx<'_>, service: ServiceIx, kind: ProbeKind, verdict: Verdict) {
    ctx.out.input(Input::ProbeDone {
        service,
        kind,
        verdict,
    });
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

#[cfg(test)]
mod tests;
