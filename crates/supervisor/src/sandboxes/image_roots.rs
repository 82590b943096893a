//! The roots of a stack's image services: prepared in the store before a
//! service's first start and held (locked) while the stack runs, so its
//! writes outlive its restarts and `isola rmi` knows the image is in use;
//! set aside when the service leaves the stack (a prune deletes them:
//! never on the loop's time), deleted when the stack ends. A new stack
//! first clears what a killed supervisor of the same name left: it starts
//! from its images, not from an old run's writes.

use std::collections::HashMap;

use isola_images::root::{self, SandboxRoot};
use isola_images::Digest;
use isola_runtime::exit;

use crate::lifecycle::StartError;
use crate::shell::context::ServiceIx;
use crate::spec::stack::ServiceDef;

#[derive(Default)]
pub(crate) struct ImageRoots {
    held: HashMap<ServiceIx, (Digest, SandboxRoot)>,
    /// Stale roots of this stack were cleared.
    cleared: bool,
}

fn failed(why: String) -> StartError {
    StartError {
        code: exit::code(exit::SETUP),
        why,
        transient: false,
    }
}

impl ImageRoots {
    /// Service `i`'s root, ready before its sandbox starts (a reload that
    /// changed its image gets a fresh one).
    pub(crate) fn ensure(&mut self, i: ServiceIx, def: &ServiceDef) -> Result<(), StartError> {
        let Some(image) = &def.image else {
            return Ok(());
        };
        match self.held.get(&i) {
            Some((d, _)) if *d == image.record.digest => return Ok(()),
            Some(_) => self.discard(i),
            None => {}
        }
        let store = image.store().map_err(|e| failed(e.to_string()))?;
        if !self.cleared {
            root::clear_stale(&store, &image.place.root_prefix())
                .map_err(|e| failed(format!("image roots: {e}")))?;
            self.cleared = true;
        }
        let name = image.place.root_name(&def.name);
        let r = SandboxRoot::prepare(&store, &name, &image.record, image.writable)
            .map_err(|e| failed(format!("image root: {e}")))?;
        self.held.insert(i, (image.record.digest.clone(), r));
        Ok(())
    }

    /// Service `i` left the stack: its writes go (at the next prune).
    pub(crate) fn discard(&mut self, i: ServiceIx) {
        if let Some((_, r)) = self.held.remove(&i) {
            let _ = r.discard();
        }
    }

    /// The stack ends: every root goes. The first error, to say.
    pub(crate) fn finish(&mut self) -> Option<String> {
        let mut first = None;
        for (_, (_, r)) in self.held.drain() {
            if let Err(e) = r.remove() {
                first.get_or_insert(format!("image roots: {e}"));
            }
        }
        first
    }
}
