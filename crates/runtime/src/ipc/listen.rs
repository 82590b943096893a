//! Socket activation, systemd's protocol (`sd_listen_fds(3)`): listening
//! sockets the host holds are handed to the payload at fds 3, 4, … with
//! `LISTEN_FDS` (how many), `LISTEN_FDNAMES` (their names, `:`-separated)
//! and `LISTEN_PID` (whom they are for).
//!
//! `LISTEN_PID` must be the payload's pid *as the payload sees it*: a
//! library checks `getpid() == LISTEN_PID` and ignores the fds otherwise.
//! Behind an init in a PID namespace that is not 1 (runc and crun set 1
//! and so break it); it is only known once the payload's process exists,
//! so the payload's child writes it into its own environment before the
//! exec ([`PidSlot::fill`]).

use std::cell::Cell;
use std::ffi::CString;
use std::os::fd::{BorrowedFd, RawFd};

use nix::errno::Errno;

/// The first fd of the passed sockets (`SD_LISTEN_FDS_START`).
pub const FIRST_FD: RawFd = 3;

const PID_PREFIX: &[u8] = b"LISTEN_PID=";
/// Room for the prefix, a pid (at most 10 digits) and the NUL.
const PID_ENTRY_LEN: usize = PID_PREFIX.len() + 11;

/// A TCP listener's accept queue: connections the kernel completed that
/// nobody accepted yet, and those it dropped for a full queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AcceptQueue {
    pub queued: u32,
    /// Its backlog (what `listen` was given, capped by `somaxconn`).
    pub backlog: u32,
    /// Since the socket was made (the kernel's per-socket count: SYNs and
    /// completed handshakes dropped because the queue was full).
    pub drops: u32,
}

/// Where `SO_MEMINFO` puts a socket's drops (`SK_MEMINFO_DROPS`).
const MEMINFO_DROPS: usize = 8;

/// The accept queue of TCP listener `fd` (`TCP_INFO` and `SO_MEMINFO`);
/// an error for anything else (a unix or UDP socket).
pub fn accept_queue(fd: BorrowedFd<'_>) -> Result<AcceptQueue, Errno> {
    let info = crate::sys::tcp_info(fd)?;
    // TCP_LISTEN in the kernel's tcp_states.
    if info.tcpi_state != 10 {
        return Err(Errno::EINVAL);
    }
    let mem = crate::sys::socket_meminfo(fd)?;
    Ok(AcceptQueue {
        queued: info.tcpi_unacked,
        backlog: info.tcpi_sacked,
        drops: mem[MEMINFO_DROPS],
    })
}

/// The variables of the protocol, replaced if the spec's `env` sets them.
pub(crate) const VARIABLES: [&str; 3] = ["LISTEN_FDS", "LISTEN_FDNAMES", "LISTEN_PID"];

/// Sockets for the payload: `fds` (the caller's numbers) land at
/// `FIRST_FD..`, named by `names` (one per fd, `:`-separated).
#[derive(Debug, Clone, Copy, Default)]
pub struct Listen<'a> {
    pub fds: &'a [RawFd],
    pub names: &'a str,
}

impl Listen<'_> {
    /// The fd numbers the payload gets them at.
    pub fn targets(&self) -> impl Iterator<Item = RawFd> + '_ {
        (FIRST_FD..).zip(self.fds).map(|(t, _)| t)
    }
}

/// `LISTEN_PID=` and room for the digits, filled in the payload's process
/// itself. Cells: the environment array points into it while the child
/// writes, with no `&mut` to alias.
pub(crate) struct PidSlot([Cell<u8>; PID_ENTRY_LEN]);

impl PidSlot {
    pub(crate) fn new() -> PidSlot {
        let slot = PidSlot(std::array::from_fn(|_| Cell::new(0)));
        for (c, b) in slot.0.iter().zip(PID_PREFIX) {
            c.set(*b);
        }
        slot
    }

    /// For the `envp` array.
    pub(crate) fn as_ptr(&self) -> *const libc::c_char {
        self.0.as_ptr().cast()
    }

