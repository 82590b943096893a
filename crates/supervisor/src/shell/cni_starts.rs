//! A start on a CNI network: its init holds in its new network namespace
//! while the plugins run (children of ours, reaped like any other), then
//! goes on — or the start fails with the plugin's word and backs off as
//! any failed start does.

use isola_runtime::ExitStatus;
use nix::unistd::Pid;

use super::context::{Input, ServiceIx};
use crate::networks::{CniExited, CniOp};
use crate::reaper::Child;
use crate::supervisor::{ctx, Supervisor};

impl Supervisor {
    /// Service `i`'s init `init` holds: its CNI plugins start. With no
    /// networks any more (a reload took them meanwhile), it goes on.
    pub(crate) fn on_network_held(&mut self, i: ServiceIx, init: Pid) {
        let (Some(s), Some(n)) = (self.core.service(i), self.networks.as_mut()) else {
            return self.sandboxes.go_on(i);
        };
        let out = n.cni_add(i, init, &s.def);
        self.follow(out);
    }

    /// A plugin exited: the next one of its chain starts, or the start it
    /// worked for goes on or fails.
    pub(crate) fn plugin_exited(&mut self, op: CniOp, status: ExitStatus) {
        let Some(n) = self.networks.as_mut() else {
            return;
        };
        let out = n.cni_exited(op, status);
        self.follow(out);
    }

    /// What the CNI runs said: plugins to watch, a held start to let go on
    /// or fail, a broken network to restart its service for.
    fn follow(&mut self, out: CniExited) {
        self.watch_plugins(out.spawned);
        match out.done {
            Some((i, Ok(_))) => self.sandboxes.go_on(i),
            Some((i, Err(why))) => self.network_failed(i, why),
            None => {}
        }
        if let Some((i, why)) = out.broken {
            self.outbox.input(Input::NetworkFailed(i, why));
        }
    }

    /// A reload: the CNI networks of every running sandbox are checked.
    pub(crate) fn check_cni_networks(&mut self) {
        if let Some(n) = self.networks.as_mut() {
            let plugins = n.cni_check();
            self.watch_plugins(plugins);
        }
    }

    pub(crate) fn watch_plugins(&mut self, plugins: Vec<(Pid, CniOp)>) {
        for (pid, op) in plugins {
            self.reaper.watch(pid, Child::Plugin(op));
        }
    }

    fn network_failed(&mut self, i: ServiceIx, why: String) {
        let report = self.sandboxes.abort_start(ctx!(self), i, why);
        if let Some(r) = report {
            self.on_report(i, r);
        }
    }
}
