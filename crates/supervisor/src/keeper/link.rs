//! The supervisor's side of its keeper (see [`crate::keeper`]): the
//! socket, the exits it tells, and what the keeper holds of ours.

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use isola_runtime::handover::Named;
use isola_runtime::{fdpass, ExitStatus};
use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::MsgFlags;
use nix::unistd::Pid;

use super::{le_i32, FDS_PER_MESSAGE, KEEPER_ENV, RECOVERED_ENV};

/// Snapshots are at least this far apart…
const MIN_INTERVAL: Duration = Duration::from_millis(250);
/// …and at least this many times what the last one took, so keeping a
/// stack of 10,000 services costs the loop at most a few percent.
const COST_FACTOR: u32 = 20;

/// The socket to the keeper, as `isola up` hands it to the supervisor.
#[derive(Debug, Clone)]
pub struct Channel {
    sock: Arc<OwnedFd>,
    /// The keeper started us after the supervisor before us died.
    recovered: bool,
}

impl Channel {
    pub fn new(fd: OwnedFd) -> Channel {
        Channel {
            sock: Arc::new(fd),
            recovered: false,
        }
    }

    /// The keeper's socket a supervisor was exec'd with (by its keeper,
    /// or by an upgrade), named by [`KEEPER_ENV`]; [`RECOVERED_ENV`]
    /// says which.
    pub fn from_env() -> Result<Option<Channel>, String> {
        let recovered = std::env::var_os(RECOVERED_ENV).is_some();
        std::env::remove_var(RECOVERED_ENV);
        let fd = isola_runtime::handover::receive_fd(KEEPER_ENV)?;
        Ok(fd.map(|fd| Channel {
            recovered,
            ..Channel::new(fd)
        }))
    }

    /// Started by the keeper after the supervisor before us died.
    pub fn recovered(&self) -> bool {
        self.recovered
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }

    fn send(&self, kind: u8, body: &[u8], fds: &[RawFd]) -> Result<(), Errno> {
        self.send_with(kind, body, fds, MsgFlags::empty())
    }

    /// Without waiting (`MSG_DONTWAIT`): a keeper that does not read (one
    /// stopped) must not stop us; EAGAIN says so.
    fn send_now(&self, kind: u8, body: &[u8], fds: &[RawFd]) -> Result<(), Errno> {
        self.send_with(kind, body, fds, MsgFlags::MSG_DONTWAIT)
    }

    fn send_with(
        &self,
        kind: u8,
        body: &[u8],
        fds: &[RawFd],
        flags: MsgFlags,
    ) -> Result<(), Errno> {
        let mut msg = Vec::with_capacity(1 + body.len());
        msg.push(kind);
        msg.extend_from_slice(body);
        fdpass::send_with(&self.sock, &msg, fds, flags)
    }

    /// The stack ended with `code`: the keeper exits with it once we did.
    pub fn bye(&self, code: u8) {
        let _ = self.send(b'B', &i32::from(code).to_le_bytes(), &[]);
    }

    /// For systemd: the keeper is the unit's main pid, and says it.
    pub(crate) fn notify(&self, text: &str) {
        let _ = self.send(b'N', text.as_bytes(), &[]);
    }
}

/// An exit the keeper told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Told {
    pub(crate) pid: Pid,
    pub(crate) status: ExitStatus,
}

/// The keeper's socket closed: it died, and the inits with it.
#[derive(Debug)]
pub(crate) struct KeeperGone;

/// The supervisor's part that talks to the keeper.
pub(crate) struct Link {
    channel: Channel,
    /// What the keeper holds, by number.
    held: HashMap<RawFd, Named>,
    /// Exits told while we waited for something else.
    early: Vec<Told>,
    /// Something happened since the last snapshot.
    changed: bool,
    next: Instant,
    /// The stack is ending: no more snapshots.
    ending: bool,
}

