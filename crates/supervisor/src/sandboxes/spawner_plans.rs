//! What the spawner clones from: every service of the stack file, built
//! by the spawner itself from the file's text right after it is forked
//! (see [`crate::spawner`] for the process and its protocol), looked up by
//! the position and fingerprint the supervisor sends.

use std::borrow::Cow;
use std::os::fd::AsFd;
use std::os::fd::RawFd;
use std::path::Path;
use std::time::Duration;

use isola_runtime::listen::Listen;
use isola_runtime::{exit, sandbox, Plan};
use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags};
use nix::sys::signal::Signal;

use crate::host::PlanAdditions;
use crate::spawner::{self, Spawner, Wanted};
use crate::spec::images::ImageContext;
use crate::spec::stack::{self, ServiceDef};

/// When the spawner builds its services.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Build {
    /// Right away, while the supervisor parses the same text (`isola up`:
    /// the first starts follow at once).
    Now,
    /// Once nothing was asked for this long, or at the first start asked
    /// (an upgrade's take-over, where every service runs already: a build
    /// meanwhile would take the CPU from the supervisor's own parse while
    /// no service is watched; a start asked sooner waits for the build).
    WhenIdle(Duration),
}

/// Fork the spawner now, before the stack file is parsed, while this
/// process holds little but the file's `text`: every init is a copy of the
/// spawner. The spawner builds each service from the text as the
/// supervisor does ([`stack::service_def`], then `additions`; paths
/// relative to `base_dir`), all at once, when `build` says, and before any
/// init exists; then it frees its copy of the text (the supervisor's
/// stays).
pub(crate) fn fork_spawner(
    text: &mut String,
    (base_dir, stack_root): (&Path, &Path),
    additions: &PlanAdditions,
    images: &ImageContext,
    siblings: bool,
    build: Build,
) -> Result<Spawner, Errno> {
    // Under a keeper, the spawner is the keeper's child (and so is every
    // init it clones): none dies with the supervisor.
    let parent = match siblings {
        true => nix::unistd::getppid(),
        false => nix::unistd::getpid(),
    };
    Spawner::fork(siblings, |sock| {
        // In the child, which holds only `sock` and stdio.
        if nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).is_err()
            || nix::unistd::getppid() != parent
        {
            return i32::from(exit::FAILURE);
        }
        // Ours to free: our copy of the supervisor's memory, whose frames
        // this process never returns to.
        let text = std::mem::take(text);
        if let Build::WhenIdle(quiet) = build {
            // Whatever poll says, the build comes next.
            let ms = u16::try_from(quiet.as_millis()).unwrap_or(u16::MAX);
            let _ = poll(&mut [PollFd::new(sock.as_fd(), PollFlags::POLLIN)], ms);
        }
        let table = build_all(&text, base_dir, additions, images);
        drop(text);
        // The text and the parse's garbage, freed, go back before the
        // first clone.
        isola_runtime::release_free_memory();
        let plan_for = |w: &Wanted| lookup(&table, w, additions);
        spawner::serve(sock, plan_for, |stdio| {
            options("", stack_root, additions.no_cgroup, stdio, true)
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
    additions: &PlanAdditions,
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
            additions.add_to(&mut d);
            Some((Cow::Owned(d.name), Cow::Owned(d.plan)))
        }
        _ => None,
    }
}

/// Every service of the file, by position (None where the file does not
/// build: the supervisor refuses such a file and never asks), kept in the
/// shared arena. Each is built in the heap and then copied there, so no
/// garbage of the parse lands in it.
fn build_all(
    text: &str,
    base_dir: &Path,
    additions: &PlanAdditions,
    images: &ImageContext,
) -> Vec<Option<Built>> {
    let Ok(entries) = stack::entries(text) else {
        return Vec::new();
    };
    let mut table = isola_runtime::in_shared_arena(|| Vec::with_capacity(entries.len()));
    for (name, json) in entries {
        let built = stack::service_def(name, json.get(), base_dir, images)
            .ok()
            .map(|(mut def, _)| {
                if def.group.is_some() {
                    isola_runtime::in_shared_arena(|| Built::Replicated(Box::new(def.clone())))
                } else {
                    additions.add_to(&mut def);
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
pub(super) fn options<'a>(
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
        net: isola_runtime::net::Networking::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn additions() -> PlanAdditions {
        PlanAdditions {
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
        let c = additions();
        let stack = stack::parse(&text, base).expect("stack");
        let table = build_all(&text, base, &c, &ImageContext::default());
        assert_eq!(table.len(), 3);
        for mut def in stack.services {
            c.add_to(&mut def);
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
        assert!(build_all("{", base, &c, &ImageContext::default()).is_empty());
    }
}
