//! Readiness: how services say they are ready, and what they store.
//! Owns each service's notify socket (`notify: "systemd"`, shared by an
//! overlap's two sandboxes until the hand-over), its notify pipe
//! (`notify: {"fd": N}`, one per start) and its fd store, and registers
//! their fds itself. Messages become [`Input::Notified`] for the core.
//!
//! Whether a datagram's sender belongs to a sandbox is the sandboxes'
//! knowledge: it is asked through [`Senders`], never looked up here.

use std::os::fd::{AsFd, OwnedFd, RawFd};
use std::path::PathBuf;

use isola_runtime::fdpass;
use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};

use crate::lifecycle::Notice;
use crate::shell::context::{Ctx, Input, ServiceIx, ServiceMap};
use crate::shell::reactor::{Interest, Part, Token};
use crate::spec::health::Notify;

mod fd_store;
mod handover;
pub(crate) mod notify_socket;

pub(crate) use fd_store::store_op;
use fd_store::FdStore;
use notify_socket::NotifySocket;

/// The longest datagram read (systemd's limit is the same order).
const MAX_DATAGRAM: usize = 4096;
/// Datagrams handled per wakeup: one chatty service does not hold the loop.
const READS_PER_WAKEUP: usize = 16;
/// The most read from a notify pipe per wakeup (a service writing more
/// than a newline is read in turns).
const READY_READ: usize = 512;

/// Which of a service's fds an event is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Key {
    Socket(ServiceIx),
    Pipe(ServiceIx),
}

impl Key {
    fn token(self) -> Token {
        let (i, bit) = match self {
            Key::Socket(i) => (i, 0),
            Key::Pipe(i) => (i, 1),
        };
        Token::new(Part::Readiness, (i as u64) << 1 | bit)
    }

    fn decode(key: u64) -> Option<Key> {
        let i = usize::try_from(key >> 1).ok()?;
        Some(if key & 1 == 0 {
            Key::Socket(i)
        } else {
            Key::Pipe(i)
        })
    }
}

/// What readiness asks of the rest of the supervisor about a datagram.
pub(crate) trait Senders {
    /// The overlap successor of service `i`, which shares its socket.
    fn successor(&self, i: ServiceIx) -> Option<ServiceIx>;
    /// Is host pid `pid` a process of service `i`'s sandbox?
    fn is_member(&self, i: ServiceIx, pid: i32) -> bool;
}

/// What a start of a service asks for.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ReadySpec<'a> {
    pub(crate) name: &'a str,
    pub(crate) notify: Option<Notify>,
    pub(crate) fd_store_max: u32,
    /// An overlap's successor shares its predecessor's notify socket.
    pub(crate) predecessor: Option<ServiceIx>,
}

#[derive(Default)]
struct Ready {
    socket: Option<NotifySocket>,
    /// Our end of the notify pipe, until the service said ready.
    pipe: Option<OwnedFd>,
    store: FdStore,
}

pub(crate) struct Readiness {
    control_socket: PathBuf,
    services: ServiceMap<Ready>,
}

impl Readiness {
    /// Notify sockets live beside the control socket.
    pub(crate) fn new(control_socket: PathBuf) -> Readiness {
        Readiness {
            control_socket,
            services: ServiceMap::default(),
        }
    }

    fn entry(&mut self, i: ServiceIx) -> &mut Ready {
        if self.services.get(i).is_none() {
            self.services.insert(i, Ready::default());
        }
        match self.services.get_mut(i) {
            Some(r) => r,
            None => unreachable!("inserted above"),
        }
    }

