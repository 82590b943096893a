//! What `isola up` tells of the whole stack, besides each service's
//! events: to systemd when it runs under it ([`under_systemd`]), and a
//! progress line at a terminal ([`progress`]). Both look at the core once
//! per wakeup.
//!
//! [`under_systemd`]: super::under_systemd
//! [`progress`]: super::progress

use std::time::Instant;

use super::progress::Progress;
use super::under_systemd::SdNotify;
use crate::keeper::Channel;
use crate::lifecycle::Core;
use crate::outputs::Sink;

pub(crate) struct Reports {
    /// Under systemd: READY=1, STATUS=, STOPPING=1.
    sd_notify: Option<SdNotify>,
    /// A big stack's start at a terminal.
    progress: Option<Progress>,
}

impl Reports {
    pub(crate) fn new(services: usize, echo: bool, keeper: Option<Channel>) -> Reports {
        Reports {
            sd_notify: SdNotify::from_env_via(keeper),
            progress: Progress::new(services, echo),
        }
    }

    /// When the progress line is to be redrawn.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.progress.as_ref().and_then(Progress::deadline)
    }

    /// An upgrade execs now (under systemd: `RELOADING=1`).
    pub(crate) fn upgrading(&self, status: &str) {
        if let Some(sd) = self.sd_notify.as_ref() {
            sd.reloading(status);
        }
    }

    /// The upgrade's exec failed.
    pub(crate) fn upgrade_failed(&self) {
        if let Some(sd) = self.sd_notify.as_ref() {
            sd.reload_failed();
        }
    }

    /// Tell what changed; true when `stderr` got something to flush.
    pub(crate) fn update(&mut self, core: &Core, stderr: &mut Sink) -> bool {
        if let Some(sd) = self.sd_notify.as_mut() {
            sd.update(core);
        }
        self.progress
            .as_mut()
            .is_some_and(|p| p.update(core, stderr, Instant::now()))
    }
}
