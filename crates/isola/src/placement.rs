//! Where a sandbox's cgroup goes, for root and for everyone else.
//!
//! Root: `--cgroup-root` (default `/sys/fs/cgroup/isola`). An
//! unprivileged user: `--cgroup-root` or, by default, `isola/` in the
//! subtree delegated to the user that isola runs in
//! ([`delegated::default_root`]). Without one, a sandbox with limits
//! cannot be placed: one line says why and how to get one; a sandbox
//! without limits runs without a group, as crun does rootless.

use std::path::PathBuf;

use isola_runtime::cgroup::{self, delegated};
use isola_runtime::exit;

use crate::Exit;

/// The cgroup a sandbox (or a stack) gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Placement {
    /// Groups under this directory.
    Under(PathBuf),
    /// No group: `--no-cgroup`.
    Without,
    /// No group: an unprivileged user with no delegated subtree. Limits
    /// are refused with [`Placement::refuse_limits`].
    Undelegated,
}

impl Placement {
    /// From `--cgroup-root` and `--no-cgroup`.
    pub(crate) fn choose(explicit: Option<PathBuf>, no_cgroup: bool) -> Result<Placement, Exit> {
        if no_cgroup {
            return Ok(Placement::Without);
        }
        // Root of the host, or root of a namespace that may write the
        // default root (a container with its cgroups delegated): root's
        // rules. Root of podman's user namespace is not.
        let rootful = !isola_runtime::plan::rootless::unprivileged()
            || (nix::unistd::geteuid().is_root()
                && delegated::usable(std::path::Path::new(cgroup::DEFAULT_ROOT)));
        if rootful {
            let root = explicit.unwrap_or_else(|| PathBuf::from(cgroup::DEFAULT_ROOT));
            cgroup::check_root(&root).map_err(|e| Exit(exit::USAGE, e.to_string()))?;
            return Ok(Placement::Under(root));
        }
        match explicit {
            Some(root) => {
                cgroup::check_root(&root).map_err(|e| Exit(exit::USAGE, e.to_string()))?;
                if !delegated::usable(&root) {
                    return Err(Exit(
                        exit::USAGE,
                        format!(
                            "--cgroup-root {}: not delegated to uid {} (the directory, or its nearest existing parent, must be yours to write, as systemd's Delegate=yes makes it)",
                            root.display(),
                            nix::unistd::geteuid()
                        ),
                    ));
                }
                Ok(Placement::Under(root))
            }
            None => Ok(delegated::default_root()
                .map(Placement::Under)
                .unwrap_or(Placement::Undelegated)),
        }
    }

    /// No group will be made: the starter's default limits go.
    pub(crate) fn is_without(&self) -> bool {
        !matches!(self, Placement::Under(_))
    }

    /// The root to make groups under, if any.
    pub(crate) fn root(&self) -> Option<&std::path::Path> {
        match self {
            Placement::Under(r) => Some(r),
            _ => None,
        }
    }

    /// The one line for limits asked of a sandbox that gets no group
    /// because nothing is delegated to us; `None` otherwise.
    pub(crate) fn refuse_limits(&self, field: &str) -> Option<Exit> {
        if *self != Placement::Undelegated {
            return None;
        }
        Some(Exit(
            exit::USAGE,
            format!("{field}: {}", undelegated_line()),
        ))
    }
}

/// What is missing for limits, and how to get it.
pub(crate) fn undelegated_line() -> String {
    let own = match (cgroup::check_unified(), delegated::own_group()) {
        (Ok(()), Some(g)) if g == std::path::Path::new("/sys/fs/cgroup") => {
            "isola runs in the root cgroup".into()
        }
        (Ok(()), Some(g)) => format!("isola runs in {}, whose parent is not yours", g.display()),
        _ => "this host's /sys/fs/cgroup is not cgroup v2".into(),
    };
    format!(
        "limits need a cgroup v2 subtree delegated to uid {uid}, and there is none ({own}): start isola inside one (systemd-run --user --scope -p Delegate=yes isola …) or name one with --cgroup-root; or run without limits (--no-cgroup)",
        uid = nix::unistd::geteuid()
    )
}
