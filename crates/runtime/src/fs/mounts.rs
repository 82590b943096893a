//! The sandbox's filesystem view, built inside its private mount namespace:
//! spec mounts, device nodes, masked and read-only paths, pivot_root.
//! [`MountSpec::from_oci`] (`mount_spec`) validates at plan time; [`setup`]
//! runs in the init.

use std::fs;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::statvfs::{statvfs, FsFlags};

pub use super::mount_spec::MountSpec;
use super::nodes::DeviceNode;
use super::root_layers::RootLayers;
use super::{devnodes, hostroot};
use crate::init::hookrun::{self, HookRun};
use crate::sys;

/// Everything `setup` needs from the plan.
pub(crate) struct Layout<'a> {
    pub(crate) root: Option<&'a Path>,
    pub(crate) root_readonly: bool,
    pub(crate) root_layers: Option<&'a RootLayers>,
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
    let view = View::enter(l)?;
    // Host-root mode: the host read-only, a fresh /dev and /tmp (hostroot).
    let pinned = match l.root {
        None => {
            let p = hostroot::Pinned::new(l.mounts)?;
            hostroot::protect(l.mounts, &p)?;
            Some(p)
        }
        Some(_) => None,
    };
    let proc_mounted = spec_mounts(l, &view, pinned.as_ref())?;
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
        n.create(&view.inside(&n.path)?)?;
    }
    for p in l.masked {
        mask(&view.inside(p)?)?;
    }
    for p in l.readonly {
        read_only(&view.inside(p)?)?;
    }
    hookrun::run("hooks.createContainer", l.create_hooks, l.hook_state)?;
    if let Some(r) = l.root {
        pivot(r)?;
        root_propagation(l.propagation)?;
        if l.root_readonly {
            remount_ro(Path::new("/"), MsFlags::empty()).map_err(|e| ("root.readonly", e))?;
        }
    }
    Ok(())
}

/// Where the view is built: the rootfs (bound onto itself), or the host's
/// `/` in host-root mode.
struct View<'a> {
    root: Option<&'a Path>,
    prefix: PathBuf,
    /// The rootfs with its own symlinks resolved, once: every mount target
    /// is checked against it.
    real_root: PathBuf,
}

impl<'a> View<'a> {
    /// `/` made private or slave (nothing we mount may propagate back to
    /// the host) and the rootfs bound onto itself (or an image's layers
    /// mounted there). A shared or unbindable root is made so after the
    /// pivot ([`root_propagation`]): a bind of an unbindable `/` fails, and
    /// a shared `/` is the host's peer group.
    fn enter(l: &Layout<'a>) -> Result<View<'a>, Step> {
        let now = match (l.root, l.propagation) {
            (_, MsFlags::MS_SLAVE) => MsFlags::MS_SLAVE,
            (Some(_), _) => MsFlags::MS_PRIVATE,
            (None, p) => p,
        };
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REC | now,
            None::<&str>,
        )
        .map_err(fail("mount", "make / private"))?;
        let Some(r) = l.root else {
            let prefix = PathBuf::from("/");
            return Ok(View {
                root: None,
                real_root: prefix.clone(),
                prefix,
            });
        };
        match l.root_layers {
            Some(layers) => layers
                .mount()
                .map_err(fail("mount", format!("image layers on {}", r.display())))?,
            None => mount(
                Some(r),
                r,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )
            .map_err(fail("mount", format!("bind rootfs {}", r.display())))?,
        }
        let real_root =
            fs::canonicalize(r).map_err(fail("mount", format!("resolve {}", r.display())))?;
        Ok(View {
            root: Some(r),
            prefix: r.to_path_buf(),
            real_root,
        })
    }

    /// `p` as the sandbox names it, where it is now. Symlinks of a rootfs
    /// resolve inside it (inroot); the host's own, in host-root mode, are
    /// the host's.
    fn inside(&self, p: &Path) -> Result<PathBuf, Step> {
        match self.root {
            Some(r) => super::inroot::resolve(r, p).map_err(|e| ("mount", e)),
            None => Ok(self.prefix.join(p.strip_prefix("/").unwrap_or(p))),
        }
    }
}

/// The spec's `mounts`, in order, with a fresh `/dev`'s nodes where one
/// is mounted; whether `/proc` was among them.
fn spec_mounts(
    l: &Layout<'_>,
    view: &View<'_>,
    pinned: Option<&hostroot::Pinned>,
) -> Result<bool, Step> {
    let mut proc_mounted = false;
    for (k, m) in l.mounts.iter().enumerate() {
        let dst = view.inside(&m.destination)?;
        let source = pinned.and_then(|p| p.source(k));
        match pinned {
            None => create_target(&view.real_root, &dst, m)?,
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
            match pinned {
                Some(p) => hostroot::fresh_dev(&dst, p)?,
                None => devnodes::populate(&dst, m.flags.contains(MsFlags::MS_NODEV))?,
            }
        }
    }
    Ok(proc_mounted)
}

/// One of `linux.readonlyPaths`: bound onto itself, read-only (absent:
/// nothing to protect).
fn read_only(dst: &Path) -> Result<(), Step> {
    if !dst.exists() {
        return Ok(());
    }
    mount(
        Some(dst),
        dst,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(fail("readonlyPaths", dst.display()))?;
    remount_ro(dst, MsFlags::MS_REC)
        .map_err(|e| ("readonlyPaths", format!("{}: {e}", dst.display())))
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

/// `linux.rootfsPropagation` shared or unbindable, on the new root: bound
/// from a private mount, a shared one is a peer group of its own (mounts
/// propagate between the sandbox's binds, never to the host).
fn root_propagation(p: MsFlags) -> Result<(), Step> {
    if !p.intersects(MsFlags::MS_SHARED | MsFlags::MS_UNBINDABLE) {
        return Ok(());
    }
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | p,
        None::<&str>,
    )
    .map_err(fail("mount", "linux.rootfsPropagation of /"))
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
