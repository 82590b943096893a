//! How services say they are ready. `notify: {"fd": N}` (s6 style): the
//! payload gets a pipe's write end at fd N and writes a newline when ready.
//!
//! `notify: "systemd"`: the sd_notify(3) protocol. Each such service gets a
//! datagram socket of its own on the host (`<socket>.notify/<service>/`),
//! bound into its rootfs at [`SANDBOX_DIR`] (an abstract socket would not
//! reach a service in its own network namespace), and `NOTIFY_SOCKET` in its
//! environment. Datagrams carry the sender's credentials (SO_PASSCRED) and
//! count only when the sender is a process of that sandbox (its cgroup, or
//! its PID namespace); fds sent along (BARRIER=1) are closed on receipt,
//! which is what the sender waits for.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use isola_runtime::fdpass;
use isola_runtime::mounts::MountSpec;
use nix::sys::epoll::{EpollEvent, EpollFlags};
use nix::sys::socket::{self, sockopt, AddressFamily, SockFlag, SockType, UnixAddr};

use crate::health::Notify;
use crate::lifecycle::Notice;
use crate::stack::ServiceDef;
use crate::supervisor::{Supervisor, Token};

/// Where a service with its own rootfs finds its notify socket.
const SANDBOX_DIR: &str = "/run/isola-notify";
const SOCKET_NAME: &str = "notify.sock";
/// The longest datagram read (systemd's limit is the same order).
const MAX_DATAGRAM: usize = 4096;
/// Datagrams handled per wakeup: one chatty service does not hold the loop.
const READS_PER_WAKEUP: usize = 16;
/// The payload's pid in a fresh PID namespace: the init (1) forks it first.
const PAYLOAD_PID_IN_NS: u32 = 2;
/// How the cgroup v2 mount shows in /proc/PID/cgroup paths.
const CGROUP_MOUNT: &str = "/sys/fs/cgroup";

/// The host directory holding service `name`'s notify socket.
pub(crate) fn host_dir(control_socket: &Path, name: &str) -> PathBuf {
    let mut base = control_socket.as_os_str().to_owned();
    base.push(".notify");
    PathBuf::from(base).join(name)
}

/// Add what a notifying service needs to its plan: for `{"fd": N}`, fd N;
/// for `"systemd"`, the socket's directory bound into its rootfs,
/// `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID`.
pub(crate) fn complete_plan(def: &mut ServiceDef, control_socket: &Path) {
    if let Some(Notify::Fd(n)) = def.policy.health.notify {
        def.plan.pass_fds = vec![n];
        return;
    }
    if def.policy.health.notify != Some(Notify::Systemd) {
        return;
    }
    let dir = host_dir(control_socket, &def.name);
    let plan = &mut def.plan;
    let own_mount_ns = plan.clone_flags & libc::CLONE_NEWNS as u64 != 0;
    let bind = |destination: PathBuf, source: PathBuf| MountSpec {
        destination,
        fstype: "bind".into(),
        source: Some(source),
        bind: true,
        recursive: false,
        flags: nix::mount::MsFlags::MS_NOSUID
            | nix::mount::MsFlags::MS_NODEV
            | nix::mount::MsFlags::MS_NOEXEC,
        propagation: Vec::new(),
        data: String::new(),
    };
    let seen_at = match (plan.root.is_some(), own_mount_ns) {
        (true, true) => {
            plan.mounts.push(bind(PathBuf::from(SANDBOX_DIR), dir));
            PathBuf::from(SANDBOX_DIR)
        }
        // Host-root mode hides /tmp (and the control socket may live
        // there): the directory is bound at its own path.
        (false, true) => {
            plan.mounts.push(bind(dir.clone(), dir.clone()));
            dir
        }
        (_, false) => dir,
    };
    let mut env = vec![format!(
        "NOTIFY_SOCKET={}",
        seen_at.join(SOCKET_NAME).display()
    )];
    if let Some(w) = def.policy.health.watchdog {
        env.push(format!("WATCHDOG_USEC={}", w.as_micros()));
        if plan.new_pid_ns() {
            env.push(format!("WATCHDOG_PID={PAYLOAD_PID_IN_NS}"));
        }
    }
    for e in env {
        if let Ok(c) = std::ffi::CString::new(e) {
            isola_runtime::plan::set_env(&mut plan.env, c);
        }
    }
}

/// A bound notify socket.
pub(crate) struct NotifySocket {
    sock: OwnedFd,
    dir: PathBuf,
    /// A foreign sender was reported this run (said once).
    pub(crate) warned: bool,
}