    /// Before a start: service `i` has a notify socket if (and only if,
    /// after a reload) it has `notify: "systemd"`, kept across restarts.
    pub(crate) fn prepare(&mut self, ctx: &mut Ctx<'_>, i: ServiceIx, spec: &ReadySpec<'_>) {
        let wanted = spec.notify == Some(Notify::Systemd);
        let shared = spec
            .predecessor
            .and_then(|p| self.services.get(p)?.socket.as_ref())
            .is_some();
        let control_socket = self.control_socket.clone();
        let r = self.entry(i);
        r.store.set_max(spec.fd_store_max);
        // An overlap's successor shares its predecessor's socket (the
        // path in its plan); messages go by sender (`on_socket`).
        if wanted && shared {
            return;
        }
        match (&mut r.socket, wanted) {
            (Some(ns), true) => ns.reset_warning(),
            (Some(ns), false) => {
                ctx.reactor.remove(ns.fd());
                r.socket = None;
            }
            (None, false) => {}
            (None, true) => match NotifySocket::bind(&control_socket, spec.name) {
                Ok(ns) => match ctx
                    .reactor
                    .add(ns.fd(), Key::Socket(i).token(), Interest::Read)
                {
                    Ok(()) => r.socket = Some(ns),
                    Err(e) => ctx
                        .out
                        .note(format!("{}: notify socket: epoll: {e}", spec.name)),
                },
                Err(e) => ctx.out.note(format!("{}: notify socket: {e}", spec.name)),
            },
        }
    }

    /// For a `notify: {"fd": N}` start: a fresh pipe, our end registered;
    /// the write end is the payload's.
    pub(crate) fn open_pipe(&mut self, ctx: &mut Ctx<'_>, i: ServiceIx) -> Result<OwnedFd, Errno> {
        let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
        fcntl(&r, FcntlArg::F_SETFL(OFlag::O_NONBLOCK))?;
        ctx.reactor
            .add(r.as_fd(), Key::Pipe(i).token(), Interest::Read)?;
        let ready = self.entry(i);
        if let Some(old) = ready.pipe.replace(r) {
            ctx.reactor.remove(old.as_fd());
        }
        Ok(w)
    }

    /// The run is over (or said ready): its notify pipe is let go.
    pub(crate) fn close_pipe(&mut self, ctx: &mut Ctx<'_>, i: ServiceIx) {
        if let Some(r) = self.services.get_mut(i).and_then(|s| s.pipe.take()) {
            ctx.reactor.remove(r.as_fd());
        }
    }

    /// One of our fds has news.
    pub(crate) fn on_event(&mut self, ctx: &mut Ctx<'_>, key: u64, senders: &dyn Senders) {
        match Key::decode(key) {
            Some(Key::Pipe(i)) => self.on_pipe(ctx, i),
            Some(Key::Socket(i)) => self.on_socket(ctx, i, senders),
            None => {}
        }
    }

    /// The notify pipe is readable: a newline means ready; at EOF (the
    /// payload closed it) it is let go.
    fn on_pipe(&mut self, ctx: &mut Ctx<'_>, i: ServiceIx) {
        let Some(r) = self.services.get(i).and_then(|s| s.pipe.as_ref()) else {
            return;
        };
        let mut buf = [0u8; READY_READ];
        match nix::unistd::read(r, &mut buf) {
            Ok(0) | Err(Errno::EBADF) => self.close_pipe(ctx, i),
            Ok(n) if buf[..n].contains(&b'\n') => {
                let ready = Notice {
                    ready: true,
                    ..Notice::default()
                };
                ctx.out.input(Input::Notified(i, ready));
                // Said once: nothing more to hear.
                self.close_pipe(ctx, i);
            }
            Ok(_) | Err(_) => {}
        }
    }

