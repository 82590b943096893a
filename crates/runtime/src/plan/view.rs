//! The sandbox's view as [`super::Plan::read`] checks it: `mounts`,
//! masked and read-only paths (each needing a mount namespace of its own,
//! new or joined), `hostname` (a UTS namespace of its own) and
//! `linux.rootfsPropagation`.

use std::path::{Path, PathBuf};

use nix::mount::MsFlags;
use oci_spec::runtime::{Linux, Spec};

use super::fields::abs_paths;
use crate::error::SpecError;
use crate::fs::mounts::MountSpec;

/// The sandbox's view: `mounts`, masked and read-only paths, `hostname`,
/// the propagation of its mounts.
pub(super) struct View {
    pub(super) mounts: Vec<MountSpec>,
    pub(super) masked: Vec<PathBuf>,
    pub(super) readonly: Vec<PathBuf>,
    pub(super) hostname: Option<String>,
    pub(super) propagation: MsFlags,
}

/// `mounts`, `linux.maskedPaths` and `linux.readonlyPaths` (each, like a
/// rootfs — `has_root` — only with a mount namespace of its own: `own_ns`
/// are the namespaces new or joined), then `hostname` and
/// `linux.rootfsPropagation`.
pub(super) fn view(
    oci: &Spec,
    linux: &Linux,
    base_dir: &Path,
    has_root: bool,
    own_ns: u64,
) -> Result<View, SpecError> {
    let mount_ns = own_ns & libc::CLONE_NEWNS as u64 != 0;
    let mounts = oci
        .mounts()
        .iter()
        .flatten()
        .enumerate()
        .map(|(i, m)| MountSpec::from_oci(i, m, base_dir))
        .collect::<Result<Vec<_>, _>>()?;
    let masked = abs_paths("linux.maskedPaths", linux.masked_paths())?;
    let readonly = abs_paths("linux.readonlyPaths", linux.readonly_paths())?;
    if !mount_ns {
        for (field, used) in [
            ("root", has_root),
            ("mounts", !mounts.is_empty()),
            ("linux.maskedPaths", !masked.is_empty()),
            ("linux.readonlyPaths", !readonly.is_empty()),
        ] {
            if used {
                return Err(SpecError::new(
                    field,
                    "needs a new mount namespace (add {\"type\": \"mount\"} to linux.namespaces)",
                ));
            }
        }
    }
    let hostname = uts_hostname(oci, own_ns)?;
    let propagation = rootfs_propagation(linux, has_root)?;
    Ok(View {
        mounts,
        masked,
        readonly,
        hostname,
        propagation,
    })
}

/// `hostname`: 1-64 bytes, in a UTS namespace of its own (new or joined).
fn uts_hostname(oci: &Spec, own_ns: u64) -> Result<Option<String>, SpecError> {
    let hostname = oci.hostname().clone();
    if hostname.is_some() && own_ns & libc::CLONE_NEWUTS as u64 == 0 {
        return Err(SpecError::new(
            "hostname",
            "needs a new uts namespace (add {\"type\": \"uts\"} to linux.namespaces)",
        ));
    }
    if let Some(h) = &hostname {
        if h.is_empty() || h.len() > 64 {
            return Err(SpecError::new(
                "hostname",
                format!("{h:?}: must be 1-64 bytes"),
            ));
        }
    }
    Ok(hostname)
}

/// `linux.rootfsPropagation`. Shared only with a rootfs: the sandbox's
/// root is then a peer group of its own (see fs::mounts); in host-root
/// mode it would be the host's.
fn rootfs_propagation(linux: &Linux, has_root: bool) -> Result<MsFlags, SpecError> {
    let field = "linux.rootfsPropagation";
    Ok(match linux.rootfs_propagation().as_deref() {
        None | Some("private") | Some("rprivate") => MsFlags::MS_PRIVATE,
        Some("slave") | Some("rslave") => MsFlags::MS_SLAVE,
        Some("unbindable") | Some("runbindable") => MsFlags::MS_UNBINDABLE,
        Some("shared") | Some("rshared") if has_root => MsFlags::MS_SHARED,
        Some(s @ ("shared" | "rshared")) => {
            return Err(SpecError::new(field, format!("{s}: needs root.path (without a rootfs the root is the host's: its mounts would be shared with the host)")));
        }
        Some(other) => {
            return Err(SpecError::new(
                field,
                format!("{other}: use private, slave, shared or unbindable"),
            ));
        }
    })
}
