//! The sequences that touch several parts, each written down once: what
//! an effect of the core does, a launch, the end of a run, a forgotten
//! service, where said lines and read lines go. Parts never call one
//! another; this file (with `requests`) is where they meet.

use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use isola_runtime::listen::Listen;
use isola_runtime::net::Networking;
use isola_runtime::{exit, ExitStatus};
use nix::errno::Errno;
use nix::sched::CloneFlags;

use super::context::{Ctx, Input, Said, ServiceIx, Verdict};
use crate::control::server::Audience;
use crate::control::{Message, Response};
use crate::lifecycle::{Core, Effect, StartError};
use crate::networks::Attach;
use crate::outputs::{Lines, Outputs, PipeEnds};
use crate::probes::{exec, Target};
use crate::readiness::{Readiness, ReadySpec, Senders};
use crate::reaper::{Child, Reaped};
use crate::sandboxes::{Launch, Report, Sandboxes};
use crate::spec::health::{Check, Notify, ProbeKind};
use crate::spec::policy::Stderr;
use crate::spec::stack::ServiceDef;
use crate::supervisor::{ctx, Supervisor};

/// The sandbox's ends of its stdio and notify pipe (ours registered by
/// their parts), closed here once it is cloned.
struct Ends {
    null: File,
    pipes: PipeEnds,
    ready: Option<OwnedFd>,
}

impl Ends {
    fn stdio(&self) -> [RawFd; 3] {
        let out = self.pipes.stdout.as_raw_fd();
        let err = self.pipes.stderr.as_ref().map_or(out, AsRawFd::as_raw_fd);
        [self.null.as_raw_fd(), out, err]
    }
}

/// Open what a start of `def` (service `i`) needs: its output pipes
/// (stderr into stdout's with `"stderr": "stdout"`), /dev/null for stdin,
/// and for `notify: {"fd": N}` a notify pipe. On a failure nothing stays
/// open; the reason and errno.
fn open_ends(
    outputs: &mut Outputs,
    readiness: &mut Readiness,
    ctx: &mut Ctx<'_>,
    i: ServiceIx,
    def: &ServiceDef,
) -> Result<Ends, (String, Errno)> {
    let merged = def.policy.stderr == Stderr::Stdout;
    let pipes = outputs
        .open_pipes(ctx, i, merged)
        .map_err(|e| (format!("cannot create pipes: {e}"), e))?;
    let null = File::open("/dev/null").map_err(|e| {
        outputs.close_pipes(ctx, i);
        let errno = Errno::from_raw(e.raw_os_error().unwrap_or(0));
        (format!("/dev/null: {e}"), errno)
    })?;
    let ready = match def.policy.health.notify {
        Some(Notify::Fd(_)) => Some(readiness.open_pipe(ctx, i).map_err(|e| {
            outputs.close_pipes(ctx, i);
            (format!("cannot create pipes: {e}"), e)
        })?),
        _ => None,
    };
    Ok(Ends { null, pipes, ready })
}

/// Readiness asks about senders; the core and the sandboxes answer.
pub(crate) struct SenderCheck<'a> {
    pub(crate) core: &'a Core,
    pub(crate) sandboxes: &'a Sandboxes,
}

impl Senders for SenderCheck<'_> {
    fn successor(&self, i: ServiceIx) -> Option<ServiceIx> {
        self.core.service(i)?.successor
    }

    fn is_member(&self, i: ServiceIx, pid: i32) -> bool {
        let own_pid_ns = self
            .core
            .service(i)
            .is_some_and(|s| s.def.plan.new_pid_ns());
        self.sandboxes.is_member(i, pid, own_pid_ns)
    }
}