    /// Write `pid` after the prefix, NUL-terminated. No allocation: it
    /// runs in a vfork child.
    pub(crate) fn fill(&self, pid: u32) {
        let mut digits = [0u8; 10];
        let mut n = pid;
        let mut len = 0;
        loop {
            digits[len] = b'0' + u8::try_from(n % 10).unwrap_or(0);
            len += 1;
            n /= 10;
            if n == 0 || len == digits.len() {
                break;
            }
        }
        let out = &self.0[PID_PREFIX.len()..];
        for (k, c) in out.iter().take(len).enumerate() {
            c.set(digits[len - 1 - k]);
        }
        out[len].set(0);
    }
}

impl Default for PidSlot {
    fn default() -> Self {
        PidSlot::new()
    }
}

/// `LISTEN_FDS=n` and `LISTEN_FDNAMES=…` (`None` on a NUL in a name, which
/// the supervisor refuses long before).
pub(crate) fn fixed_env(count: usize, names: &str) -> Option<[CString; 2]> {
    Some([
        CString::new(format!("LISTEN_FDS={count}")).ok()?,
        CString::new(format!("LISTEN_FDNAMES={names}")).ok()?,
    ])
}

/// Is `entry` (`NAME=value`) one of the protocol's variables?
pub(crate) fn is_protocol_variable(entry: &[u8]) -> bool {
    VARIABLES
        .iter()
        .any(|v| entry.len() > v.len() && entry.starts_with(v.as_bytes()) && entry[v.len()] == b'=')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tcp_listeners_accept_queue_and_its_drops() {
        use nix::sys::socket::{self, AddressFamily, Backlog, SockFlag, SockType, SockaddrIn};
        use std::os::fd::{AsFd, AsRawFd};
        let l = socket::socket(
            AddressFamily::Inet,
            SockType::Stream,
            SockFlag::empty(),
            None,
        )
        .unwrap();
        socket::bind(l.as_raw_fd(), &SockaddrIn::new(127, 0, 0, 1, 0)).unwrap();
        socket::listen(&l, Backlog::new(2).unwrap()).unwrap();
        let addr: SockaddrIn = socket::getsockname(l.as_raw_fd()).unwrap();
        let q = accept_queue(l.as_fd()).unwrap();
        assert_eq!((q.queued, q.backlog, q.drops), (0, 2, 0));
        // Nobody accepts: the queue takes backlog + 1, the kernel drops
        // the SYNs of the rest.
        let clients: Vec<_> = (0..6)
            .map(|_| {
                let c = socket::socket(
                    AddressFamily::Inet,
                    SockType::Stream,
                    SockFlag::SOCK_NONBLOCK,
                    None,
                )
                .unwrap();
                let _ = socket::connect(c.as_raw_fd(), &addr);
                c
            })
            .collect();
        std::thread::sleep(std::time::Duration::from_millis(200));
        let q = accept_queue(l.as_fd()).unwrap();
        assert_eq!(q.queued, 3, "{q:?}");
        assert!(q.drops >= 3, "{q:?}");
        drop(clients);
        let u = std::os::unix::net::UnixDatagram::unbound().unwrap();
        assert!(accept_queue(u.as_fd()).is_err());
    }

    fn text(s: &PidSlot) -> String {
        let bytes: Vec<u8> = s.0.iter().map(Cell::get).take_while(|b| *b != 0).collect();
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn pid_slot_holds_the_pid_in_decimal() {
        let s = PidSlot::new();
        assert_eq!(text(&s), "LISTEN_PID=");
        s.fill(2);
        assert_eq!(text(&s), "LISTEN_PID=2");
        s.fill(4_194_304);
        assert_eq!(text(&s), "LISTEN_PID=4194304");
        s.fill(u32::MAX);
        assert_eq!(text(&s), "LISTEN_PID=4294967295");
        s.fill(7);
        assert_eq!(text(&s), "LISTEN_PID=7");
    }

    #[test]
    fn protocol_variables_by_name_only() {
        assert!(is_protocol_variable(b"LISTEN_PID=1"));
        assert!(is_protocol_variable(b"LISTEN_FDS=3"));
        assert!(!is_protocol_variable(b"LISTEN_FDSX=3"));
        assert!(!is_protocol_variable(b"LISTEN_FDS"));
        assert!(!is_protocol_variable(b"PATH=/bin"));
    }

    #[test]
    fn targets_start_at_three() {
        let l = Listen {
            fds: &[10, 11, 12],
            names: "a:b:c",
        };
        assert_eq!(l.targets().collect::<Vec<_>>(), [3, 4, 5]);
    }
}
