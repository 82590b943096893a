//! The fds a service stored with `FDSTORE=1` (`fdStoreMax`): kept across
//! its restarts and handed back at its next start after its held sockets,
//! named by `FDNAME=`; let go when it is stopped on purpose.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

/// `FDNAME` of a stored fd that came without one (systemd's default).
const DEFAULT_FD_NAME: &str = "stored";

/// What a notify message asks of the store.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum StoreOp<'a> {
    Store(&'a str),
    Remove(&'a str),
}

/// Parse `FDSTORE=1`, `FDSTOREREMOVE=1` and `FDNAME=` of a notify message.
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

/// One service's stored fds, in the order stored.
#[derive(Debug, Default)]
pub(crate) struct FdStore {
    fds: Vec<(String, OwnedFd)>,
    max: usize,
}

impl FdStore {
    /// How many fds it may hold from now on (`fdStoreMax`, read at each
    /// start: a reload may change it).
    pub(crate) fn set_max(&mut self, max: u32) {
        self.max = usize::try_from(max).unwrap_or(usize::MAX);
    }

    /// Apply a notify message; `fds` that are not kept are dropped
    /// (closed) here. `Err` says why something was refused.
    pub(crate) fn apply(&mut self, text: &str, fds: Vec<OwnedFd>) -> Result<(), String> {
        match store_op(text) {
            None => Ok(()),
            Some(StoreOp::Remove(name)) => {
                self.fds.retain(|(n, _)| n != name);
                Ok(())
            }
            Some(StoreOp::Store(name)) if !valid_fd_name(name) => {
                Err(format!("FDNAME={name}: not a valid name"))
            }
            Some(StoreOp::Store(name)) => {
                for fd in fds {
                    if self.fds.len() >= self.max {
                        let max = self.max;
                        return Err(format!("fd store full (fdStoreMax {max}): {name} not kept"));
                    }
                    self.fds.push((name.to_string(), fd));
                }
                Ok(())
            }
        }
    }

    /// Append the stored fds and their names (`:`-separated after
    /// `names`) for a start.
    pub(crate) fn hand_out(&self, fds: &mut Vec<RawFd>, names: &mut String) {
        for (name, fd) in &self.fds {
            fds.push(fd.as_raw_fd());
            if !names.is_empty() {
                names.push(':');
            }
            names.push_str(name);
        }
    }

    /// Take another store's fds (an overlap's successor takes its
    /// predecessor's).
    pub(crate) fn take_from(&mut self, other: &mut FdStore) {
        self.fds.append(&mut other.fds);
    }

    /// The stored fds, by name, in the order stored.
    pub(crate) fn entries(&self) -> impl Iterator<Item = (&str, BorrowedFd<'_>)> {
        self.fds.iter().map(|(n, fd)| (n.as_str(), fd.as_fd()))
    }

    /// Keep `fd` as `name` (an upgrade hands the store on, unchecked: it
    /// was checked when stored).
    pub(crate) fn restore(&mut self, name: String, fd: OwnedFd) {
        self.fds.push((name, fd));
    }

    pub(crate) fn clear(&mut self) {
        self.fds.clear();
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.fds.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    fn fd() -> OwnedFd {
        std::fs::File::open("/dev/null").unwrap().into()
    }

    #[test]
    fn the_store_keeps_up_to_its_max_names_them_and_removes_by_name() {
        let mut s = FdStore::default();
        s.set_max(2);
        s.apply("FDSTORE=1\nFDNAME=a", vec![fd()]).unwrap();
        s.apply("FDSTORE=1", vec![fd()]).unwrap();
        let e = s.apply("FDSTORE=1\nFDNAME=c", vec![fd()]).unwrap_err();
        assert_eq!(e, "fd store full (fdStoreMax 2): c not kept");
        let e = s.apply("FDSTORE=1\nFDNAME=a:b", vec![fd()]).unwrap_err();
        assert_eq!(e, "FDNAME=a:b: not a valid name");
        let (mut fds, mut names) = (vec![3], "http".to_string());
        s.hand_out(&mut fds, &mut names);
        assert_eq!((fds.len(), names.as_str()), (3, "http:a:stored"));
        s.apply("FDSTOREREMOVE=1\nFDNAME=a", Vec::new()).unwrap();
        assert_eq!(s.len(), 1);
        let mut next = FdStore::default();
        next.take_from(&mut s);
        assert_eq!((next.len(), s.len()), (1, 0));
    }
}
