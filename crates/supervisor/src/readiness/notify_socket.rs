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
use std::time::Duration;

use isola_runtime::mounts::MountSpec;
use nix::sys::socket::{self, sockopt, AddressFamily, SockFlag, SockType, UnixAddr};

use crate::lifecycle::Notice;
use crate::spec::health::Notify;
use crate::spec::stack::ServiceDef;

/// Where a service with its own rootfs finds its notify socket.
const SANDBOX_DIR: &str = "/run/isola-notify";
const SOCKET_NAME: &str = "notify.sock";
/// The payload's pid in a fresh PID namespace: the init (1) forks it first.
const PAYLOAD_PID_IN_NS: u32 = 2;

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
    let own_mount_ns = plan.has_mount_ns();
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
    warned: bool,
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

    /// Service `name`'s socket as an older binary bound it (an upgrade).
    pub(crate) fn adopt(control_socket: &Path, name: &str, sock: OwnedFd) -> NotifySocket {
        NotifySocket {
            sock,
            dir: host_dir(control_socket, name),
            warned: false,
        }
    }

    pub(crate) fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.sock.as_fd()
    }

    /// Say once per run that a foreign sender was ignored: true the
    /// first time.
    pub(crate) fn warn_once(&mut self) -> bool {
        !std::mem::replace(&mut self.warned, true)
    }

    /// A new run: a foreign sender is said again.
    pub(crate) fn reset_warning(&mut self) {
        self.warned = false;
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
