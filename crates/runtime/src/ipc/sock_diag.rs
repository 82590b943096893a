//! A unix listener's accept queue, which no `getsockopt` tells (`SIOCINQ`
//! refuses a listener): asked of the kernel over `NETLINK_SOCK_DIAG`
//! by the socket's inode, as `ss -xl` does. For a listener the kernel's
//! `UNIX_DIAG_RQLEN` is the queue (`sk_ack_backlog`) and its backlog
//! (`sk_max_ack_backlog`).
//!
//! Built by hand as bytes, like `net::rtnl`: one fixed request and one
//! attribute to find in the reply (`linux/sock_diag.h`,
//! `linux/unix_diag.h`, native byte order, attributes aligned to 4).

use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};

use nix::errno::Errno;
use nix::sys::socket::{
    recv, send, socket, AddressFamily, MsgFlags, SockFlag, SockProtocol, SockType,
};

use super::listen::AcceptQueue;

/// `SOCK_DIAG_BY_FAMILY`.
const BY_FAMILY: u16 = 20;
const NLM_F_REQUEST: u16 = 1;
const NLMSG_ERROR: u16 = 2;
/// `TCP_LISTEN`: a unix socket's states borrow TCP's numbers.
const LISTEN: u32 = 10;
/// `UDIAG_SHOW_RQLEN` and the attribute it adds.
const SHOW_RQLEN: u32 = 0x10;
const UNIX_DIAG_RQLEN: u16 = 4;
/// `nlmsghdr` (16) + `unix_diag_req` (24).
const REQUEST_LEN: usize = 40;
const REQUEST_LEN_U32: u32 = 40;
/// `AF_UNIX`, as the request's one-byte family.
const FAMILY_UNIX: u8 = 1;
/// `nlmsghdr` (16) + `unix_diag_msg` (16).
const REPLY_FIXED: usize = 32;

/// A `NETLINK_SOCK_DIAG` socket, opened once and asked many times.
#[derive(Debug)]
pub struct UnixDiag {
    fd: OwnedFd,
    seq: u32,
}

impl UnixDiag {
    pub fn open() -> Result<UnixDiag, Errno> {
        let fd = socket(
            AddressFamily::Netlink,
            SockType::Datagram,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkSockDiag,
        )?;
        Ok(UnixDiag { fd, seq: 0 })
    }

    /// The accept queue of unix stream listener `fd` (of this network
    /// namespace). Never waits: the kernel answers an exact query while
    /// the request is sent, so a reply not there yet is an error.
    pub fn accept_queue(&mut self, fd: BorrowedFd<'_>) -> Result<AcceptQueue, Errno> {
        let ino = socket_inode(fd)?;
        self.seq = self.seq.wrapping_add(1);
        send(
            self.fd.as_raw_fd(),
            &request(ino, self.seq),
            MsgFlags::empty(),
        )?;
        let mut buf = [0u8; 512];
        loop {
            let n = recv(self.fd.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT)?;
            if let Some(reply) = parse_reply(&buf[..n.min(buf.len())], self.seq, ino)? {
                return Ok(reply);
            }
        }
    }
}

/// Does this kernel answer for unix sockets (its `unix_diag`)? Asked of a
/// throwaway listener of our own (abstract, never in the filesystem), so
/// it can be known before any socket of a service is touched.
pub fn available() -> Result<(), Errno> {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixListener};
    let name = format!("isola-diag-probe-{}", std::process::id());
    let io = |e: std::io::Error| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO));
    let addr = SocketAddr::from_abstract_name(name.as_bytes()).map_err(io)?;
    let probe = UnixListener::bind_addr(&addr).map_err(io)?;
    UnixDiag::open()?
        .accept_queue(std::os::fd::AsFd::as_fd(&probe))
        .map(drop)
}

/// The inode the kernel knows the socket by (`ss`'s `Inode`).
fn socket_inode(fd: BorrowedFd<'_>) -> Result<u32, Errno> {
    let st = nix::sys::stat::fstat(fd)?;
    u32::try_from(st.st_ino).map_err(|_| Errno::EOVERFLOW)
}