impl Link {
    /// Tell the keeper which binary we run (what it starts again).
    pub(crate) fn new(channel: Channel) -> Link {
        if let Ok(exe) = nix::fcntl::open(
            "/proc/self/exe",
            nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        ) {
            let _ = channel.send(b'E', &[], &[exe.as_raw_fd()]);
        }
        Link {
            channel,
            held: HashMap::new(),
            early: Vec::new(),
            changed: true,
            next: Instant::now(),
            ending: false,
        }
    }

    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.channel.fd()
    }

    /// Every exit told so far (each acknowledged with [`Link::taken`]
    /// once the supervisor acted on it).
    pub(crate) fn told(&mut self) -> Result<Vec<Told>, KeeperGone> {
        let mut out = std::mem::take(&mut self.early);
        loop {
            match self.next_message(MsgFlags::MSG_DONTWAIT)? {
                Some(Message::Exit(t)) => out.push(t),
                Some(Message::Forgot) => {}
                Some(Message::Refused) => self.resend_all(),
                None => return Ok(out),
            }
        }
    }

    fn next_message(&self, flags: MsgFlags) -> Result<Option<Message>, KeeperGone> {
        loop {
            let d = match fdpass::receive_with(self.fd(), fdpass::SPAWNER_DATAGRAM, flags) {
                Ok(d) => d,
                Err(Errno::EAGAIN) => return Ok(None),
                Err(Errno::EINTR) => continue,
                Err(_) => return Err(KeeperGone),
            };
            match d.bytes.split_first() {
                None => return Err(KeeperGone),
                Some((b'f', _)) => return Ok(Some(Message::Forgot)),
                Some((b'r', _)) => return Ok(Some(Message::Refused)),
                Some((b'X', b)) => {
                    let (Some(pid), Some(code), Some(how)) =
                        (le_i32(b), b.get(4..).and_then(le_i32), b.get(8))
                    else {
                        continue;
                    };
                    let status = match how {
                        1 => ExitStatus::Signaled(code),
                        _ => ExitStatus::Exited(code),
                    };
                    let pid = Pid::from_raw(pid);
                    return Ok(Some(Message::Exit(Told { pid, status })));
                }
                Some(_) => {}
            }
        }
    }

    /// The exit of `pid` is taken: the keeper may reap it.
    pub(crate) fn taken(&self, pid: Pid) {
        let _ = self.channel.send(b'A', &pid.as_raw().to_le_bytes(), &[]);
    }

    /// The keeper lets go of every copy it holds, and of its snapshot,
    /// before we return: we are about to close or bind again what it
    /// holds (a reload, the stack's end). Until the next snapshot, a
    /// supervisor that dies is not replaced.
    pub(crate) fn forget_all(&mut self) -> Result<(), KeeperGone> {
        match self.channel.send_now(b'F', &[], &[]) {
            // Not read (stopped): no answer to wait for either.
            Err(Errno::EAGAIN) => return Ok(()),
            Err(_) => return Err(KeeperGone),
            Ok(()) => {}
        }
        loop {
            // A keeper that does not answer (stopped) does not stop us.
            let mut fds = [PollFd::new(self.fd(), PollFlags::POLLIN)];
            if !matches!(poll(&mut fds, PollTimeout::from(2000u16)), Ok(n) if n > 0) {
                break;
            }
            match self.next_message(MsgFlags::MSG_DONTWAIT)? {
                Some(Message::Forgot) => break,
                Some(Message::Exit(t)) => self.early.push(t),
                Some(Message::Refused) | None => {}
            }
        }
        self.held.clear();
        self.changed = true;
        Ok(())
    }

    /// Something happened: a snapshot is due once the stack is at rest.
    pub(crate) fn changed(&mut self) {
        self.changed = true;
    }

    pub(crate) fn snapshot_due(&self, now: Instant) -> bool {
        self.changed && now >= self.next && !self.ending
    }

    /// When a snapshot is due (the loop's timer: a change followed by no
    /// other wakeup is kept all the same).
    pub(crate) fn deadline(&self) -> Option<Instant> {
        (self.changed && !self.ending).then_some(self.next)
    }

    /// The keeper refused a snapshot (it lacked a copy): every copy goes
    /// again with the next.
    fn resend_all(&mut self) {
        self.held.clear();
        self.changed = true;
    }

    /// A snapshot that could not be taken: the next try waits as long.
    pub(crate) fn not_now(&mut self, took: Duration) {
        self.next = Instant::now() + MIN_INTERVAL.max(took * COST_FACTOR);
    }

    pub(crate) fn ending(&self) -> bool {
        self.ending
    }

    pub(crate) fn end(&mut self) {
        self.ending = true;
    }

    /// Hand the keeper a snapshot (`memfd`, naming `fds`): first copies of
    /// the fds it does not hold yet (or may hold another file at that
    /// number: anonymous inodes cannot be told apart), then the memfd.
    /// `took`: how long making the snapshot took, which spaces the next
    /// (a failed one too).
    pub(crate) fn keep(&mut self, memfd: File, fds: &[Named], took: Duration) -> Result<(), Errno> {
        self.next = Instant::now() + MIN_INTERVAL.max(took * COST_FACTOR);
        let mut now_held = HashMap::with_capacity(fds.len());
        let mut new = Vec::new();
        for n in fds {
            if !n.unique || self.held.get(&n.fd) != Some(n) {
                new.push(n.fd);
            }
            now_held.insert(n.fd, *n);
        }
        // Not waiting on a keeper that does not read: the snapshot waits.
        let sent = new
            .chunks(FDS_PER_MESSAGE)
            .try_for_each(|chunk| self.channel.send_now(b'H', &le_bytes(chunk), chunk))
            .and_then(|()| self.channel.send_now(b'S', &[], &[memfd.as_raw_fd()]));
        if let Err(e) = sent {
            // What went is staged by the keeper, and sent again.
            self.held.clear();
            return Err(e);
        }
        self.held = now_held;
        self.changed = false;
        Ok(())
    }
}

/// What the keeper says.
enum Message {
    Exit(Told),
    /// It let go of everything (`F` answered).
    Forgot,
    /// It refused a snapshot naming an fd it has no copy of.
    Refused,
}

fn le_bytes(numbers: &[RawFd]) -> Vec<u8> {
    numbers.iter().flat_map(|n| n.to_le_bytes()).collect()
}
