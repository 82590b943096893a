//! The runtime's global allocator (part of the syscall layer: it maps
//! memory and hands out raw pointers).

/// isola's global allocator: the system's (glibc malloc), except in a
/// freshly cloned init. The init is a copy of a process with a large,
/// fragmented heap; every small allocation it made from that heap's free
/// lists wrote to a page shared with its parent, and the copy-on-write
/// fault gave the init a private 4 KiB copy: ~40 pages per sandbox, all
/// over the heap. After [`use_fresh_arena`] allocations come from fresh
/// anonymous mappings instead, bump-allocated and never freed block by
/// block (the init allocates only while it sets up, a few KiB, and gives
/// the mapping back whole once its payload runs: [`release_setup_memory`]),
/// so they fill few pages and the inherited heap stays shared. Binaries opt in with
/// `#[global_allocator]`; without it `use_fresh_arena` changes nothing.
pub struct Allocator;

static ARENA_ON: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
static ARENA_NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
static ARENA_END: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
/// The start of the current arena mapping (0: none yet).
static ARENA_BASE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
/// Where the heap of a process that called [`release_free_memory`] starts
/// (0: never called): its inits let go of it ([`drop_inherited_heap`]).
static HEAP_START: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
/// The main thread's stack mapping of such a process, as it was then
/// (0: unknown). A stack mapping only grows, so its inits may give back
/// pages in this range ([`release_setup_memory`]) knowing nothing else
/// lies there.
static STACK_BOTTOM: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
static STACK_TOP: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
/// Kept above the thread pointer: glibc's thread control block (on x86_64
/// the static TLS lies below the pointer, `struct pthread` above it,
/// ~2.3 KiB), with room to spare.
const TCB_RESERVE: usize = 8192;
const PAGE: usize = 4096;
/// arch_prctl(2): read the FS base, glibc's thread pointer on x86_64.
const ARCH_GET_FS: libc::c_int = 0x1003;

/// Address space reserved per arena mapping; pages cost only once touched.
const ARENA_CHUNK: usize = 1 << 20;

/// From now on this process allocates from fresh mappings (called first
/// thing in a cloned init, which is single-threaded).
pub(crate) fn use_fresh_arena() {
    ARENA_ON.store(true, std::sync::atomic::Ordering::Relaxed);
}

fn arena_alloc(layout: std::alloc::Layout) -> *mut u8 {
    use std::sync::atomic::Ordering::Relaxed;
    let align = layout.align().max(16);
    let size = layout.size().max(1);
    let start = ARENA_NEXT.load(Relaxed).next_multiple_of(align);
    if ARENA_NEXT.load(Relaxed) != 0 && start.saturating_add(size) <= ARENA_END.load(Relaxed) {
        ARENA_NEXT.store(start + size, Relaxed);
        return start as *mut u8;
    }
    let len = ARENA_CHUNK.max(size.saturating_add(align).next_multiple_of(4096));
    let Some(base) = map_anonymous(len, libc::MAP_PRIVATE | libc::MAP_NORESERVE) else {
        return std::ptr::null_mut();
    };
    let start = base.next_multiple_of(align);
    ARENA_NEXT.store(start + size, Relaxed);
    ARENA_END.store(base + len, Relaxed);
    ARENA_BASE.store(base, Relaxed);
    start as *mut u8
}

/// A new read-write anonymous mapping of `len` bytes at an address the
/// kernel picks (`flags`: MAP_PRIVATE or MAP_SHARED, maybe MAP_NORESERVE);
/// None when the kernel refuses (errno says why).
pub(super) fn map_anonymous(len: usize, flags: libc::c_int) -> Option<usize> {
    // SAFETY: a new mapping at an address the kernel picks; it overlaps
    // nothing of ours. Failure is MAP_FAILED, checked.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            flags | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    (base != libc::MAP_FAILED).then_some(base as usize)
}

