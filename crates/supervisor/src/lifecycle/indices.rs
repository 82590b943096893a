//! Where a service lives in the core: its index, given when it is added
//! and taken back once it is forgotten — reused only after the loop is
//! done with the wakeup that forgot it, so no event of that wakeup reaches
//! a newcomer through an old index.

use super::{Core, Effect, Service, ServiceDef};

impl Core {
    /// A new service (reload, scale): named, with a slot in the loop.
    pub(super) fn add_service(&mut self, def: ServiceDef) -> usize {
        let name = def.name.clone();
        let i = self.place(Service::new(def));
        self.names.insert(name, i);
        i
    }

    /// Put a new service at a free index (else at the end); the loop gives
    /// it what a service needs.
    pub(super) fn place(&mut self, s: Service) -> usize {
        let i = match self.free.pop() {
            Some(i) => {
                self.services[i] = Some(s);
                i
            }
            None => {
                self.services.push(Some(s));
                self.services.len() - 1
            }
        };
        self.effects.push_back(Effect::Added(i));
        i
    }

    /// Service `i` is forgotten (its `Forget` effect queued). Nothing may
    /// keep pointing at its index, which a newcomer gets later: an overlap
    /// partner lets go of it, and a successor that had not taken the name
    /// yet has no service left to take it from.
    pub(super) fn retire(&mut self, i: usize) {
        let Some(s) = self.services[i].take() else {
            return;
        };
        self.successors.retain(|x| *x != i);
        if let Some(p) = s.predecessor.and_then(|p| self.svc(p)) {
            if p.successor == Some(i) {
                p.successor = None;
            }
        }
        if let Some(j) = s.successor {
            self.successors.retain(|x| *x != j);
            if let Some(next) = self.svc(j).filter(|n| n.predecessor == Some(i)) {
                next.predecessor = None;
                next.overlap_until = None;
                self.orphans.push(j);
            }
        }
        self.retired.push(i);
    }

    /// The loop is done with this wakeup's events: indices forgotten in it
    /// may be given to new services (no event of the wakeup can reach a
    /// newcomer through an old index).
    pub fn recycle(&mut self) {
        // Lowest first: new services fill the table from its start.
        self.free.append(&mut self.retired);
        self.free.sort_unstable_by(|a, b| b.cmp(a));
    }
}
