//! A read-only copy of a text in shared memory, which a fork does not copy.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use nix::errno::Errno;

/// The range of the live [`SharedText`] (0, 0 when there is none): an init
/// cloned from a process that maps it lets go of it with its inherited heap
/// ([`super::drop_inherited_heap`]).
static TEXT_START: AtomicUsize = AtomicUsize::new(0);
static TEXT_LEN: AtomicUsize = AtomicUsize::new(0);

/// A text (a stack file) copied into an anonymous *shared* mapping, then
/// made read-only. At a fork the kernel copies a page-table entry for
/// every page of private memory that was written — the heap, and glibc's
/// own mappings of large allocations — but none for a shared mapping,
/// whose pages the child faults in as it reads them. `isola up` hands the
/// stack file to its spawner this way, forked before the parse: the text
/// of 10,000 services (2 MB) costs none of the spawner's clones anything,
/// and the inits, which never read it, unmap it. Only one lives at a time
/// (`isola up` makes one).
pub struct SharedText {
    start: usize,
    len: usize,
}

impl SharedText {
    /// Copy `text` into a fresh shared mapping and seal it read-only.
    pub fn new(text: &str) -> Result<SharedText, Errno> {
        // mmap refuses a length of 0; an empty text still gets a page.
        let len = text.len().max(1);
        let start = super::arena::map_anonymous(len, libc::MAP_SHARED).ok_or_else(Errno::last)?;
        let base = start as *mut libc::c_void;
        let shared = SharedText {
            start,
            len: text.len(),
        };
        // SAFETY: the mapping is `len` ≥ text.len() bytes, writable, fresh
        // (no overlap with `text`).
        unsafe { std::ptr::copy_nonoverlapping(text.as_ptr(), base.cast::<u8>(), text.len()) };
        // SAFETY: our own fresh mapping; from here on nothing writes it.
        let r = unsafe { libc::mprotect(base, len, libc::PROT_READ) };
        Errno::result(r)?;
        TEXT_START.store(shared.start, Relaxed);
        TEXT_LEN.store(len, Relaxed);
        Ok(shared)
    }

    pub fn as_str(&self) -> &str {
        // SAFETY: `len` bytes at `start` are the mapping, readable while
        // `self` lives, never written after `new` (read-only, and shared
        // only with our own forks, which never map it writable); they are
        // a copy of a `&str`, so valid UTF-8.
        let bytes = unsafe { std::slice::from_raw_parts(self.start as *const u8, self.len) };
        // SAFETY: as above, a copy of a `&str`.
        unsafe { std::str::from_utf8_unchecked(bytes) }
    }
}

impl Drop for SharedText {
    fn drop(&mut self) {
        // Forget the range first: an init cloned later must not unmap
        // whatever the kernel maps there next.
        TEXT_START.store(0, Relaxed);
        TEXT_LEN.store(0, Relaxed);
        // SAFETY: our mapping; no `&str` from `as_str` outlives `self`.
        unsafe {
            libc::munmap(self.start as *mut libc::c_void, self.len.max(1));
        }
    }
}

/// In a fresh init: unmap the text its parent shared, if any.
pub(super) fn drop_inherited_text() {
    let (start, len) = (TEXT_START.load(Relaxed), TEXT_LEN.load(Relaxed));
    if start == 0 {
        return;
    }
    // SAFETY: the range of a live SharedText of the process this init was
    // cloned from, so mapped here too; the init reads nothing in it from
    // here on (its plan, if parsed from it, owns copies of its strings).
    unsafe {
        libc::munmap(start as *mut libc::c_void, len);
    }
}