// SAFETY: outside the two arenas every call goes to the system allocator
// unchanged. In arena mode (a single-threaded init) blocks are disjoint
// ranges of live private mappings, aligned as asked, never handed out twice
// while the init sets up (nothing is freed, so no block is reused; after
// `release_setup_memory` unmapped the arena, a new one may take its
// addresses, and no block of the old one is used again: see there); freeing a block, ours or
// one the heap held before the clone, is a no-op, which only leaks in a
// process that allocates a bounded amount. The shared arena
// (`shared_arena`) is the same bump allocation over one shared mapping;
// its blocks are recognised by address and never freed. Fresh anonymous
// pages are zero, so zeroed allocations need no writes.
unsafe impl std::alloc::GlobalAlloc for Allocator {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        if ARENA_ON.load(std::sync::atomic::Ordering::Relaxed) {
            return arena_alloc(layout);
        }
        if let Some(p) = super::shared_arena::alloc(layout) {
            return p;
        }
        // SAFETY: the caller's contract is the system allocator's.
        unsafe { std::alloc::System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        if ARENA_ON.load(std::sync::atomic::Ordering::Relaxed) {
            return arena_alloc(layout);
        }
        if let Some(p) = super::shared_arena::alloc(layout) {
            return p;
        }
        // SAFETY: the caller's contract is the system allocator's.
        unsafe { std::alloc::System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        if !ARENA_ON.load(std::sync::atomic::Ordering::Relaxed) && !super::shared_arena::owns(ptr) {
            // SAFETY: ptr came from System.alloc with this layout (arena
            // mode, once on, is never switched off; shared blocks are
            // recognised by address).
            unsafe { std::alloc::System.dealloc(ptr, layout) }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new: usize) -> *mut u8 {
        let arena = ARENA_ON.load(std::sync::atomic::Ordering::Relaxed);
        let system_block = !arena && !super::shared_arena::owns(ptr);
        if system_block && !super::shared_arena::active() {
            // SAFETY: the caller's contract is the system allocator's.
            return unsafe { std::alloc::System.realloc(ptr, layout, new) };
        }
        let Ok(to) = std::alloc::Layout::from_size_align(new, layout.align()) else {
            return std::ptr::null_mut();
        };
        // SAFETY: `to` is a valid layout of `new` > 0 bytes (realloc's
        // contract).
        let p = unsafe { self.alloc(to) };
        if !p.is_null() {
            // SAFETY: ptr is valid for layout.size() bytes (caller's
            // contract), p for `new` bytes, and p is a fresh block that
            // cannot overlap ptr.
            unsafe { std::ptr::copy_nonoverlapping(ptr, p, layout.size().min(new)) };
            if system_block {
                // SAFETY: ptr came from System.alloc with this layout and
                // is not used again (its bytes were moved to p).
                unsafe { std::alloc::System.dealloc(ptr, layout) };
            }
        }
        p
    }
}

/// Give the heap's free pages back to the kernel (glibc's `malloc_trim`)
/// and mark where the heap starts, for [`drop_inherited_heap`]. `isola up`
/// calls it before it forks its spawner, and the spawner once it has built
/// its plans (the parse's garbage freed), before it serves: every init, a
/// copy of the spawner, maps this heap until its payload runs, and at each
/// clone the kernel copies a page-table entry for every page of it that is
/// present.
pub fn release_free_memory() {
    use std::sync::atomic::Ordering::Relaxed;
    // SAFETY: malloc_trim only returns free chunks of the malloc heap to
    // the kernel; it takes the allocator's own lock and touches nothing
    // that is allocated.
    unsafe {
        libc::malloc_trim(0);
    }
    if HEAP_START.load(Relaxed) != 0 {
        return;
    }
    let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else {
        return;
    };
    let start = maps
        .lines()
        .find(|l| l.ends_with("[heap]"))
        .and_then(|l| l.split_once('-'))
        .and_then(|(a, _)| usize::from_str_radix(a, 16).ok());
    if let Some(a) = start {
        HEAP_START.store(a, Relaxed);
    }
    let stack = maps
        .lines()
        .find(|l| l.ends_with("[stack]"))
        .and_then(|l| l.split_whitespace().next()?.split_once('-'))
        .and_then(|(a, b)| {
            Some((
                usize::from_str_radix(a, 16).ok()?,
                usize::from_str_radix(b, 16).ok()?,
            ))
        });
    if let Some((bottom, top)) = stack {
        STACK_BOTTOM.store(bottom, Relaxed);
        STACK_TOP.store(top, Relaxed);
    }
}

/// In an init whose payload runs: unmap the heap it inherited from the
/// supervisor (or its spawner), which it no longer reads — since
/// [`use_fresh_arena`] it allocates elsewhere and never frees into it, and
/// what is left to do (wait for signals, reap, exit) reads nothing there.
/// Mapped, that heap cost each of 10,000 inits its page tables, and every
/// reverse-map walk (reclaim, the host's DAMON) a visit to each init for
/// each of its pages. The first part of the heap stays: the thread's TLS
/// and control block, which glibc put there before malloc started. The
/// parent's shared arena ([`super::in_shared_arena`]: the spawner's
/// plans) goes too. A
/// no-op outside a fresh init; the heap stays for a parent that never
/// called [`release_free_memory`] (`isola run`, the OCI commands).
pub(crate) fn drop_inherited_heap() {
    use std::sync::atomic::Ordering::Relaxed;
    if !ARENA_ON.load(Relaxed) {
        return;
    }
    super::shared_arena::drop_inherited();
    let start = HEAP_START.load(Relaxed);
    if start == 0 {
        return;
    }
    let mut tp: libc::c_ulong = 0;
    // SAFETY: ARCH_GET_FS writes the thread pointer to the address given,
    // a live local.
    let r = unsafe {
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_GET_FS,
            std::ptr::addr_of_mut!(tp),
        )
    };
    // SAFETY: sbrk(0) only reads the current break.
    let end = unsafe { libc::sbrk(0) } as usize;
    let Ok(tp) = usize::try_from(tp) else { return };
    if r != 0 || end <= start {
        return;
    }
    let keep_end = if (start..end).contains(&tp) {
        (tp + TCB_RESERVE).next_multiple_of(PAGE)
    } else {
        start
    };
    if keep_end >= end {
        return;
    }
    // SAFETY: [keep_end, end) is the inherited heap's part above the TLS,
    // page-aligned; nothing of ours points into it from here on (see the
    // doc comment), and a stray read would fault, not read garbage.
    unsafe {
        libc::munmap(keep_end as *mut libc::c_void, end - keep_end);
    }
}

/// In an init whose payload runs, after [`drop_inherited_heap`]: give
/// back what setting up dirtied and nothing reads any more — the arena
/// (what the init allocated while it set up; a later allocation maps a new
/// one) and, in a clone of a process that called [`release_free_memory`]
/// (the supervisor's spawner), the stack below the current frame (the deep
/// calls of mounting and planning; copy-on-write copies of the parent's
/// stack pages, private to this init) within the stack mapping that
/// process recorded. What is left of an init is its few live stack pages,
/// its data and the page tables of what it still maps: every sleeping
/// sandbox holds one.
pub(crate) fn release_setup_memory() {
    use std::sync::atomic::Ordering::Relaxed;
    if !ARENA_ON.load(Relaxed) {
        return;
    }
    // The current chunk: an init that outgrew one (more than 1 MiB of
    // set-up) keeps the earlier ones mapped.
    let (base, end) = (ARENA_BASE.load(Relaxed), ARENA_END.load(Relaxed));
    if base != 0 && end > base {
        ARENA_NEXT.store(0, Relaxed);
        ARENA_END.store(0, Relaxed);
        ARENA_BASE.store(0, Relaxed);
        // SAFETY: [base, end) is the arena mapping we made. The contract
        // of the caller (`init::supervise`): nothing allocated before this
        // call is read, written or dropped after it — the init only waits,
        // reaps, signals and exits, with what lives on its stack; it never
        // returns to the frames that own arena blocks (`init::run`'s fd
        // lists), and nothing lazily set up in the init (a `OnceLock`,
        // stdout's buffer) is touched again.
        unsafe {
            libc::munmap(base as *mut libc::c_void, end - base);
        }
    }
    let marker = 0u8;
    let sp = std::ptr::addr_of!(marker) as usize;
    let (bottom, stack_top) = (STACK_BOTTOM.load(Relaxed), STACK_TOP.load(Relaxed));
    if !(bottom..stack_top).contains(&sp) {
        // Not the recorded stack (unknown, or a thread's): leave it.
        return;
    }
    // Two pages below this frame stay: the calls still to come (sigwait,
    // waitpid, kill) are shallow. Below them, nothing is live.
    let top = (sp & !(PAGE - 1)).saturating_sub(2 * PAGE);
    if top <= bottom {
        return;
    }
    // SAFETY: MADV_DONTNEED on private anonymous memory of the stack
    // mapping (recorded by our parent: it has only grown since), below the
    // stack pointer, where no frame lives: a later touch reads zeroes,
    // which is all an unused stack page may hold.
    unsafe {
        libc::madvise(
            bottom as *mut libc::c_void,
            top - bottom,
            libc::MADV_DONTNEED,
        );
    }
}

#[cfg(test)]
mod tests {
    use std::alloc::{GlobalAlloc, Layout};

