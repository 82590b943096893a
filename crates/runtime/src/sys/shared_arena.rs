//! Memory for what the spawner keeps, in a shared mapping: clones do not
//! copy it, and the inits cloned from it are not tied to it.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};

/// Address space reserved once; pages cost only once touched.
const RESERVE: usize = 1 << 30;

static BASE: AtomicUsize = AtomicUsize::new(0);
static NEXT: AtomicUsize = AtomicUsize::new(0);
static ON: AtomicBool = AtomicBool::new(false);

/// Run `f` with the global allocator ([`super::Allocator`]) handing out
/// memory from one anonymous *shared* mapping, bump-allocated and never
/// freed, and return what it built — meant for data built once and kept
/// for the life of the process (the spawner's plans), built by `f`
/// without garbage (a `clone` of what was parsed elsewhere).
///
/// Why shared: the spawner clones every init, and a clone copies a
/// page-table entry per page of private memory it maps (25 MB of plans for
/// 10,000 services: 6,000 entries per start, and as many for the init to
/// unmap). It also ties each init's copy of every private mapping to the
/// spawner's pages, so that anything walking reverse maps (reclaim, the
/// host's DAMON) visits all 10,000 inits for each such page. A shared
/// mapping is neither copied nor tied: an init faults in the pages of its
/// own plan, and lets go of the mapping once its payload runs
/// ([`super::drop_inherited_heap`]). Without the mapping (mmap refused),
/// `f` allocates as usual.
pub fn in_shared_arena<T>(f: impl FnOnce() -> T) -> T {
    if BASE.load(Relaxed) == 0 {
        if let Some(base) =
            super::arena::map_anonymous(RESERVE, libc::MAP_SHARED | libc::MAP_NORESERVE)
        {
            BASE.store(base, Relaxed);
            NEXT.store(base, Relaxed);
        }
    }
    ON.store(true, Relaxed);
    let r = f();
    ON.store(false, Relaxed);
    r
}

/// A block from the shared arena, when allocations go there and it has
/// room; None sends the caller to the system allocator.
pub(super) fn alloc(layout: std::alloc::Layout) -> Option<*mut u8> {
    let base = BASE.load(Relaxed);
    if !ON.load(Relaxed) || base == 0 {
        return None;
    }
    let start = NEXT.load(Relaxed).next_multiple_of(layout.align().max(16));
    let end = start.checked_add(layout.size().max(1))?;
    if end > base + RESERVE {
        return None;
    }
    NEXT.store(end, Relaxed);
    Some(start as *mut u8)
}

/// Whether allocations go to the shared arena now.
pub(super) fn active() -> bool {
    ON.load(Relaxed) && BASE.load(Relaxed) != 0
}

/// Whether `ptr` is a block of the shared arena (freeing one is a no-op).
pub(super) fn owns(ptr: *mut u8) -> bool {
    let base = BASE.load(Relaxed);
    base != 0 && (base..base + RESERVE).contains(&(ptr as usize))
}

/// In a fresh init: unmap the arena its parent shared, if any.
pub(super) fn drop_inherited() {
    let base = BASE.load(Relaxed);
    if base == 0 {
        return;
    }
    // SAFETY: the arena of the process this init was cloned from, so
    // mapped here too; the init reads nothing in it from here on (see
    // drop_inherited_heap).
    unsafe {
        libc::munmap(base as *mut libc::c_void, RESERVE);
    }
}

#[cfg(test)]
mod tests {
    use std::alloc::Layout;

    use super::*;

    #[test]
    fn blocks_come_from_one_shared_mapping_and_only_inside_the_closure() {
        let layout = Layout::from_size_align(100, 64).unwrap();
        assert!(alloc(layout).is_none(), "outside in_shared_arena");
        let [a, b] = in_shared_arena(|| [alloc(layout), alloc(layout)]);
        let (a, b) = (a.expect("a block"), b.expect("a block"));
        assert!(owns(a) && owns(b));
        assert!((a as usize).is_multiple_of(64) && (b as usize).is_multiple_of(64));
        assert!(b as usize >= a as usize + 100, "blocks overlap");
        let heap = Box::new(0u8);
        assert!(!owns(std::ptr::from_ref(&*heap).cast_mut()));
        // Shared, not copied: what a fork writes there shows here (a
        // private mapping would have given the child its own copy).
        // SAFETY: `a` is a live block of 100 bytes.
        unsafe { a.write(1) };
        // SAFETY: the child only writes to memory and exits.
        match unsafe { nix::unistd::fork() }.expect("fork") {
            nix::unistd::ForkResult::Child => {
                // SAFETY: as above, in the child's view of the mapping.
                unsafe { a.write(7) };
                // SAFETY: ends the child without running the parent's
                // destructors or test harness.
                unsafe { libc::_exit(0) }
            }
            nix::unistd::ForkResult::Parent { child } => {
                nix::sys::wait::waitpid(child, None).expect("waitpid");
            }
        }
        // SAFETY: `a` is live and was written.
        assert_eq!(unsafe { a.read() }, 7);
    }
}