impl Supervisor {
    /// Carry out one effect of the core (the mirror of `feed`).
    pub(crate) fn apply(&mut self, effect: Effect) {
        if let Some(k) = self.keeper.as_mut() {
            k.changed();
        }
        match effect {
            Effect::Added(i) => self.add_service(i),
            Effect::Launch(i) => self.launch(i),
            Effect::Signal(i, sig) => self.sandboxes.signal(i, sig),
            Effect::KillGroup(i) => self.sandboxes.kill_group(i),
            Effect::Event(i, msg) => self.event(i, &msg),
            Effect::Note(msg) => self.outputs.note(ctx!(self), &msg),
            Effect::Answer(conn, state) => {
                self.control.send(ctx!(self), conn, &Response::state(state))
            }
            Effect::AnswerDown(conn) => self.control.answer_last(conn, &Response::ok()),
            Effect::Forget(i) => self.forget(i),
            Effect::Probe(i, kind) => self.start_probe(i, kind),
            Effect::HandedOver(old, new) => {
                self.readiness.handed_over(ctx!(self), old, new);
                self.rules.handed_over(old, new);
            }
            Effect::DropFdStore(i) => self.readiness.drop_store(i),
        }
    }

    /// A line a part said.
    pub(crate) fn say(&mut self, said: Said) {
        match said {
            Said::Note(msg) => self.outputs.note(ctx!(self), &msg),
            Said::Event(i, msg) => self.event(i, &msg),
        }
    }

    /// A supervisor event: on stderr, in the service's log, to the log's
    /// followers and to `events` subscribers.
    fn event(&mut self, i: ServiceIx, msg: &str) {
        let Some(name) = self.outputs.event(ctx!(self), i, msg) else {
            return;
        };
        let line = format!("isola: {msg}");
        let to_followers = Message::Line {
            line: line.as_str().into(),
        };
        self.control
            .broadcast(ctx!(self), Audience::FollowersOf(&name), &to_followers);
        if !self.control.has(Audience::Subscribers) {
            return;
        }
        let time = crate::logs::timestamp(std::time::SystemTime::now());
        let event = Message::Event {
            time: time.as_str().into(),
            service: name.as_str().into(),
            event: msg.into(),
        };
        self.control
            .broadcast(ctx!(self), Audience::Subscribers, &event);
    }

    /// Lines a service wrote, to the clients following its log (and every
    /// log).
    pub(crate) fn send_lines(&mut self, l: &Lines) {
        for line in &l.lines {
            let msg = Message::Line {
                line: line.as_str().into(),
            };
            self.control
                .broadcast(ctx!(self), Audience::FollowersOf(&l.service), &msg);
        }
        if !self.control.has(Audience::FollowersOfAll) {
            return;
        }
        for line in &l.lines {
            let line = format!("{} | {line}", l.service);
            let msg = Message::Line {
                line: line.as_str().into(),
            };
            self.control
                .broadcast(ctx!(self), Audience::FollowersOfAll, &msg);
        }
    }

    /// A service added by a reload, a scale or an overlap.
    fn add_service(&mut self, i: ServiceIx) {
        let Some(def) = self.core.service(i).map(|s| &s.def) else {
            return;
        };
        let (name, route, replica) = (
            def.name.clone(),
            def.policy.logging.route(),
            def.replica_number(),
        );
        // Without a log file it has no sandbox entry either: `status`
        // leaves it out and its launch fails, saying why.
        match self.outputs.add(i, &name) {
            Ok(()) => {
                self.outputs.set_route(i, route, replica);
                self.sandboxes.add(i, &name);
            }
            Err(e) => self
                .outbox
                .note(format!("reload: log file for {name}: {e}")),
        }
    }

    /// The core let service `i` go: every part drops what it holds for it.
    fn forget(&mut self, i: ServiceIx) {
        if let Some(pid) = self.sandboxes.forget(ctx!(self), i) {
            self.reaper.forget(pid);
        }
        // None should be in flight (its run ended first); a late result
        // must not reach the next service at this index.
        self.probes.cancel(ctx!(self), i);
        self.outputs.forget(ctx!(self), i);
        self.readiness.forget(ctx!(self), i);
        self.rules.forget(i);
    }

