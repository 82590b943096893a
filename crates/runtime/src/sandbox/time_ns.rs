//! A new time namespace (`linux.namespaces` time, `linux.timeOffsets`).
//! Its offsets can be written only while no process is in it, and a
//! process enters a time namespace only through its parent: so the parent
//! unshares one for its children, writes the offsets, clones the init into
//! it and goes back to its own.

use std::fs::File;
use std::io::Write;

use nix::sched::{setns, unshare, CloneFlags};

use crate::plan::Plan;
use crate::Error;

/// While alive, the caller's children are born in the new namespace.
pub(super) struct Made {
    /// The namespace our children were born in before.
    back: File,
}

fn flag() -> CloneFlags {
    CloneFlags::from_bits_retain(libc::CLONE_NEWTIME)
}

/// Make `plan`'s time namespace for the next clone, if it has one.
pub(super) fn make(plan: &Plan) -> Result<Option<Made>, Error> {
    let Some(t) = &plan.time_ns else {
        return Ok(None);
    };
    fn io(what: &'static str) -> impl Fn(std::io::Error) -> Error {
        move |e| {
            let errno = nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO));
            Error::sys(format!("time namespace: {what}"), errno)
        }
    }
    let back = File::open("/proc/self/ns/time_for_children").map_err(io("open"))?;
    unshare(flag()).map_err(|e| Error::sys("time namespace: unshare", e))?;
    let made = Made { back };
    // One write: the kernel takes every clock's line at once.
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open("/proc/self/timens_offsets")
        .map_err(io("open timens_offsets"))?;
    f.write_all(t.offsets.as_bytes())
        .map_err(io("write timens_offsets"))?;
    Ok(Some(made))
}

impl Drop for Made {
    fn drop(&mut self) {
        // Our children's namespace of before: always allowed. Were it not,
        // every later sandbox would get these clocks: stop instead.
        if let Err(e) = setns(&self.back, flag()) {
            let _ = writeln!(
                std::io::stderr(),
                "isola: cannot return to our own time namespace: {e}"
            );
            std::process::abort();
        }
    }
}
