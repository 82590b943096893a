//! The keeper's own loop (see [`crate::keeper`]): a signalfd and the
//! supervisor's socket, nothing else. It forwards the signals a user or
//! systemd sends it, tells the supervisor each exit of its children
//! before reaping it, holds what the supervisor hands it, and starts a
//! new supervisor when the one it had died.

use std::collections::HashMap;
use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::time::{Duration, Instant};

use isola_runtime::{exit, fdpass, ExitStatus};
use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
use nix::sys::wait::{waitid, Id, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use super::{numbers, KEEPER_ENV, RECOVERED_ENV};
use crate::shell::under_systemd::SdNotify;
use crate::upgrade::snapshot::HANDOVER_ENV;

/// A supervisor that keeps dying is not restarted forever: at most this
/// many new ones within [`CRASH_WINDOW`].
const MAX_CRASHES: usize = 5;
const CRASH_WINDOW: Duration = Duration::from_secs(60);
/// The signals the supervisor acts on; a user's (or systemd's) go to it.
const FORWARDED: [Signal; 3] = [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP];
/// `si_code` of a signal the kernel sent (a terminal's ^C reaches the
/// supervisor in our process group itself).
const SI_KERNEL: i32 = 0x80;

struct Keeper {
    link: OwnedFd,
    supervisor: Pid,
    signals: SignalFd,
    /// Copies of the fds the last snapshot names, by their number in the
    /// supervisor.
    held: HashMap<RawFd, OwnedFd>,
    snapshot: Option<OwnedFd>,
    /// The binary the supervisor runs (O_PATH).
    exe: Option<OwnedFd>,
    /// An exit told, not yet acknowledged (so not reaped).
    told: Option<Pid>,
    /// The supervisor said the stack ended, with this code.
    bye: Option<i32>,
    /// When each new supervisor was started (within the window).
    crashes: Vec<Instant>,
    notify: Option<SdNotify>,
}

/// Keep the stack whose supervisor is `supervisor`, on `link`; returns
/// the exit code for `isola up` once the stack ended.
pub fn keep(link: OwnedFd, supervisor: Pid) -> i32 {
    crate::host::raise_own_fd_limit();
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGCHLD);
    FORWARDED.iter().for_each(|s| mask.add(*s));
    let signals = mask
        .thread_block()
        .and_then(|()| SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK))
        .and_then(|s| nix::sys::prctl::set_child_subreaper(true).map(|()| s));
    let signals = match signals {
        Ok(s) => s,
        Err(e) => {
            eprintln!("isola: keeper: {e}; the stack ends with its supervisor");
            return wait_for(supervisor).code();
        }
    };
    let mut k = Keeper {
        link,
        supervisor,
        signals,
        held: HashMap::new(),
        snapshot: None,
        // Ours, until the supervisor names its own (after an upgrade, a
        // newer one).
        exe: nix::fcntl::open(
            "/proc/self/exe",
            nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .ok(),
        told: None,
        bye: None,
        crashes: Vec::new(),
        notify: SdNotify::from_env(),
    };
    k.run()
}

/// Block until `pid`, our child, has ended; its status.
fn wait_for(pid: Pid) -> ExitStatus {
    loop {
        match waitid(Id::Pid(pid), WaitPidFlag::WEXITED | WaitPidFlag::__WALL) {
            Ok(ws) => {
                if let Some(st) = ExitStatus::from_wait(ws) {
                    return st;
                }
            }
            Err(Errno::EINTR) => {}
            Err(_) => return ExitStatus::Exited(i32::from(exit::FAILURE)),
        }
    }
}

impl Keeper {
    fn run(&mut self) -> i32 {
        loop {
            let (signalled, spoken) = self.wait();
            if spoken {
                if let Some(code) = self.on_link() {
                    return code;
                }
            }
            if signalled {
                self.on_signals();
            }
            self.tell_next_exit();
        }
    }

    fn wait(&self) -> (bool, bool) {
        let mut fds = [
            PollFd::new(self.signals.as_fd(), PollFlags::POLLIN),
            PollFd::new(self.link.as_fd(), PollFlags::POLLIN),
        ];
        if poll(&mut fds, PollTimeout::NONE).is_err() {
            return (false, false);
        }
        let ready = |f: &PollFd| f.revents().is_some_and(|r| !r.is_empty());
        (ready(&fds[0]), ready(&fds[1]))
    }

    fn on_signals(&mut self) {
        while let Ok(Some(info)) = self.signals.read_signal() {
            let Ok(sig) = Signal::try_from(i32::try_from(info.ssi_signo).unwrap_or(0)) else {
                continue;
            };
            if FORWARDED.contains(&sig) && info.ssi_code != SI_KERNEL {
                let _ = kill(self.supervisor, sig);
            }
        }
    }

