//! Handing a process's own state and fds to the program it execs (a
//! supervisor's upgrade in place, as systemd's daemon-reexec does): the
//! fds to keep lose close-on-exec, their numbers and the caller's payload
//! go into a sealed memfd, and the memfd's number into an environment
//! variable. The new program takes each fd exactly once, by the number
//! written down; whatever it does not take is closed.
//!
//! The memfd holds: the magic line, the number of fds (u32, little
//! endian), each fd (i32), then the payload (the caller's format).

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, SealFlag};
use nix::sys::memfd::{memfd_create, MFdFlags};

use crate::sys;

const MAGIC: &[u8] = b"isola-handover 1\n";
/// More fds than any supervisor can hold (`fs.nr_open` tops out near 2^30,
/// and `isola up` raises its limit to at most 2^20).
const MAX_FDS: usize = 1 << 21;

/// An fd a handover names: its number, and the file it is (device and
/// inode: unique while it is open — but for anonymous inodes, which
/// eventfds, timerfds and epolls share: `unique` false).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Named {
    pub fd: RawFd,
    pub dev: u64,
    pub ino: u64,
    pub unique: bool,
}

impl Named {
    /// `fd` is still this file: the same device and inode, and not an
    /// anonymous inode (those cannot be told apart, so never are).
    #[allow(unsafe_code)]
    pub fn still_open(&self) -> bool {
        let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
        // SAFETY: fstat only writes a whole `stat` into `st`; a number
        // closed since fails with EBADF, one used again names its file.
        if !self.unique || unsafe { libc::fstat(self.fd, st.as_mut_ptr()) } != 0 {
            return false;
        }
        // SAFETY: the fstat above returned 0, so it filled `st`.
        let st = unsafe { st.assume_init() };
        (st.st_dev, st.st_ino) == (self.dev, self.ino)
    }
}

/// A handover being put together: the fds kept so far.
#[derive(Debug, Default)]
pub struct Outgoing {
    fds: Vec<RawFd>,
    /// What each fd is, should its number be reused for another (a
    /// keeper holding copies tells them apart).
    named: Vec<Named>,
    /// Crossing the exec, named to the new program another way (its own
    /// environment variable).
    unlisted: Vec<RawFd>,
    /// Only written down, flags untouched: a payload to check, not to exec
    /// with.
    dry: bool,
}

impl Outgoing {
    /// A handover to exec with.
    pub fn new() -> Outgoing {
        Outgoing::default()
    }

    /// A handover only to show a checking program: no fd crosses.
    pub fn dry() -> Outgoing {
        Outgoing {
            fds: Vec::new(),
            named: Vec::new(),
            unlisted: Vec::new(),
            dry: true,
        }
    }

    /// `fd` crosses the exec: its close-on-exec flag is cleared now, and
    /// its number is returned for the payload to name it by.
    pub fn keep(&mut self, fd: BorrowedFd<'_>) -> Result<RawFd, Errno> {
        let raw = fd.as_raw_fd();
        let st = nix::sys::stat::fstat(fd)?;
        if !self.dry {
            sys::set_cloexec_raw(raw, false)?;
        }
        self.fds.push(raw);
        self.named.push(Named {
            fd: raw,
            dev: st.st_dev,
            ino: st.st_ino,
            // An anonymous inode has no file type.
            unique: st.st_mode & libc::S_IFMT != 0,
        });
        Ok(raw)
    }

    /// `fd` crosses the exec too, but is not listed: the caller names it
    /// to the new program itself.
    pub fn keep_unlisted(&mut self, fd: BorrowedFd<'_>) -> Result<RawFd, Errno> {
        let raw = fd.as_raw_fd();
        if !self.dry {
            sys::set_cloexec_raw(raw, false)?;
            self.unlisted.push(raw);
        }
        Ok(raw)
    }

    /// The fds kept, and `payload`, in a sealed memfd that crosses the
    /// exec too (its number is [`Sealed::fd`]).
    pub fn seal(self, payload: &[u8]) -> Result<Sealed, (Errno, Outgoing)> {
        match write_memfd(&self.fds, payload) {
            Ok(memfd) => Ok(Sealed { memfd, kept: self }),
            Err(e) => Err((e, self)),
        }
    }

    /// Only written down: a copy for a checking program.
    pub fn is_dry(&self) -> bool {
        self.dry
    }

    /// The exec did not happen: every kept fd is close-on-exec again.
    pub fn abandon(self) {
        if self.dry {
            return;
        }
        for fd in self.fds.into_iter().chain(self.unlisted) {
            let _ = sys::set_cloexec_raw(fd, true);
        }
    }
}