impl NotifySocket {
    /// Bind service `name`'s socket (replacing a stale one).
    pub(crate) fn bind(control_socket: &Path, name: &str) -> Result<NotifySocket, String> {
        let dir = host_dir(control_socket, name);
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let path = dir.join(SOCKET_NAME);
        let _ = std::fs::remove_file(&path);
        let sock = socket::socket(
            AddressFamily::Unix,
            SockType::Datagram,
            SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
            None,
        )
        .map_err(|e| format!("socket: {e}"))?;
        let addr = UnixAddr::new(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        socket::bind(sock.as_raw_fd(), &addr)
            .map_err(|e| format!("bind {}: {e}", path.display()))?;
        socket::setsockopt(&sock, sockopt::PassCred, &true)
            .map_err(|e| format!("SO_PASSCRED: {e}"))?;
        // Any uid of the sandbox may send; the credentials decide.
        let world = std::fs::Permissions::from_mode(0o777);
        std::fs::set_permissions(&path, world).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(NotifySocket {
            sock,
            dir,
            warned: false,
        })
    }

    pub(crate) fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.sock.as_fd()
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One datagram: `KEY=VALUE` lines.
pub(crate) fn parse(text: &str) -> Notice {
    let mut n = Notice::default();
    for line in text.lines() {
        let (k, v) = line.split_once('=').unwrap_or((line, ""));
        match (k, v) {
            ("READY", "1") => n.ready = true,
            ("STOPPING", "1") => n.stopping = true,
            ("STATUS", s) => n.status = Some(s.to_string()),
            ("WATCHDOG", "1") => n.watchdog = true,
            ("WATCHDOG", "trigger") => n.watchdog_trigger = true,
            ("EXTEND_TIMEOUT_USEC", us) => {
                n.extend = us.parse::<u64>().ok().map(Duration::from_micros);
            }
            // BARRIER=1: its fd is closed on receipt. Other keys (MAINPID,
            // FDSTORE…) are not acted on.
            _ => {}
        }
    }
    n
}

/// The most read from a notify pipe per wakeup (a service writing more
/// than a newline is read in turns).
const READY_READ: usize = 512;

impl Supervisor {
    /// For a `notify: {"fd": N}` service: a fresh pipe per start (read end
    /// for us, write end for the payload).
    pub(crate) fn ready_pipe(
        &self,
        i: usize,
    ) -> Result<Option<(OwnedFd, OwnedFd)>, nix::errno::Errno> {
        let wants = self
            .core
            .service(i)
            .is_some_and(|s| matches!(s.def.policy.health.notify, Some(Notify::Fd(_))));
        if !wants {
            return Ok(None);
        }
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        nix::fcntl::fcntl(
            &r,
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        )?;
        Ok(Some((r, w)))
    }

    /// The notify pipe is readable: a newline means ready; at EOF (the
    /// payload closed it) it is let go.
    pub(crate) fn on_ready(&mut self, i: usize) {
        let Some(r) = self.slot(i).and_then(|s| s.ready_pipe.as_ref()) else {
            return;
        };
        let mut buf = [0u8; READY_READ];
        match nix::unistd::read(r, &mut buf) {
            Ok(0) | Err(nix::errno::Errno::EBADF) => self.close_ready_pipe(i),
            Ok(n) if buf[..n].contains(&b'\n') => {
                let ready = Notice {
                    ready: true,
                    ..Notice::default()
                };
                self.core.notified(i, ready, Instant::now());
                // Said once: nothing more to hear.
                self.close_ready_pipe(i);
            }
            Ok(_) | Err(_) => {}
        }
    }

    pub(crate) fn close_ready_pipe(&mut self, i: usize) {
        if let Some(r) = self.slot(i).and_then(|s| s.ready_pipe.take()) {
            let _ = self.epoll.delete(&r);
        }
    }

    /// Before a launch: service `i` has a notify socket if (and only if,
    /// after a reload) it has `notify: "systemd"`; kept across its restarts.
    pub(crate) fn prepare_notify(&mut self, i: usize) {
        let Some(s) = self.core.service(i) else {
            return;
        };
        let wanted = s.def.policy.health.notify == Some(Notify::Systemd);
        let name = s.def.name.clone();
        // An overlap's successor shares its predecessor's socket (the path
        // in its plan); messages go by sender (`on_notify`).
        let shared = s
            .predecessor
            .and_then(|p| self.slots.get(p)?.as_ref()?.notify.as_ref())
            .is_some();
        if wanted && shared {
            return;
        }
        let Some(slot) = self.slot(i) else { return };
        match (&mut slot.notify, wanted) {
            (Some(ns), true) => {
                ns.warned = false;
                return;
            }
            (Some(_), false) => {
                if let Some(ns) = slot.notify.take() {
                    let _ = self.epoll.delete(ns.fd());
                }
                return;
            }
            (None, false) => return,
            (None, true) => {}
        }
        match NotifySocket::bind(&self.cfg.socket, &name) {
            Ok(ns) => {
                let ev = EpollEvent::new(EpollFlags::EPOLLIN, Token::Notify(i).encode());
                let _ = self.epoll.add(ns.fd(), ev);
                if let Some(slot) = self.slot(i) {
                    slot.notify = Some(ns);
                }
            }
            Err(e) => self.note(&format!("{name}: notify socket: {e}")),
        }
    }

    /// Datagrams on service `i`'s notify socket.
    pub(crate) fn on_notify(&mut self, i: usize) {
        for _ in 0..READS_PER_WAKEUP {
            let Some(ns) = self
                .slots
                .get(i)
                .and_then(Option::as_ref)
                .and_then(|s| s.notify.as_ref())
            else {
                return;
            };
            // Fds sent along are kept only for the fd store; others
            // (BARRIER=1) are dropped, so closed, right here.
            let Ok(fdpass::Datagram { bytes, pid, fds }) =
                fdpass::receive_credentialed(ns.fd(), MAX_DATAGRAM)
            else {
                return;
            };
            let text = String::from_utf8_lossy(&bytes).into_owned();
            let successor = self.core.service(i).and_then(|s| s.successor);
            let from = pid.and_then(|pid| {
                [Some(i), successor]
                    .into_iter()
                    .flatten()
                    .find(|k| self.sender_in_sandbox(*k, pid))
            });
            match from {
                Some(k) => {
                    self.fd_store_message(k, &text, fds);
                    let notice = parse(&text);
                    self.core.notified(k, notice, Instant::now());
                }
                None => self.foreign_sender(i, pid),
            }
        }
    }

    fn foreign_sender(&mut self, i: usize, pid: Option<i32>) {
        let Some(ns) = self.slot(i).and_then(|s| s.notify.as_mut()) else {
            return;
        };
        if std::mem::replace(&mut ns.warned, true) {
            return;
        }
        let who = pid.map_or("an unknown sender".to_string(), |p| format!("pid {p}"));
        self.event(
            i,
            &format!("notify: ignored a message from {who}, which is not in the sandbox"),
        );
    }

    /// Is `pid` (a host pid) a process of service `i`'s sandbox?
    fn sender_in_sandbox(&self, i: usize, pid: i32) -> bool {
        let Some(run) = self.running(i) else {
            return false;
        };
        let init = run.sandbox.pid().as_raw();
        if let Some(cg) = run.sandbox.cgroup() {
            let Ok(want) = cg.path().strip_prefix(CGROUP_MOUNT) else {
                return false;
            };
            let want = Path::new("/").join(want);
            return std::fs::read_to_string(format!("/proc/{pid}/cgroup")).is_ok_and(|t| {
                t.lines()
                    .filter_map(|l| l.strip_prefix("0::"))
                    .any(|p| Path::new(p).starts_with(&want))
            });
        }
        let ns = |p: i32| std::fs::read_link(format!("/proc/{p}/ns/pid")).ok();
        let own_pid_ns = self
            .core
            .service(i)
            .is_some_and(|s| s.def.plan.new_pid_ns());
        if own_pid_ns {
            return ns(pid).is_some() && ns(pid) == ns(init);
        }
        // No cgroup, no PID namespace: the init's descendants.
        let mut p = pid;
        for _ in 0..MAX_ANCESTRY {
            if p == init {
                return true;
            }
            match parent_of(p) {
                Some(pp) if pp > 1 => p = pp,
                _ => return false,
            }
        }
        false
    }
}

/// How far up the process tree a sender is looked for (no cgroup, no PID
/// namespace to tell).
const MAX_ANCESTRY: usize = 16;

fn parent_of(pid: i32) -> Option<i32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("PPid:"))
        .and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datagrams() {
        let n = parse("READY=1\nSTATUS=accepting connections\nWATCHDOG=1\nMAINPID=7");
        assert!(n.ready && n.watchdog && !n.stopping);
        assert_eq!(n.status.as_deref(), Some("accepting connections"));
        assert!(parse("WATCHDOG=trigger").watchdog_trigger);
        assert_eq!(
            parse("EXTEND_TIMEOUT_USEC=2000000").extend,
            Some(Duration::from_secs(2))
        );
        assert_eq!(parse("READY=0"), Notice::default());
    }

    #[test]
    fn host_dirs_sit_beside_the_control_socket() {
        let d = host_dir(Path::new("/run/isola/isola.sock"), "web");
        assert_eq!(d, Path::new("/run/isola/isola.sock.notify/web"));
    }
}
