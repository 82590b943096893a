//! The listening sockets `isola up` holds for services (`sockets`): bound
//! before anything starts, shared by a service's replicas and by both
//! sandboxes of an overlap, kept across a reload that still lists them,
//! and handed to every start at fds 3, 4, … (systemd's socket activation).

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;

use nix::sys::socket::{
    bind, listen, setsockopt, socket, sockopt, AddressFamily, Backlog, SockFlag, SockType,
    SockaddrStorage, UnixAddr,
};

use isola_runtime::sock_diag::UnixDiag;

use crate::shell::reactor::{Interest, Part, Reactor, Token};
use crate::upgrade::snapshot::HeldRecord;
use isola_runtime::handover::{Incoming, Outgoing};
use nix::errno::Errno;

use crate::spec::sockets::{Address, SocketDef};
use crate::spec::stack::ServiceDef;

/// The sockets of one service (all its replicas), in the listed order.
#[derive(Debug, Default)]
struct SocketSet {
    held: Vec<Held>,
    /// Their names, `:`-separated (`LISTEN_FDNAMES`).
    names: String,
    /// Its listeners in the epoll set, for the autoscaler (see `watch`).
    watch: Watch,
    /// Its events' key.
    key: u64,
}

/// Whether a set's listeners wake the loop when a connection comes.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Watch {
    #[default]
    Off,
    /// In the epoll set, one-shot: the next connection wakes the loop once.
    Armed,
    /// Woke it; armed again at the next readings.
    Fired,
}

/// The sock_diag socket unix listeners' queues are read with.
#[derive(Debug, Default)]
enum Diag {
    #[default]
    Unopened,
    Ready(UnixDiag),
    /// It could not be opened: not tried again (the stack was checked
    /// for `unix_diag` at load, `sock_diag::available`).
    Broken,
}

impl Diag {
    fn accept_queue(&mut self, fd: BorrowedFd<'_>) -> Result<u32, nix::errno::Errno> {
        if matches!(self, Diag::Unopened) {
            *self = UnixDiag::open().map_or(Diag::Broken, Diag::Ready);
        }
        let Diag::Ready(d) = self else {
            return Err(nix::errno::Errno::ENOENT);
        };
        d.accept_queue(fd).map(|q| q.queued)
    }
}

/// Held sockets by service (a replica's group) name.
#[derive(Debug, Default)]
pub(crate) struct HeldSockets {
    sets: HashMap<String, SocketSet>,
    /// Asks unix listeners' queues (opened when first needed).
    diag: Diag,
    /// The next set's events' key: never one an earlier set had (an event
    /// of a replaced set still in the loop's batch finds no set).
    next_key: u64,
}