    /// Every message waiting; the exit code when the stack ended.
    fn on_link(&mut self) -> Option<i32> {
        loop {
            let d = match fdpass::receive_credentialed(self.link.as_fd(), fdpass::SPAWNER_DATAGRAM)
            {
                Ok(d) => d,
                Err(Errno::EAGAIN) => return None,
                // A supervisor that ended with an exit we told unread
                // resets the socket; its goodbye may still be queued.
                Err(Errno::EINTR | Errno::ECONNRESET) => continue,
                Err(_) => return self.supervisor_gone(),
            };
            let Some((&kind, body)) = d.bytes.split_first() else {
                return self.supervisor_gone();
            };
            self.on_message(kind, body, d.fds);
        }
    }

    fn on_message(&mut self, kind: u8, body: &[u8], fds: Vec<OwnedFd>) {
        match kind {
            b'H' => {
                for (n, fd) in numbers(body).zip(fds) {
                    self.held.insert(n, fd);
                }
            }
            b'D' => numbers(body).for_each(|n| drop(self.held.remove(&n))),
            b'S' => self.snapshot = fds.into_iter().next().or(self.snapshot.take()),
            b'E' => self.exe = fds.into_iter().next().or(self.exe.take()),
            b'A' => {
                let acked = numbers(body).next().map(Pid::from_raw);
                if let Some(pid) = self.told.filter(|t| Some(*t) == acked) {
                    self.told = None;
                    let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::__WALL;
                    let _ = waitid(Id::Pid(pid), flags);
                }
            }
            b'N' => {
                if let Some(n) = &self.notify {
                    n.send(&String::from_utf8_lossy(body));
                }
            }
            b'B' => self.bye = numbers(body).next(),
            _ => {}
        }
    }

    /// The next exited child, told and left unreaped until acknowledged.
    /// The supervisor's own end comes by its socket closing.
    fn tell_next_exit(&mut self) {
        if self.told.is_some() {
            return;
        }
        let flags = WaitPidFlag::WEXITED
            | WaitPidFlag::WNOHANG
            | WaitPidFlag::WNOWAIT
            | WaitPidFlag::__WALL;
        let (pid, status) = match waitid(Id::All, flags) {
            Ok(ws @ (WaitStatus::Exited(..) | WaitStatus::Signaled(..))) => match ws.pid() {
                Some(pid) => (pid, ExitStatus::from_wait(ws)),
                None => return,
            },
            _ => return,
        };
        if pid == self.supervisor {
            return;
        }
        let (code, how) = match status {
            Some(ExitStatus::Signaled(s)) => (s, 1u8),
            Some(ExitStatus::Exited(c)) => (c, 0),
            None => return,
        };
        let mut msg = vec![b'X'];
        msg.extend_from_slice(&pid.as_raw().to_le_bytes());
        msg.extend_from_slice(&code.to_le_bytes());
        msg.push(how);
        if fdpass::send(&self.link, &msg, &[]).is_ok() {
            self.told = Some(pid);
        }
    }

    /// The supervisor's socket closed: it ended. Either the stack did
    /// (it said goodbye), or a new supervisor takes over from its last
    /// snapshot. The exit code when the stack ended.
    fn supervisor_gone(&mut self) -> Option<i32> {
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
        let why = if self.snapshot.is_none() {
            "before it had the stack at rest once".to_string()
        } else if self.crashes.len() >= MAX_CRASHES {
            format!("{MAX_CRASHES} times within {}s", CRASH_WINDOW.as_secs())
        } else {
            self.crashes.push(now);
            match self.recover() {
                Ok(()) => {
                    eprintln!(
                        "isola: the supervisor {how}; a new one (pid {}) takes over the stack",
                        self.supervisor
                    );
                    return None;
                }
                Err(e) => format!("and a new one could not start: {e}"),
            }
        };
        eprintln!("isola: the supervisor {how} {why}: the stack ends");
        Some(match status.code() {
            0 => i32::from(exit::FAILURE),
            c => c,
        })
    }

    /// Start a new supervisor on the last snapshot: the held fds at their
    /// numbers, the memfd and a new socket to us above them.
    fn recover(&mut self) -> Result<(), String> {
        let snapshot = self.snapshot.as_ref().ok_or("no snapshot")?;
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
        let top = moves
            .iter()
            .flat_map(|(a, b)| [*a, *b])
            .chain([snapshot.as_raw_fd(), theirs.as_raw_fd()])
            .chain(self.exe.as_ref().map(AsRawFd::as_raw_fd))
            .max()
            .unwrap_or(2);
        let (memfd_at, link_at) = (top + 1, top + 2);
        moves.push((snapshot.as_raw_fd(), memfd_at));
        moves.push((theirs.as_raw_fd(), link_at));
        let (argv, env) = command_line(memfd_at, link_at)?;
        let exe = match &self.exe {
            Some(fd) => fd.as_fd(),
            None => return Err("the supervisor never named its binary".into()),
        };
        let pid = isola_runtime::spawn_with_fds_at(exe, &argv, &env, &moves, top + 3)
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
