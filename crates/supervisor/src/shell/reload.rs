//! SIGHUP: the stack file read again. The core restarts changed services,
//! starts new ones, stops removed ones and leaves the rest alone; held
//! sockets still listed are kept; `logging` and network names apply at
//! once; networks that change are made again (their members restart). A
//! file that does not load or does not fit changes nothing.

use crate::held_sockets::HeldSockets;
use crate::networks::{self, NetChange};
use crate::shell::loading::{add_to_all, check_stack, read_stack, Checked, Loading};
use crate::spec::stack;
use crate::supervisor::ctx;
use crate::supervisor::{stack_name, Supervisor, UpError};
use isola_runtime::SpecError;

impl Supervisor {
    pub(crate) fn reload(&mut self) {
        // The keeper holds copies of sockets a reload may close and bind
        // again (held sockets, the nameserver's).
        self.keeper_forgets();
        let (checked, held, nets, text) = match self.load_again() {
            Ok(o) => o,
            Err(e) => {
                self.outbox
                    .note(format!("reload failed, keeping the running stack: {e}"));
                return;
            }
        };
        // Sockets no longer listed close here (the running payloads keep
        // their own copies until they stop); none is left in the epoll set.
        self.held.unwatch_all(&self.reactor);
        self.held = held;
        self.sandboxes.set_stats_cap(checked.stats_cap);
        for w in &checked.stack.warnings {
            self.outbox.note(format!("warning: {w}"));
        }
        self.outbox.note("reloading the stack file");
        self.upgrades.loaded(text);
        let mut defs = checked.stack.services;
        add_to_all(&self.additions, &mut defs);
        // The spawner holds the file as it was at start, not this text:
        // what a reload changes or adds is cloned here (services it leaves
        // alone keep their definitions, and numbers).
        for def in &mut defs {
            def.entry = None;
        }
        // Before the members restart: they start on the new bridges.
        let ctx = ctx!(self);
        match networks::apply_change(ctx, &mut self.networks, nets, &defs, &self.cfg.socket) {
            Ok(plugins) => self.watch_plugins(plugins),
            Err(e) => self.outbox.note(format!("networks: {e}")),
        }
        let routes: Vec<_> = defs
            .iter()
            .map(|d| (d.name.clone(), d.policy.logging.route(), d.replica_number()))
            .collect();
        // As written: the core completes each replica it makes of them.
        let mut autoscaled = checked.stack.autoscaled;
        let mut replicated = checked.stack.replicated;
        for def in autoscaled.iter_mut().chain(replicated.iter_mut()) {
            // The spawner holds the file as it was at start: an unchanged
            // service keeps its number there (the spawner checks the
            // fingerprint), a changed one is cloned here.
            let kept = self
                .core
                .written(&def.name)
                .filter(|old| old.fingerprint == def.fingerprint);
            def.entry = kept.and_then(|old| old.entry);
        }
        self.core.set_replicated(replicated);
        self.autoscaler.define(&autoscaled, self.now);
        let additions = self.additions.clone();
        self.core
            .set_autoscaled(autoscaled, move |d| additions.add_to(d));
        self.core.reload(defs, self.now);
        self.keep_pins();
        self.watch_arrivals();
        // `logging` applies at once, to services the reload left running.
        for (name, route, replica) in routes {
            if let Some(i) = self.core.find(&name) {
                self.outputs.set_route(i, route, replica);
            }
        }
        // Aliases may have changed on services the reload left running;
        // their CNI networks are checked (a broken one restarts them).
        self.update_network_members();
        self.check_cni_networks();
    }

    /// The file read and checked as at start, what it changes of the
    /// networks decided, and its held sockets opened (nothing of the
    /// running set moved if not).
    fn load_again(&mut self) -> Result<(Checked, HeldSockets, NetChange, String), UpError> {
        let text = read_stack(&self.cfg.stack_path)?;
        let base_dir = isola_runtime::spec::base_dir(&self.cfg.stack_path);
        let checked = stack::parse_with(&text, &base_dir, &self.cfg.images())
            .map_err(UpError::from)
            .and_then(|s| {
                let running = self
                    .core
                    .services()
                    .filter(|(_, s)| s.phase.alive())
                    .count();
                check_stack(&self.cfg, s, Loading::Reload { running })
            })?;
        let stack_root = self.cfg.cgroup_root.join(stack_name(&self.cfg.stack_path));
        let nets =
            networks::plan_change(self.networks.as_ref(), &stack_root, &checked.stack.networks)
                .map_err(|e| UpError::Spec(SpecError::new("networks", e)))?;
        let held = self
            .held
            .open_all(checked.stack.with_autoscaled())
            .map_err(UpError::Setup)?;
        Ok((checked, held, nets, text))
    }
}
