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
        let mut msg = Vec::with_capacity(1 + body.len());
        msg.push(kind);
        msg.extend_from_slice(body);
        fdpass::send(&self.sock, &msg, fds)
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
    /// Something happened since the last snapshot.
    changed: bool,
    next: Instant,
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
            changed: true,
            next: Instant::now(),
        }
    }

    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.channel.fd()
    }

    /// Every exit told so far (each acknowledged with [`Link::taken`]
    /// once the supervisor acted on it).
    pub(crate) fn told(&mut self) -> Result<Vec<Told>, KeeperGone> {
        let mut out = Vec::new();
        loop {
            let d = match fdpass::receive_credentialed(self.fd(), fdpass::SPAWNER_DATAGRAM) {
                Ok(d) => d,
                Err(Errno::EAGAIN) => return Ok(out),
                Err(Errno::EINTR) => continue,
                Err(_) => return Err(KeeperGone),
            };
            match d.bytes.split_first() {
                None => return Err(KeeperGone),
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
                    out.push(Told {
                        pid: Pid::from_raw(pid),
                        status,
                    });
                }
                Some(_) => {}
            }
        }
    }

    /// The exit of `pid` is taken: the keeper may reap it.
    pub(crate) fn taken(&self, pid: Pid) {
        let _ = self.channel.send(b'A', &pid.as_raw().to_le_bytes(), &[]);
    }

    /// Something happened: a snapshot is due once the stack is at rest.
    pub(crate) fn changed(&mut self) {
        self.changed = true;
    }

    pub(crate) fn snapshot_due(&self, now: Instant) -> bool {
        self.changed && now >= self.next
    }

    /// Hand the keeper a snapshot (`memfd`, naming `fds`): first copies of
    /// the fds it does not hold yet, and which it holds no longer. `took`:
    /// how long making the snapshot took, which spaces the next.
    pub(crate) fn keep(&mut self, memfd: File, fds: &[Named], took: Duration) -> Result<(), Errno> {
        let mut now_held = HashMap::with_capacity(fds.len());
        let mut new = Vec::new();
        for n in fds {
            if self.held.get(&n.fd) != Some(n) {
                new.push(n.fd);
            }
            now_held.insert(n.fd, *n);
        }
        let gone: Vec<RawFd> = (self.held.keys())
            .filter(|n| !now_held.contains_key(n))
            .copied()
            .collect();
        for chunk in gone.chunks(1000) {
            self.channel.send(b'D', &le_bytes(chunk), &[])?;
        }
        for chunk in new.chunks(FDS_PER_MESSAGE) {
            self.channel.send(b'H', &le_bytes(chunk), chunk)?;
        }
        self.channel.send(b'S', &[], &[memfd.as_raw_fd()])?;
        self.held = now_held;
        self.changed = false;
        self.next = Instant::now() + MIN_INTERVAL.max(took * COST_FACTOR);
        Ok(())
    }
}

fn le_bytes(numbers: &[RawFd]) -> Vec<u8> {
    numbers.iter().flat_map(|n| n.to_le_bytes()).collect()
}
