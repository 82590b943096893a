//! What every start of a service is handed besides its plan: the listening
//! sockets the supervisor holds for it (`sockets`, shared by its replicas)
//! and the fds it stored with `FDSTORE=1` (`fdStoreMax`), at fds 3, 4, …
//! with `LISTEN_FDS`, `LISTEN_FDNAMES` and `LISTEN_PID`.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use crate::sockets::{self, Held};
use crate::stack::ServiceDef;
use crate::supervisor::{Supervisor, Token};
use nix::sys::epoll::{EpollEvent, EpollFlags};

/// `FDNAME` of a stored fd that came without one (systemd's default).
const DEFAULT_FD_NAME: &str = "stored";

/// The sockets of one service (all its replicas), in the listed order.
#[derive(Debug, Default)]
pub(crate) struct SocketSet {
    held: Vec<Held>,
    /// Their names, `:`-separated.
    names: String,
}

/// Held sockets by service (a replica's group) name.
pub(crate) type Sockets = HashMap<String, SocketSet>;

/// Open the sockets `defs` list, reusing the ones of `old` that listen on
/// the same address (a reload keeps them: connections never see a gap).
/// Errors name the field and the address; on an error `old` is untouched
/// (a reload that fails closes nothing a running service listens on).
pub(crate) fn open_all(defs: &[ServiceDef], old: &mut Sockets) -> Result<Sockets, String> {
    let reusable = |old: &Sockets, group: &str, s: &sockets::SocketDef| {
        old.get(group)
            .is_some_and(|o| o.held.iter().any(|h| h.def.address == s.address))
    };
    // First what is new, while nothing of `old` has moved.
    let mut fresh: HashMap<(String, usize), Held> = HashMap::new();
    for d in defs {
        let group = d.group_name();
        for (k, s) in d.policy.sockets.iter().enumerate() {
            let key = (group.to_string(), k);
            if fresh.contains_key(&key) || reusable(old, group, s) {
                continue;
            }
            let held =
                sockets::open(s).map_err(|e| format!("services.{group}.sockets[{k}]: {e}"))?;
            fresh.insert(key, held);
        }
    }
    let mut out = Sockets::new();
    for d in defs {
        let group = d.group_name();
        if d.policy.sockets.is_empty() || out.contains_key(group) {
            continue;
        }
        let mut set = SocketSet::default();
        for (k, s) in d.policy.sockets.iter().enumerate() {
            let held = match fresh.remove(&(group.to_string(), k)) {
                Some(h) => h,
                None => {
                    let o = old.get_mut(group).ok_or("lost a held socket")?;
                    let at = o
                        .held
                        .iter()
                        .position(|h| h.def.address == s.address)
                        .ok_or("lost a held socket")?;
                    let mut h = o.held.remove(at);
                    h.def = s.clone();
                    h
                }
            };
            if !set.names.is_empty() {
                set.names.push(':');
            }
            set.names.push_str(&s.name);
            set.held.push(held);
        }
        out.insert(group.to_string(), set);
    }
    Ok(out)
}

/// Parse `FDSTORE=1`, `FDSTOREREMOVE=1` and `FDNAME=` of a notify message.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum StoreOp<'a> {
    Store(&'a str),
    Remove(&'a str),
}

pub(crate) fn store_op(text: &str) -> Option<StoreOp<'_>> {
    let mut store = false;
    let mut remove = false;
    let mut name = None;
    for line in text.lines() {
        match line.split_once('=') {
            Some(("FDSTORE", "1")) => store = true,
            Some(("FDSTOREREMOVE", "1")) => remove = true,
            Some(("FDNAME", n)) => name = Some(n),
            _ => {}
        }
    }
    if remove {
        return name.map(StoreOp::Remove);
    }
    store.then(|| StoreOp::Store(name.unwrap_or(DEFAULT_FD_NAME)))
}

/// A valid `FDNAME`: what `LISTEN_FDNAMES` can carry.
fn valid_fd_name(n: &str) -> bool {
    !n.is_empty() && n.len() <= 255 && n.bytes().all(|b| b.is_ascii_graphic() && b != b':')
}

impl Supervisor {
    /// fds and names for service `i`'s next start: its sockets, then its
    /// stored fds.
    pub(crate) fn handover(&self, i: usize) -> (Vec<RawFd>, String) {
        let mut fds = Vec::new();
        let mut names = String::new();
        let Some(s) = self.core.service(i) else {
            return (fds, names);
        };
        if let Some(set) = self.sockets.get(s.def.group_name()) {
            fds.extend(set.held.iter().map(|h| h.fd.as_raw_fd()));
            names.push_str(&set.names);
        }
        if let Some(slot) = self.slots.get(i).and_then(Option::as_ref) {
            for (name, fd) in &slot.fd_store {
                fds.push(fd.as_raw_fd());
                if !names.is_empty() {
                    names.push(':');
                }
                names.push_str(name);
            }
        }
        (fds, names)
    }

