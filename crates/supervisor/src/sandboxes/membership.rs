//! Is a host pid a process of a service's sandbox? Asked of a notify
//! datagram's sender (SO_PASSCRED): its cgroup says so when the sandbox
//! has one, else its PID namespace, else its ancestry.

use std::path::Path;

use super::Sandboxes;
use crate::shell::context::ServiceIx;

/// How the cgroup v2 mount shows in /proc/PID/cgroup paths.
const CGROUP_MOUNT: &str = "/sys/fs/cgroup";
/// How far up the process tree a sender is looked for (no cgroup, no PID
/// namespace to tell).
const MAX_ANCESTRY: usize = 16;

impl Sandboxes {
    /// Is `pid` (a host pid) a process of service `i`'s running sandbox?
    /// `own_pid_ns`: the sandbox has a PID namespace of its own.
    pub(crate) fn is_member(&self, i: ServiceIx, pid: i32, own_pid_ns: bool) -> bool {
        let Some((init, cgroup)) = self.running(i) else {
            return false;
        };
        if let Some(cg) = cgroup {
            return in_cgroup(pid, cg);
        }
        let ns = |p: i32| std::fs::read_link(format!("/proc/{p}/ns/pid")).ok();
        if own_pid_ns {
            return ns(pid).is_some() && ns(pid) == ns(init.as_raw());
        }
        descends_from(pid, init.as_raw())
    }
}

fn in_cgroup(pid: i32, cg: &Path) -> bool {
    let Ok(want) = cg.strip_prefix(CGROUP_MOUNT) else {
        return false;
    };
    let want = Path::new("/").join(want);
    std::fs::read_to_string(format!("/proc/{pid}/cgroup")).is_ok_and(|t| {
        t.lines()
            .filter_map(|l| l.strip_prefix("0::"))
            .any(|p| Path::new(p).starts_with(&want))
    })
}

/// No cgroup, no PID namespace: the init's descendants.
fn descends_from(pid: i32, init: i32) -> bool {
    let mut p = pid;
    for _ in 0..MAX_ANCESTRY {
        if p == init {
            return true;
        }
        match parent_of(p) {
            Some(pp) if pp > 1 => p = pp,
            _ => return false,
        }
    }
    false
}

fn parent_of(pid: i32) -> Option<i32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("PPid:"))
        .and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ancestry_is_followed_up_to_the_init() {
        let me = i32::try_from(std::process::id()).unwrap();
        let parent = parent_of(me).unwrap();
        assert!(descends_from(me, me));
        assert!(!descends_from(parent, me));
        // PID 1 is where the walk stops (run as a container's init, the
        // test's parent is it).
        if parent > 1 {
            assert!(descends_from(me, parent));
        }
    }
}