    /// Datagrams on service `i`'s notify socket: each counts for the
    /// sandbox its sender belongs to (`i`, or the overlap successor that
    /// shares the socket), or is ignored, said once per run.
    fn on_socket(&mut self, ctx: &mut Ctx<'_>, i: ServiceIx, senders: &dyn Senders) {
        for _ in 0..READS_PER_WAKEUP {
            let Some(ns) = self.services.get(i).and_then(|s| s.socket.as_ref()) else {
                return;
            };
            // Fds sent along are kept only for the fd store; others
            // (BARRIER=1) are dropped, so closed, right here.
            let Ok(fdpass::Datagram { bytes, pid, fds }) =
                fdpass::receive_credentialed(ns.fd(), MAX_DATAGRAM)
            else {
                return;
            };
            let text = String::from_utf8_lossy(&bytes);
            let from = pid.and_then(|pid| {
                [Some(i), senders.successor(i)]
                    .into_iter()
                    .flatten()
                    .find(|k| senders.is_member(*k, pid))
            });
            match from {
                Some(k) => {
                    if let Err(why) = self.entry(k).store.apply(&text, fds) {
                        ctx.out.event(k, format!("notify: {why}"));
                    }
                    let notice = notify_socket::parse(&text);
                    ctx.out.input(Input::Notified(k, notice));
                }
                None => self.foreign_sender(ctx, i, pid),
            }
        }
    }

    fn foreign_sender(&mut self, ctx: &mut Ctx<'_>, i: ServiceIx, pid: Option<i32>) {
        let Some(ns) = self.services.get_mut(i).and_then(|s| s.socket.as_mut()) else {
            return;
        };
        if !ns.warn_once() {
            return;
        }
        let who = pid.map_or("an unknown sender".to_string(), |p| format!("pid {p}"));
        ctx.out.event(
            i,
            format!("notify: ignored a message from {who}, which is not in the sandbox"),
        );
    }

    /// Append service `i`'s stored fds, and their names, for its start.
    pub(crate) fn stored_fds(&self, i: ServiceIx, fds: &mut Vec<RawFd>, names: &mut String) {
        if let Some(r) = self.services.get(i) {
            r.store.hand_out(fds, names);
        }
    }

    /// Overlap: service `new` took the name of `old`; the name's notify
    /// socket (shared until now) and fd store move to it.
    pub(crate) fn handed_over(&mut self, ctx: &mut Ctx<'_>, old: ServiceIx, new: ServiceIx) {
        let Some(from) = self.services.get_mut(old) else {
            return;
        };
        let socket = from.socket.take();
        let mut store = std::mem::take(&mut from.store);
        let to = self.entry(new);
        to.store.take_from(&mut store);
        let Some(ns) = socket else { return };
        if to.socket.is_some() {
            ctx.reactor.remove(ns.fd());
            return;
        }
        ctx.reactor.remove(ns.fd());
        match ctx
            .reactor
            .add(ns.fd(), Key::Socket(new).token(), Interest::Read)
        {
            Ok(()) => to.socket = Some(ns),
            Err(e) => ctx.out.event(new, format!("notify socket: epoll: {e}")),
        }
    }

    /// Stopped on purpose: what service `i` stored is let go.
    pub(crate) fn drop_store(&mut self, i: ServiceIx) {
        if let Some(r) = self.services.get_mut(i) {
            r.store.clear();
        }
    }

    /// Service `i` is gone: its socket (and directory), pipe and store.
    pub(crate) fn forget(&mut self, ctx: &mut Ctx<'_>, i: ServiceIx) {
        if let Some(r) = self.services.remove(i) {
            if let Some(ns) = &r.socket {
                ctx.reactor.remove(ns.fd());
            }
            if let Some(p) = &r.pipe {
                ctx.reactor.remove(p.as_fd());
            }
        }
    }

    /// At exit: every notify socket and its directory removed.
    pub(crate) fn finish(&mut self) {
        for (_, r) in self.services.iter_mut() {
            r.socket = None;
        }
        let _ = std::fs::remove_dir(notify_socket::host_dir(&self.control_socket, ""));
    }

    #[cfg(test)]
    fn stored(&self, i: ServiceIx) -> usize {
        self.services.get(i).map_or(0, |r| r.store.len())
    }
}

#[cfg(test)]
mod tests;
