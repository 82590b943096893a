//! A snapshot on its way to the keeper: the copies of the fds it holds
//! no copy of yet, then the memfd. They go as the keeper's socket takes
//! them — at 10,000 services they are far more than the socket holds at
//! once (some 200 messages of 16), and a keeper that is busy, or stopped,
//! must not hold up the loop. The rest goes when the socket is writable
//! again, each copy first checked to still be the file the snapshot
//! named: a number closed, or used again for another file, meanwhile
//! gives the snapshot up (a later one is taken). An anonymous inode cannot
//! be checked, so those go first, in the snapshot's own turn, or the
//! snapshot is given up.

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};

use isola_runtime::handover::Named;
use nix::errno::Errno;

use super::link::Channel;
use super::FDS_PER_MESSAGE;

pub(super) struct Handing {
    memfd: File,
    /// What the keeper holds once the memfd went.
    named: HashMap<RawFd, Named>,
    /// The copies to send, anonymous inodes first; `sent` of them went.
    queue: Vec<Named>,
    sent: usize,
    /// Past the snapshot's own turn: each copy is checked before it goes.
    later: bool,
}

/// Where a [`Handing`] is.
pub(super) enum Progress {
    /// The memfd went: the keeper holds what it names.
    Done(HashMap<RawFd, Named>),
    /// The socket is full: more goes once it is writable.
    Waiting,
    /// A copy still to go is no longer what the snapshot named. The
    /// numbers whose copies went: the keeper staged them, so what it
    /// holds there is no longer sure (the next snapshot sends them again).
    GivenUp(Vec<RawFd>),
}

impl Handing {
    /// The snapshot `memfd` naming `fds`, of which the keeper holds
    /// `held` already.
    pub(super) fn new(memfd: File, fds: &[Named], held: &HashMap<RawFd, Named>) -> Handing {
        let mut queue: Vec<Named> = fds
            .iter()
            .filter(|n| !n.unique || held.get(&n.fd) != Some(n))
            .copied()
            .collect();
        queue.sort_by_key(|n| n.unique);
        Handing {
            memfd,
            named: fds.iter().map(|n| (n.fd, *n)).collect(),
            queue,
            sent: 0,
            later: false,
        }
    }

    /// Send what the socket takes now.
    pub(super) fn pump(&mut self, channel: &Channel) -> Result<Progress, Errno> {
        while self.sent < self.queue.len() {
            let end = (self.sent + FDS_PER_MESSAGE).min(self.queue.len());
            let chunk = &self.queue[self.sent..end];
            if self.later && !chunk.iter().all(Named::still_open) {
                return Ok(self.given_up());
            }
            let numbers: Vec<RawFd> = chunk.iter().map(|n| n.fd).collect();
            match channel.send_now(b'H', &super::le_bytes(&numbers), &numbers) {
                Ok(()) => self.sent = end,
                Err(Errno::EAGAIN) => return Ok(self.wait()),
                Err(e) => return Err(e),
            }
        }
        match channel.send_now(b'S', &[], &[self.memfd.as_raw_fd()]) {
            Ok(()) => Ok(Progress::Done(std::mem::take(&mut self.named))),
            Err(Errno::EAGAIN) => Ok(self.wait()),
            Err(e) => Err(e),
        }
    }

    fn wait(&mut self) -> Progress {
        self.later = true;
        match self.queue[self.sent..].iter().any(|n| !n.unique) {
            true => self.given_up(),
            false => Progress::Waiting,
        }
    }

    fn given_up(&self) -> Progress {
        Progress::GivenUp(self.queue[..self.sent].iter().map(|n| n.fd).collect())
    }
}

#[cfg(test)]
mod tests;
