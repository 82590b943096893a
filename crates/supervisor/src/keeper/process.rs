//! The keeper's own loop (see [`crate::keeper`]): a signalfd and the
//! supervisor's socket, nothing else. It forwards the signals a user or
//! systemd sends it, tells the supervisor each exit of its children
//! before reaping it, holds what the supervisor hands it, and starts a
//! new supervisor when the one it had died ([`super::recovery`]).

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd, RawFd};
use std::time::Instant;

use isola_runtime::{exit, fdpass, ExitStatus};
use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitid, Id, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use super::numbers;
use crate::shell::under_systemd::SdNotify;

/// The signals the supervisor acts on; a user's (or systemd's) go to it.
const FORWARDED: [Signal; 3] = [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP];
/// `si_code` of a signal the kernel sent (a terminal's ^C reaches the
/// supervisor in our process group itself).
const SI_KERNEL: i32 = 0x80;

pub(super) struct Keeper {
    pub(super) link: OwnedFd,
    pub(super) supervisor: Pid,
    signals: SignalFd,
    /// Copies of the fds the last snapshot names, by their number in the
    /// supervisor.
    pub(super) held: HashMap<RawFd, OwnedFd>,
    /// Copies sent for the snapshot to come (held once it comes: a
    /// supervisor killed between the two leaves the last one whole).
    staged: HashMap<RawFd, OwnedFd>,
    pub(super) snapshot: Option<File>,
    /// The binary the supervisor runs (O_PATH).
    pub(super) exe: Option<OwnedFd>,
    /// An exit told, not yet acknowledged (so not reaped).
    pub(super) told: Option<Pid>,
    /// The supervisor said the stack ended, with this code.
    pub(super) bye: Option<i32>,
    /// When each supervisor died (within the window).
    pub(super) crashes: Vec<Instant>,
    /// A stop was asked (SIGTERM, SIGINT): a new supervisor is asked too.
    pub(super) stop: Option<Signal>,
    notify: Option<SdNotify>,
}

/// The signals `isola up` takes (its supervisor's, SIGPIPE): blocked in
/// both from before the fork (the keeper reads them from a signalfd).
pub fn signals() -> SigSet {
    let mut mask = isola_runtime::init::signal_set();
    mask.add(Signal::SIGPIPE);
    mask
}

/// Keep the stack whose supervisor is `supervisor`, on `link`; returns
/// the exit code for `isola up` once the stack ended. The caller blocked
/// [`signals`].
pub fn keep(link: OwnedFd, supervisor: Pid) -> i32 {
    crate::host::adjust_keeper();
    let setup = SignalFd::with_flags(&signals(), SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
        .and_then(|s| nix::sys::prctl::set_child_subreaper(true).map(|()| s));
    let signals = match setup {
        Ok(s) => s,
        Err(e) => {
            say(&format!("keeper: {e}; the stack cannot be kept"));
            // Our socket closed: the supervisor stops the stack.
            drop(link);
            return wait_for(supervisor).code();
        }
    };
    let mut k = Keeper {
        link,
        supervisor,
        signals,
        held: HashMap::new(),
        staged: HashMap::new(),
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
        stop: None,
        notify: SdNotify::from_env(),
    };
    k.run()
}

/// Whether two fds are the same open file's or file's (device and inode;
/// an anonymous inode never counts as the same).
fn same_file(a: &OwnedFd, b: &OwnedFd) -> bool {
    let id = |fd: &OwnedFd| {
        nix::sys::stat::fstat(fd)
            .ok()
            .filter(|st| st.st_mode & libc::S_IFMT != 0)
            .map(|st| (st.st_dev, st.st_ino))
    };
    id(a).is_some() && id(a) == id(b)
}

/// A line on our stderr; a stderr that is gone costs nothing (a panic
/// here would take every service).
pub(super) fn say(line: &str) {
    let _ = writeln!(std::io::stderr(), "isola: {line}");
}

/// Block until `pid`, our child, has ended; its status.
pub(super) fn wait_for(pid: Pid) -> ExitStatus {
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

    /// Forward what a user or systemd sent (not what the kernel sent the
    /// whole process group); drop the rest.
    fn on_signals(&mut self) {
        while let Ok(Some(info)) = self.signals.read_signal() {
            let Ok(sig) = Signal::try_from(i32::try_from(info.ssi_signo).unwrap_or(0)) else {
                continue;
            };
            if FORWARDED.contains(&sig) && info.ssi_code != SI_KERNEL {
                if sig != Signal::SIGHUP {
                    self.stop = Some(sig);
                }
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
                // resets the socket; its goodbye may still be queued. A
                // message whose fds did not fit us is lost, not the link.
                Err(Errno::EINTR | Errno::ECONNRESET | Errno::ENOBUFS | Errno::EMFILE) => continue,
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
                    // A copy of a file held already at that number (a new
                    // supervisor sends all again) is not kept twice: the
                    // keeper's fds stay within what one set needs.
                    // A copy staged at that number before (for a snapshot
                    // given up) is older than this word and goes.
                    if self.held.get(&n).is_some_and(|h| same_file(h, &fd)) {
                        self.staged.remove(&n);
                    } else {
                        self.staged.insert(n, fd);
                    }
                }
            }
            b'S' => {
                if let Some(memfd) = fds.into_iter().next() {
                    self.take_snapshot(File::from(memfd));
                }
            }
            b'F' => {
                self.held.clear();
                self.staged.clear();
                self.snapshot = None;
                let _ = fdpass::send(&self.link, b"f", &[]);
            }
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

    /// Copies staged for a snapshot that never came: a supervisor that
    /// died before its `S` (the next one sends its own).
    pub(super) fn drop_staged(&mut self) {
        self.staged.clear();
    }

    /// A new snapshot: the fds it names are held (the ones just sent, or
    /// the copies already held at those numbers), every other let go.
    /// One that names an fd we have no copy of (a message whose fds did
    /// not fit us) is refused, the last one kept whole, and the supervisor
    /// told (`r`: it sends every copy again).
    fn take_snapshot(&mut self, memfd: File) {
        let mut staged = std::mem::take(&mut self.staged);
        let named = isola_runtime::handover::read_numbers(memfd.as_fd());
        let whole = named.as_ref().is_ok_and(|named| {
            named
                .iter()
                .all(|n| staged.contains_key(n) || self.held.contains_key(n))
        });
        let (true, Ok(named)) = (whole, named) else {
            let _ = fdpass::send(&self.link, b"r", &[]);
            return;
        };
        let mut held = HashMap::with_capacity(named.len());
        for n in named {
            if let Some(fd) = staged.remove(&n).or_else(|| self.held.remove(&n)) {
                held.insert(n, fd);
            }
        }
        self.held = held;
        self.snapshot = Some(memfd);
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
}
