//! Host-root mode, safe by default. A spec without `root` that has its own
//! mount namespace sees the host's `/` read-only (every mount of it), a
//! fresh minimal `/dev`, its own `/tmp`, and can write only where its
//! `mounts` say — what systemd calls `ProtectSystem=strict`,
//! `PrivateDevices=yes` and `PrivateTmp=yes`.
//!
//! Bind sources and the host's device nodes are opened (`O_PATH`) before
//! anything is hidden and mounted from `/proc/self/fd/N`: a bind of a host
//! path under `/tmp` still works once `/tmp` is the sandbox's own.

use std::fs;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::fcntl::{open, OFlag};
use nix::mount::{mount, MsFlags};
use nix::sys::stat::Mode;

use super::devnodes;
use super::mounts::MountSpec;
use crate::sys;

type Step = (&'static str, String);

/// What must be reached after the host's view is hidden.
pub(crate) struct Pinned {
    /// Per spec mount: its bind source, opened, and whether it is a
    /// directory (asked now: later its path may be hidden).
    sources: Vec<Option<(OwnedFd, bool)>>,
    /// The host's device nodes of [`devnodes::NODES`], opened.
    dev: Vec<OwnedFd>,
}

fn opath(p: &Path) -> Result<OwnedFd, Step> {
    open(p, OFlag::O_PATH | OFlag::O_CLOEXEC, Mode::empty())
        .map_err(|e| ("mount", format!("open {}: {e}", p.display())))
}

/// The magic link that names an open fd as a path (mount sources).
fn fd_path(fd: &OwnedFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

impl Pinned {
    /// Open every bind source and the device nodes, while the host's view
    /// is still whole.
    pub(crate) fn new(specs: &[MountSpec]) -> Result<Pinned, Step> {
        let mut sources = Vec::with_capacity(specs.len());
        for m in specs {
            sources.push(match (&m.source, m.bind) {
                (Some(src), true) => Some((opath(src)?, src.is_dir())),
                _ => None,
            });
        }
        let mut dev = Vec::with_capacity(devnodes::NODES.len());
        for n in &devnodes::NODES {
            dev.push(opath(&Path::new("/dev").join(n.name))?);
        }
        Ok(Pinned { sources, dev })
    }

    /// Where spec mount `k` is bound from now.
    pub(crate) fn source(&self, k: usize) -> Option<PathBuf> {
        self.sources.get(k)?.as_ref().map(|(fd, _)| fd_path(fd))
    }

    /// Spec mount `k` binds a file (not a directory).
    fn binds_file(&self, k: usize) -> bool {
        self.sources
            .get(k)
            .and_then(Option::as_ref)
            .is_some_and(|(_, dir)| !dir)
    }

    /// Where device node `name` (one of [`devnodes::NODES`]) is bound from.
    pub(crate) fn dev_node(&self, name: &str) -> Option<PathBuf> {
        let k = devnodes::NODES.iter().position(|n| n.name == name)?;
        self.dev.get(k).map(fd_path)
    }
}

/// Does a spec mount take `dir` itself?
fn covers(specs: &[MountSpec], dir: &str) -> bool {
    specs.iter().any(|m| m.destination == Path::new(dir))
}

fn tmpfs(dst: &str, flags: MsFlags, data: &str) -> Result<(), Step> {
    mount(Some("tmpfs"), dst, Some("tmpfs"), flags, Some(data))
        .map_err(|e| ("mount", format!("tmpfs on {dst}: {e}")))
}

/// The host read-only, then a fresh `/dev` and `/tmp` unless the spec
/// mounts its own.
pub(crate) fn protect(specs: &[MountSpec], pinned: &Pinned) -> Result<(), Step> {
    sys::mount::set_readonly(Path::new("/"), true, true).map_err(|e| {
        let hint = if e == nix::errno::Errno::ENOSYS {
            " (needs Linux 5.12 or later)"
        } else {
            ""
        };
        ("mount", format!("make the host's / read-only: {e}{hint}"))
    })?;
    let nosuid_nodev = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    if !covers(specs, "/dev") {
        // nodev: a node made here (mknod) does not open; the bound nodes
        // are mounts of their own.
        tmpfs(
            "/dev",
            nosuid_nodev | MsFlags::MS_NOEXEC,
            "mode=755,size=64k",
        )?;
        fresh_dev(Path::new("/dev"), pinned)?;
    }
    if !covers(specs, "/tmp") {
        tmpfs("/tmp", nosuid_nodev, "mode=1777")?;
    }
    Ok(())
}

/// The nodes, a devpts instance of the sandbox's own, `/dev/shm`.
pub(crate) fn fresh_dev(dev: &Path, pinned: &Pinned) -> Result<(), Step> {
    devnodes::populate_bound(dev, |name| {
        pinned
            .dev_node(name)
            .unwrap_or_else(|| Path::new("/dev").join(name))
    })?;
    let pts = dev.join("pts");
    let shm = dev.join("shm");
    for d in [&pts, &shm] {
        fs::create_dir_all(d).map_err(|e| ("mount", format!("create {}: {e}", d.display())))?;
    }
    mount(
        Some("devpts"),
        &pts,
        Some("devpts"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620"),
    )
    .map_err(|e| ("mount", format!("devpts on {}: {e}", pts.display())))?;
    mount(
        Some("shm"),
        &shm,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=1777"),
    )
    .map_err(|e| ("mount", format!("tmpfs on {}: {e}", shm.display())))?;
    Ok(())
}

/// A spec mount's target: made if missing, which only works where the
/// sandbox can write (its `/tmp`, `/dev`, or another mount).
pub(crate) fn create_target(dst: &Path, k: usize, pinned: &Pinned) -> Result<(), Step> {
    if dst.exists() {
        return Ok(());
    }
    let file = pinned.binds_file(k);
    let made = if file {
        dst.parent()
            .map_or(Ok(()), fs::create_dir_all)
            .and_then(|()| fs::File::create(dst).map(drop))
    } else {
        fs::create_dir_all(dst)
    };
    made.map_err(|e| {
        (
            "mount",
            format!(
                "{}: no such mount point, and the host is read-only here ({e}): \
                 mount under /tmp or a directory that exists",
                dst.display()
            ),
        )
    })
}
