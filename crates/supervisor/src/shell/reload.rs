//! SIGHUP: the stack file read again. The core restarts changed services,
//! starts new ones, stops removed ones and leaves the rest alone; held
//! sockets still listed are kept; `logging` and network names apply at
//! once. A file that does not load, does not fit, or changes the stack's
//! networks changes nothing.

use crate::held_sockets::HeldSockets;
use crate::networks::Networks;
use crate::shell::loading::{add_to_all, check_stack, Checked, Loading};
use crate::supervisor::{load_stack, Supervisor, UpError};

impl Supervisor {
    pub(crate) fn reload(&mut self) {
        let (checked, held) = match self.load_again() {
            Ok(o) => o,
            Err(e) => {
                self.outbox
                    .note(format!("reload failed, keeping the running stack: {e}"));
                return;
            }
        };
        // Sockets no longer listed close here (the running payloads keep
        // their own copies until they stop).
        self.held = held;
        self.sandboxes.set_stats_cap(checked.stats_cap);
        for w in &checked.stack.warnings {
            self.outbox.note(format!("warning: {w}"));
        }
        self.outbox.note("reloading the stack file");
        let mut defs = checked.stack.services;
        add_to_all(&self.additions, &mut defs);
        // The spawner holds the file as it was at start, not this text:
        // what a reload changes or adds is cloned here (services it leaves
        // alone keep their definitions, and numbers).
        for def in &mut defs {
            def.entry = None;
        }
        let routes: Vec<_> = defs
            .iter()
            .map(|d| (d.name.clone(), d.policy.logging.route(), d.replica_number()))
            .collect();
        self.core.reload(defs, self.now);
        // `logging` applies at once, to services the reload left running.
        for (name, route, replica) in routes {
            if let Some(i) = self.core.find(&name) {
                self.outputs.set_route(i, route, replica);
            }
        }
        // Aliases may have changed on services the reload left running.
        self.update_network_members();
    }

    /// The file read and checked as at start, its networks unchanged, and
    /// its held sockets opened (nothing of the running set moved if not).
    fn load_again(&mut self) -> Result<(Checked, HeldSockets), UpError> {
        let checked = load_stack(&self.cfg.stack_path)
            .map_err(UpError::from)
            .and_then(|s| check_stack(&self.cfg, s, Loading::Reload))?;
        let networks = self
            .networks
            .as_ref()
            .map(Networks::defs)
            .unwrap_or_default();
        if checked.stack.networks.as_slice() != networks {
            return Err(UpError::Setup(
                "its networks changed (restart isola up to change them)".into(),
            ));
        }
        let held = self
            .held
            .open_all(&checked.stack.services)
            .map_err(UpError::Setup)?;
        Ok((checked, held))
    }
}
