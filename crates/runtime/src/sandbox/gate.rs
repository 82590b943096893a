//! A sandbox created now and started later (OCI `create`, then `start`).
//!
//! The init sets everything up, tells its caller `Created` and then waits
//! at the *gate*: a FIFO in the container's state directory, which the init
//! holds open read-write (so opening it never blocks and it never sees EOF).
//! `start` opens it write-only and non-blocking — ENXIO there means no init
//! holds it any more — and writes one byte; the init then starts the payload.
//! A signal while the init waits ends it with 128+N, as an unhandled
//! signal would end runc's init.
//!
//! With a console socket, the init opens a pty in the sandbox's own
//! `/dev/pts` (after the mounts, so the pty belongs to the sandbox's devpts),
//! sends the master over the socket (SCM_RIGHTS, as runc does) and keeps the
//! slave for the payload's stdin, stdout, stderr and controlling terminal.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::Signal;
use nix::sys::signalfd::SignalFd;
use nix::sys::stat::Mode;

use crate::exit;

/// The byte `start` writes.
const GO: u8 = b'1';

/// Make the gate FIFO at `path` and open it read-write, close-on-exec.
pub fn make(path: &Path) -> Result<OwnedFd, Errno> {
    nix::unistd::mkfifo(path, Mode::from_bits_truncate(0o600))?;
    nix::fcntl::open(path, OFlag::O_RDWR | OFlag::O_CLOEXEC, Mode::empty())
}

/// `start`'s side: open the gate and write the byte. `Ok(false)` when no
/// init waits there any more (it died, or the sandbox started already).
pub fn open(path: &Path) -> Result<bool, Errno> {
    let fd = match nix::fcntl::open(
        path,
        OFlag::O_WRONLY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(Errno::ENXIO) | Err(Errno::ENOENT) => return Ok(false),
        Err(e) => return Err(e),
    };
    loop {
        match nix::unistd::write(&fd, &[GO]) {
            Err(Errno::EINTR) => continue,
            Err(Errno::EPIPE) => return Ok(false),
            r => return r.map(|_| true),
        }
    }
}

/// In the init: wait for the byte, or a signal. `Ok(())` means go;
/// `Err(code)` the exit code the init leaves with.
/// `sfd` reads the init's (blocked) signals.
pub(crate) fn wait(gate: &OwnedFd, sfd: &SignalFd) -> Result<(), i32> {
    let setup = exit::code(exit::SETUP);
    loop {
        let mut fds = [
            PollFd::new(gate.as_fd(), PollFlags::POLLIN),
            PollFd::new(sfd.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(Errno::EINTR) => continue,
            Err(_) => return Err(setup),
        }
        if fds[1].any().unwrap_or(false) {
            while let Ok(Some(info)) = sfd.read_signal() {
                let sig = i32::try_from(info.ssi_signo).unwrap_or(0);
                if sig != Signal::SIGCHLD as i32 && sig != Signal::SIGWINCH as i32 {
                    return Err(exit::SIGNALED + sig);
                }
            }
        }
        if fds[0].any().unwrap_or(false) {
            let mut b = [0u8; 1];
            match nix::unistd::read(gate, &mut b) {
                Ok(1) => return Ok(()),
                Err(Errno::EINTR) | Err(Errno::EAGAIN) => {}
                _ => return Err(setup),
            }
        }
    }
}

/// In the init, after the mounts: a pty from the sandbox's `/dev/ptmx`,
/// its master sent over `console` (then closed), the slave returned.
pub(crate) fn console(console: OwnedFd) -> Result<OwnedFd, String> {
    let master = nix::pty::posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)
        .map_err(|e| format!("open /dev/ptmx: {e}"))?;
    nix::pty::grantpt(&master).map_err(|e| format!("grantpt: {e}"))?;
    nix::pty::unlockpt(&master).map_err(|e| format!("unlockpt: {e}"))?;
    let name = nix::pty::ptsname_r(&master).map_err(|e| format!("ptsname: {e}"))?;
    let slave = nix::fcntl::open(
        Path::new(&name),
        OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| format!("open {name}: {e}"))?;
    crate::ipc::fdpass::send(&console, name.as_bytes(), &[master.as_raw_fd()])
        .map_err(|e| format!("send the pty master over the console socket: {e}"))?;
    Ok(slave)
}

/// A console socket's fd for the caller: connect to the path `--console-socket` names.
pub fn connect_console(path: &Path) -> Result<OwnedFd, Errno> {
    use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, UnixAddr};
    let sock = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    let addr = UnixAddr::new(path)?;
    connect(sock.as_raw_fd(), &addr)?;
    Ok(sock)
}
