//! A small helper process that clones sandboxes for the supervisor.
//!
//! A sandbox's init is a fork, and a fork copies the page tables and the fd
//! table of the process it forks: a supervisor holding a thousand services
//! (their pidfds, pipes, log files, stat files, heap) made every further
//! start slower, and every page it wrote after a fork a copy-on-write fault.
//! The spawner is forked once, right after the stack is loaded, and keeps
//! only its socket: it holds the plans as they were then, and clones each
//! init with CLONE_PARENT, so the init is the supervisor's child (reaped and
//! signalled by it through its pidfd, killed by PDEATHSIG with it).
//!
//! Protocol (SOCK_SEQPACKET, one message per datagram):
//! supervisor → spawner: service index (u32 LE), fingerprint (u64 LE),
//! the number of listening sockets (u32 LE) and their names (`:`-separated,
//! the rest of the message), with stdin, stdout, stderr, the sockets and
//! the fds for the payload (the plan's `pass_fds`) as SCM_RIGHTS.
//! spawner → supervisor: `O` pid (i32 LE) with the pidfd and the init's
//! sync socket as SCM_RIGHTS; `E` exit code (i32 LE), transient (one byte:
//! 1 for a shortage worth retrying) + message; `U` when it
//! does not know that service as it is now (a reload changed it): the
//! supervisor then clones it itself.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::PathBuf;

use nix::errno::Errno;
use nix::sys::socket::{socketpair, AddressFamily, Shutdown, SockFlag, SockType};
use nix::unistd::Pid;

use isola_runtime::fdpass;
use isola_runtime::listen::Listen;
use isola_runtime::sandbox::{self, Parts, Starting};
use isola_runtime::{Error, Plan};

/// Index, fingerprint and socket count: the fixed part of a request.
const HEADER: usize = 16;

/// One start asked of the spawner: service `index` (as of `fingerprint`)
/// with these stdio fds, fds for the payload and listening sockets.
#[derive(Clone, Copy)]
pub struct Start<'a> {
    pub index: u32,
    pub fingerprint: u64,
    pub stdio: [RawFd; 3],
    pub pass: &'a [RawFd],
    pub listen: Listen<'a>,
}

/// The supervisor's handle on its spawner.
pub struct Spawner {
    sock: OwnedFd,
    pid: Pid,
}

/// What the spawner did with a request.
pub enum Answer {
    Started(Starting),
    Failed {
        code: i32,
        message: String,
        /// A shortage (EMFILE, ENOMEM…): try again later.
        transient: bool,
    },
    /// Not a service the spawner knows in this form.
    Unknown,
}

impl Spawner {
    /// Fork the spawner. In the child, `serve` gets the socket (and only
    /// that and stdio), answers requests, and its result is the exit code.
    pub fn fork(serve: impl FnOnce(OwnedFd) -> i32) -> Result<Spawner, Errno> {
        let (ours, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )?;
        let pid = isola_runtime::spawn_helper(theirs, serve)?;
        Ok(Spawner { sock: ours, pid })
    }

    /// Ask for a service to be started (see [`Start`]); `name` and
    /// `cgroup` are where it will be found.
    pub fn request(
        &self,
        start: &Start,
        name: &str,
        cgroup: Option<PathBuf>,
    ) -> Result<Answer, Errno> {
        let Start {
            index,
            fingerprint,
            stdio,
            pass,
            listen,
        } = *start;
        let count = u32::try_from(listen.fds.len()).map_err(|_| Errno::E2BIG)?;
        let mut req = Vec::with_capacity(HEADER + listen.names.len());
        req.extend_from_slice(&index.to_le_bytes());
        req.extend_from_slice(&fingerprint.to_le_bytes());
        req.extend_from_slice(&count.to_le_bytes());
        req.extend_from_slice(listen.names.as_bytes());
        let fds: Vec<RawFd> = stdio
            .iter()
            .chain(listen.fds)
            .chain(pass)
            .copied()
            .collect();
        fdpass::send(&self.sock, &req, &fds)?;
        let (msg, mut fds) = fdpass::receive(&self.sock)?;
        match msg.first() {
            Some(b'O') if msg.len() == 5 && fds.len() == 2 => {
                let pid = i32::from_le_bytes([msg[1], msg[2], msg[3], msg[4]]);
                let sync = fds.pop().ok_or(Errno::EPROTO)?;
                let pidfd = fds.pop().ok_or(Errno::EPROTO)?;
                let parts = Parts {
                    name: name.to_string(),
                    pid: Pid::from_raw(pid),
                    pidfd,
                    sync,
                    cgroup,
                };
                Ok(Answer::Started(Starting::from_parts(parts)))
            }
            Some(b'E') if msg.len() >= 6 => Ok(Answer::Failed {
                code: i32::from_le_bytes([msg[1], msg[2], msg[3], msg[4]]),
                transient: msg[5] == 1,
                message: String::from_utf8_lossy(&msg[6..]).into_owned(),
            }),
            Some(b'U') => Ok(Answer::Unknown),
            _ => Err(Errno::EPROTO),
        }
    }
}

