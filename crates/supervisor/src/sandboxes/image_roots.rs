//! The roots of a stack's image services: prepared in the store before a
//! service's first start and held (locked) while the stack runs, so its
//! writes outlive its restarts and `isola rmi` knows the image is in use
//! (a read-only root is shared by the sandboxes of its service: an
//! overlap's successor starts on its predecessor's);
//! set aside (a rename) when the service leaves the stack, deleted when
//! the stack ends — never on the loop's time. A new stack first sets
//! aside what a killed supervisor of the same name left: it starts from
//! its images, not from an old run's writes.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;

use isola_images::root::{self, SandboxRoot, Writable};
use isola_images::Digest;
use isola_runtime::exit;

use std::os::fd::OwnedFd;

use isola_runtime::handover::Outgoing;
use nix::errno::Errno;

use crate::lifecycle::StartError;
use crate::shell::context::ServiceIx;
use crate::spec::stack::ServiceDef;
use crate::upgrade::snapshot::RootRecord;

#[derive(Default)]
pub(crate) struct ImageRoots {
    /// Roots by name, and the services on each (an overlap's successor
    /// shares its predecessor's read-only root).
    held: HashMap<String, Held>,
    /// Which root each service is on.
    of: HashMap<ServiceIx, String>,
    /// Roots set aside (a service gone, a killed supervisor's): deleted
    /// when the stack ends, never on the loop's time.
    gone: Vec<PathBuf>,
    /// Stale roots of this stack were set aside.
    cleared: bool,
}

/// A root held, what it was made for, and who is on it.
struct Held {
    digest: Digest,
    writable: Writable,
    root: SandboxRoot,
    users: BTreeSet<ServiceIx>,
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
        let name = image.root_name(&def.name);
        if let Some(h) = self.held.get_mut(&name) {
            if h.digest == image.record.digest && h.writable == image.writable {
                h.users.insert(i);
                if let Some(old) = self.of.insert(i, name.clone()).filter(|o| *o != name) {
                    self.leave(i, &old);
                }
                return Ok(());
            }
        }
        self.discard(i);
        if self.held.contains_key(&name) {
            return Err(failed(format!(
                "image root {name}: in use by another sandbox of the service"
            )));
        }
        let store = image.store().map_err(|e| failed(e.to_string()))?;
        if !self.cleared {
            let stale = root::clear_stale(&store, &image.place.root_prefix())
                .map_err(|e| failed(format!("image roots: {e}")))?;
            self.gone.extend(stale);
            self.cleared = true;
        }
        let r = SandboxRoot::prepare(&store, &name, &image.record, image.writable)
            .map_err(|e| failed(format!("image root: {e}")))?;
        let held = Held {
            digest: image.record.digest.clone(),
            writable: image.writable,
            root: r,
            users: BTreeSet::from([i]),
        };
        self.held.insert(name.clone(), held);
        self.of.insert(i, name);
        Ok(())
    }

    /// Every root held, its lock kept across an upgrade's exec; the roots
    /// set aside. `name_of` names a service.
    pub(crate) fn export(
        &self,
        out: &mut Outgoing,
        name_of: &dyn Fn(ServiceIx) -> Option<String>,
    ) -> Result<(Vec<RootRecord>, Vec<PathBuf>, bool), Errno> {
        let mut roots = Vec::with_capacity(self.held.len());
        for (name, h) in &self.held {
            roots.push(RootRecord {
                name: name.clone(),
                digest: h.digest.to_string(),
                fd: out.keep(h.root.lock_fd())?,
                users: h.users.iter().filter_map(|i| name_of(*i)).collect(),
            });
        }
        Ok((roots, self.gone.clone(), self.cleared))
    }

    /// A root an older binary held, with its lock, for `users` (their
    /// indices and definitions now). What a killed supervisor left was set
    /// aside by the first binary already.
    pub(crate) fn adopt(
        &mut self,
        rec: &RootRecord,
        lock: OwnedFd,
        users: &[(ServiceIx, &ServiceDef)],
    ) -> Result<(), String> {
        let Some(image) = users.iter().find_map(|(_, d)| d.image.as_ref()) else {
            return Err(format!(
                "image root {}: no service of the stack uses it",
                rec.name
            ));
        };
        let store = image.store().map_err(|e| e.to_string())?;
        let root = SandboxRoot::adopt(&store, &rec.name, &image.record, image.writable, lock)
            .map_err(|e| format!("image root {}: {e}", rec.name))?;
        for (i, _) in users {
            self.of.insert(*i, rec.name.clone());
        }
        // What the root was made for, not what the reference names now
        // (pulled again meanwhile): a next start on another image then
        // gets a fresh root, as `ensure` decides.
        let digest =
            Digest::parse(&rec.digest).map_err(|e| format!("image root {}: {e}", rec.name))?;
        let held = Held {
            digest,
            writable: image.writable,
            root,
            users: users.iter().map(|(i, _)| *i).collect(),
        };
        self.held.insert(rec.name.clone(), held);
        Ok(())
    }

    /// Roots an older binary set aside: deleted when the stack ends.
    pub(crate) fn adopt_gone(&mut self, gone: &[PathBuf], cleared: bool) {
        self.cleared = cleared;
        self.gone.extend(gone.iter().cloned());
    }

    /// Service `i` left the stack (or its image): off its root, which is
    /// set aside once nobody is on it.
    pub(crate) fn discard(&mut self, i: ServiceIx) {
        if let Some(name) = self.of.remove(&i) {
            self.leave(i, &name);
        }
    }

    fn leave(&mut self, i: ServiceIx, name: &str) {
        let Some(h) = self.held.get_mut(name) else {
            return;
        };
        h.users.remove(&i);
        if h.users.is_empty() {
            if let Some(h) = self.held.remove(name) {
                if let Ok(p) = h.root.discard() {
                    self.gone.push(p);
                }
            }
        }
    }

    /// The stack ends: every root goes. The first error, to say.
    pub(crate) fn finish(&mut self) -> Option<String> {
        let mut first = None;
        self.of.clear();
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
