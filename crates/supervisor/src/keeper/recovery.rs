//! The keeper's answer to its supervisor's death: the stack ends (it said
//! goodbye, or cannot be taken over), or a new supervisor takes over from
//! the last snapshot, as an upgrade's new binary does.

use std::ffi::CString;
use std::io::Seek;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::time::{Duration, Instant};

use isola_runtime::{exit, ExitStatus};
use nix::sys::signal::kill;
use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};

use super::process::{say, wait_for, Keeper};
use super::{KEEPER_ENV, RECOVERED_ENV};
use crate::upgrade::snapshot::HANDOVER_ENV;

/// A supervisor that keeps dying is not replaced forever: the stack ends
/// at the fifth death within [`CRASH_WINDOW`].
const MAX_CRASHES: usize = 5;
const CRASH_WINDOW: Duration = Duration::from_secs(60);

impl Keeper {
    /// The supervisor's socket closed: it ended. Either the stack did (it
    /// said goodbye), or a new supervisor takes over from its last
    /// snapshot. The exit code when the stack ended.
    pub(super) fn supervisor_gone(&mut self) -> Option<i32> {
        let status = wait_for(self.supervisor);
        if let Some(code) = self.bye {
            return Some(code);
        }
        let how = match status {
            ExitStatus::Exited(c) => format!("exited with {c}"),
            ExitStatus::Signaled(s) => format!("was killed by signal {s}"),
        };
        let now = Instant::now();
        self.crashes
            .retain(|t| now.duration_since(*t) < CRASH_WINDOW);
        self.crashes.push(now);
        let why = if self.snapshot.is_none() {
            "with no snapshot of the stack to take over from".to_string()
        } else if self.crashes.len() >= MAX_CRASHES {
            format!("({MAX_CRASHES} times within {}s)", CRASH_WINDOW.as_secs())
        } else {
            match self.recover() {
                Ok(()) => {
                    say(&format!(
                        "the supervisor {how}; a new one (pid {}) takes over the stack",
                        self.supervisor
                    ));
                    if let Some(sig) = self.stop {
                        let _ = kill(self.supervisor, sig);
                    }
                    return None;
                }
                Err(e) => format!("and a new one could not start: {e}"),
            }
        };
        say(&format!("the supervisor {how} {why}: the stack ends"));
        Some(match status.code() {
            0 => i32::from(exit::FAILURE),
            c => c,
        })
    }

    /// Start a new supervisor on the last snapshot: the held fds at their
    /// numbers, the memfd and a new socket to us above them.
    fn recover(&mut self) -> Result<(), String> {
        // What the dead one staged is not the new one's: a copy at a
        // number the snapshot names would replace the right file.
        self.drop_staged();
        let snapshot = self.snapshot.as_mut().ok_or("no snapshot")?;
        // The last supervisor read it: its offset is shared with ours.
        snapshot.rewind().map_err(|e| format!("snapshot: {e}"))?;
        let (ours, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .map_err(|e| format!("socketpair: {e}"))?;
        let mut moves: Vec<(RawFd, RawFd)> = self
            .held
            .iter()
            .map(|(n, fd)| (fd.as_raw_fd(), *n))
            .collect();
        // The memfd, our socket and the binary go to the lowest numbers
        // no held fd goes to (not above them all: the supervisor's may
        // reach its fd limit).
        let mut spare = (3..).filter(|n| !self.held.contains_key(n));
        let (Some(memfd_at), Some(link_at), Some(exe_at)) =
            (spare.next(), spare.next(), spare.next())
        else {
            return Err("no fd number left".into());
        };
        moves.push((snapshot.as_raw_fd(), memfd_at));
        moves.push((theirs.as_raw_fd(), link_at));
        let (argv, env) = command_line(memfd_at, link_at)?;
        let exe = self
            .exe
            .as_ref()
            .ok_or("the supervisor never named its binary")?;
        let pid = isola_runtime::spawn_with_fds_at((exe.as_raw_fd(), exe_at), &argv, &env, &moves)
            .map_err(|e| format!("fork: {e}"))?;
        self.supervisor = pid;
        self.link = ours;
        self.told = None;
        Ok(())
    }
}

/// Our own arguments (`isola up …`, as the first supervisor had them), and
/// our environment with the handover's memfd and our socket named.
fn command_line(memfd: RawFd, link: RawFd) -> Result<(Vec<CString>, Vec<CString>), String> {
    let c = |b: Vec<u8>| CString::new(b).map_err(|_| "a NUL in our arguments".to_string());
    let argv = std::env::args_os()
        .map(|a| c(a.into_vec()))
        .collect::<Result<Vec<_>, _>>()?;
    let ours = [HANDOVER_ENV, KEEPER_ENV, RECOVERED_ENV];
    let mut env = Vec::new();
    for (k, v) in std::env::vars_os() {
        if ours.iter().any(|o| k.as_bytes() == o.as_bytes()) {
            continue;
        }
        let mut kv = k.into_vec();
        kv.push(b'=');
        kv.extend_from_slice(v.as_bytes());
        env.push(c(kv)?);
    }
    env.push(c(format!("{HANDOVER_ENV}={memfd}").into_bytes())?);
    env.push(c(format!("{KEEPER_ENV}={link}").into_bytes())?);
    env.push(c(format!("{RECOVERED_ENV}=1").into_bytes())?);
    Ok((argv, env))
}