impl HeldSockets {
    /// Open the sockets `defs` list, reusing the ones of `self` that
    /// listen on the same address (a reload keeps them: connections never
    /// see a gap). Errors name the field and the address; on an error
    /// `self` is untouched (a reload that fails closes nothing a running
    /// service listens on). Sockets the new set does not take close when
    /// `self` is replaced by it.
    pub(crate) fn open_all<'a>(
        &mut self,
        defs: impl Iterator<Item = &'a ServiceDef> + Clone,
    ) -> Result<HeldSockets, String> {
        let fresh = self.open_new(defs.clone())?;
        self.assemble(defs, fresh)
    }

    /// The sockets `defs` list as an older binary held them (an upgrade):
    /// the fds `held` names, taken from the handover; none is opened.
    pub(crate) fn adopt<'a>(
        defs: impl Iterator<Item = &'a ServiceDef> + Clone,
        held: &[HeldRecord],
        fds: &mut Incoming,
    ) -> Result<HeldSockets, String> {
        let mut fresh = HashMap::new();
        for d in defs.clone() {
            let group = d.group_name();
            for (k, s) in d.policy.sockets.iter().enumerate() {
                // A group's replicas share its sockets: taken once.
                let key = (group.to_string(), k);
                if fresh.contains_key(&key) {
                    continue;
                }
                let Some(r) = held.iter().find(|r| r.group == group && r.index == k) else {
                    continue;
                };
                let fd = fds.take(r.fd).ok_or_else(|| {
                    format!("services.{group}.sockets[{k}]: fd {} not handed over", r.fd)
                })?;
                fresh.insert(key, Held { def: s.clone(), fd });
            }
        }
        HeldSockets::default().assemble(defs, fresh)
    }

    /// Every held socket, kept across an upgrade's exec.
    pub(crate) fn export(&self, out: &mut Outgoing) -> Result<Vec<HeldRecord>, Errno> {
        let mut held = Vec::new();
        for (group, set) in &self.sets {
            for (index, h) in set.held.iter().enumerate() {
                held.push(HeldRecord {
                    group: group.clone(),
                    index,
                    fd: out.keep(h.fd.as_fd())?,
                });
            }
        }
        Ok(held)
    }

    /// The sets of `defs`, from `fresh` sockets and the ones `self` holds.
    fn assemble<'a>(
        &mut self,
        defs: impl Iterator<Item = &'a ServiceDef>,
        mut fresh: HashMap<(String, usize), Held>,
    ) -> Result<HeldSockets, String> {
        let mut out = HeldSockets {
            next_key: self.next_key,
            ..HeldSockets::default()
        };
        for d in defs {
            let group = d.group_name();
            if d.policy.sockets.is_empty() || out.sets.contains_key(group) {
                continue;
            }
            let mut set = SocketSet {
                key: out.next_key,
                ..SocketSet::default()
            };
            out.next_key += 1;
            for (k, s) in d.policy.sockets.iter().enumerate() {
                let held = match fresh.remove(&(group.to_string(), k)) {
                    Some(h) => h,
                    None => self.take(group, s).ok_or("lost a held socket")?,
                };
                if !set.names.is_empty() {
                    set.names.push(':');
                }
                set.names.push_str(&s.name);
                set.held.push(held);
            }
            out.sets.insert(group.to_string(), set);
        }
        Ok(out)
    }

    /// The sockets of `defs` not held yet, by group and position, while
    /// nothing of `self` has moved.
    fn open_new<'a>(
        &self,
        defs: impl Iterator<Item = &'a ServiceDef>,
    ) -> Result<HashMap<(String, usize), Held>, String> {
        let mut fresh = HashMap::new();
        for d in defs {
            let group = d.group_name();
            for (k, s) in d.policy.sockets.iter().enumerate() {
                let key = (group.to_string(), k);
                if fresh.contains_key(&key) || self.holds(group, s) {
                    continue;
                }
                let held = open(s).map_err(|e| format!("services.{group}.sockets[{k}]: {e}"))?;
                fresh.insert(key, held);
            }
        }
        Ok(fresh)
    }

    fn holds(&self, group: &str, s: &SocketDef) -> bool {
        self.sets
            .get(group)
            .is_some_and(|o| o.held.iter().any(|h| h.def.address == s.address))
    }

    /// Move the socket of `group` listening where `s` says out of `self`.
    fn take(&mut self, group: &str, s: &SocketDef) -> Option<Held> {
        let set = self.sets.get_mut(group)?;
        let at = set.held.iter().position(|h| h.def.address == s.address)?;
        let mut h = set.held.remove(at);
        h.def = s.clone();
        Some(h)
    }

    /// What a start of a service of `group` gets: its sockets' fds and
    /// their names, `:`-separated.
    pub(crate) fn for_group(&self, group: &str) -> (Vec<RawFd>, &str) {
        match self.sets.get(group) {
            Some(set) => (
                set.held.iter().map(|h| h.fd.as_raw_fd()).collect(),
                set.names.as_str(),
            ),
            None => (Vec::new(), ""),
        }
    }

    /// The accept queue of every TCP listener held, by service and
    /// socket name (unix and UDP sockets have none to tell).
    pub(crate) fn accept_queues(&self) -> Vec<SocketQueue<'_>> {
        let mut out: Vec<SocketQueue<'_>> = self
            .sets
            .iter()
            .flat_map(|(group, set)| {
                set.held.iter().filter_map(move |h| {
                    let queue = isola_runtime::listen::accept_queue(h.fd.as_fd()).ok()?;
                    Some(SocketQueue {
                        service: group,
                        socket: &h.def.name,
                        queue,
                    })
                })
            })
            .collect();
        out.sort_by(|a, b| (a.service, a.socket).cmp(&(b.service, b.socket)));
        out
    }

    /// Wake the loop (`Part::Sockets`) when a connection comes to one of
    /// `group`'s listeners (`on`), or no more. One-shot: at most once
    /// between two [`HeldSockets::rearm`]s, however busy the service.
    /// A readiness wakeup: a connection a replica accepts before the loop
    /// looks is not reported (the queue is empty again by then). Reliable
    /// while no replica runs — nobody else accepts — which is when it
    /// counts most; while replicas run, the queue readings and these
    /// wakeups are what tells the service is not idle. (A signal per
    /// connection, `O_ASYNC`, would see every one, but its owner and signal
    /// belong to the open file the payloads share: a payload could turn it
    /// into any signal sent to the supervisor.)
    pub(crate) fn watch(&mut self, reactor: &Reactor, group: &str, on: bool) {
        let Some(set) = self.sets.get_mut(group) else {
            return;
        };
        match (set.watch, on) {
            (Watch::Off, true) => {
                let token = Token::new(Part::Sockets, set.key);
                let mut added = Vec::new();
                for fd in set.listeners() {
                    if reactor.add(fd, token, Interest::ReadOnce).is_err() {
                        // All or none: its arrivals are seen at the next
                        // readings, from its queue.
                        added.into_iter().for_each(|fd| reactor.remove(fd));
                        return;
                    }
                    added.push(fd);
                }
                set.watch = Watch::Armed;
            }
            (Watch::Armed | Watch::Fired, false) => {
                set.listeners().for_each(|fd| reactor.remove(fd));
                set.watch = Watch::Off;
            }
            _ => {}
        }
    }

    /// Out of the epoll set, every one (before `self` is replaced by a
    /// reload's set, which closes what it does not keep: a socket a
    /// payload still holds would stay in the set otherwise).
    pub(crate) fn unwatch_all(&mut self, reactor: &Reactor) {
        let groups: Vec<String> = self.sets.keys().cloned().collect();
        for g in groups {
            self.watch(reactor, &g, false);
        }
    }

    /// A watched listener woke the loop: whose it is (none for a set not
    /// watched: an event of a replaced set still in the loop's batch).
    pub(crate) fn on_event(&mut self, key: u64) -> Option<&str> {
        let (group, set) = self
            .sets
            .iter_mut()
            .find(|(_, s)| s.key == key && s.watch != Watch::Off)?;
        set.watch = Watch::Fired;
        Some(group)
    }

    /// Arm again the listeners that fired.
    pub(crate) fn rearm(&mut self, reactor: &Reactor) {
        for set in self.sets.values_mut().filter(|s| s.watch == Watch::Fired) {
            let token = Token::new(Part::Sockets, set.key);
            let armed = set
                .listeners()
                .all(|fd| reactor.modify(fd, token, Interest::ReadOnce).is_ok());
            if armed {
                set.watch = Watch::Armed;
            } else {
                // Not in the set after all: out of it whole, so a later
                // `watch` adds it again.
                set.listeners().for_each(|fd| reactor.remove(fd));
                set.watch = Watch::Off;
            }
        }
    }

    /// Connections waiting in the accept queues of `group`'s listeners
    /// (tcp: `TCP_INFO`; unix: sock_diag). A queue that cannot be read
    /// counts as empty.
    pub(crate) fn queued(&mut self, group: &str) -> u32 {
        let Some(set) = self.sets.get(group) else {
            return 0;
        };
        let mut total = 0u32;
        for h in &set.held {
            let q = match h.def.address {
                Address::Tcp(_) => isola_runtime::listen::accept_queue(h.fd.as_fd())
                    .map(|q| q.queued)
                    .ok(),
                Address::Unix(_) => self.diag.accept_queue(h.fd.as_fd()).ok(),
                Address::Udp(_) => None,
            };
            total = total.saturating_add(q.unwrap_or(0));
        }
        total
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.sets.values().map(|s| s.held.len()).sum()
    }
}

