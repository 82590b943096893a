//! The loop's own wakeups besides the parts' fds: signals (SIGTERM,
//! SIGINT, SIGHUP, SIGCHLD through a signalfd) and one timerfd, armed for
//! the nearest deadline of anything that has one. Nothing polls: with no
//! deadline the timer is disarmed and the loop sleeps until an event.

use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::time::TimeSpec;
use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};

use super::reactor::{Interest, Part, Reactor, Token};

/// The signals `isola up` handles (blocked in every thread, and in every
/// init from the start).
const HANDLED: [Signal; 4] = [
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGCHLD,
];

pub(crate) struct Signals {
    fd: SignalFd,
}

impl Signals {
    pub(crate) fn new(reactor: &Reactor) -> Result<Signals, Errno> {
        let mut set = SigSet::empty();
        for s in HANDLED {
            set.add(s);
        }
        let fd = SignalFd::with_flags(&set, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)?;
        reactor.add(fd.as_fd(), Token::new(Part::Signals, 0), Interest::Read)?;
        Ok(Signals { fd })
    }

    /// The signals that arrived, in order.
    pub(crate) fn take(&mut self) -> Vec<Signal> {
        let mut out = Vec::new();
        while let Ok(Some(info)) = self.fd.read_signal() {
            if let Ok(Ok(sig)) = i32::try_from(info.ssi_signo).map(Signal::try_from) {
                out.push(sig);
            }
        }
        out
    }
}

pub(crate) struct Timer {
    fd: TimerFd,
    /// The deadline it is armed for.
    armed: Option<Instant>,
}

impl Timer {
    pub(crate) fn new(reactor: &Reactor) -> Result<Timer, Errno> {
        let fd = TimerFd::new(
            ClockId::CLOCK_MONOTONIC,
            TimerFlags::TFD_CLOEXEC | TimerFlags::TFD_NONBLOCK,
        )?;
        reactor.add(fd.as_fd(), Token::new(Part::Timer, 0), Interest::Read)?;
        Ok(Timer { fd, armed: None })
    }

    /// It fired: whatever comes next must be armed anew.
    pub(crate) fn fired(&mut self) {
        let _consumed_or_nothing_to_consume = self.fd.wait();
        self.armed = None;
    }

    /// Arm for `next`, or disarm. The same deadline as armed costs no
    /// syscall (a probe result wakes the loop a thousand times a second
    /// with a thousand services).
    pub(crate) fn arm(&mut self, next: Option<Instant>) {
        if next == self.armed {
            return;
        }
        let set = match next {
            Some(t) => {
                let d = t
                    .saturating_duration_since(Instant::now())
                    .max(Duration::from_micros(1));
                self.fd.set(
                    Expiration::OneShot(TimeSpec::from_duration(d)),
                    TimerSetTimeFlags::empty(),
                )
            }
            None => self.fd.unset(),
        };
        // On a failure the next turn of the loop tries again.
        self.armed = set.ok().and(next);
    }
}

/// Both, as the loop holds them.
pub(crate) struct Wakeups {
    pub(crate) signals: Signals,
    pub(crate) timer: Timer,
}

impl Wakeups {
    pub(crate) fn new(reactor: &Reactor) -> Result<Wakeups, String> {
        Ok(Wakeups {
            signals: Signals::new(reactor).map_err(|e| format!("signalfd: {e}"))?,
            timer: Timer::new(reactor).map_err(|e| format!("timerfd: {e}"))?,
        })
    }
}
