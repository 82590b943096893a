//! PSI triggers for the pressure rules: the kernel says (POLLPRI on the
//! cgroup's `*.pressure` file) when the sandbox stalled for more than the
//! rule's share of a one-second window, at most once a window; the rule
//! acts once that kept up for its `forMs`. No reading and no timer: a
//! pressure rule costs nothing while its service does not stall.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{open, OFlag};
use nix::sys::stat::Mode;

/// The trigger's window: a stall above the rule's share of it fires.
pub(crate) const WINDOW: Duration = Duration::from_secs(1);
/// How late the kernel's next event may come while the stall goes on:
/// events come a window apart, checked every tenth of one.
const SLACK: Duration = Duration::from_millis(500);

/// An armed trigger and the run of events it has seen.
pub(crate) struct Trigger {
    fd: OwnedFd,
    /// Since when the stall went on, without a window below.
    since: Option<Instant>,
    last: Option<Instant>,
    /// This run was acted on already.
    acted: bool,
}

impl Trigger {
    /// Arm a trigger on `file` (a cgroup's `memory.pressure`, …): stalls
    /// of some task above `percent` of each window.
    pub(crate) fn arm(file: &Path, percent: f64) -> Result<Trigger, Errno> {
        let fd = open(
            file,
            OFlag::O_RDWR | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        let stall =
            Duration::try_from_secs_f64(WINDOW.as_secs_f64() * percent / 100.0).unwrap_or(WINDOW);
        // The kernel wants 0 < stall <= window.
        let stall_us = stall.as_micros().clamp(1, WINDOW.as_micros());
        let spec = format!("some {stall_us} {}\0", WINDOW.as_micros());
        let n = nix::unistd::write(&fd, spec.as_bytes())?;
        if n != spec.len() {
            return Err(Errno::EIO);
        }
        Ok(Trigger {
            fd,
            since: None,
            last: None,
            acted: false,
        })
    }

    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The kernel said so at `now`: true when a rule of `for_` is to act
    /// now. An event a window late or more starts the run over.
    pub(crate) fn fired(&mut self, now: Instant, for_: Duration) -> bool {
        let unbroken = self
            .last
            .is_some_and(|l| now.saturating_duration_since(l) <= WINDOW + SLACK);
        if !unbroken {
            // The stall was there for the window before the event.
            self.since = Some(now.checked_sub(WINDOW).unwrap_or(now));
            self.acted = false;
        }
        self.last = Some(now);
        let since = *self.since.get_or_insert(now);
        if self.acted || now.saturating_duration_since(since) < for_ {
            return false;
        }
        self.acted = true;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_a_window_apart_for_the_rules_time_act_once() {
        let fd = OwnedFd::from(std::fs::File::open("/dev/null").unwrap());
        let mut t = Trigger {
            fd,
            since: None,
            last: None,
            acted: false,
        };
        let t0 = Instant::now() + Duration::from_secs(5);
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let for_ = Duration::from_millis(3000);
        // The first event tells of the window before it.
        assert!(!t.fired(at(0), for_));
        assert!(!t.fired(at(1000), for_));
        assert!(t.fired(at(2000), for_), "stalled from -1 s to 2 s");
        assert!(!t.fired(at(3000), for_), "once per run");
        // A gap of more than a window and a half: a new run.
        assert!(!t.fired(at(5000), for_));
        assert!(!t.fired(at(6400), for_));
        assert!(t.fired(at(7000), for_));
        // A rule shorter than the window acts at the first event.
        let mut short = Trigger {
            acted: false,
            since: None,
            last: None,
            ..t
        };
        assert!(short.fired(at(20_000), Duration::from_millis(500)));
    }
}