impl SocketSet {
    /// Its stream listeners (UDP sockets have no connections).
    fn listeners(&self) -> impl Iterator<Item = BorrowedFd<'_>> {
        self.held
            .iter()
            .filter(|h| !matches!(h.def.address, Address::Udp(_)))
            .map(|h| h.fd.as_fd())
    }
}

/// A held listener's accept queue.
pub(crate) struct SocketQueue<'a> {
    pub(crate) service: &'a str,
    pub(crate) socket: &'a str,
    pub(crate) queue: isola_runtime::listen::AcceptQueue,
}

/// A socket the supervisor holds.
#[derive(Debug)]
pub(crate) struct Held {
    def: SocketDef,
    fd: OwnedFd,
}

impl Drop for Held {
    fn drop(&mut self) {
        // A unix socket's file goes with it (systemd's RemoveOnStop).
        if let Address::Unix(p) = &self.def.address {
            if is_socket_file(p) {
                let _ = std::fs::remove_file(p);
            }
        }
    }
}

/// A port below `net.ipv4.ip_unprivileged_port_start` asked of a
/// supervisor without CAP_NET_BIND_SERVICE (a user's).
fn privileged_port(def: &SocketDef, port: u16) -> String {
    let start = unprivileged_port_start();
    format!(
        "{}: bind: port {port} is below net.ipv4.ip_unprivileged_port_start ({start}), which uid {} may not bind: pick a port at or above it, or lower the sysctl",
        def.listen,
        nix::unistd::geteuid()
    )
}

