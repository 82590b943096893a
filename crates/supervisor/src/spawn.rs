//! How a sandbox is cloned: by the spawner when it knows the service as it
//! is now, else here in the supervisor; and the cgroup it gets (an
//! overlap's successor takes the name its predecessor does not hold).

use std::borrow::Cow;
use std::os::fd::RawFd;
use std::path::Path;

use isola_runtime::listen::Listen;
use isola_runtime::sandbox::Starting;
use isola_runtime::{exit, sandbox, Plan};
use nix::errno::Errno;
use nix::sys::signal::Signal;

use crate::host::Completion;
use crate::lifecycle::StartError;
use crate::spawner::{self, Answer, Spawner, Wanted};
use crate::stack::{self, ServiceDef};
use crate::supervisor::Supervisor;

/// Marks the cgroup of an overlap's successor while the old sandbox holds
/// the service's own name.
pub(crate) const SUCCESSOR_SUFFIX: &str = "..next";

/// Fork the spawner now, before the stack file is parsed, while this
/// process holds little but the file's `text`: every init is a copy of the
/// spawner. The spawner builds each service from the text as the
/// supervisor does ([`stack::service_def`], then `completion`; paths
/// relative to `base_dir`), all at once while the supervisor parses the
/// same text, and before any init exists; then it frees its copy of the
/// text (the supervisor's stays).
pub(crate) fn fork_spawner(
    text: &mut String,
    base_dir: &Path,
    stack_root: &Path,
    completion: &Completion,
) -> Result<Spawner, Errno> {
    let supervisor = nix::unistd::getpid();
    Spawner::fork(|sock| {
        // In the child, which holds only `sock` and stdio.
        if nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).is_err()
            || nix::unistd::getppid() != supervisor
        {
            return i32::from(exit::FAILURE);
        }
        // Ours to free: our copy of the supervisor's memory, whose frames
        // this process never returns to.
        let text = std::mem::take(text);
        let table = build_all(&text, base_dir, completion);
        drop(text);
        // The text and the parse's garbage, freed, go back before the
        // first clone.
        isola_runtime::release_free_memory();
        let plan_for = |w: &Wanted| lookup(&table, w, completion);
        spawner::serve(sock, plan_for, |stdio| {
            options("", stack_root, completion.no_cgroup, stdio, true)
        })
    })
}

/// A service of the stack file as the spawner keeps it.
enum Built {
    /// Ready to clone, completed as the supervisor completes it.
    Service {
        fingerprint: u64,
        name: String,
        plan: Box<Plan>,
    },
    /// A replicated service: each replica is made from it when it starts
    /// (a replica's name, and so its notify directory, are its own).
    Replicated(Box<ServiceDef>),
}

/// The plan (and name) the spawner clones for `w`: borrowed from the table
/// for a service, made for a replica; None when the table does not have
/// that service in that form.
fn lookup<'t>(
    table: &'t [Option<Built>],
    w: &Wanted,
    completion: &Completion,
) -> Option<(Cow<'t, str>, Cow<'t, Plan>)> {
    let built = table.get(usize::try_from(w.entry).ok()?)?.as_ref()?;
    match built {
        Built::Service {
            fingerprint,
            name,
            plan,
        } if *fingerprint == w.fingerprint && w.replica == 0 => {
            Some((Cow::Borrowed(name.as_str()), Cow::Borrowed(&**plan)))
        }
        Built::Replicated(def) if def.fingerprint == w.fingerprint && w.replica > 0 => {
            let mut d = def.replica(w.replica)?;
            completion.complete(&mut d);
            Some((Cow::Owned(d.name), Cow::Owned(d.plan)))
        }
        _ => None,
    }
}

/// Every service of the file, by position (None where the file does not
/// build: the supervisor refuses such a file and never asks), kept in the
/// shared arena. Each is built in the heap and then copied there, so no
/// garbage of the parse lands in it.
fn build_all(text: &str, base_dir: &Path, completion: &Completion) -> Vec<Option<Built>> {
    let Ok(entries) = stack::entries(text) else {
        return Vec::new();
    };
    let mut table = isola_runtime::in_shared_arena(|| Vec::with_capacity(entries.len()));
    for (name, json) in entries {
        let built = stack::service_def(name, json.get(), base_dir)
            .ok()
            .map(|(mut def, _)| {
                if def.group.is_some() {
                    isola_runtime::in_shared_arena(|| Built::Replicated(Box::new(def.clone())))
                } else {
                    completion.complete(&mut def);
                    isola_runtime::in_shared_arena(|| Built::Service {
                        fingerprint: def.fingerprint,
                        name: def.name.clone(),
                        plan: Box::new(def.plan.clone()),
                    })
                }
            });
        // Within the capacity reserved: no reallocation.
        table.push(built);
    }
    table
}

/// Where and how a service is cloned. `sibling` when the spawner clones it.
fn options<'a>(
    name: &'a str,
    cgroup_root: &'a Path,
    no_cgroup: bool,
    stdio: [RawFd; 3],
    sibling: bool,
) -> sandbox::Options<'a> {
    sandbox::Options {
        name,
        cgroup_root,
        no_cgroup,
        stdio: Some(stdio),
        sibling,
        pass_fds: &[],
        listen: Listen::default(),
        detach: None,
        hook_state: None,
    }
}

