//! What a control request does: the control server frames requests, this
//! file answers them — from the core, the sandboxes and the log files —
//! or hands them to the core, which answers once the services settle.

use std::time::Instant;

use isola_runtime::cgroup::limits;
use oci_spec::runtime::LinuxResources;

use super::context::ServiceIx;
use crate::control::server::Follow;
use crate::control::{ExecTarget, Request, Response, ScaleTo};
use crate::lifecycle::{ConnId, Core, Phase};
use crate::logs;
use crate::spec::sockets::MAX_REPLICAS;
use crate::supervisor::{ctx, Supervisor};

fn no_such_service(verb: &str, name: &str) -> Response<'static> {
    Response::err(format!("{verb}: {name:?}: no such service"))
}

/// What a request about one service does to it, or to every replica of a
/// group of that name.
struct Act {
    verb: &'static str,
    one: fn(&mut Core, usize, ConnId, Instant),
    group: fn(&mut Core, &str, ConnId, Instant),
}

const STOP: Act = Act {
    verb: "stop",
    one: Core::stop,
    group: |c, g, id, t| c.group_request(g, true, id, t),
};
const START: Act = Act {
    verb: "start",
    one: Core::start,
    group: |c, g, id, t| c.group_request(g, false, id, t),
};
const RESTART: Act = Act {
    verb: "restart",
    one: Core::restart,
    group: Core::restart_group,
};

impl Supervisor {
    /// Answer a request now, or register the connection to be answered
    /// when the service settles (the core's `Answer`).
    pub(crate) fn handle(&mut self, id: ConnId, req: Request) {
        let reply = match req {
            Request::Status => return self.status_reply(id),
            Request::Down => return self.core.shutdown(Some(id), self.now),
            Request::Stop { name } => return self.on_service(id, &name, &STOP),
            Request::Start { name } => return self.on_service(id, &name, &START),
            Request::Restart { name } => return self.on_service(id, &name, &RESTART),
            Request::Events => {
                self.control.subscribe(id);
                Response::ok()
            }
            Request::Exec { name } => self.exec_target(&name),
            Request::Scale { name, replicas } => self.scale(&name, replicas),
            Request::Update { name, resources } => self.update_limits(&name, &resources),
            Request::Metrics => return self.scrape_for(id),
            Request::Info => self.info_reply(),
            Request::Upgrade { binary } => return self.begin_upgrade(id, binary),
            Request::Logs {
                name,
                lines,
                follow,
                since,
            } => self.logs(id, name, lines, follow, since.as_deref()),
        };
        self.control.send(ctx!(self), id, &reply);
    }

    /// A request about one service, or every replica of one: the core
    /// answers once it (or all of them) settled.
    fn on_service(&mut self, id: ConnId, name: &str, act: &Act) {
        match self.core.find(name) {
            Some(i) => (act.one)(&mut self.core, i, id, self.now),
            None if !self.core.group_members(name).is_empty() => {
                (act.group)(&mut self.core, name, id, self.now)
            }
            // No replica to act on: a connection starts one (or `isola
            // scale NAME N`).
            None if self.core.autoscaled(name).is_some() => {
                let reply = Response::state(crate::lifecycle::State::ScaledToZero);
                self.control.send(ctx!(self), id, &reply);
            }
            None => {
                let reply = no_such_service(act.verb, name);
                self.control.send(ctx!(self), id, &reply);
            }
        }
    }

