//! The one epoll set of `isola up`, and the only code that registers fds
//! in it. An event's 64-bit user data is a [`Token`]: which part owns the
//! fd (top byte) and the part's own key below it, which only that part
//! encodes and reads (a service's pipe, a connection's id, a probe's id).

use std::os::fd::BorrowedFd;

use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};

/// The part of the supervisor an fd belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Part {
    /// The signalfd (SIGTERM, SIGINT, SIGHUP, SIGCHLD).
    Signals,
    /// The timerfd, armed for the nearest deadline.
    Timer,
    /// Init reports and cgroup watches (`sandboxes`).
    Sandboxes,
    /// Service pipes and our own stdout and stderr (`outputs`).
    Outputs,
    /// The control socket and its connections (`control`).
    Control,
    /// Probe sockets in flight (`probes`).
    Probes,
    /// Notify sockets and pipes (`readiness`).
    Readiness,
    /// The metrics endpoint and its scrapers (`metrics`).
    Metrics,
    /// PSI triggers of pressure rules (`rules`).
    Rules,
    /// The stack's nameserver (`networks`).
    Names,
    /// Held listeners watched for arrivals (`held_sockets`, for the
    /// autoscaler).
    Sockets,
    /// The keeper's socket (`keeper`).
    Keeper,
}

const PARTS: [Part; 12] = [
    Part::Signals,
    Part::Timer,
    Part::Sandboxes,
    Part::Outputs,
    Part::Control,
    Part::Probes,
    Part::Readiness,
    Part::Metrics,
    Part::Rules,
    Part::Names,
    Part::Sockets,
    Part::Keeper,
];

const PART_SHIFT: u32 = 56;
/// The largest key a part may use.
pub(crate) const KEY_MAX: u64 = (1 << PART_SHIFT) - 1;

/// What an epoll event is about: the owning part and its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Token {
    pub(crate) part: Part,
    pub(crate) key: u64,
}

impl Token {
    pub(crate) fn new(part: Part, key: u64) -> Token {
        Token {
            part,
            key: key & KEY_MAX,
        }
    }

    fn encode(self) -> u64 {
        let kind = PARTS.iter().position(|p| *p == self.part).unwrap_or(0) as u64 + 1;
        kind << PART_SHIFT | self.key
    }

    fn decode(v: u64) -> Option<Token> {
        let kind = usize::try_from(v >> PART_SHIFT).ok()?;
        let part = *PARTS.get(kind.checked_sub(1)?)?;
        Some(Token::new(part, v & KEY_MAX))
    }
}

/// What an fd is waited on for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Interest {
    Read,
    Write,
    ReadWrite,
    /// Neither: only the peer's hang-up (or shutdown of its side) and
    /// errors are reported.
    Hangup,
    /// Priority events (a PSI trigger fired).
    Priority,
    /// Readable, once: out of the running until modified again.
    ReadOnce,
}

impl Interest {
    fn flags(self) -> EpollFlags {
        match self {
            Interest::Read => EpollFlags::EPOLLIN,
            Interest::Write => EpollFlags::EPOLLOUT,
            Interest::ReadWrite => EpollFlags::EPOLLIN | EpollFlags::EPOLLOUT,
            Interest::Hangup => EpollFlags::EPOLLRDHUP,
            Interest::Priority => EpollFlags::EPOLLPRI,
            Interest::ReadOnce => EpollFlags::EPOLLIN | EpollFlags::EPOLLONESHOT,
        }
    }
}

/// What happened to a registered fd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Readiness {
    flags: EpollFlags,
}

impl Readiness {
    pub(crate) fn writable(self) -> bool {
        self.flags.contains(EpollFlags::EPOLLOUT)
    }

    /// In error (a PSI trigger whose cgroup went away).
    pub(crate) fn failed(self) -> bool {
        self.flags.contains(EpollFlags::EPOLLERR)
    }

    /// Readable, or hung up, or in error: a read will tell which.
    pub(crate) fn readable(self) -> bool {
        self.flags.intersects(
            EpollFlags::EPOLLIN
                | EpollFlags::EPOLLRDHUP
                | EpollFlags::EPOLLHUP
                | EpollFlags::EPOLLERR,
        )
    }
}

/// The epoll set.
pub(crate) struct Reactor {
    epoll: Epoll,
}

impl Reactor {
    pub(crate) fn new() -> Result<Reactor, Errno> {
        Ok(Reactor {
            epoll: Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?,
        })
    }

    /// Wait for `fd` to become ready for `interest`; its events carry `token`.
    pub(crate) fn add(
        &self,
        fd: BorrowedFd<'_>,
        token: Token,
        interest: Interest,
    ) -> Result<(), Errno> {
        self.epoll
            .add(fd, EpollEvent::new(interest.flags(), token.encode()))
    }

    /// Change what a registered `fd` is waited on for.
    pub(crate) fn modify(
        &self,
        fd: BorrowedFd<'_>,
        token: Token,
        interest: Interest,
    ) -> Result<(), Errno> {
        let mut ev = EpollEvent::new(interest.flags(), token.encode());
        self.epoll.modify(fd, &mut ev)
    }

    /// Stop waiting on `fd`, which its owner closes next. Every owner
    /// calls this before closing: a forked child (an exec probe's waiter,
    /// an in-process clone) may hold a copy of the open file, and then
    /// closing ours alone would leave it in the set. It fails only for an
    /// fd that is not in the set: nothing to undo.
    pub(crate) fn remove(&self, fd: BorrowedFd<'_>) {
        let _not_in_the_set = self.epoll.delete(fd);
    }

    /// Sleep until something happens (no timeout: the timerfd is the
    /// only clock); the tokens of what did, with what happened.
    pub(crate) fn wait(&self, events: &mut [EpollEvent]) -> Result<Vec<(Token, Readiness)>, Errno> {
        self.wait_at_most(events, EpollTimeout::NONE)
    }

    /// As [`Reactor::wait`], for at most `timeout` (tests).
    pub(crate) fn wait_at_most(
        &self,
        events: &mut [EpollEvent],
        timeout: EpollTimeout,
    ) -> Result<Vec<(Token, Readiness)>, Errno> {
        let n = self.epoll.wait(events, timeout)?;
        Ok(events[..n]
            .iter()
            .filter_map(|ev| {
                let token = Token::decode(ev.data())?;
                Some((token, Readiness { flags: ev.events() }))
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_for_every_part() {
        for part in PARTS {
            for key in [0, 1, 70_000, 1 << 40, KEY_MAX] {
                let t = Token::new(part, key);
                assert_eq!(Token::decode(t.encode()), Some(t));
            }
        }
        assert_eq!(Token::decode(0), None);
        assert_eq!(Token::decode(u64::MAX), None);
    }

    #[test]
    fn registration_errors_reach_the_caller() {
        let r = Reactor::new().unwrap();
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        use std::os::fd::AsFd;
        let t = Token::new(Part::Control, 3);
        r.add(a.as_fd(), t, Interest::Read).unwrap();
        assert_eq!(r.add(a.as_fd(), t, Interest::Read), Err(Errno::EEXIST));
        r.remove(a.as_fd());
        assert_eq!(r.modify(a.as_fd(), t, Interest::Write), Err(Errno::ENOENT));
    }
}
