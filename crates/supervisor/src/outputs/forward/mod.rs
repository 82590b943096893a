//! Copies of service lines for journald and syslog receivers. Each sink
//! is written without blocking: a full, slow or absent receiver has its
//! lines dropped and counted, and is named once (again once it takes
//! lines again). The log files stay the source of truth.

use std::fmt::Display;
use std::time::{Duration, Instant};

use crate::shell::context::Ctx;
use crate::spec::logging::{LogRoute, SyslogTarget};

use super::Stream;

mod journald;
mod syslog;

use journald::Journald;
use syslog::Syslog;

pub(crate) use journald::JOURNAL_SOCKET;

/// Who wrote a line: what journald and syslog are told beside its text.
pub(crate) struct Origin<'a> {
    pub(crate) service: &'a str,
    pub(crate) replica: Option<u32>,
    /// The sandbox's init (in the payload's cgroup and namespaces).
    pub(crate) pid: Option<i32>,
    pub(crate) stream: Stream,
}

impl Origin<'_> {
    /// syslog's severity: informational for stdout, error for stderr (as
    /// journald's PRIORITY).
    fn severity(&self) -> u8 {
        match self.stream {
            Stream::Stdout => 6,
            Stream::Stderr => 3,
        }
    }
}

/// Lines a sink could not take, and whether that was said. A sink that
/// keeps failing and recovering (a journal just keeping up) is said to
/// fail at most once per [`NOTE_EVERY`] (and to recover after each),
/// not at every turn.
#[derive(Default)]
struct Drops {
    total: u64,
    /// Since the sink was last said to fail or recover.
    since: u64,
    failing: bool,
    /// Its failure was said (its recovery will be).
    said: bool,
    last_note: Option<Instant>,
}

/// At most one note per sink this often.
const NOTE_EVERY: Duration = Duration::from_secs(10);

impl Drops {
    fn may_say(&mut self) -> bool {
        let now = Instant::now();
        let ok = self
            .last_note
            .is_none_or(|t| now.saturating_duration_since(t) >= NOTE_EVERY);
        if ok {
            self.last_note = Some(now);
        }
        ok
    }

    fn dropped(&mut self, n: u64, sink: &dyn Display, why: &dyn Display, notes: &mut Vec<String>) {
        self.total += n;
        self.since += n;
        if self.failing {
            return;
        }
        self.failing = true;
        if !self.said && self.may_say() {
            self.said = true;
            notes.push(format!(
                "logging: {sink}: {why}: lines for it are dropped (and counted) until it takes them again"
            ));
        }
    }

    fn delivered(&mut self, sink: &dyn Display, notes: &mut Vec<String>) {
        if !self.failing {
            return;
        }
        self.failing = false;
        // Said whenever its failure was: two notes per NOTE_EVERY at most.
        if self.said {
            self.said = false;
            notes.push(format!(
                "logging: {sink}: taking lines again ({} dropped)",
                self.since
            ));
            self.since = 0;
        }
    }
}

/// What a sink was told about the stack and host, once.
struct Context {
    stack: String,
    host: String,
    /// journald trusts OBJECT_PID only from root.
    root: bool,
}

/// The journald and syslog sinks of a stack: one journal socket, one
/// connection or socket per syslog receiver named.
pub(crate) struct Forwarders {
    cx: Context,
    journald: Journald,
    syslogs: Vec<Syslog>,
    notes: Vec<String>,
}

impl Forwarders {
    pub(crate) fn new(stack: &str, journal: std::path::PathBuf) -> Forwarders {
        let host = nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "-".into());
        Forwarders {
            cx: Context {
                stack: stack.to_string(),
                host,
                root: nix::unistd::geteuid().is_root(),
            },
            journald: Journald::new(journal),
            syslogs: Vec::new(),
            notes: Vec::new(),
        }
    }

    /// The number of `target`'s sink (made on first use: a receiver named
    /// by many services is written through one socket).
    pub(crate) fn syslog(&mut self, target: &SyslogTarget) -> usize {
        match self.syslogs.iter().position(|s| s.target() == target) {
            Some(k) => k,
            None => {
                self.syslogs.push(Syslog::new(target.clone()));
                self.syslogs.len() - 1
            }
        }
    }

    /// Copies of `lines` where `route` sends them (`syslog`: the number
    /// [`Forwarders::syslog`] gave its receiver).
    pub(crate) fn send(
        &mut self,
        ctx: &mut Ctx<'_>,
        route: &LogRoute,
        syslog: Option<usize>,
        origin: &Origin<'_>,
        lines: &[String],
    ) {
        if route.journald {
            for l in lines {
                self.journald.send(&self.cx, origin, l, &mut self.notes);
            }
        }
        let Some(k) = syslog else { return };
        if let Some(s) = self.syslogs.get_mut(k) {
            for l in lines {
                s.send(ctx, k, &self.cx, origin, l, &mut self.notes);
            }
        }
    }

    /// Syslog connection `k` can be written (or failed).
    pub(crate) fn on_event(&mut self, ctx: &mut Ctx<'_>, k: usize) {
        if let Some(s) = self.syslogs.get_mut(k) {
            s.on_event(ctx, k, &mut self.notes);
        }
    }

    /// What the sinks have to say (a receiver gone, or back).
    pub(crate) fn take_notes(&mut self) -> Vec<String> {
        std::mem::take(&mut self.notes)
    }

    /// Lines dropped since we started, by sink: `journald`, `syslog`.
    pub(crate) fn dropped(&self) -> [(&'static str, u64); 2] {
        let syslog = self.syslogs.iter().map(Syslog::dropped).sum();
        [("journald", self.journald.dropped()), ("syslog", syslog)]
    }
}

#[cfg(test)]
mod tests;