impl Drop for Spawner {
    fn drop(&mut self) {
        // Our end shut down is its EOF: it exits; reap it.
        let _ = nix::sys::socket::shutdown(self.sock.as_raw_fd(), Shutdown::Both);
        let _ = nix::sys::wait::waitpid(self.pid, None);
    }
}

/// What the spawner can start: one service as it was when the spawner was
/// forked (borrowed from the supervisor's copy of the stack, which the
/// spawner never writes to: each init is a copy of the spawner, and every
/// page the spawner rewrote after a clone would stay behind as that init's
/// private page).
pub struct Entry<'a> {
    pub fingerprint: u64,
    pub plan: &'a Plan,
    pub name: &'a str,
}

/// The spawner's loop over its table of services (indexed like the
/// supervisor's); `options` says how to clone one with the given stdio.
/// Nothing here writes to the table: see [`Entry`].
pub fn serve<'a>(
    sock: OwnedFd,
    table: &'a [Option<Entry<'a>>],
    options: impl Fn(&'a str, [RawFd; 3]) -> sandbox::Options<'a>,
) -> i32 {
    loop {
        let (msg, fds) = match fdpass::receive(&sock) {
            Ok(x) => x,
            Err(Errno::EINTR) => continue,
            Err(_) => return 0,
        };
        if msg.is_empty() {
            // EOF: the supervisor is gone or done with us.
            return 0;
        }
        if msg.len() < HEADER {
            return 1;
        }
        let index = u32::from_le_bytes([msg[0], msg[1], msg[2], msg[3]]);
        let mut fp = [0u8; 8];
        fp.copy_from_slice(&msg[4..12]);
        let fingerprint = u64::from_le_bytes(fp);
        let count = u32::from_le_bytes([msg[12], msg[13], msg[14], msg[15]]) as usize;
        let Ok(names) = std::str::from_utf8(&msg[HEADER..]) else {
            return 1;
        };
        if fds.len() < 3 + count {
            return 1;
        }
        let entry = table
            .get(index as usize)
            .and_then(Option::as_ref)
            .filter(|e| e.fingerprint == fingerprint);
        let reply = match entry {
            None => reply_unknown(&sock),
            Some(e) => {
                let stdio = [fds[0].as_raw_fd(), fds[1].as_raw_fd(), fds[2].as_raw_fd()];
                let raw: Vec<RawFd> = fds[3..].iter().map(AsRawFd::as_raw_fd).collect();
                let (sockets, pass) = raw.split_at(count);
                let mut opts = options(e.name, stdio);
                opts.pass_fds = pass;
                opts.listen = Listen {
                    fds: sockets,
                    names,
                };
                match sandbox::spawn(e.plan, &opts).and_then(Starting::into_parts) {
                    Ok(parts) => reply_started(&sock, &parts),
                    Err(e) => reply_failed(&sock, &e),
                }
            }
        };
        drop(fds);
        if reply.is_err() {
            return 1;
        }
    }
}

fn reply_started(sock: &OwnedFd, p: &Parts) -> Result<(), Errno> {
    let mut msg = vec![b'O'];
    msg.extend_from_slice(&p.pid.as_raw().to_le_bytes());
    fdpass::send(sock, &msg, &[p.pidfd.as_raw_fd(), p.sync.as_raw_fd()])
}

fn reply_failed(sock: &OwnedFd, e: &Error) -> Result<(), Errno> {
    let mut msg = vec![b'E'];
    msg.extend_from_slice(&e.exit_code().to_le_bytes());
    msg.push(u8::from(e.is_transient()));
    msg.extend_from_slice(e.to_string().as_bytes());
    fdpass::send(sock, &msg, &[])
}

fn reply_unknown(sock: &OwnedFd) -> Result<(), Errno> {
    fdpass::send(sock, b"U", &[])
}
