//! What a part gets when it handles an event or carries out an effect:
//! the reactor to (un)register its own fds, the time, and an outbox for
//! what it has to tell — inputs for the lifecycle core and lines to say.
//! A part never sees the loop, the core or another part; the loop empties
//! the outbox after every call ([`crate::supervisor`]'s `settle`).

use std::collections::VecDeque;
use std::time::Instant;

use crate::lifecycle::{ConnId, Exit, Notice, StartError};
use crate::spec::health::ProbeKind;

use super::reactor::Reactor;

/// A service, by its index in the core (reused once the core forgot it
/// and the wakeup that forgot it is over).
pub(crate) type ServiceIx = usize;

/// How a probe ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Verdict {
    pub(crate) ok: bool,
    pub(crate) message: String,
}

impl Verdict {
    pub(crate) fn pass(message: impl Into<String>) -> Verdict {
        Verdict {
            ok: true,
            message: message.into(),
        }
    }

    pub(crate) fn fail(message: impl Into<String>) -> Verdict {
        Verdict {
            ok: false,
            message: message.into(),
        }
    }
}

/// News for the lifecycle core, fed to it in the order they were sent
/// (the mirror of its effects).
#[derive(Debug)]
pub(crate) enum Input {
    /// The init started the payload (host pid).
    Started(ServiceIx, i32),
    StartFailed(ServiceIx, StartError),
    /// The sandbox is gone: init exited, cgroup empty.
    Exited(ServiceIx, Exit),
    OomKilled {
        service: ServiceIx,
        new: u64,
        memory_max: String,
    },
    ProbeDone {
        service: ServiceIx,
        kind: ProbeKind,
        verdict: Verdict,
    },
    Notified(ServiceIx, Notice),
    /// A `resourceRules` rule with `action: restart` held (why).
    ResourceExceeded(ServiceIx, String),
    /// A CNI CHECK of a running sandbox failed (why).
    NetworkFailed(ServiceIx, String),
    /// A control client went away: nobody to answer there.
    ConnClosed(ConnId),
}

/// A line for the supervisor's stderr (and, for a service's event, its
/// log and subscribers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Said {
    Note(String),
    Event(ServiceIx, String),
}

/// What parts send, emptied by the loop after each call.
#[derive(Debug, Default)]
pub(crate) struct Outbox {
    inputs: VecDeque<Input>,
    said: VecDeque<Said>,
}

impl Outbox {
    pub(crate) fn input(&mut self, input: Input) {
        self.inputs.push_back(input);
    }

    pub(crate) fn note(&mut self, msg: impl Into<String>) {
        self.said.push_back(Said::Note(msg.into()));
    }

    pub(crate) fn event(&mut self, service: ServiceIx, msg: impl Into<String>) {
        self.said.push_back(Said::Event(service, msg.into()));
    }

    pub(crate) fn next_said(&mut self) -> Option<Said> {
        self.said.pop_front()
    }

    pub(crate) fn next_input(&mut self) -> Option<Input> {
        self.inputs.pop_front()
    }
}

/// A part's view of the loop for one call.
pub(crate) struct Ctx<'a> {
    pub(crate) reactor: &'a Reactor,
    pub(crate) now: Instant,
    pub(crate) out: &'a mut Outbox,
}

/// Per-service state of a part, indexed like the core's services. The
/// core reuses the index of a service it forgot, so the table stays as
/// long as the most services that ever existed at once.
#[derive(Debug)]
pub(crate) struct ServiceMap<T> {
    slots: Vec<Option<T>>,
}

impl<T> Default for ServiceMap<T> {
    fn default() -> Self {
        ServiceMap { slots: Vec::new() }
    }
}

impl<T> ServiceMap<T> {
    pub(crate) fn insert(&mut self, i: ServiceIx, value: T) {
        if self.slots.len() <= i {
            self.slots.resize_with(i + 1, || None);
        }
        self.slots[i] = Some(value);
    }

    pub(crate) fn remove(&mut self, i: ServiceIx) -> Option<T> {
        let v = self.slots.get_mut(i)?.take();
        while self.slots.last().is_some_and(Option::is_none) {
            self.slots.pop();
        }
        v
    }

    pub(crate) fn get(&self, i: ServiceIx) -> Option<&T> {
        self.slots.get(i)?.as_ref()
    }

    pub(crate) fn get_mut(&mut self, i: ServiceIx) -> Option<&mut T> {
        self.slots.get_mut(i)?.as_mut()
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (ServiceIx, &T)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| Some((i, s.as_ref()?)))
    }

    pub(crate) fn iter_mut(&mut self) -> impl Iterator<Item = (ServiceIx, &mut T)> {
        self.slots
            .iter_mut()
            .enumerate()
            .filter_map(|(i, s)| Some((i, s.as_mut()?)))
    }

    /// Slots held, used or not (what a test of boundedness looks at).
    #[cfg(test)]
    pub(crate) fn capacity_used(&self) -> usize {
        self.slots.len()
    }
}

#[cfg(test)]
pub(crate) mod testing {
    //! A context for a part under test, on the host.
    use super::*;
    use crate::shell::reactor::{Readiness, Token};

    pub(crate) struct Harness {
        pub(crate) reactor: Reactor,
        pub(crate) out: Outbox,
        pub(crate) now: Instant,
    }

    impl Harness {
        pub(crate) fn new() -> Harness {
            Harness {
                reactor: Reactor::new().expect("epoll"),
                out: Outbox::default(),
                now: Instant::now(),
            }
        }

        pub(crate) fn ctx(&mut self) -> Ctx<'_> {
            Ctx {
                reactor: &self.reactor,
                now: self.now,
                out: &mut self.out,
            }
        }

        /// What the epoll set reports within `ms` milliseconds.
        pub(crate) fn ready(&self, ms: u16) -> Vec<(Token, Readiness)> {
            let mut evs = vec![nix::sys::epoll::EpollEvent::empty(); 64];
            self.reactor
                .wait_at_most(&mut evs, nix::sys::epoll::EpollTimeout::from(ms))
                .expect("epoll_wait")
        }

        pub(crate) fn inputs(&mut self) -> Vec<Input> {
            std::iter::from_fn(|| self.out.next_input()).collect()
        }

        pub(crate) fn said(&mut self) -> Vec<Said> {
            std::iter::from_fn(|| self.out.next_said()).collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_service_map_shrinks_when_its_last_slots_go() {
        let mut m = ServiceMap::default();
        m.insert(0, "a");
        m.insert(5, "b");
        assert_eq!(m.capacity_used(), 6);
        assert_eq!(m.remove(5), Some("b"));
        assert_eq!(m.capacity_used(), 1);
        assert_eq!(m.iter().collect::<Vec<_>>(), vec![(0, &"a")]);
    }
}
