//! `linux.devices`: device nodes (and FIFOs) created in the sandbox's view.
//! The device filter allows each of them ([`crate::cgroup::devices::rules`]), as
//! runc does: a node a spec lists is meant to be used.
//!
//! mknod needs CAP_MKNOD in the initial user namespace: in a sandbox with
//! its own user namespace the node is a bind mount of the host's node at
//! the same path instead, as runc does it.

use std::os::unix::fs::{chown, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use nix::sys::stat::{makedev, mknod, Mode, SFlag};
use oci_spec::runtime::{LinuxDevice, LinuxDeviceType};

use crate::error::SpecError;

/// A node's mode when the spec gives none.
const DEFAULT_MODE: u32 = 0o666;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DeviceNode {
    pub(crate) path: PathBuf,
    pub(crate) kind: SFlag,
    pub(crate) major: u64,
    pub(crate) minor: u64,
    pub(crate) mode: u32,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
}

impl DeviceNode {
    pub(crate) fn from_oci(i: usize, d: &LinuxDevice) -> Result<DeviceNode, SpecError> {
        let field = |f: &str| format!("linux.devices[{i}].{f}");
        let path = d.path().clone();
        if !path.is_absolute() || path.components().any(|c| c == Component::ParentDir) {
            return Err(SpecError::new(
                field("path"),
                format!("{}: must be an absolute path without ..", path.display()),
            ));
        }
        if !path.starts_with("/dev") {
            return Err(SpecError::new(
                field("path"),
                format!("{}: device nodes belong in /dev", path.display()),
            ));
        }
        let kind = match d.typ() {
            LinuxDeviceType::C | LinuxDeviceType::U => SFlag::S_IFCHR,
            LinuxDeviceType::B => SFlag::S_IFBLK,
            LinuxDeviceType::P => SFlag::S_IFIFO,
            LinuxDeviceType::A => {
                return Err(SpecError::new(
                    field("type"),
                    "a: a node has one type (c, b, u or p)",
                ))
            }
        };
        let num = |v: i64, f: &str| {
            u64::try_from(v)
                .map_err(|_| SpecError::new(field(f), format!("{v}: not a device number")))
        };
        Ok(DeviceNode {
            path,
            kind,
            major: num(d.major(), "major")?,
            minor: num(d.minor(), "minor")?,
            mode: d.file_mode().unwrap_or(DEFAULT_MODE) & 0o7777,
            uid: d.uid().unwrap_or(0),
            gid: d.gid().unwrap_or(0),
        })
    }

    /// Create the node at `dst` (its place in the view being built).
    pub(crate) fn create(&self, dst: &Path) -> Result<(), (&'static str, String)> {
        let fail = |what: &str, e: &dyn std::fmt::Display| {
            (
                "linux.devices",
                format!("{}: {what}: {e}", self.path.display()),
            )
        };
        if let Some(parent) = dst.parent() {
            std::fs::create_dir_all(parent).map_err(|e| fail("create parent", &e))?;
        }
        match std::fs::remove_file(dst) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(fail("replace", &e)),
        }
        let dev = makedev(self.major, self.minor);
        match mknod(dst, self.kind, Mode::from_bits_truncate(self.mode), dev) {
            Ok(()) => {}
            Err(e) if super::devnodes::mknod_refused(e) && self.kind != SFlag::S_IFIFO => {
                // No CAP_MKNOD over the filesystem (a user namespace): bind
                // the host's node.
                return super::devnodes::bind_host_node(&self.path, dst)
                    .map_err(|e| fail("bind the host's node", &e));
            }
            Err(e) => return Err(fail("mknod", &e)),
        }
        // mknod honours the umask; the spec's mode is meant exactly.
        std::fs::set_permissions(dst, std::fs::Permissions::from_mode(self.mode))
            .map_err(|e| fail("chmod", &e))?;
        chown(dst, Some(self.uid), Some(self.gid)).map_err(|e| fail("chown", &e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(j: &str) -> Result<DeviceNode, SpecError> {
        let d: LinuxDevice = serde_json::from_str(j).unwrap();
        DeviceNode::from_oci(0, &d)
    }

    #[test]
    fn nodes_parse_with_defaults() {
        let n = parse(r#"{"path":"/dev/fuse","type":"c","major":10,"minor":229}"#).unwrap();
        assert_eq!(n.kind, SFlag::S_IFCHR);
        assert_eq!(
            (n.major, n.minor, n.mode, n.uid),
            (10, 229, DEFAULT_MODE, 0)
        );
    }

    #[test]
    fn bad_nodes_are_refused_naming_the_field() {
        let e = parse(r#"{"path":"/etc/x","type":"c","major":1,"minor":3}"#).unwrap_err();
        assert_eq!(e.field, "linux.devices[0].path");
        let e = parse(r#"{"path":"/dev/../etc/x","type":"c","major":1,"minor":3}"#).unwrap_err();
        assert_eq!(e.field, "linux.devices[0].path");
        let e = parse(r#"{"path":"/dev/x","type":"c","major":-2,"minor":3}"#).unwrap_err();
        assert_eq!(e.field, "linux.devices[0].major");
    }
}
