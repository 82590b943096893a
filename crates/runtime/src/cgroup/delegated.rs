//! Where an unprivileged caller may create cgroups: a subtree delegated to
//! it (owned by its uid), as systemd's user manager (`user@UID.service`)
//! and `systemd-run --user -p Delegate=yes` give one.
//!
//! A process may move another only with write access to `cgroup.procs` of
//! the closest common ancestor of both groups, so sandbox groups must lie
//! in the same delegated subtree as the caller itself: the default is
//! `isola/` beside the group the caller runs in, when the caller owns
//! their parent.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::CGROUP_MOUNT;

/// The group this process runs in (`0::/PATH` of `/proc/self/cgroup`).
pub fn own_group() -> Option<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let rel = text.lines().find_map(|l| l.strip_prefix("0::"))?;
    Some(Path::new(CGROUP_MOUNT).join(rel.trim_start_matches('/')))
}

/// `isola/` beside our own group when its parent is delegated to us;
/// `None` when there is no such subtree (or no unified hierarchy).
pub fn default_root() -> Option<PathBuf> {
    super::check_unified().ok()?;
    let own = own_group()?;
    // In the root group (of the host, or of a cgroup namespace) there is
    // no parent of ours.
    if own == Path::new(CGROUP_MOUNT) {
        return None;
    }
    let parent = own.parent()?.to_path_buf();
    if parent == Path::new(CGROUP_MOUNT) || !owned_by_us(&parent) {
        return None;
    }
    Some(parent.join("isola"))
}

/// Whether `root` (or, where it does not exist yet, its nearest existing
/// ancestor) is a directory we own and may write.
pub fn usable(root: &Path) -> bool {
    let existing = root.ancestors().find(|a| a.exists());
    existing.is_some_and(|d| d.starts_with(CGROUP_MOUNT) && owned_by_us(d))
}

fn owned_by_us(dir: &Path) -> bool {
    let uid = nix::unistd::geteuid().as_raw();
    let owned = std::fs::metadata(dir).is_ok_and(|m| m.uid() == uid);
    owned && nix::unistd::access(dir, nix::unistd::AccessFlags::W_OK).is_ok()
}