    /// The core's `Launch`: pipes, the notify socket or pipe, held sockets
    /// and stored fds, then the clone; its init is reaped by the reaper
    /// and reports through the sandboxes.
    fn launch(&mut self, i: ServiceIx) {
        let Some(s) = self.core.service(i) else {
            return;
        };
        if !self.outputs.has(i) {
            // A service added by a reload whose log file could not be opened.
            let why = "no log file for it (see the reload note)";
            return self.launch_failed(i, why, Errno::ENOENT);
        }
        let def = &s.def;
        let net = match self.networks.as_mut().map(|n| n.interfaces(i, def)) {
            Some(Ok(net)) => net,
            Some(Err(why)) => return self.launch_failed(i, &why, Errno::EADDRNOTAVAIL),
            None => Attach {
                interfaces: Vec::new(),
                cni: false,
            },
        };
        let spec = ReadySpec {
            name: &def.name,
            notify: def.policy.health.notify,
            fd_store_max: def.policy.fd_store_max,
            predecessor: s.predecessor,
        };
        self.readiness.prepare(ctx!(self), i, &spec);
        let ends = match open_ends(&mut self.outputs, &mut self.readiness, ctx!(self), i, def) {
            Ok(e) => e,
            Err((why, errno)) => return self.launch_failed(i, &why, errno),
        };
        let pass: Vec<RawFd> = ends.ready.iter().map(AsRawFd::as_raw_fd).collect();
        let (mut fds, names) = self.held.for_group(def.group_name());
        let mut names = names.to_string();
        self.readiness.stored_fds(i, &mut fds, &mut names);
        let launch = Launch {
            def,
            predecessor: s.predecessor,
            stdio: ends.stdio(),
            pass: &pass,
            listen: Listen {
                fds: &fds,
                names: &names,
            },
            net: Networking {
                interfaces: &net.interfaces,
                hold: net.cni,
            },
        };
        let started = self.sandboxes.launch(ctx!(self), i, launch);
        // Our copies of the sandbox's ends close here.
        drop(ends);
        match started {
            Ok(pid) => {
                self.reaper.watch(pid, Child::Init(i));
                self.outputs.started(i, pid.as_raw());
            }
            Err(e) => {
                self.outputs.close_pipes(ctx!(self), i);
                self.readiness.close_pipe(ctx!(self), i);
                self.release_addresses(i);
                self.outbox.input(Input::StartFailed(i, e));
            }
        }
    }

    /// No sandbox for want of `errno` on our side (pipes, /dev/null).
    fn launch_failed(&mut self, i: ServiceIx, why: &str, errno: Errno) {
        let e = StartError {
            code: exit::code(exit::SETUP),
            why: why.to_string(),
            transient: isola_runtime::error::is_shortage(errno),
        };
        // Addresses it may have taken on its first networks.
        self.release_addresses(i);
        self.outbox.input(Input::StartFailed(i, e));
    }

    /// What an init's report means for the other parts.
    pub(crate) fn on_report(&mut self, i: ServiceIx, report: Report) {
        match report {
            Report::Running => self.watch_rules(i),
            Report::NetworkHeld { init } => self.on_network_held(i, init),
            Report::RanAndExited(status) => self.run_ended(i, status),
            Report::Failed { init } => {
                // The report reaped it, if the reaper had not.
                self.reaper.forget(init);
                self.rules.run_ended(i);
                self.release_addresses(i);
                self.drain_outputs(i);
                self.readiness.close_pipe(ctx!(self), i);
            }
        }
    }

    /// Service `i`'s payload runs: its rules' windows start over, pressure
    /// rules with a trigger on its cgroup.
    fn watch_rules(&mut self, i: ServiceIx) {
        let Some(s) = self.core.service(i) else {
            return;
        };
        let cgroup = self.sandboxes.running(i).and_then(|(_, c)| c);
        let rules = &s.def.policy.resource_rules;
        let failed = self.rules.watch(ctx!(self), i, rules, cgroup);
        for (k, e) in failed {
            let why = format!("resourceRules[{k}]: no PSI trigger ({e}): read once a second");
            self.outbox.event(i, why);
        }
    }

