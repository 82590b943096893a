//! Where isola keeps its sockets and logs: the system's directories for
//! root, the XDG base directories for everyone else (as podman and
//! systemd's user manager do).

use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::PathBuf;

/// Root's directories are ours: we are root and may write `/run` (root of
/// the host, or of a container that has its own `/run`; not podman
/// rootless's runtime, whose `/run` is the host's).
fn is_root() -> bool {
    !isola_runtime::plan::rootless::unprivileged()
        || (nix::unistd::geteuid().is_root()
            && nix::unistd::access("/run", nix::unistd::AccessFlags::W_OK).is_ok())
}

/// Runtime files (sockets): `/run` for root; `$XDG_RUNTIME_DIR`, else
/// `/run/user/UID` when it is there, else `/tmp/run-UID` for a user —
/// unless someone else made that first (a socket there could be theirs):
/// then `~/.local/state/isola/run`.
pub fn runtime_dir() -> PathBuf {
    // Chosen once: a rootless stack's supervisor becomes uid 0 of a
    // namespace of its own, and its paths must stay the ones its users see.
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(choose_runtime_dir).clone()
}

fn choose_runtime_dir() -> PathBuf {
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
    let tmp = PathBuf::from(format!("/tmp/run-{uid}"));
    // Made private, as XDG_RUNTIME_DIR is; whoever made it, it must be a
    // directory of ours that nobody else may enter (checked after the
    // mkdir: another user may have made it in between).
    let _ = std::fs::DirBuilder::new().mode(0o700).create(&tmp);
    match std::fs::symlink_metadata(&tmp) {
        Ok(m) if m.is_dir() && m.uid() == uid.as_raw() && m.mode() & 0o077 == 0 => tmp,
        _ => state_home().join("isola/run"),
    }
}

/// `${XDG_STATE_HOME:-~/.local/state}`.
fn state_home() -> PathBuf {
    std::env::var_os("XDG_STATE_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .unwrap_or_else(|| PathBuf::from("/nonexistent"))
}

/// Logs of stack `stack`: `/var/log/isola/STACK` for root,
/// `${XDG_STATE_HOME:-~/.local/state}/isola/STACK` for a user.
pub fn log_dir(stack: &str) -> PathBuf {
    if is_root() {
        return PathBuf::from("/var/log/isola").join(stack);
    }
    state_home().join("isola").join(stack)
}
