//! `isola up` as a systemd `Type=notify` service (`specs/isola@.service`):
//! with `NOTIFY_SOCKET` set, `READY=1` once the whole stack is up (every
//! service running and ready, or exited with 0), `STATUS=` with the counts
//! whenever they change, `STOPPING=1` when the shutdown begins. The socket
//! is non-blocking: a systemd that does not read never stalls the loop.
//! Without `NOTIFY_SOCKET` none of this runs (counting is O(services) per
//! loop turn, which a stack of 10,000 need not pay).

use std::os::fd::{AsRawFd, OwnedFd};

use nix::sys::socket::{sendto, socket, AddressFamily, MsgFlags, SockFlag, SockType, UnixAddr};

use crate::keeper::Channel;
use crate::lifecycle::{Core, State};

pub(crate) struct SdNotify {
    sock: OwnedFd,
    addr: UnixAddr,
    /// Under a keeper, which is the unit's main pid (systemd takes
    /// `NotifyAccess=main` messages from it only): said through it.
    via: Option<Channel>,
    ready_sent: bool,
    stopping_sent: bool,
    last_status: String,
}

/// What the stack's services are doing, as `STATUS=` says it.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    pub total: usize,
    pub up: usize,
    pub failed: Vec<String>,
    pub waiting: usize,
}

impl Counts {
    pub(crate) fn of(core: &Core) -> Counts {
        let mut c = Counts::default();
        for (_, s) in core.services() {
            // An overlap's successor is the same service twice.
            if s.predecessor.is_some() {
                continue;
            }
            c.total += 1;
            let exited_ok = s.last_exit.as_ref().is_some_and(|e| e.code == Some(0));
            match s.phase.state() {
                State::Running if s.health.ready => c.up += 1,
                State::Exited if exited_ok => c.up += 1,
                State::Failed => c.failed.push(s.def.name.clone()),
                _ => c.waiting += 1,
            }
        }
        c
    }

    pub(crate) fn all_up(&self) -> bool {
        self.up == self.total
    }

    pub(crate) fn status(&self) -> String {
        let mut s = format!("{}/{} services up", self.up, self.total);
        if !self.failed.is_empty() {
            s += &format!(", failed: {}", self.failed.join(" "));
        }
        if self.waiting > 0 {
            s += &format!(", {} starting or restarting", self.waiting);
        }
        s
    }
}

impl SdNotify {
    /// From `NOTIFY_SOCKET` (a path, or `@name` in the abstract namespace).
    pub(crate) fn from_env() -> Option<SdNotify> {
        SdNotify::from_env_via(None)
    }

    /// [`SdNotify::from_env`], said through the keeper when there is one.
    pub(crate) fn from_env_via(via: Option<Channel>) -> Option<SdNotify> {
        let path = std::env::var_os("NOTIFY_SOCKET")?;
        let bytes = std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str()).to_vec();
        let addr = match bytes.strip_prefix(b"@") {
            Some(name) => UnixAddr::new_abstract(name).ok()?,
            None => UnixAddr::new(bytes.as_slice()).ok()?,
        };
        let sock = socket(
            AddressFamily::Unix,
            SockType::Datagram,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            None,
        )
        .ok()?;
        Some(SdNotify {
            sock,
            addr,
            via,
            ready_sent: false,
            stopping_sent: false,
            last_status: String::new(),
        })
    }

    pub(crate) fn send(&self, text: &str) {
        if let Some(keeper) = &self.via {
            return keeper.notify(text);
        }
        // A full or absent receiver is its problem, not the stack's.
        let _ = sendto(
            self.sock.as_raw_fd(),
            text.as_bytes(),
            &self.addr,
            MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT,
        );
    }

    /// Right before an upgrade's exec (systemd's `notify-reload` protocol):
    /// the new binary says `READY=1` once it serves the stack. The pid
    /// stays, so the unit's main pid stays valid.
    pub(crate) fn reloading(&self, status: &str) {
        let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
            .map(|t| t.tv_sec() * 1_000_000 + t.tv_nsec() / 1000)
            .unwrap_or(0);
        self.send(&format!(
            "RELOADING=1\nMONOTONIC_USEC={now}\nSTATUS={status}"
        ));
    }

    /// The exec failed: the old binary serves on.
    pub(crate) fn reload_failed(&self) {
        self.send("READY=1\nSTATUS=upgrade failed; the running supervisor goes on");
    }

    /// After each turn of the loop: say what changed.
    pub(crate) fn update(&mut self, core: &Core) {
        if core.shutting_down() {
            if !self.stopping_sent {
                self.stopping_sent = true;
                self.send("STOPPING=1\nSTATUS=stopping");
            }
            return;
        }
        let counts = Counts::of(core);
        let status = counts.status();
        let ready = !self.ready_sent && counts.all_up();
        if ready {
            self.ready_sent = true;
            self.send(&format!("READY=1\nSTATUS={status}"));
        } else if status != self.last_status {
            self.send(&format!("STATUS={status}"));
        }
        self.last_status = status;
    }
}