    /// A notify message of service `i`: fds it stores are kept, the rest
    /// closed (dropped) here.
    pub(crate) fn fd_store_message(&mut self, i: usize, text: &str, fds: Vec<OwnedFd>) {
        let Some(op) = store_op(text) else {
            return;
        };
        let max = self
            .core
            .service(i)
            .map_or(0, |s| s.def.policy.fd_store_max as usize);
        let mut refused = None;
        if let Some(slot) = self.slot(i) {
            match op {
                StoreOp::Remove(name) => slot.fd_store.retain(|(n, _)| n != name),
                StoreOp::Store(name) if !valid_fd_name(name) => {
                    refused = Some(format!("FDNAME={name}: not a valid name"));
                }
                StoreOp::Store(name) => {
                    for fd in fds {
                        if slot.fd_store.len() >= max {
                            refused =
                                Some(format!("fd store full (fdStoreMax {max}): {name} not kept"));
                            break;
                        }
                        slot.fd_store.push((name.to_string(), fd));
                    }
                }
            }
        }
        if let Some(why) = refused {
            self.event(i, &format!("notify: {why}"));
        }
    }

    /// Overlap: service `new` took the name of `old`; the name's notify
    /// socket (shared until now) and fd store move to it.
    pub(crate) fn handed_over(&mut self, old: usize, new: usize) {
        let Some(slot) = self.slot(old) else { return };
        let notify = slot.notify.take();
        let store = std::mem::take(&mut slot.fd_store);
        if let Some(ns) = &notify {
            let _ = self.epoll.delete(ns.fd());
            let ev = EpollEvent::new(EpollFlags::EPOLLIN, Token::Notify(new).encode());
            let _ = self.epoll.add(ns.fd(), ev);
        }
        if let Some(slot) = self.slot(new) {
            if slot.notify.is_none() {
                slot.notify = notify;
            }
            slot.fd_store.extend(store);
        }
    }

    /// Service `i` was stopped on purpose: what it stored is let go.
    pub(crate) fn drop_fd_store(&mut self, i: usize) {
        if let Some(slot) = self.slot(i) {
            slot.fd_store.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn free_port() -> u16 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    }

    fn defs(ports: &[u16]) -> Vec<ServiceDef> {
        let sockets: Vec<String> = ports
            .iter()
            .enumerate()
            .map(|(k, p)| format!(r#"{{"name": "s{k}", "listen": "tcp://127.0.0.1:{p}"}}"#))
            .collect();
        let text = format!(
            r#"{{"services": {{"web": {{"process": {{"args": ["true"]}}, "sockets": [{}]}}}}}}"#,
            sockets.join(", ")
        );
        crate::stack::parse(&text, std::path::Path::new("/"))
            .unwrap()
            .services
    }

    #[test]
    fn a_reload_keeps_held_sockets_and_a_failed_one_closes_none() {
        let (a, b) = (free_port(), free_port());
        let mut held = open_all(&defs(&[a]), &mut Sockets::new()).unwrap();
        let fd = held["web"].held[0].fd.as_raw_fd();
        // A port someone else holds: the reload fails, `a` stays ours.
        let taken = std::net::TcpListener::bind(("127.0.0.1", b)).unwrap();
        let e = open_all(&defs(&[a, b]), &mut held).unwrap_err();
        assert!(
            e.starts_with("services.web.sockets[1]: tcp://127.0.0.1:"),
            "{e}"
        );
        assert_eq!(held["web"].held[0].fd.as_raw_fd(), fd);
        assert!(std::net::TcpStream::connect(("127.0.0.1", a)).is_ok());
        drop(taken);
        // Now it fits: `a` is the same socket, `b` new, names in order.
        let next = open_all(&defs(&[a, b]), &mut held).unwrap();
        assert_eq!(next["web"].held[0].fd.as_raw_fd(), fd);
        assert_eq!(next["web"].names, "s0:s1");
    }

    #[test]
    fn store_messages() {
        assert_eq!(
            store_op("FDSTORE=1\nFDNAME=counter"),
            Some(StoreOp::Store("counter"))
        );
        assert_eq!(store_op("FDSTORE=1"), Some(StoreOp::Store("stored")));
        assert_eq!(
            store_op("FDSTOREREMOVE=1\nFDNAME=c"),
            Some(StoreOp::Remove("c"))
        );
        assert_eq!(store_op("FDSTOREREMOVE=1"), None);
        assert_eq!(store_op("READY=1"), None);
        assert!(valid_fd_name("counter"));
        assert!(!valid_fd_name("a:b"));
        assert!(!valid_fd_name(""));
    }
}