impl Supervisor {
    /// Clone service `i`'s init: through the spawner when it knows the
    /// service as it is now, else here.
    pub(crate) fn spawn_sandbox(
        &mut self,
        i: usize,
        stdio: [RawFd; 3],
        pass: &[RawFd],
        listen: Listen,
    ) -> Result<Starting, StartError> {
        let gone = || StartError {
            code: exit::code(exit::SETUP),
            why: "service removed".to_string(),
            transient: false,
        };
        let cg_name = self.cgroup_name(i).ok_or_else(gone)?;
        if let Some(slot) = self.slot(i) {
            slot.cgroup_name.clone_from(&cg_name);
        }
        // The spawner builds services as the file it holds has them, and
        // names their groups after them: one whose limits `isola update`
        // changed, one a reload read, and an overlap's successor in
        // `NAME..next` are cloned here.
        let s = self.core.service(i).ok_or_else(gone)?;
        let known = s
            .def
            .entry
            .filter(|_| !s.def.live_limits && cg_name == s.def.name);
        if let (Some(sp), Some(entry)) = (self.spawner.as_ref(), known) {
            let cgroup = (!self.cfg.no_cgroup).then(|| self.stack_root.join(&cg_name));
            let start = spawner::Start {
                entry,
                replica: s.def.replica_number().unwrap_or(0),
                fingerprint: s.def.fingerprint,
                stdio,
                pass,
                listen,
            };
            match sp.request(&start, &s.def.name, cgroup) {
                Ok(Answer::Started(st)) => return Ok(st),
                Ok(Answer::Failed {
                    code,
                    message,
                    transient,
                }) => {
                    return Err(StartError {
                        code,
                        why: message,
                        transient,
                    })
                }
                Ok(Answer::Unknown) => {}
                Err(e) => {
                    self.note(&format!(
                        "spawner: {e}; starting sandboxes in-process from now on"
                    ));
                    self.spawner = None;
                }
            }
        }
        let def = &self.core.service(i).ok_or_else(gone)?.def;
        let mut opts = options(&cg_name, &self.stack_root, self.cfg.no_cgroup, stdio, false);
        opts.pass_fds = pass;
        opts.listen = listen;
        sandbox::spawn(&def.plan, &opts).map_err(|e| StartError::from(&e))
    }

    /// Service `i`'s cgroup directory name: its own, but an overlap's
    /// successor takes whichever of `NAME` and `NAME..next` the sandbox it
    /// replaces does not hold (names with `..` are not service names).
    fn cgroup_name(&self, i: usize) -> Option<String> {
        let s = self.core.service(i)?;
        let name = &s.def.name;
        let Some(p) = s.predecessor else {
            return Some(name.clone());
        };
        let theirs = self.slots.get(p)?.as_ref()?.cgroup_name.as_str();
        Some(if theirs == name {
            format!("{name}{SUCCESSOR_SUFFIX}")
        } else {
            name.clone()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn completion() -> Completion {
        Completion {
            inherited: crate::host::Inherited::with(
                Some(isola_runtime::plan::Rlimit {
                    resource: nix::sys::resource::Resource::RLIMIT_NOFILE,
                    soft: 1024,
                    hard: 4096,
                }),
                Some(200),
            ),
            no_cgroup: false,
            socket: "/run/isola/s.sock".into(),
        }
    }

    /// What the spawner clones is what the supervisor would: every service
    /// and replica of a file, completed (notify directories are per
    /// replica), looked up by the number and fingerprint the supervisor
    /// sends; anything else is not known.
    #[test]
    fn the_spawner_builds_each_service_as_the_supervisor_does() {
        let svc = |extra: &str| {
            format!(
                r#"{{"process": {{"args": ["/bin/sh"]}}, "root": {{"path": "/"}},
                    "linux": {{"namespaces": [{{"type": "mount"}}]}}{extra}}}"#
            )
        };
        let text = format!(
            r#"{{"services": {{"a": {}, "web": {}, "db": {}}}}}"#,
            svc(r#", "oom": "kill""#),
            svc(r#", "replicas": 3, "notify": "systemd""#),
            svc(r#", "dependsOn": ["web"]"#),
        );
        let base = Path::new("/");
        let c = completion();
        let stack = stack::parse(&text, base).expect("stack");
        let table = build_all(&text, base, &c);
        assert_eq!(table.len(), 3);
        for mut def in stack.services {
            c.complete(&mut def);
            let w = Wanted {
                entry: def.entry.expect("numbered"),
                replica: def.replica_number().unwrap_or(0),
                fingerprint: def.fingerprint,
            };
            let (name, plan) = lookup(&table, &w, &c).expect(&def.name);
            assert_eq!(name, def.name);
            assert_eq!(
                format!("{plan:?}"),
                format!("{:?}", def.plan),
                "{}",
                def.name
            );
            let stale = Wanted {
                fingerprint: def.fingerprint ^ 1,
                ..w
            };
            assert!(lookup(&table, &stale, &c).is_none(), "{}", def.name);
        }
        let beyond = Wanted {
            entry: 3,
            replica: 0,
            fingerprint: 0,
        };
        assert!(lookup(&table, &beyond, &c).is_none());
        assert!(build_all("{", base, &c).is_empty());
    }
}
