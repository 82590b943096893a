//! `isola up` of a big stack at a terminal: a progress line on stderr
//! (`412/1000 up`), redrawn at most every 200 ms, then a one-line summary
//! once every service settled (up, or failed). Only where it cannot mix
//! with service output: stderr a terminal, and stdout not echoing to one
//! (`--quiet`, or stdout redirected).

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use super::under_systemd::Counts;
use crate::lifecycle::Core;
use crate::outputs::Sink;

/// Stacks smaller than this start too fast to need a progress line.
const MIN_SERVICES: usize = 20;
const EVERY: Duration = Duration::from_millis(200);
/// Back to the line's start, and clear it.
const REDRAW: &str = "\r\x1b[K";

pub(crate) struct Progress {
    next: Instant,
    done: bool,
}

impl Progress {
    pub(crate) fn new(services: usize, echo: bool) -> Option<Progress> {
        let echo_to_terminal = echo && std::io::stdout().is_terminal();
        (services > MIN_SERVICES && std::io::stderr().is_terminal() && !echo_to_terminal).then(
            || Progress {
                next: Instant::now(),
                done: false,
            },
        )
    }

    /// When the next redraw is due (a timer wakes the loop for it even
    /// when no service does anything), until the summary was printed.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        (!self.done).then_some(self.next)
    }

    /// Redraw when due; true when something was queued on `sink`.
    pub(crate) fn update(&mut self, core: &Core, sink: &mut Sink, now: Instant) -> bool {
        if self.done || now < self.next {
            return false;
        }
        self.next = now + EVERY;
        let c = Counts::of(core);
        if c.waiting == 0 {
            self.done = true;
            sink.partial(REDRAW);
            sink.line(&format!("isola: {}", c.status()));
        } else {
            sink.partial(&format!("{REDRAW}{}/{} up", c.up, c.total));
        }
        true
    }
}
