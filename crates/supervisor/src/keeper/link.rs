//! The supervisor's side of its keeper (see [`crate::keeper`]): the
//! socket, the exits it tells, and what the keeper holds of ours.

use std::collections::{HashMap, VecDeque};
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

use super::handing::{Handing, Progress};
use super::{le_i32, KEEPER_ENV, RECOVERED_ENV};

/// Snapshots are at least this far apart…
const MIN_INTERVAL: Duration = Duration::from_millis(250);
/// …and at least this many times what the last one took, so keeping a
/// stack of 10,000 services costs the loop at most a few percent.
const COST_FACTOR: u32 = 20;
/// How long a keeper that does not answer holds up a reload or the end.
const WAIT_FOR_KEEPER_MS: u16 = 2000;
/// How long a message for systemd waits for room on the keeper's socket.
const NOTIFY_WAIT_MS: u16 = 500;

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
    pub(super) fn send_now(&self, kind: u8, body: &[u8], fds: &[RawFd]) -> Result<(), Errno> {
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
        let wait = PollTimeout::from(WAIT_FOR_KEEPER_MS);
        let _ = self.send_within(b'B', &i32::from(code).to_le_bytes(), wait);
    }

    /// For systemd: the keeper is the unit's main pid, and says it (a
    /// keeper that makes no room for it within a while misses it).
    pub(crate) fn notify(&self, text: &str) {
        let _ = self.send_within(b'N', text.as_bytes(), PollTimeout::from(NOTIFY_WAIT_MS));
    }

    /// Send `kind` and `body` (no fds), waiting up to `wait` for room: a
    /// socket full of a snapshot's copies is drained by a keeper that
    /// reads; EAGAIN when it did not make room (stopped).
    fn send_within(&self, kind: u8, body: &[u8], wait: PollTimeout) -> Result<(), Errno> {
        match self.send_now(kind, body, &[]) {
            Err(Errno::EAGAIN) => {
                // Whatever poll says, the second try tells.
                let mut fds = [PollFd::new(self.fd(), PollFlags::POLLOUT)];
                let _ = poll(&mut fds, wait);
                self.send_now(kind, body, &[])
            }
            sent => sent,
        }
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
    /// A snapshot on its way.
    handing: Option<Handing>,
    /// Exits taken, not yet said (`A`): the socket was full.
    acks: VecDeque<Pid>,
}

/// Whether a snapshot is still on its way (the loop then waits for the
/// keeper's socket to be writable).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Handed {
    Done,
    Waiting,
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
            handing: None,
            acks: VecDeque::new(),
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

    /// The exit of `pid` is taken: the keeper may reap it. Said with the
    /// next [`Link::hand_on`], after what the socket holds already: never
    /// waited on (the keeper tells no other exit before it, so it waits
    /// without harm; a socket full of a snapshot's copies that a stopped
    /// keeper does not drain must not stop the loop).
    pub(crate) fn taken(&mut self, pid: Pid) {
        self.acks.push_back(pid);
    }

    /// The keeper lets go of every copy it holds, and of its snapshot,
    /// before we return: we are about to close or bind again what it
    /// holds (a reload, the stack's end). Until the next snapshot, a
    /// supervisor that dies is not replaced.
    pub(crate) fn forget_all(&mut self) -> Result<(), KeeperGone> {
        // A snapshot on its way names what is about to change.
        self.handing = None;
        self.held.clear();
        self.changed = true;
        match (self.channel).send_within(b'F', &[], PollTimeout::from(WAIT_FOR_KEEPER_MS)) {
            // Not read (stopped): no answer to wait for either.
            Err(Errno::EAGAIN) => return Ok(()),
            Err(_) => return Err(KeeperGone),
            Ok(()) => {}
        }
        loop {
            // A keeper that does not answer (stopped) does not stop us.
            let mut fds = [PollFd::new(self.fd(), PollFlags::POLLIN)];
            if !matches!(poll(&mut fds, PollTimeout::from(WAIT_FOR_KEEPER_MS)), Ok(n) if n > 0) {
                break;
            }
            match self.next_message(MsgFlags::MSG_DONTWAIT)? {
                Some(Message::Forgot) => break,
                Some(Message::Exit(t)) => self.early.push(t),
                Some(Message::Refused) | None => {}
            }
        }
        Ok(())
    }

    /// Something happened: a snapshot is due once the stack is at rest.
    pub(crate) fn changed(&mut self) {
        self.changed = true;
    }

    pub(crate) fn snapshot_due(&self, now: Instant) -> bool {
        self.changed && now >= self.next && !self.ending && self.handing.is_none()
    }

    /// When a snapshot is due (the loop's timer: a change followed by no
    /// other wakeup is kept all the same).
    pub(crate) fn deadline(&self) -> Option<Instant> {
        (self.changed && !self.ending && self.handing.is_none()).then_some(self.next)
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
    /// number: anonymous inodes cannot be told apart), then the memfd —
    /// what the socket takes now, the rest with [`Link::hand_on`] once it
    /// is writable (`Waiting`; see [`super::handing`]). `took`: how long
    /// making the snapshot took, which spaces the next (a failed one
    /// too).
    pub(crate) fn keep(
        &mut self,
        memfd: File,
        fds: &[Named],
        took: Duration,
    ) -> Result<Handed, Errno> {
        self.next = Instant::now() + MIN_INTERVAL.max(took * COST_FACTOR);
        // A change from now on is the next snapshot's.
        self.changed = false;
        self.handing = Some(Handing::new(memfd, fds, &self.held));
        self.hand_on()
    }

    /// Send what the keeper's socket takes: the exits taken, then the
    /// snapshot on its way.
    pub(crate) fn hand_on(&mut self) -> Result<Handed, Errno> {
        while let Some(pid) = self.acks.front() {
            match self
                .channel
                .send_now(b'A', &pid.as_raw().to_le_bytes(), &[])
            {
                Ok(()) => self.acks.pop_front(),
                Err(Errno::EAGAIN) => return Ok(Handed::Waiting),
                Err(e) => return Err(e),
            };
        }
        let Some(h) = self.handing.as_mut() else {
            return Ok(Handed::Done);
        };
        let progress = h.pump(&self.channel);
        if !matches!(progress, Ok(Progress::Waiting)) {
            self.handing = None;
        }
        match progress {
            Ok(Progress::Waiting) => return Ok(Handed::Waiting),
            Ok(Progress::Done(named)) => self.held = named,
            // The copies that went are staged by the keeper: they are
            // sent again with the next snapshot, which is due.
            Ok(Progress::GivenUp(went)) => {
                for n in went {
                    self.held.remove(&n);
                }
                self.changed = true;
            }
            // What went is not known: all again.
            Err(e) => {
                self.held.clear();
                self.changed = true;
                return Err(e);
            }
        }
        Ok(Handed::Done)
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