fn request(ino: u32, seq: u32) -> [u8; REQUEST_LEN] {
    let mut b = [0u8; REQUEST_LEN];
    b[0..4].copy_from_slice(&REQUEST_LEN_U32.to_ne_bytes());
    b[4..6].copy_from_slice(&BY_FAMILY.to_ne_bytes());
    b[6..8].copy_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    b[8..12].copy_from_slice(&seq.to_ne_bytes());
    // unix_diag_req: family, protocol, pad, states, ino, show, cookie.
    b[16] = FAMILY_UNIX;
    b[20..24].copy_from_slice(&(1u32 << LISTEN).to_ne_bytes());
    b[24..28].copy_from_slice(&ino.to_ne_bytes());
    b[28..32].copy_from_slice(&SHOW_RQLEN.to_ne_bytes());
    // No cookie to check (INET_DIAG_NOCOOKIE).
    b[32..40].fill(0xff);
    b
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

/// The queue in the kernel's answer to request `seq`; `None` for a
/// datagram that is not that answer (a stale one).
fn parse_reply(b: &[u8], seq: u32, ino: u32) -> Result<Option<AcceptQueue>, Errno> {
    let bad = Errno::EBADMSG;
    let len = u32_at(b, 0).ok_or(bad)? as usize;
    let kind = u16_at(b, 4).ok_or(bad)?;
    if u32_at(b, 8) != Some(seq) {
        return Ok(None);
    }
    let b = b.get(..len).ok_or(bad)?;
    if kind == NLMSG_ERROR {
        let code = i32::from_ne_bytes(b.get(16..20).ok_or(bad)?.try_into().map_err(|_| bad)?);
        return Err(Errno::from_raw(-code));
    }
    if kind != BY_FAMILY || u32_at(b, 20) != Some(ino) {
        return Err(bad);
    }
    // An exact query answers for a socket in any state: only a listener
    // has an accept queue (another's RQLEN is its receive queue).
    if b.get(18).map(|s| u32::from(*s)) != Some(LISTEN) {
        return Err(Errno::EINVAL);
    }
    let mut at = REPLY_FIXED;
    while let (Some(alen), Some(atype)) = (u16_at(b, at), u16_at(b, at + 2)) {
        let alen = usize::from(alen);
        if alen < 4 {
            return Err(bad);
        }
        if atype == UNIX_DIAG_RQLEN {
            return Ok(Some(AcceptQueue {
                queued: u32_at(b, at + 4).ok_or(bad)?,
                backlog: u32_at(b, at + 8).ok_or(bad)?,
                drops: 0,
            }));
        }
        at += (alen + 3) & !3;
    }
    Err(bad)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::os::unix::net::{UnixListener, UnixStream};

    #[test]
    fn a_unix_listeners_queue_counts_connections_nobody_accepted() {
        let dir = std::env::temp_dir().join(format!("isola-diag-{}", std::process::id()));
        let _ = std::fs::remove_file(&dir);
        let l = UnixListener::bind(&dir).unwrap();
        let mut diag = UnixDiag::open().unwrap();
        let q = diag.accept_queue(l.as_fd()).unwrap();
        assert_eq!(q.queued, 0, "{q:?}");
        assert!(q.backlog >= 128, "{q:?}");
        let clients: Vec<_> = (0..3).map(|_| UnixStream::connect(&dir).unwrap()).collect();
        assert_eq!(diag.accept_queue(l.as_fd()).unwrap().queued, 3);
        let (_taken, _) = l.accept().unwrap();
        assert_eq!(diag.accept_queue(l.as_fd()).unwrap().queued, 2);
        drop(clients);
        let _ = std::fs::remove_file(&dir);
        // Not a unix listener: the kernel knows no such socket.
        let s = UnixStream::pair().unwrap().0;
        assert!(diag.accept_queue(s.as_fd()).is_err());
    }

    #[test]
    fn this_kernel_answers_for_unix_sockets() {
        assert_eq!(available(), Ok(()));
    }

    #[test]
    fn a_reply_for_another_request_is_skipped_and_an_error_is_told() {
        let mut b = vec![0u8; 20];
        b[0..4].copy_from_slice(&20u32.to_ne_bytes());
        b[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
        b[8..12].copy_from_slice(&7u32.to_ne_bytes());
        b[16..20].copy_from_slice(&(-2i32).to_ne_bytes());
        assert_eq!(parse_reply(&b, 8, 1).unwrap(), None);
        assert_eq!(parse_reply(&b, 7, 1).unwrap_err(), Errno::ENOENT);
        assert_eq!(parse_reply(&b[..3], 7, 1).unwrap_err(), Errno::EBADMSG);
    }
}
