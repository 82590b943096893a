//! The roots of a stack's image services: prepared in the store before a
//! service's first start and held (locked) while the stack runs, so its
//! writes outlive its restarts and `isola rmi` knows the image is in use;
//! set aside (a rename) when the service leaves the stack, deleted when
//! the stack ends — never on the loop's time. A new stack first sets
//! aside what a killed supervisor of the same name left: it starts from
//! its images, not from an old run's writes.

use std::collections::HashMap;
use std::path::PathBuf;

use isola_images::root::{self, SandboxRoot, Writable};
use isola_images::Digest;
use isola_runtime::exit;

use crate::lifecycle::StartError;
use crate::shell::context::ServiceIx;
use crate::spec::stack::ServiceDef;

#[derive(Default)]
pub(crate) struct ImageRoots {
    held: HashMap<ServiceIx, Held>,
    /// Roots set aside (a service gone, a killed supervisor's): deleted
    /// when the stack ends, never on the loop's time.
    gone: Vec<PathBuf>,
    /// Stale roots of this stack were set aside.
    cleared: bool,
}

/// A root held, and what it was made for.
struct Held {
    digest: Digest,
    writable: Writable,
    root: SandboxRoot,
}

fn failed(why: String) -> StartError {
    StartError {
        code: exit::code(exit::SETUP),
        why,
        transient: false,
    }
}

impl ImageRoots {
    /// Service `i`'s root, ready before its sandbox starts. A reload that
    /// changed its image (or made it writable) gets a fresh one; one that
    /// dropped its image lets the old one go.
    pub(crate) fn ensure(&mut self, i: ServiceIx, def: &ServiceDef) -> Result<(), StartError> {
        let Some(image) = &def.image else {
            self.discard(i);
            return Ok(());
        };
        match self.held.get(&i) {
            Some(h) if h.digest == image.record.digest && h.writable == image.writable => {
                return Ok(())
            }
            Some(_) => self.discard(i),
            None => {}
        }
        let store = image.store().map_err(|e| failed(e.to_string()))?;
        if !self.cleared {
            let stale = root::clear_stale(&store, &image.place.root_prefix())
                .map_err(|e| failed(format!("image roots: {e}")))?;
            self.gone.extend(stale);
            self.cleared = true;
        }
        let name = image.place.root_name(&def.name);
        let r = SandboxRoot::prepare(&store, &name, &image.record, image.writable)
            .map_err(|e| failed(format!("image root: {e}")))?;
        let held = Held {
            digest: image.record.digest.clone(),
            writable: image.writable,
            root: r,
        };
        self.held.insert(i, held);
        Ok(())
    }

    /// Service `i` left the stack (or its image): its root is set aside.
    pub(crate) fn discard(&mut self, i: ServiceIx) {
        if let Some(h) = self.held.remove(&i) {
            if let Ok(p) = h.root.discard() {
                self.gone.push(p);
            }
        }
    }

    /// The stack ends: every root goes. The first error, to say.
    pub(crate) fn finish(&mut self) -> Option<String> {
        let mut first = None;
        for (_, h) in self.held.drain() {
            if let Err(e) = h.root.remove() {
                first.get_or_insert(format!("image roots: {e}"));
            }
        }
        for p in self.gone.drain(..) {
            if let Err(e) = root::delete(&p) {
                first.get_or_insert(format!("image roots: {e}"));
            }
        }
        first
    }
}
