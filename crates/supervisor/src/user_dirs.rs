//! Where isola keeps its sockets and logs: the system's directories for
//! root, the XDG base directories for everyone else (as podman and
//! systemd's user manager do).

use std::path::PathBuf;

/// Root of the host (not of a user namespace of its own).
fn is_root() -> bool {
    !isola_runtime::plan::rootless::unprivileged()
}

/// Runtime files (sockets): `/run` for root; `$XDG_RUNTIME_DIR`, else
/// `/run/user/UID` when it is there, else `/tmp/run-UID` for a user.
pub fn runtime_dir() -> PathBuf {
    if is_root() {
        return PathBuf::from("/run");
    }
    if let Some(d) = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    let uid = nix::unistd::getuid();
    let run_user = PathBuf::from(format!("/run/user/{uid}"));
    if run_user.is_dir() {
        return run_user;
    }
    PathBuf::from(format!("/tmp/run-{uid}"))
}

/// Logs of stack `stack`: `/var/log/isola/STACK` for root,
/// `${XDG_STATE_HOME:-~/.local/state}/isola/STACK` for a user.
pub fn log_dir(stack: &str) -> PathBuf {
    if is_root() {
        return PathBuf::from("/var/log/isola").join(stack);
    }
    let state = std::env::var_os("XDG_STATE_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .unwrap_or_else(|| runtime_dir().join("state"));
    state.join("isola").join(stack)
}