    /// The services on the stack's networks changed (a reload, a scale;
    /// once for all it added, not per service): the nameserver learns
    /// their names, and new ones get their files.
    pub(crate) fn update_network_members(&mut self) {
        let Some(n) = self.networks.as_mut() else {
            return;
        };
        let defs = self.core.services().map(|(_, s)| &s.def);
        if let Err(e) = n.set_members(defs) {
            self.outbox.note(format!("networks: {e}"));
        }
    }

    /// Sandbox `i` is gone: its network addresses are free.
    fn release_addresses(&mut self, i: ServiceIx) {
        if let Some(n) = self.networks.as_mut() {
            let plugins = n.run_ended(i);
            self.watch_plugins(plugins);
        }
    }

    /// A query to the stack's nameserver: names resolve to the running
    /// sandbox that holds each service's name.
    pub(crate) fn on_name_query(&mut self, key: u64) {
        let (core, sandboxes) = (&self.core, &self.sandboxes);
        let holder = |name: &str| {
            let i = core.find(name)?;
            sandboxes.running(i).map(|_| i)
        };
        let ctx = ctx!(self);
        if let Some(n) = self.networks.as_mut() {
            n.on_event(ctx, key, &holder);
        }
    }

    /// SIGCHLD: every child that exited, to its owner.
    pub(crate) fn reap_children(&mut self) {
        for r in self.reaper.reap() {
            self.on_reaped(r);
        }
    }

    /// A child's exit, to its owner.
    pub(crate) fn on_reaped(&mut self, r: Reaped) {
        {
            match r.child {
                Child::Init(i) => {
                    if self.sandboxes.init_exited(i, r.pid, r.status) {
                        self.run_ended(i, r.status);
                    }
                }
                Child::Probe(id) => self.probes.exited(ctx!(self), id, r.status.code()),
                Child::Plugin(op) => self.plugin_exited(op, r.status),
                Child::UpgradeCheck => self.upgrade_checked(r.pid, r.status.code()),
            }
        }
    }

    /// Service `i`'s init exited: its probes end, its notify pipe closes,
    /// its sandbox is torn down (the core hears once its cgroup is empty)
    /// and what it wrote is read.
    fn run_ended(&mut self, i: ServiceIx, status: ExitStatus) {
        self.probes.cancel(ctx!(self), i);
        self.rules.run_ended(i);
        self.release_addresses(i);
        self.readiness.close_pipe(ctx!(self), i);
        self.sandboxes.end_run(ctx!(self), i, status);
        self.drain_outputs(i);
    }

    fn drain_outputs(&mut self, i: ServiceIx) {
        for lines in self.outputs.drain(ctx!(self), i) {
            self.send_lines(&lines);
        }
    }

    /// The core's `Probe`: start probe `kind` of service `i` where it runs.
    fn start_probe(&mut self, i: ServiceIx, kind: ProbeKind) {
        let Some((init, cgroup)) = self.sandboxes.running(i) else {
            let verdict = Verdict::fail("not running");
            return self.outbox.input(Input::ProbeDone {
                service: i,
                kind,
                verdict,
            });
        };
        let Some(s) = self.core.service(i) else {
            return;
        };
        let Some(spec) = s.def.policy.health.probe(kind) else {
            return;
        };
        let target = match spec.check {
            Check::Exec(_) => Target::Exec(exec::Sandbox {
                init,
                cgroup,
                plan: &s.def.plan,
            }),
            Check::Tcp { .. } | Check::Http { .. } => {
                let plan = &s.def.plan;
                let own_netns = plan.new_net_ns()
                    || plan
                        .join
                        .iter()
                        .any(|(f, _)| f.contains(CloneFlags::CLONE_NEWNET));
                Target::Socket {
                    netns: own_netns.then_some(init),
                }
            }
        };
        if let Some(w) = self.probes.start(ctx!(self), i, kind, spec, &target) {
            self.reaper.watch(w.pid, Child::Probe(w.id));
        }
    }
}
