//! The listening sockets `isola up` holds for services (`sockets`): bound
//! before anything starts, shared by a service's replicas and by both
//! sandboxes of an overlap, kept across a reload that still lists them,
//! and handed to every start at fds 3, 4, … (systemd's socket activation).

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;

use nix::sys::socket::{
    bind, listen, setsockopt, socket, sockopt, AddressFamily, Backlog, SockFlag, SockType,
    SockaddrStorage, UnixAddr,
};

use crate::spec::sockets::{Address, SocketDef};
use crate::spec::stack::ServiceDef;

/// The sockets of one service (all its replicas), in the listed order.
#[derive(Debug, Default)]
struct SocketSet {
    held: Vec<Held>,
    /// Their names, `:`-separated (`LISTEN_FDNAMES`).
    names: String,
}

/// Held sockets by service (a replica's group) name.
#[derive(Debug, Default)]
pub(crate) struct HeldSockets {
    sets: HashMap<String, SocketSet>,
}

impl HeldSockets {
    /// Open the sockets `defs` list, reusing the ones of `self` that
    /// listen on the same address (a reload keeps them: connections never
    /// see a gap). Errors name the field and the address; on an error
    /// `self` is untouched (a reload that fails closes nothing a running
    /// service listens on). Sockets the new set does not take close when
    /// `self` is replaced by it.
    pub(crate) fn open_all(&mut self, defs: &[ServiceDef]) -> Result<HeldSockets, String> {
        let mut fresh = self.open_new(defs)?;
        let mut out = HeldSockets::default();
        for d in defs {
            let group = d.group_name();
            if d.policy.sockets.is_empty() || out.sets.contains_key(group) {
                continue;
            }
            let mut set = SocketSet::default();
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
    fn open_new(&self, defs: &[ServiceDef]) -> Result<HashMap<(String, usize), Held>, String> {
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

    #[cfg(test)]
    fn len(&self) -> usize {
        self.sets.values().map(|s| s.held.len()).sum()
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
            bind(fd.as_raw_fd(), &SockaddrStorage::from(*a)).map_err(|e| fail("bind", e))?;
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
mod tests {
    use super::*;

    fn free_port() -> u16 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    }

    fn stack(services: &str) -> Vec<ServiceDef> {
        let text = format!(r#"{{"services": {{{services}}}}}"#);
        crate::spec::stack::parse(&text, std::path::Path::new("/"))
            .unwrap()
            .services
    }

    fn web(ports: &[u16], extra: &str) -> Vec<ServiceDef> {
        let sockets: Vec<String> = ports
            .iter()
            .enumerate()
            .map(|(k, p)| format!(r#"{{"name": "s{k}", "listen": "tcp://127.0.0.1:{p}"}}"#))
            .collect();
        stack(&format!(
            r#""web": {{"process": {{"args": ["true"]}}, "sockets": [{}]{extra}}}"#,
            sockets.join(", ")
        ))
    }

    #[test]
    fn a_reload_keeps_held_sockets_and_a_failed_one_closes_none() {
        let (a, b) = (free_port(), free_port());
        let mut held = HeldSockets::default().open_all(&web(&[a], "")).unwrap();
        let fd = held.for_group("web").0[0];
        // A port someone else holds: the reload fails, `a` stays ours.
        let taken = std::net::TcpListener::bind(("127.0.0.1", b)).unwrap();
        let e = held.open_all(&web(&[a, b], "")).unwrap_err();
        assert!(
            e.starts_with("services.web.sockets[1]: tcp://127.0.0.1:"),
            "{e}"
        );
        assert_eq!(held.for_group("web").0, vec![fd]);
        assert!(std::net::TcpStream::connect(("127.0.0.1", a)).is_ok());
        drop(taken);
        // Now it fits: `a` is the same socket, `b` new, names in order.
        let mut next = held.open_all(&web(&[a, b], "")).unwrap();
        assert_eq!(next.for_group("web").0[0], fd);
        assert_eq!(next.for_group("web").1, "s0:s1");
        // A reload without the sockets closes them once the old set goes.
        drop(held);
        let none = next
            .open_all(&stack(r#""web": {"process": {"args": ["true"]}}"#))
            .unwrap();
        assert_eq!(none.len(), 0);
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", a)).is_ok(),
            "kept"
        );
        drop(next);
        assert!(
            std::net::TcpListener::bind(("127.0.0.1", a)).is_ok(),
            "closed"
        );
    }

    /// Replicas are one group: one set of sockets, the same fds for each
    /// (and for an overlap's successor, which has the same group).
    #[test]
    fn replicas_share_one_socket_set() {
        let p = free_port();
        let defs = web(&[p], r#", "replicas": 3"#);
        assert_eq!(defs.len(), 3);
        let held = HeldSockets::default().open_all(&defs).unwrap();
        assert_eq!(held.len(), 1);
        let fds: Vec<_> = defs
            .iter()
            .map(|d| held.for_group(d.group_name()).0)
            .collect();
        assert!(fds.iter().all(|f| f == &fds[0] && f.len() == 1), "{fds:?}");
        assert_eq!(held.for_group("db"), (Vec::new(), ""));
    }

    #[test]
    fn a_bound_port_is_refused_and_a_unix_file_goes_with_its_socket() {
        let def = |listen: &str| SocketDef {
            name: "x".into(),
            listen: listen.into(),
            address: crate::spec::sockets::parse_address(listen).unwrap(),
            backlog: 8,
            mode: 0o600,
        };
        // A port someone else holds is refused; once free, it is ours.
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = probe.local_addr().unwrap().port();
        let e = open(&def(&format!("tcp://127.0.0.1:{port}"))).unwrap_err();
        assert!(e.contains("bind: Address already in use"), "{e}");
        drop(probe);
        let held = open(&def(&format!("tcp://127.0.0.1:{port}"))).unwrap();
        assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
        drop(held);

        let dir = std::env::temp_dir().join(format!("isola-sock-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s.sock");
        let held = open(&def(&format!("unix://{}", path.display()))).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        drop(held);
        assert!(!path.exists());
        let _ = std::fs::remove_dir(&dir);
    }
}
