//! The sandbox's filesystem view, built inside its private mount namespace:
//! spec mounts, device nodes, masked and read-only paths, pivot_root.
//! [`MountSpec::from_oci`] validates at plan time; [`setup`] runs in the init.

use std::fs;
use std::path::{Component, Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::statvfs::{statvfs, FsFlags};

use super::nodes::DeviceNode;
use super::{devnodes, hostroot};
use crate::error::SpecError;
use crate::init::hookrun::{self, HookRun};
use crate::sys;

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

/// Everything `setup` needs from the plan.
pub(crate) struct Layout<'a> {
    pub(crate) root: Option<&'a Path>,
    pub(crate) root_readonly: bool,
    pub(crate) propagation: MsFlags,
    pub(crate) mounts: &'a [MountSpec],
    pub(crate) fresh_proc: bool,
    pub(crate) masked: &'a [PathBuf],
    pub(crate) readonly: &'a [PathBuf],
    pub(crate) devices: &'a [DeviceNode],
    /// `hooks.createContainer`, run before pivot_root with `hook_state`.
    pub(crate) create_hooks: &'a [HookRun],
    pub(crate) hook_state: &'a str,
}

type Step = (&'static str, String);

fn fail<E: std::fmt::Display>(
    step: &'static str,
    what: impl std::fmt::Display,
) -> impl FnOnce(E) -> Step {
    move |e| (step, format!("{what}: {e}"))
}

/// Build the view. Runs in the init, inside the new mount namespace.
pub(crate) fn setup(l: &Layout<'_>) -> Result<(), Step> {
    // Nothing we mount may propagate back to the host.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | l.propagation,
        None::<&str>,
    )
    .map_err(fail("mount", "make / private"))?;
    let prefix = match l.root {
        Some(r) => {
            mount(
                Some(r),
                r,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )
            .map_err(fail("mount", format!("bind rootfs {}", r.display())))?;
            r.to_path_buf()
        }
        None => PathBuf::from("/"),
    };
    // Symlinks of a rootfs resolve inside it (inroot); the host's
    // own, in host-root mode, are the host's.
    let inside = |p: &Path| -> Result<PathBuf, Step> {
        match l.root {
            Some(r) => super::inroot::resolve(r, p).map_err(|e| ("mount", e)),
            None => Ok(prefix.join(p.strip_prefix("/").unwrap_or(p))),
        }
    };
    // Host-root mode: the host read-only, a fresh /dev and /tmp (hostroot).
    let pinned = match l.root {
        None => {
            let p = hostroot::Pinned::new(l.mounts)?;
            hostroot::protect(l.mounts, &p)?;
            Some(p)
        }
        Some(_) => None,
    };

    // Resolved once: every mount target is checked against it.
    let real_root = match l.root {
        Some(r) => {
            fs::canonicalize(r).map_err(fail("mount", format!("resolve {}", r.display())))?
        }
        None => prefix.clone(),
    };
    let mut proc_mounted = false;
    for (k, m) in l.mounts.iter().enumerate() {
        let dst = inside(&m.destination)?;
        let source = pinned.as_ref().and_then(|p| p.source(k));
        match &pinned {
            None => create_target(&real_root, &dst, m)?,
            Some(p) => hostroot::create_target(&dst, k, p)?,
        }
        mount_one(m, &dst, source.as_deref())?;
        if pinned.is_some() && m.bind {
            // The source's mount was made read-only with the rest of the
            // host: a bind is writable unless it says `ro`.
            let ro = m.flags.contains(MsFlags::MS_RDONLY);
            let what = if ro { "read-only" } else { "writable" };
            sys::mount::set_readonly(&dst, ro, m.recursive)
                .map_err(fail("mount", format!("make {} {what}", dst.display())))?;
        }
        if m.fstype == "proc" && m.destination == Path::new("/proc") {
            proc_mounted = true;
        }
        if m.fstype == "tmpfs" && m.destination == Path::new("/dev") {
            match &pinned {
                Some(p) => hostroot::fresh_dev(&dst, p)?,
                None => devnodes::populate(&dst, m.flags.contains(MsFlags::MS_NODEV))?,
            }
        }
    }
    if l.fresh_proc && !proc_mounted && l.root.is_none() {
        // The host's /proc would show host processes; a new PID namespace
        // deserves its own.
        mount(
            Some("proc"),
            "/proc",
            Some("proc"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            None::<&str>,
        )
        .map_err(fail("mount", "proc on /proc"))?;
    }
    for n in l.devices {
        n.create(&inside(&n.path)?)?;
    }
    for p in l.masked {
        mask(&inside(p)?)?;
    }
    for p in l.readonly {
        let dst = inside(p)?;
        if dst.exists() {
            mount(
                Some(&dst),
                &dst,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )
            .map_err(fail("readonlyPaths", dst.display()))?;
            remount_ro(&dst, MsFlags::MS_REC)
                .map_err(|e| ("readonlyPaths", format!("{}: {e}", dst.display())))?;
        }
    }
    hookrun::run("hooks.createContainer", l.create_hooks, l.hook_state)?;
    if let Some(r) = l.root {
        pivot(r)?;
        if l.root_readonly {
            remount_ro(Path::new("/"), MsFlags::empty()).map_err(|e| ("root.readonly", e))?;
        }
    }
    Ok(())
}

/// Mount `m` on `dst`; a bind from `source` when given (an opened
/// source, see `hostroot`), else from the spec's path.
fn mount_one(m: &MountSpec, dst: &Path, source: Option<&Path>) -> Result<(), Step> {
    let data = (!m.data.is_empty()).then_some(m.data.as_str());
    if m.bind {
        let src = source
            .or(m.source.as_deref())
            .ok_or(("mount", format!("{}: bind without source", dst.display())))?;
        let rec = if m.recursive {
            MsFlags::MS_REC
        } else {
            MsFlags::empty()
        };
        mount(
            Some(src),
            dst,
            None::<&str>,
            MsFlags::MS_BIND | rec,
            None::<&str>,
        )
        .map_err(fail(
            "mount",
            format!("bind {} on {}", src.display(), dst.display()),
        ))?;
        if !m.flags.is_empty() {
            // Bind mounts ignore flags; they take effect on a remount, which
            // must keep the flags the kernel locked (nosuid, nodev, noexec).
            let flags = m.flags | locked_flags(dst) | MsFlags::MS_BIND | MsFlags::MS_REMOUNT | rec;
            mount(None::<&str>, dst, None::<&str>, flags, None::<&str>).map_err(fail(
                "mount",
                format!("remount {} with its options", dst.display()),
            ))?;
        }
    } else {
        let source = m.source.clone().unwrap_or_else(|| PathBuf::from(&m.fstype));
        let data = if m.fstype == "devpts" && data.is_none() {
            Some("newinstance,ptmxmode=0666,mode=0620")
        } else {
            data
        };
        mount(Some(&source), dst, Some(m.fstype.as_str()), m.flags, data)
            .map_err(fail("mount", format!("{} on {}", m.fstype, dst.display())))?;
    }
    for p in &m.propagation {
        mount(None::<&str>, dst, None::<&str>, *p, None::<&str>)
            .map_err(fail("mount", format!("propagation of {}", dst.display())))?;
    }
    Ok(())
}

fn locked_flags(p: &Path) -> MsFlags {
    let mut f = MsFlags::empty();
    if let Ok(st) = statvfs(p) {
        let fl = st.flags();
        for (a, b) in [
            (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
            (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
            (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        ] {
            if fl.contains(a) {
                f |= b;
            }
        }
    }
    f
}

fn remount_ro(p: &Path, extra: MsFlags) -> Result<(), String> {
    let flags =
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | locked_flags(p) | extra;
    mount(None::<&str>, p, None::<&str>, flags, None::<&str>)
        .map_err(|e| format!("remount read-only: {e}"))
}

/// Create the mount point inside the rootfs, refusing any path whose
/// symlinks lead outside it.
fn create_target(real_root: &Path, dst: &Path, m: &MountSpec) -> Result<(), Step> {
    let file_bind = m.bind && m.source.as_deref().is_some_and(|s| !s.is_dir());
    let dir = if file_bind {
        dst.parent().unwrap_or(dst)
    } else {
        dst
    };
    fs::create_dir_all(dir).map_err(fail("mount", format!("create {}", dir.display())))?;
    let real =
        fs::canonicalize(dir).map_err(fail("mount", format!("resolve {}", dir.display())))?;
    if !real.starts_with(real_root) {
        return Err((
            "mount",
            format!(
                "{} resolves to {} outside the rootfs",
                dst.display(),
                real.display()
            ),
        ));
    }
    if file_bind && fs::symlink_metadata(dst).is_err() {
        // O_NOFOLLOW: `dst` was resolved; nothing may have become a link.
        use std::os::unix::fs::OpenOptionsExt;
        fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(dst)
            .map_err(fail("mount", format!("create {}", dst.display())))?;
    }
    Ok(())
}

fn mask(p: &Path) -> Result<(), Step> {
    let Ok(md) = fs::metadata(p) else {
        return Ok(());
    };
    if md.is_dir() {
        mount(
            Some("tmpfs"),
            p,
            Some("tmpfs"),
            MsFlags::MS_RDONLY,
            Some("size=0"),
        )
    } else {
        mount(
            Some("/dev/null"),
            p,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
    }
    .map_err(fail("maskedPaths", p.display()))
}

/// pivot_root(".", ".") stacks the old root on the new one; detaching it
/// leaves only the new root (runc's trick, no temporary directory needed).
fn pivot(root: &Path) -> Result<(), Step> {
    nix::unistd::chdir(root).map_err(fail("pivot_root", format!("chdir {}", root.display())))?;
    nix::unistd::pivot_root(".", ".").map_err(fail("pivot_root", root.display()))?;
    // The old root may be shared with the host's peer group; make sure the
    // detach cannot propagate.
    mount(
        None::<&str>,
        ".",
        None::<&str>,
        MsFlags::MS_SLAVE | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(fail("pivot_root", "make old root slave"))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(fail("pivot_root", "detach old root"))?;
    nix::unistd::chdir("/").map_err(fail("pivot_root", "chdir /"))?;
    Ok(())
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