    use super::*;

    #[test]
    fn the_fresh_arena_hands_out_aligned_disjoint_zeroed_blocks() {
        // Only direct calls reach `Allocator` here (the test binary keeps
        // the system allocator), so switching it on affects nothing else.
        use_fresh_arena();
        let a = Allocator;
        let mut blocks: Vec<(usize, usize)> = Vec::new();
        for (size, align) in [(1, 1), (24, 8), (100, 64), (5000, 4096), (3 << 20, 16)] {
            let layout = Layout::from_size_align(size, align).unwrap();
            // SAFETY: a valid, non-zero-sized layout.
            let p = unsafe { a.alloc_zeroed(layout) };
            assert!(!p.is_null());
            assert!(
                (p as usize).is_multiple_of(align),
                "{size} bytes aligned {align}"
            );
            // SAFETY: p is valid for `size` bytes.
            let bytes = unsafe { std::slice::from_raw_parts_mut(p, size) };
            assert!(bytes.iter().all(|b| *b == 0));
            bytes.fill(0xa5);
            blocks.push((p as usize, size));
        }
        for (i, &(p, n)) in blocks.iter().enumerate() {
            for &(q, m) in &blocks[i + 1..] {
                assert!(p + n <= q || q + m <= p, "blocks overlap");
            }
        }
        let (p, n) = blocks[2];
        let layout = Layout::from_size_align(n, 64).unwrap();
        // SAFETY: p came from this allocator with this layout.
        let q = unsafe { a.realloc(p as *mut u8, layout, 3 * n) };
        assert!(!q.is_null() && (q as usize).is_multiple_of(64));
        // SAFETY: q is valid for 3n bytes, the first n copied from p.
        let moved = unsafe { std::slice::from_raw_parts(q, n) };
        assert!(moved.iter().all(|b| *b == 0xa5));
        // SAFETY: freeing is a no-op in arena mode; the layout matches.
        unsafe { a.dealloc(q, Layout::from_size_align(3 * n, 64).unwrap()) };
    }
}
