//! Reading a service's pipe so that a supervisor killed at any moment
//! loses nothing it read: what a wakeup reads is copied out of the pipe
//! (tee(2): the pipe keeps it), written to the log, and only then taken
//! from the pipe (spliced to /dev/null). A supervisor killed in between
//! leaves it in the pipe, whose keeper keeps it for the next one (which
//! logs again at most what the last wakeup wrote, and only if the kill
//! fell between the two calls).
//!
//! A line is taken whole: a wakeup that ends inside a line leaves its
//! head in the pipe for the next. Only a pipe holding nothing but part of
//! a line (the service is in the middle of writing it) has it taken into
//! memory, as before — else level-triggered epoll would wake us for it
//! again and again.

use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};

use nix::errno::Errno;
use nix::fcntl::{splice, tee, OFlag, SpliceFFlags};

/// How much one wakeup looks at (a pipe's default capacity).
pub(super) const PEEK_MAX: usize = 64 * 1024;
/// The scratch pipe's size: a peek's bytes may sit in up to one page
/// each (a pipe's buffers are pages).
const SCRATCH_SIZE: i32 = 4 * 64 * 1024;

/// The scratch pipe the copies go through, and /dev/null.
pub(super) struct Peeker {
    scratch_r: OwnedFd,
    scratch_w: OwnedFd,
    null: File,
    buf: Vec<u8>,
}

/// What one wakeup found in a pipe.
pub(super) enum Peeked<'a> {
    /// Bytes to turn into lines; `take` of them to be taken from the pipe
    /// once they are logged.
    Data { bytes: &'a [u8], take: usize },
    /// Nothing now.
    Empty,
    /// The writers are gone and the pipe is empty.
    End,
}

impl Peeker {
    pub(super) fn new() -> Result<Peeker, Errno> {
        let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)?;
        // Room for a whole peek whatever the pipe's buffers hold.
        let _ = nix::fcntl::fcntl(&w, nix::fcntl::FcntlArg::F_SETPIPE_SZ(SCRATCH_SIZE));
        let null = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/null")
            .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))?;
        Ok(Peeker {
            scratch_r: r,
            scratch_w: w,
            null,
            buf: vec![0; PEEK_MAX],
        })
    }

    /// A copy of what `pipe` holds, up to [`PEEK_MAX`].
    pub(super) fn peek(&mut self, pipe: impl AsFd) -> Result<Peeked<'_>, Errno> {
        let n = loop {
            match tee(
                &pipe,
                &self.scratch_w,
                PEEK_MAX,
                SpliceFFlags::SPLICE_F_NONBLOCK,
            ) {
                Ok(0) => return Ok(Peeked::End),
                Ok(n) => break n,
                Err(Errno::EINTR) => {}
                Err(Errno::EAGAIN) => return Ok(Peeked::Empty),
                Err(e) => return Err(e),
            }
        };
        let mut got = 0;
        while got < n {
            match nix::unistd::read(&self.scratch_r, &mut self.buf[got..n]) {
                Ok(0) => break,
                Ok(k) => got += k,
                Err(Errno::EINTR) => {}
                Err(e) => return Err(e),
            }
        }
        let bytes = &self.buf[..got];
        // Whole lines only, unless there is not one whole line.
        let take = match bytes.iter().rposition(|b| *b == b'\n') {
            Some(last) => last + 1,
            None => got,
        };
        Ok(Peeked::Data {
            bytes: &bytes[..take],
            take,
        })
    }

    /// Take `n` bytes (logged now) from `pipe`.
    /// What could not be spliced away is left to read.
    pub(super) fn take(&self, pipe: impl AsFd, mut n: usize) -> Result<(), (Errno, usize)> {
        while n > 0 {
            match splice(
                &pipe,
                None,
                &self.null,
                None,
                n,
                SpliceFFlags::SPLICE_F_NONBLOCK,
            ) {
                Ok(0) => return Err((Errno::EPIPE, n)),
                Ok(k) => n -= k.min(n),
                Err(Errno::EINTR) => {}
                Err(e) => return Err((e, n)),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn left_in(pipe: &OwnedFd) -> usize {
        let mut buf = [0u8; 64];
        nix::unistd::read(pipe, &mut buf).unwrap_or_default()
    }

    #[test]
    fn what_is_peeked_stays_in_the_pipe_until_taken_and_a_line_is_taken_whole() {
        let mut p = Peeker::new().expect("peeker");
        let (r, w) = nix::unistd::pipe2(OFlag::O_NONBLOCK).expect("pipe");
        nix::unistd::write(&w, b"one\ntwo").expect("write");
        let Ok(Peeked::Data { bytes, take }) = p.peek(&r) else {
            panic!("nothing peeked");
        };
        assert_eq!((bytes, take), (&b"one\n"[..], 4));
        // A supervisor killed now leaves all of it to the next.
        p.take(&r, 0).expect("nothing");
        let Ok(Peeked::Data { take, .. }) = p.peek(&r) else {
            panic!("gone from the pipe");
        };
        p.take(&r, take).expect("take");
        assert_eq!(left_in(&r), 3, "the unfinished line stays");
        drop(w);
        assert!(matches!(p.peek(&r), Ok(Peeked::End)));
    }

    #[test]
    fn only_part_of_a_line_is_taken_as_it_is() {
        let mut p = Peeker::new().expect("peeker");
        let (r, w) = nix::unistd::pipe2(OFlag::O_NONBLOCK).expect("pipe");
        assert!(matches!(p.peek(&r), Ok(Peeked::Empty)));
        nix::unistd::write(&w, b"half").expect("write");
        let Ok(Peeked::Data { bytes, take }) = p.peek(&r) else {
            panic!("nothing peeked");
        };
        assert_eq!((bytes, take), (&b"half"[..], 4));
    }
}