fn unprivileged_port_start() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(1024)
}

fn is_socket_file(p: &Path) -> bool {
    std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_socket())
}

/// Create, bind and (for stream sockets) listen. In our own network
/// namespace: the host's.
fn open(def: &SocketDef) -> Result<Held, String> {
    let fail = |what: &str, e: nix::errno::Errno| format!("{}: {what}: {}", def.listen, e.desc());
    let flags = SockFlag::SOCK_CLOEXEC;
    let fd = match &def.address {
        Address::Tcp(a) | Address::Udp(a) => {
            let family = if a.is_ipv4() {
                AddressFamily::Inet
            } else {
                AddressFamily::Inet6
            };
            let kind = if matches!(def.address, Address::Tcp(_)) {
                SockType::Stream
            } else {
                SockType::Datagram
            };
            let fd = socket(family, kind, flags, None).map_err(|e| fail("socket", e))?;
            // A restarted supervisor binds again while old connections of
            // the last one sit in TIME_WAIT.
            setsockopt(&fd, sockopt::ReuseAddr, &true).map_err(|e| fail("SO_REUSEADDR", e))?;
            if a.is_ipv6() {
                setsockopt(&fd, sockopt::Ipv6V6Only, &true).map_err(|e| fail("IPV6_V6ONLY", e))?;
            }
            bind(fd.as_raw_fd(), &SockaddrStorage::from(*a)).map_err(|e| match e {
                nix::errno::Errno::EACCES if a.port() < unprivileged_port_start() => {
                    privileged_port(def, a.port())
                }
                e => fail("bind", e),
            })?;
            fd
        }
        Address::Unix(p) => {
            // A file left by an earlier run is in the way of bind; only a
            // socket is removed, never another kind of file.
            if is_socket_file(p) {
                let _ = std::fs::remove_file(p);
            }
            let fd = socket(AddressFamily::Unix, SockType::Stream, flags, None)
                .map_err(|e| fail("socket", e))?;
            let addr = UnixAddr::new(p).map_err(|e| fail("address", e))?;
            bind(fd.as_raw_fd(), &addr).map_err(|e| fail("bind", e))?;
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(def.mode))
                .map_err(|e| format!("{}: chmod: {e}", def.listen))?;
            fd
        }
    };
    let held = Held {
        def: def.clone(),
        fd,
    };
    if !matches!(def.address, Address::Udp(_)) {
        let backlog = Backlog::new(def.backlog).unwrap_or(Backlog::MAXCONN);
        listen(&held.fd, backlog).map_err(|e| fail("listen", e))?;
    }
    Ok(held)
}

#[cfg(test)]
mod tests;
