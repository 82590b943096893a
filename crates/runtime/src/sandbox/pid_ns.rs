//! A PID namespace joined by path (`linux.namespaces` pid with a `path`).
//! setns(2) of a PID namespace moves only the caller's future children, and
//! the init itself must be in there (its pid is the container's), so the
//! parent enters it just for the clone and goes back to its own after.

use std::fs::File;
use std::io::Write;

use nix::sched::{setns, CloneFlags};

use crate::plan::Plan;
use crate::Error;

/// While alive, the caller's children are born in the joined namespace.
pub(super) struct Entered {
    /// Our own PID namespace, to return to (always allowed: it is ours).
    back: File,
}

/// Enter `plan`'s joined PID namespace for the next clone, if it joins one.
pub(super) fn enter(plan: &Plan) -> Result<Option<Entered>, Error> {
    let Some((_, path)) = plan
        .join
        .iter()
        .find(|(f, _)| f.contains(CloneFlags::CLONE_NEWPID))
    else {
        return Ok(None);
    };
    let open = |p: &std::path::Path| {
        File::open(p).map_err(|e| Error::sys(format!("open {}", p.display()), errno(&e)))
    };
    let back = open(std::path::Path::new("/proc/self/ns/pid"))?;
    let target = open(path)?;
    setns(target, CloneFlags::CLONE_NEWPID)
        .map_err(|e| Error::sys(format!("setns {}", path.display()), e))?;
    Ok(Some(Entered { back }))
}

fn errno(e: &std::io::Error) -> nix::errno::Errno {
    nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))
}

impl Drop for Entered {
    fn drop(&mut self) {
        // Our own namespace: the kernel always lets us back. Were it not
        // to, every later sandbox would be born in the joined one: stop
        // rather than go on placing them wrongly.
        if let Err(e) = setns(&self.back, CloneFlags::CLONE_NEWPID) {
            let _ = writeln!(
                std::io::stderr(),
                "isola: cannot return to our own PID namespace: {e}"
            );
            std::process::abort();
        }
    }
}
