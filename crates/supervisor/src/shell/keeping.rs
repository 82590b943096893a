//! The supervisor with its keeper (`crate::keeper`): the exits the
//! keeper tells (its children are our inits), a snapshot for it whenever
//! the stack is at rest after a change, and — when we took over from a
//! supervisor that died — the inits that snapshot does not know.

use std::collections::HashSet;
use std::time::Instant;

use isola_runtime::handover::Outgoing;
use isola_runtime::ExitStatus;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::keeper::link::{Handed, KeeperGone, Link};
use crate::reaper::{Child, Reaped};
use crate::shell::reactor::{Interest, Part, Readiness, Token};
use crate::shell::upgrading::Purpose;
use crate::supervisor::{setup, Supervisor, UpError};

impl Supervisor {
    pub(crate) fn watch_keeper(&mut self) -> Result<(), UpError> {
        if let Some(k) = &self.keeper {
            let token = Token::new(Part::Keeper, 0);
            self.reactor
                .add(k.fd(), token, Interest::Read)
                .map_err(setup("epoll"))?;
        }
        Ok(())
    }

    /// The keeper's socket: room for more of a snapshot, or what it told.
    pub(crate) fn on_keeper(&mut self, how: Readiness) {
        if how.writable() {
            self.hand_on();
        }
        if how.readable() {
            self.take_told();
        }
    }

    /// Exits the keeper told: each acted on, then let go (reaped).
    fn take_told(&mut self) {
        let Some(k) = self.keeper.as_mut() else {
            return;
        };
        match k.told() {
            Ok(told) => {
                for t in told {
                    if let Some(child) = self.reaper.take(t.pid) {
                        self.on_reaped(Reaped {
                            child,
                            pid: t.pid,
                            status: t.status,
                        });
                        self.settle();
                    }
                    if let Some(k) = self.keeper.as_mut() {
                        k.taken(t.pid);
                    }
                }
                self.hand_on();
            }
            Err(KeeperGone) => self.keeper_gone(),
        }
    }

    /// The keeper lets go of everything it holds of ours (see
    /// `Link::forget_all`).
    pub(crate) fn keeper_forgets(&mut self) {
        match self.keeper.as_mut().map(|k| k.forget_all()) {
            Some(Err(KeeperGone)) => self.keeper_gone(),
            // Exits it told meanwhile are taken now: no event on its
            // socket would bring them back, and it tells no other until
            // the one told is taken.
            // (It hands on what is left to say, and waits on the socket
            // only for that: no snapshot is on its way any more.)
            Some(Ok(())) => self.take_told(),
            None => {}
        }
    }

    fn keeper_gone(&mut self) {
        // Its death took the inits (their PDEATHSIG is its): what is left
        // is to clean up after them.
        if let Some(k) = self.keeper.take() {
            self.reactor.remove(k.fd());
        }
        self.outbox
            .note("the keeper died, and the services with it: stopping".to_string());
        self.core.shutdown(None, self.now);
    }

    /// At the end of a turn of the loop: a snapshot for the keeper, when
    /// something changed and the stack is at rest (what is in motion
    /// cannot be taken over; the next rest will do). Once the stack is
    /// ending, none: the keeper lets go of what it holds (a socket it kept
    /// would stay bound after us).
    pub(crate) fn keeper_turn(&mut self) {
        if self.core.shutting_down() {
            if self.keeper.as_ref().is_some_and(|k| !k.ending()) {
                self.keeper_forgets();
                if let Some(k) = self.keeper.as_mut() {
                    k.end();
                }
            }
            return;
        }
        let began = Instant::now();
        let due = self.keeper.as_ref().is_some_and(|k| k.snapshot_due(began));
        if !due {
            return;
        }
        if self.upgrades.under_way() || self.busy().is_some() {
            // Not at rest: looked at again a while later (the timer is
            // armed for it), not at every turn.
            if let Some(k) = self.keeper.as_mut() {
                k.not_now(std::time::Duration::ZERO);
            }
            return;
        }
        let mut out = Outgoing::dry();
        let sealed = self
            .snapshot(&mut out, Purpose::Keeper)
            .and_then(|s| s.encode())
            .and_then(|p| out.seal(&p).map_err(|(e, _)| format!("snapshot: {e}")));
        let sealed = match sealed {
            Ok(s) => s,
            // In motion after all: a later turn at rest will do.
            Err(_) => {
                if let Some(k) = self.keeper.as_mut() {
                    k.not_now(began.elapsed());
                }
                return;
            }
        };
        let (memfd, fds) = sealed.into_record();
        let Some(k) = self.keeper.as_mut() else {
            return;
        };
        let handed = k.keep(memfd, &fds, began.elapsed());
        self.on_handed(handed);
    }

    /// The keeper's socket took more of a snapshot on its way.
    fn hand_on(&mut self) {
        if let Some(handed) = self.keeper.as_mut().map(Link::hand_on) {
            self.on_handed(handed);
        }
    }

    /// The rest of a snapshot goes when the keeper's socket is writable:
    /// the loop waits for that only while some is left.
    fn on_handed(&mut self, handed: Result<Handed, nix::errno::Errno>) {
        let interest = match handed {
            Ok(Handed::Waiting) => Interest::ReadWrite,
            Ok(Handed::Done) => Interest::Read,
            Err(e) => {
                self.outbox.note(format!("keeper: not handed over: {e}"));
                Interest::Read
            }
        };
        if let Some(k) = &self.keeper {
            let _ = (self.reactor).modify(k.fd(), Token::new(Part::Keeper, 0), interest);
        }
    }

    /// After taking over (an upgrade, or from a supervisor that died):
    /// the keeper's children the snapshot does not name are inits started
    /// after it, with pipes that died with their supervisor — killed
    /// (their exits come and are let go); an init the snapshot names that
    /// is no longer the keeper's child was reaped after it, its status
    /// lost — told as a kill.
    pub(crate) fn reconcile_with_keeper(&mut self) {
        if self.keeper.is_none() {
            return;
        }
        let keeper = nix::unistd::getppid();
        let path = format!("/proc/{keeper}/task/{keeper}/children");
        let Ok(text) = std::fs::read_to_string(&path) else {
            return;
        };
        let children: HashSet<i32> = text
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect();
        let ours = nix::unistd::getpid().as_raw();
        let spawner = self.sandboxes.spawner_pid().map(Pid::as_raw);
        let inits: Vec<(Pid, Child)> = self.reaper.inits().collect();
        let known: HashSet<i32> = inits.iter().map(|(p, _)| p.as_raw()).collect();
        // Only inits (and spawners): copies of our binary. The keeper's
        // other children (pasta, for a user's networks) are not ours.
        let binary = |pid: i32| {
            use std::os::unix::fs::MetadataExt;
            std::fs::metadata(format!("/proc/{pid}/exe")).map(|m| (m.dev(), m.ino()))
        };
        let ours_binary = binary(ours).ok();
        for &c in &children {
            let unknown = c != ours && Some(c) != spawner && !known.contains(&c);
            if unknown && ours_binary.is_some() && binary(c).ok() == ours_binary {
                let _ = kill(Pid::from_raw(c), Signal::SIGKILL);
            }
        }
        for (pid, child) in inits {
            if !children.contains(&pid.as_raw()) {
                self.reaper.take(pid);
                self.outbox.note(format!(
                    "init {pid} ended while no supervisor ran; its status is lost"
                ));
                let status = ExitStatus::Signaled(Signal::SIGKILL as i32);
                self.on_reaped(Reaped { child, pid, status });
            }
        }
        self.settle();
    }
}