fn write_memfd(fds: &[RawFd], payload: &[u8]) -> Result<File, Errno> {
    // Close-on-exec until the exec it is for (`Sealed::cross_exec`): a
    // child started meanwhile (the check) gets a copy as its stdin only.
    let fd = memfd_create(
        c"isola-handover",
        MFdFlags::MFD_ALLOW_SEALING | MFdFlags::MFD_CLOEXEC,
    )?;
    let mut file = File::from(fd);
    let mut head = Vec::with_capacity(MAGIC.len() + 4 + fds.len() * 4);
    head.extend_from_slice(MAGIC);
    let n = u32::try_from(fds.len()).map_err(|_| Errno::E2BIG)?;
    head.extend_from_slice(&n.to_le_bytes());
    for fd in fds {
        head.extend_from_slice(&fd.to_le_bytes());
    }
    let io = |e: std::io::Error| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO));
    file.write_all(&head).map_err(io)?;
    file.write_all(payload).map_err(io)?;
    file.rewind().map_err(io)?;
    let seals = SealFlag::F_SEAL_SEAL
        | SealFlag::F_SEAL_SHRINK
        | SealFlag::F_SEAL_GROW
        | SealFlag::F_SEAL_WRITE;
    fcntl(&file, FcntlArg::F_ADD_SEALS(seals))?;
    Ok(file)
}

/// The sealed handover, ready for the exec.
#[derive(Debug)]
pub struct Sealed {
    memfd: File,
    kept: Outgoing,
}

impl Sealed {
    /// Right before the exec: the memfd crosses it too. Its number, what
    /// the new program is told in its environment.
    pub fn cross_exec(&self) -> Result<RawFd, Errno> {
        let fd = self.memfd.as_raw_fd();
        sys::set_cloexec_raw(fd, false)?;
        Ok(fd)
    }

    /// The memfd, to give a checking child as its stdin.
    pub fn memfd(&self) -> BorrowedFd<'_> {
        self.memfd.as_fd()
    }

    /// The exec did not happen (or was not tried): fds close-on-exec
    /// again, the memfd closed.
    pub fn abandon(self) {
        self.kept.abandon();
    }

    /// A dry handover as a record for a keeper to hold: the memfd, and
    /// the fds it names (untouched: they stay close-on-exec).
    pub fn into_record(self) -> (File, Vec<Named>) {
        let named = self.kept.named.clone();
        self.kept.abandon();
        (self.memfd, named)
    }
}

/// One fd an exec'ing process named in the environment variable `var`,
/// if there is one: the variable is removed, the fd owned (only if it is
/// not close-on-exec, as an inherited fd is) and close-on-exec again.
pub fn receive_fd(var: &str) -> Result<Option<OwnedFd>, String> {
    let Some(value) = std::env::var_os(var) else {
        return Ok(None);
    };
    std::env::remove_var(var);
    let raw: RawFd = value
        .to_str()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("{var}: {value:?} is not an fd number"))?;
    let fd = sys::own_fd_across_exec(raw).map_err(|e| format!("{var}: fd {raw}: {e}"))?;
    sys::set_cloexec_raw(raw, true).map_err(|e| format!("{var}: fd {raw}: {e}"))?;
    Ok(Some(fd))
}

/// What a program got from the one before it.
#[derive(Debug)]
pub struct Incoming {
    pub payload: Vec<u8>,
    fds: HashMap<RawFd, OwnedFd>,
}

impl Incoming {
    /// The fd the old program called `raw`, once.
    pub fn take(&mut self, raw: RawFd) -> Option<OwnedFd> {
        self.fds.remove(&raw)
    }

    /// How many fds nobody took yet (closed when this is dropped).
    pub fn left(&self) -> usize {
        self.fds.len()
    }
}

/// Taken once per process: a second call could own fds the first handed
/// out.
static RECEIVED: AtomicBool = AtomicBool::new(false);