    fn scale(&mut self, name: &str, to: ScaleTo) -> Response<'static> {
        match self.pin_scale(name, to) {
            Some(Ok(())) => return Response::ok(),
            Some(Err(e)) => return Response::err(format!("scale: {e}")),
            None => {}
        }
        let ScaleTo::Count(replicas) = to else {
            return Response::err(format!(
                "scale: {name}: auto: not an autoscaled service (give it \"autoscale\" in the stack file)"
            ));
        };
        if replicas == 0 || replicas > MAX_REPLICAS {
            return Response::err(format!("scale: {replicas}: must be 1 to {MAX_REPLICAS}"));
        }
        if self.core.find(name).is_some() && self.core.group_members(name).is_empty() {
            return Response::err(format!(
                "scale: {name}: not a replicated service (give it \"replicas\" in the stack file)"
            ));
        }
        match self.core.scale(name, replicas, self.now) {
            Ok(_) => {
                self.update_network_members();
                Response::ok()
            }
            Err(e) => Response::err(format!("scale: {e}")),
        }
    }

    /// `logs`: the tail of one service's log, or of every service's
    /// interleaved; with `follow`, the connection gets what comes next.
    fn logs(
        &mut self,
        id: ConnId,
        name: String,
        lines: usize,
        follow: bool,
        since: Option<&str>,
    ) -> Response<'static> {
        let cfg = &self.cfg.logs;
        let (tail, follows) = if name.is_empty() {
            let mut names: Vec<String> = self
                .core
                .services()
                .map(|(_, s)| s.def.name.clone())
                .collect();
            names.sort();
            names.dedup();
            let tail = logs::tail_all(&cfg.dir, &names, lines, cfg.files, since);
            (tail, Follow::All)
        } else if self.core.find(&name).is_some() {
            let tail = logs::tail_since(&cfg.dir, &name, lines, cfg.files, since);
            (tail, Follow::Service(name))
        } else {
            return self.not_one_log(&name);
        };
        if follow {
            self.control.follow(id, follows);
        }
        Response {
            lines: Some(tail),
            ..Response::ok()
        }
    }

    /// `logs NAME` of a replicated service, or of no service.
    fn not_one_log(&self, name: &str) -> Response<'static> {
        let members = self.core.group_members(name);
        let (Some(first), Some(last)) = (members.first(), members.last()) else {
            return no_such_service("logs", name);
        };
        let n = |i: &ServiceIx| {
            self.core
                .service(*i)
                .map(|s| s.def.name.clone())
                .unwrap_or_default()
        };
        Response::err(format!(
            "logs: {name}: has replicas, each with its own log: name one ({} … {})",
            n(first),
            n(last)
        ))
    }

    /// `exec`: where service `name`'s sandbox runs.
    fn exec_target(&self, name: &str) -> Response<'static> {
        let Some((i, s)) = self
            .core
            .find(name)
            .and_then(|i| Some((i, self.core.service(i)?)))
        else {
            return Response::err(format!("exec: {name:?}: no such service"));
        };
        let (Phase::Running { .. }, Some((init, cgroup))) = (s.phase, self.sandboxes.running(i))
        else {
            return Response::err(format!(
                "exec: {name}: not running ({})",
                s.phase.state().as_str()
            ));
        };
        let stack = std::fs::canonicalize(&self.cfg.stack_path)
            .unwrap_or_else(|_| self.cfg.stack_path.clone());
        Response {
            exec: Some(ExecTarget {
                pid: init.as_raw(),
                cgroup: cgroup.map(std::path::Path::to_path_buf),
                stack,
                fingerprint: s.def.fingerprint,
                image_store: Some(self.cfg.image_store.clone()),
            }),
            ..Response::ok()
        }
    }

    /// `update`: a service's limits changed live. The new values are
    /// written to the running sandbox's cgroup (all or none) and kept for
    /// its later starts until the next reload of the stack file (which
    /// restarts it with the file's).
    fn update_limits(&mut self, name: &str, resources: &serde_json::Value) -> Response<'static> {
        let res: LinuxResources = match serde_json::from_value(resources.clone()) {
            Ok(r) => r,
            Err(e) => return Response::err(format!("update: {name}: {e}")),
        };
        let files = match limits::translate(&res) {
            Ok(f) if f.is_empty() => {
                return Response::err(format!("update: {name}: no limit given"))
            }
            Ok(f) => f,
            Err(e) => return Response::err(format!("update: {name}: {e}")),
        };
        let targets = match self.core.find(name) {
            Some(i) => vec![i],
            None => self.core.group_members(name),
        };
        if targets.is_empty() {
            return Response::err(format!("update: {name:?}: no such service"));
        }
        if self.sandboxes.no_cgroup() {
            return Response::err(format!(
                "update: {name}: the supervisor runs without cgroups (--no-cgroup)"
            ));
        }
        for &i in &targets {
            if let Err(e) = self.sandboxes.update_limits(i, &files) {
                let who = self
                    .core
                    .service(i)
                    .map(|s| s.def.name.clone())
                    .unwrap_or_default();
                return Response::err(format!("update: {who}: {e} (nothing changed)"));
            }
            self.core.set_live_limits(i, &files);
        }
        Response::ok()
    }
}
