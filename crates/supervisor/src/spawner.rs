//! A small helper process that clones sandboxes for the supervisor.
//!
//! A sandbox's init is a fork, and a fork copies the page tables and the fd
//! table of the process it forks: a supervisor holding a thousand services
//! (their pidfds, pipes, log files, stat files, heap) made every further
//! start slower, and every page it wrote after a fork a copy-on-write fault.
//! The spawner is forked once, before the stack file is parsed, with only
//! its socket and the file's text. It builds every service of the file
//! itself, as the supervisor does, keeps them in shared memory
//! ([`isola_runtime::in_shared_arena`]: a clone copies no page table of
//! it, and no init is tied to the spawner's pages) and frees the text. It
//! clones each init with CLONE_PARENT, so the init is the supervisor's
//! child (reaped and signalled by it, killed by PDEATHSIG with it).
//!
//! Protocol (SOCK_SEQPACKET, one message per datagram):
//! supervisor → spawner: fingerprint (u64 LE), the service's position in
//! the file (u32 LE), replica number (u32 LE, 0 for none), the number of
//! listening sockets (u32 LE) and their names (`:`-separated, the rest of
//! the message, up to a NUL), then its stack networks as JSON (`{"i":
//! interfaces, "h": hold}`, see [`isola_runtime::net::Networking`]), with
//! stdin, stdout, stderr, the sockets and the fds for the payload (the
//! plan's `pass_fds`) as SCM_RIGHTS.
//! spawner → supervisor: `O` pid (i32 LE) with the pidfd and the init's
//! sync socket as SCM_RIGHTS; `E` exit code (i32 LE), transient (one byte:
//! 1 for a shortage worth retrying) + message; `U` when it does not know
//! that service as it is now (a reload added or changed it, or the file's
//! text no longer builds): the supervisor then clones it itself.

use std::borrow::Cow;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::PathBuf;

use nix::errno::Errno;
use nix::sys::socket::{socketpair, AddressFamily, Shutdown, SockFlag, SockType};
use nix::unistd::Pid;

use isola_runtime::fdpass;
use isola_runtime::listen::Listen;
use isola_runtime::net::{NetInterface, Networking};
use isola_runtime::sandbox::{self, Parts, Starting};
use isola_runtime::{Error, Plan};

/// Fingerprint, entry, replica and socket count: the fixed part of a
/// request.
const HEADER: usize = 20;

/// One start asked of the spawner: the file's service number `entry`
/// (replica `replica` of it, 0 for none), as of `fingerprint`, with these
/// stdio fds, fds for the payload and listening sockets.
#[derive(Clone, Copy)]
pub struct Start<'a> {
    pub entry: u32,
    pub replica: u32,
    pub fingerprint: u64,
    pub stdio: [RawFd; 3],
    pub pass: &'a [RawFd],
    pub listen: Listen<'a>,
    pub net: Networking<'a>,
}