/// The handover named by the environment variable `var`, if there is
/// one: the variable is removed (our children never see it), every fd it
/// lists owned — each once, and only if it is not close-on-exec, as an
/// inherited fd is and none this process opened is — and close-on-exec
/// again. Call it first, before the process closes any fd it did not open.
pub fn receive(var: &str) -> Result<Option<Incoming>, String> {
    let Some(value) = std::env::var_os(var) else {
        return Ok(None);
    };
    std::env::remove_var(var);
    if RECEIVED.swap(true, Ordering::SeqCst) {
        return Err("handover: received twice".into());
    }
    let raw: RawFd = value
        .to_str()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("{var}: {value:?} is not an fd number"))?;
    let memfd = sys::own_fd_across_exec(raw).map_err(|e| format!("{var}: fd {raw}: {e}"))?;
    let (numbers, payload) = read(File::from(memfd))?;
    let mut fds = HashMap::with_capacity(numbers.len());
    for n in numbers {
        if fds.contains_key(&n) || n == raw {
            return Err(format!("handover: fd {n} listed twice"));
        }
        let fd = sys::own_fd_across_exec(n).map_err(|e| format!("handover: fd {n}: {e}"))?;
        sys::set_cloexec_raw(n, true).map_err(|e| format!("handover: fd {n}: {e}"))?;
        fds.insert(n, fd);
    }
    Ok(Some(Incoming { payload, fds }))
}

/// Only the fd numbers a handover memfd names, read from its start
/// without moving its offset (a keeper holds it, and the copy a new
/// program reads shares that offset).
pub fn read_numbers(memfd: BorrowedFd<'_>) -> Result<Vec<RawFd>, String> {
    let at = |buf: &mut [u8], offset: usize| -> Result<(), String> {
        let offset = i64::try_from(offset).map_err(|_| "handover: too big".to_string())?;
        let n =
            nix::sys::uio::pread(memfd, buf, offset).map_err(|e| format!("handover: read: {e}"))?;
        (n == buf.len())
            .then_some(())
            .ok_or_else(|| "handover: cut short".to_string())
    };
    let mut head = vec![0u8; MAGIC.len() + 4];
    at(&mut head, 0)?;
    let count = head
        .strip_prefix(MAGIC)
        .and_then(|c| c.first_chunk::<4>())
        .map(|c| u32::from_le_bytes(*c) as usize)
        .ok_or("handover: not an isola handover (magic)")?;
    if count > MAX_FDS {
        return Err(format!("handover: {count} fds"));
    }
    let mut fds = vec![0u8; count * 4];
    at(&mut fds, head.len())?;
    Ok(fds
        .chunks_exact(4)
        .filter_map(|c| c.try_into().ok().map(RawFd::from_le_bytes))
        .collect())
}

/// The fd numbers and the payload of a handover memfd (a checking child
/// reads only the payload).
pub fn read(mut from: impl Read) -> Result<(Vec<RawFd>, Vec<u8>), String> {
    let mut all = Vec::new();
    from.read_to_end(&mut all)
        .map_err(|e| format!("handover: read: {e}"))?;
    let rest = all
        .strip_prefix(MAGIC)
        .ok_or("handover: not an isola handover (magic)")?;
    let short = || "handover: cut short".to_string();
    let (count, mut rest) = rest.split_first_chunk::<4>().ok_or_else(short)?;
    let count = usize::try_from(u32::from_le_bytes(*count)).map_err(|_| short())?;
    if count > MAX_FDS {
        return Err(format!("handover: {count} fds"));
    }
    let mut fds = Vec::with_capacity(count);
    for _ in 0..count {
        let (fd, r) = rest.split_first_chunk::<4>().ok_or_else(short)?;
        fds.push(RawFd::from_le_bytes(*fd));
        rest = r;
    }
    Ok((fds, rest.to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_handover_reads_back_and_cannot_be_written() {
        let (r, _w) = nix::unistd::pipe().expect("pipe");
        let mut out = Outgoing::new();
        let n = out.keep(r.as_fd()).expect("keep");
        let flags = fcntl(&r, FcntlArg::F_GETFD).expect("getfd");
        assert_eq!(flags & libc::FD_CLOEXEC, 0, "kept fds cross the exec");
        let sealed = out.seal(b"{\"x\":1}").expect("seal");
        let mut f = sealed.memfd.try_clone().expect("dup");
        assert!(f.write_all(b"more").is_err(), "sealed against writes");
        let (fds, payload) = read(&mut f).expect("read");
        assert_eq!(fds, vec![n]);
        assert_eq!(payload, b"{\"x\":1}");
        sealed.abandon();
        let flags = fcntl(&r, FcntlArg::F_GETFD).expect("getfd");
        assert_ne!(
            flags & libc::FD_CLOEXEC,
            0,
            "abandoned: close-on-exec again"
        );
    }

    #[test]
    fn garbage_is_refused_with_a_reason() {
        assert!(read(&b"hello"[..]).unwrap_err().contains("magic"));
        let mut cut = MAGIC.to_vec();
        cut.extend_from_slice(&5u32.to_le_bytes());
        assert!(read(&cut[..]).unwrap_err().contains("cut short"));
    }
}
