//! One entry of a spec's `mounts`, checked and resolved at plan time:
//! its type, destination, source and options split into mount flags,
//! propagation changes and the filesystem's own data. The init mounts it
//! ([`super::mounts`]).

use std::path::{Component, Path, PathBuf};

use nix::mount::MsFlags;

use crate::error::SpecError;

/// One entry of `mounts`, resolved.
#[derive(Debug, Clone)]
pub struct MountSpec {
    pub destination: PathBuf,
    pub fstype: String,
    pub source: Option<PathBuf>,
    pub bind: bool,
    pub recursive: bool,
    /// Flags to set (ro, nosuid, …).
    pub flags: MsFlags,
    /// Propagation changes, applied one by one after the mount.
    pub propagation: Vec<MsFlags>,
    /// Options the filesystem interprets (size=, mode=, …).
    pub data: String,
}

const FS_TYPES: &[&str] = &[
    "bind", "none", "tmpfs", "proc", "sysfs", "devpts", "mqueue", "cgroup2", "cgroup",
];

impl MountSpec {
    pub fn from_oci(
        i: usize,
        m: &oci_spec::runtime::Mount,
        base: &Path,
    ) -> Result<MountSpec, SpecError> {
        let field = format!("mounts[{i}]");
        let destination = m.destination().clone();
        if !destination.is_absolute() {
            return Err(SpecError::new(
                format!("{field}.destination"),
                format!("{}: must be an absolute path", destination.display()),
            ));
        }
        if destination.components().any(|c| c == Component::ParentDir) {
            return Err(SpecError::new(
                format!("{field}.destination"),
                format!("{}: must not contain ..", destination.display()),
            ));
        }
        let fstype = m.typ().clone().unwrap_or_else(|| "bind".to_string());
        if !FS_TYPES.contains(&fstype.as_str()) {
            return Err(SpecError::new(
                format!("{field}.type"),
                format!("{fstype}: unsupported (use one of {})", FS_TYPES.join(", ")),
            ));
        }
        let mut spec = MountSpec {
            destination,
            bind: fstype == "bind",
            fstype: if fstype == "cgroup" {
                "cgroup2".into()
            } else {
                fstype
            },
            source: m.source().clone(),
            recursive: false,
            flags: MsFlags::empty(),
            propagation: Vec::new(),
            data: String::new(),
        };
        for opt in m.options().iter().flatten() {
            spec.add_option(opt);
        }
        if spec.bind {
            let src = spec.source.clone().ok_or_else(|| {
                SpecError::new(format!("{field}.source"), "a bind mount needs a source")
            })?;
            let src = if src.is_absolute() {
                src
            } else {
                base.join(src)
            };
            if !src.exists() {
                return Err(SpecError::new(
                    format!("{field}.source"),
                    format!("{}: no such file or directory", src.display()),
                ));
            }
            spec.source = Some(src);
        }
        if m.uid_mappings().is_some() || m.gid_mappings().is_some() {
            return Err(SpecError::new(
                format!("{field}.uidMappings"),
                "id-mapped mounts are not supported",
            ));
        }
        Ok(spec)
    }

    fn add_option(&mut self, opt: &str) {
        let set = |s: &mut MountSpec, f: MsFlags| s.flags.insert(f);
        let clear = |s: &mut MountSpec, f: MsFlags| s.flags.remove(f);
        match opt {
            "bind" => self.bind = true,
            "rbind" => {
                self.bind = true;
                self.recursive = true;
            }
            "ro" => set(self, MsFlags::MS_RDONLY),
            "rw" => clear(self, MsFlags::MS_RDONLY),
            "nosuid" => set(self, MsFlags::MS_NOSUID),
            "suid" => clear(self, MsFlags::MS_NOSUID),
            "nodev" => set(self, MsFlags::MS_NODEV),
            "dev" => clear(self, MsFlags::MS_NODEV),
            "noexec" => set(self, MsFlags::MS_NOEXEC),
            "exec" => clear(self, MsFlags::MS_NOEXEC),
            "sync" => set(self, MsFlags::MS_SYNCHRONOUS),
            "async" => clear(self, MsFlags::MS_SYNCHRONOUS),
            "dirsync" => set(self, MsFlags::MS_DIRSYNC),
            "noatime" => set(self, MsFlags::MS_NOATIME),
            "atime" => clear(self, MsFlags::MS_NOATIME),
            "nodiratime" => set(self, MsFlags::MS_NODIRATIME),
            "diratime" => clear(self, MsFlags::MS_NODIRATIME),
            "relatime" => set(self, MsFlags::MS_RELATIME),
            "norelatime" => clear(self, MsFlags::MS_RELATIME),
            "strictatime" => set(self, MsFlags::MS_STRICTATIME),
            "nostrictatime" => clear(self, MsFlags::MS_STRICTATIME),
            "private" => self.propagation.push(MsFlags::MS_PRIVATE),
            "rprivate" => self.propagation.push(MsFlags::MS_PRIVATE | MsFlags::MS_REC),
            "shared" => self.propagation.push(MsFlags::MS_SHARED),
            "rshared" => self.propagation.push(MsFlags::MS_SHARED | MsFlags::MS_REC),
            "slave" => self.propagation.push(MsFlags::MS_SLAVE),
            "rslave" => self.propagation.push(MsFlags::MS_SLAVE | MsFlags::MS_REC),
            "unbindable" => self.propagation.push(MsFlags::MS_UNBINDABLE),
            "runbindable" => self
                .propagation
                .push(MsFlags::MS_UNBINDABLE | MsFlags::MS_REC),
            // crun's extensions that podman may emit; runc ignores them too.
            "tmpcopyup" | "notmpcopyup" | "copy-symlink" => {}
            other => {
                if !self.data.is_empty() {
                    self.data.push(',');
                }
                self.data.push_str(other);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(j: &str) -> Result<MountSpec, SpecError> {
        let m: oci_spec::runtime::Mount = serde_json::from_str(j).unwrap();
        MountSpec::from_oci(0, &m, Path::new("/"))
    }

    #[test]
    fn options_split_into_flags_and_data() {
        let m = parse(r#"{"destination":"/tmp","type":"tmpfs","source":"tmpfs","options":["nosuid","nodev","mode=1777","size=64m"]}"#).unwrap();
        assert_eq!(m.flags, MsFlags::MS_NOSUID | MsFlags::MS_NODEV);
        assert_eq!(m.data, "mode=1777,size=64m");
        assert!(!m.bind);
    }

    #[test]
    fn bind_mounts_need_an_existing_source() {
        let m =
            parse(r#"{"destination":"/x","type":"bind","source":"/etc","options":["rbind","ro"]}"#)
                .unwrap();
        assert!(m.bind && m.recursive && m.flags.contains(MsFlags::MS_RDONLY));
        let e = parse(r#"{"destination":"/x","type":"bind","source":"/nonexistent-isola"}"#)
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "mounts[0].source: /nonexistent-isola: no such file or directory"
        );
        let e = parse(r#"{"destination":"x","type":"tmpfs"}"#).unwrap_err();
        assert_eq!(e.field, "mounts[0].destination");
        let e = parse(r#"{"destination":"/x","type":"nfs"}"#).unwrap_err();
        assert_eq!(e.field, "mounts[0].type");
    }
}
