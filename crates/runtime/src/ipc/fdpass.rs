//! One datagram with file descriptors over a Unix socket (SCM_RIGHTS): how
//! a spawner hands sandboxes to the supervisor, and how services send
//! sd_notify messages (with their credentials).

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::sys::socket::{
    recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags, UnixAddr, UnixCredentials,
};

use crate::sys;

pub fn send(sock: &OwnedFd, bytes: &[u8], fds: &[RawFd]) -> Result<(), Errno> {
    send_with(sock, bytes, fds, MsgFlags::empty())
}

/// [`send`] with `flags` besides MSG_NOSIGNAL (MSG_DONTWAIT: EAGAIN
/// rather than a wait for room).
pub fn send_with(
    sock: &OwnedFd,
    bytes: &[u8],
    fds: &[RawFd],
    flags: MsgFlags,
) -> Result<(), Errno> {
    let rights = [ControlMessage::ScmRights(fds)];
    let cmsg: &[ControlMessage] = if fds.is_empty() { &[] } else { &rights };
    loop {
        match sendmsg::<UnixAddr>(
            sock.as_raw_fd(),
            &[IoSlice::new(bytes)],
            cmsg,
            MsgFlags::MSG_NOSIGNAL | flags,
            None,
        ) {
            Err(Errno::EINTR) => continue,
            r => return r.map(drop),
        }
    }
}

/// The next datagram (empty at EOF) and the fds that came with it, owned
/// and close-on-exec.
pub fn receive(sock: &OwnedFd) -> Result<(Vec<u8>, Vec<OwnedFd>), Errno> {
    let d = recv(sock.as_fd(), SPAWNER_DATAGRAM, MsgFlags::empty())?;
    Ok((d.bytes, d.fds))
}

/// The longest spawner message.
pub const SPAWNER_DATAGRAM: usize = 4096;

/// Most fds a credentialed datagram may bring (more are discarded by the
/// kernel, which closes them).
pub(crate) const MAX_PASSED_FDS: usize = 16;

/// A datagram from a socket with SO_PASSCRED.
#[derive(Debug)]
pub struct Datagram {
    pub bytes: Vec<u8>,
    /// The sender's pid, in our PID namespace.
    pub pid: Option<i32>,
    /// fds sent along, owned (dropping them closes them).
    pub fds: Vec<OwnedFd>,
}

/// The next datagram of `sock` without waiting (EAGAIN when there is none),
/// at most `max_len` bytes of it.
pub fn receive_credentialed(sock: BorrowedFd<'_>, max_len: usize) -> Result<Datagram, Errno> {
    receive_with(sock, max_len, MsgFlags::MSG_DONTWAIT)
}

/// The next datagram of `sock` (at most `max_len` bytes of it) with the
/// fds that came with it, as `flags` say (`MSG_DONTWAIT` or none).
pub fn receive_with(
    sock: BorrowedFd<'_>,
    max_len: usize,
    flags: MsgFlags,
) -> Result<Datagram, Errno> {
    recv(sock, max_len, flags)
}

fn recv(sock: BorrowedFd<'_>, max_len: usize, flags: MsgFlags) -> Result<Datagram, Errno> {
    let mut buf = vec![0u8; max_len];
    let mut space = nix::cmsg_space!(UnixCredentials, [RawFd; MAX_PASSED_FDS]);
    loop {
        let mut iov = [IoSliceMut::new(&mut buf)];
        let r = match recvmsg::<UnixAddr>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC | flags,
        ) {
            Err(Errno::EINTR) => continue,
            r => r?,
        };
        let mut fds = Vec::new();
        let mut pid = None;
        for c in r.cmsgs()? {
            match c {
                ControlMessageOwned::ScmRights(raw) => {
                    fds.extend(raw.into_iter().map(sys::adopt_received_fd));
                }
                ControlMessageOwned::ScmCredentials(cred) => pid = Some(cred.pid()),
                _ => {}
            }
        }
        let n = r.bytes;
        buf.truncate(n);
        return Ok(Datagram {
            bytes: buf,
            pid,
            fds,
        });
    }
}
