//! The parent ↔ init protocol over a SOCK_SEQPACKET socketpair (one message
//! per datagram, EOF when the other side dies).
//!
//! parent → init: `G` (id maps written, go on).
//! init → parent: `C` (set up, waiting at the start gate: OCI `create`),
//! `S` (payload exec'd), `E step\0message` (setup failed),
//! `X errno\0command` (exec failed). After `S` the init closes its end.

use std::os::fd::{AsRawFd, OwnedFd};

use nix::errno::Errno;
use nix::sys::socket::{recv, send, socketpair, AddressFamily, MsgFlags, SockFlag, SockType};

pub(crate) fn pair() -> Result<(OwnedFd, OwnedFd), Errno> {
    socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Msg {
    Go,
    /// The init's network namespace exists; it waits for `Go`.
    NetReady,
    Created,
    Started,
    SetupFailed {
        step: String,
        message: String,
    },
    ExecFailed {
        errno: i32,
        command: String,
    },
    /// The container's state for in-container hooks (parent → init,
    /// after `Go`, when the plan has such hooks).
    State {
        json: String,
    },
}

pub(crate) fn write(fd: &OwnedFd, m: &Msg) -> Result<(), Errno> {
    let bytes = match m {
        Msg::Go => b"G".to_vec(),
        Msg::Created => b"C".to_vec(),
        Msg::NetReady => b"N".to_vec(),
        Msg::Started => b"S".to_vec(),
        Msg::SetupFailed { step, message } => format!("E{step}\0{message}").into_bytes(),
        Msg::ExecFailed { errno, command } => format!("X{errno}\0{command}").into_bytes(),
        Msg::State { json } => format!("T{json}").into_bytes(),
    };
    loop {
        match send(fd.as_raw_fd(), &bytes, MsgFlags::MSG_NOSIGNAL) {
            Err(Errno::EINTR) => continue,
            r => return r.map(drop),
        }
    }
}

/// `Ok(None)` on EOF: the other side is gone.
pub(crate) fn read(fd: &OwnedFd) -> Result<Option<Msg>, Errno> {
    let mut buf = [0u8; 4096];
    let n = loop {
        match recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty()) {
            Err(Errno::EINTR) => continue,
            r => break r?,
        }
    };
    if n == 0 {
        return Ok(None);
    }
    let text = String::from_utf8_lossy(&buf[1..n]).into_owned();
    let (a, b) = text.split_once('\0').unwrap_or((text.as_str(), ""));
    Ok(Some(match buf[0] {
        b'G' => Msg::Go,
        b'N' => Msg::NetReady,
        b'C' => Msg::Created,
        b'S' => Msg::Started,
        b'E' => Msg::SetupFailed {
            step: a.to_string(),
            message: b.to_string(),
        },
        b'X' => Msg::ExecFailed {
            errno: a.parse().unwrap_or(0),
            command: b.to_string(),
        },
        b'T' => Msg::State {
            json: String::from_utf8_lossy(&buf[1..n]).into_owned(),
        },
        _ => return Err(Errno::EPROTO),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let (a, b) = pair().unwrap();
        for m in [
            Msg::Go,
            Msg::Created,
            Msg::Started,
            Msg::SetupFailed {
                step: "mount".into(),
                message: "proc on /proc: EPERM".into(),
            },
            Msg::ExecFailed {
                errno: 2,
                command: "nope".into(),
            },
            Msg::State {
                json: r#"{"id":"c","pid":7}"#.into(),
            },
        ] {
            write(&a, &m).unwrap();
            assert_eq!(read(&b).unwrap(), Some(m));
        }
        drop(a);
        assert_eq!(read(&b).unwrap(), None);
    }
}