/// A start's networks as the request carries them.
#[derive(serde::Serialize, serde::Deserialize)]
struct NetRequest<'a> {
    i: std::borrow::Cow<'a, [NetInterface]>,
    h: bool,
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
    /// `sibling`: the spawner is our parent's child (a keeper's).
    pub fn fork(sibling: bool, serve: impl FnOnce(OwnedFd) -> i32) -> Result<Spawner, Errno> {
        let (ours, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )?;
        let pid = match sibling {
            true => isola_runtime::spawn_sibling_helper(theirs, serve)?,
            false => isola_runtime::spawn_helper(theirs, serve)?,
        };
        Ok(Spawner { sock: ours, pid })
    }

    pub fn pid(&self) -> Pid {
        self.pid
    }

    /// Ask for a service to be started (see [`Start`]); `name` (the
    /// service's, a replica's own) and `cgroup` are where it will be found.
    pub fn request(
        &self,
        start: &Start,
        name: &str,
        cgroup: Option<PathBuf>,
    ) -> Result<Answer, Errno> {
        let Start {
            entry,
            replica,
            fingerprint,
            stdio,
            pass,
            listen,
            net,
        } = *start;
        let count = u32::try_from(listen.fds.len()).map_err(|_| Errno::E2BIG)?;
        let mut req = Vec::with_capacity(HEADER + listen.names.len());
        req.extend_from_slice(&fingerprint.to_le_bytes());
        req.extend_from_slice(&entry.to_le_bytes());
        req.extend_from_slice(&replica.to_le_bytes());
        req.extend_from_slice(&count.to_le_bytes());
        req.extend_from_slice(listen.names.as_bytes());
        if !net.interfaces.is_empty() || net.hold {
            req.push(0);
            let n = NetRequest {
                i: std::borrow::Cow::Borrowed(net.interfaces),
                h: net.hold,
            };
            serde_json::to_writer(&mut req, &n).map_err(|_| Errno::EINVAL)?;
        }
        // More than the spawner reads at once (many networks, long socket
        // names): cloned here instead.
        if req.len() > fdpass::SPAWNER_DATAGRAM {
            return Ok(Answer::Unknown);
        }
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

/// What the spawner is asked for: the file's service number `entry`
/// (replica `replica`, 0 for none) as of `fingerprint`.
pub struct Wanted {
    pub entry: u32,
    pub replica: u32,
    pub fingerprint: u64,
}

/// The spawner's loop. `plan_for` gives the plan of a service it is asked
/// for, with the name its sandbox gets (a replica's own), or says it does
/// not know that service in that form; `options` says how to clone one
/// with the given stdio (the name is the plan's).
pub fn serve<'a, 't>(
    sock: OwnedFd,
    mut plan_for: impl FnMut(&Wanted) -> Option<(Cow<'t, str>, Cow<'t, Plan>)>,
    options: impl Fn([RawFd; 3]) -> sandbox::Options<'a>,
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
        let Some(req) = Request::parse(&msg) else {
            return 1;
        };
        if fds.len() < 3 + req.count {
            return 1;
        }
        let reply = match plan_for(&req.wanted) {
            None => reply_unknown(&sock),
            Some((name, plan)) => {
                let stdio = [fds[0].as_raw_fd(), fds[1].as_raw_fd(), fds[2].as_raw_fd()];
                let raw: Vec<RawFd> = fds[3..].iter().map(AsRawFd::as_raw_fd).collect();
                let (sockets, pass) = raw.split_at(req.count);
                let mut opts = options(stdio);
                opts.name = &name;
                opts.pass_fds = pass;
                opts.listen = Listen {
                    fds: sockets,
                    names: req.socket_names,
                };
                opts.net = Networking {
                    interfaces: &req.net.i,
                    hold: req.net.h,
                };
                match sandbox::spawn(&plan, &opts).and_then(Starting::into_parts) {
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

/// A request as the spawner reads it.
struct Request<'m> {
    wanted: Wanted,
    count: usize,
    socket_names: &'m str,
    net: NetRequest<'static>,
}

impl<'m> Request<'m> {
    fn parse(msg: &'m [u8]) -> Option<Request<'m>> {
        let u32_at = |k: usize| -> Option<u32> {
            Some(u32::from_le_bytes(msg.get(k..k + 4)?.try_into().ok()?))
        };
        let u64_at = |k: usize| -> Option<u64> {
            Some(u64::from_le_bytes(msg.get(k..k + 8)?.try_into().ok()?))
        };
        let fingerprint = u64_at(0)?;
        let entry = u32_at(8)?;
        let replica = u32_at(12)?;
        let count = usize::try_from(u32_at(16)?).ok()?;
        let rest = msg.get(HEADER..)?;
        let (names, net) = match rest.iter().position(|b| *b == 0) {
            Some(k) => (&rest[..k], serde_json::from_slice(&rest[k + 1..]).ok()?),
            None => (
                rest,
                NetRequest {
                    i: std::borrow::Cow::Owned(Vec::new()),
                    h: false,
                },
            ),
        };
        let socket_names = std::str::from_utf8(names).ok()?;
        Some(Request {
            wanted: Wanted {
                entry,
                replica,
                fingerprint,
            },
            count,
            socket_names,
            net,
        })
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
