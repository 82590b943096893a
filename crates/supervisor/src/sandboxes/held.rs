//! A start held in its network namespace while the supervisor puts it on
//! its CNI networks: let go on, or failed with the plugins' word.

use isola_runtime::exit;
use nix::unistd::Pid;

use super::{Report, Sandboxes, Stage};
use crate::lifecycle::StartError;
use crate::shell::context::{Ctx, Input, ServiceIx};

impl Sandboxes {
    /// Service `i`'s held init goes on (its report comes as any other).
    /// A failed write is the init gone: its socket's EOF says so.
    pub(crate) fn go_on(&mut self, i: ServiceIx) {
        if let Some(Stage::Starting(st)) = self.services.get(i).map(|s| &s.stage) {
            let _ = st.go_on();
        }
    }

    /// Service `i`'s held start fails for `why`: its sandbox is killed and
    /// removed (`None`: it was not held).
    pub(crate) fn abort_start(
        &mut self,
        ctx: &mut Ctx<'_>,
        i: ServiceIx,
        why: String,
    ) -> Option<Report> {
        let s = self.services.get_mut(i)?;
        if !matches!(s.stage, Stage::Starting(_)) {
            return None;
        }
        let Stage::Starting(st) = std::mem::replace(&mut s.stage, Stage::Idle) else {
            return None;
        };
        ctx.reactor.remove(st.sync_fd());
        let init = st.pid();
        // Dropping it kills, reaps and removes the sandbox.
        drop(st);
        Some(self.start_failed(ctx, i, init, why))
    }

    /// A start that failed on our side, after its clone.
    pub(super) fn start_failed(
        &mut self,
        ctx: &mut Ctx<'_>,
        i: ServiceIx,
        init: Pid,
        why: String,
    ) -> Report {
        if let Some(s) = self.services.get_mut(i) {
            s.record_exit();
        }
        let e = StartError {
            code: exit::code(exit::SETUP),
            why,
            transient: true,
        };
        ctx.out.input(Input::StartFailed(i, e));
        Report::Failed { init }
    }
}
