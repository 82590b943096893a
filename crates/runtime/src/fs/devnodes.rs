//! The usual nodes of a fresh `/dev` (runc's list; `ptmx` is the devpts
//! instance's own) and its links to `/proc/self/fd`.
//!
//! A rootfs sandbox's nodes are made with mknod, as runc and crun make
//! them: one syscall each, where a bind of the host's node is a file, a
//! mount and the mount's teardown at exit. The node is the same device
//! (0666, owned by the sandbox's root); only its inode is the sandbox's
//! tmpfs's rather than the host's devtmpfs's. mknod is refused in a user
//! namespace of the sandbox's own (and may be by a security module), and a
//! `/dev` mounted `nodev` would make a made node useless: there the host's
//! nodes are bound, as before. (The device filter always allows `m` on
//! these six.)
//! Host-root mode always binds (its `/dev` is `nodev` by design).

use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{mount, MsFlags};
use nix::sys::stat::{makedev, mknod, umask, Mode, SFlag};

type Step = (&'static str, String);

/// One node: its name under `/dev` and its device number.
pub(crate) struct Node {
    pub(crate) name: &'static str,
    major: u64,
    minor: u64,
}

const fn node(name: &'static str, major: u64, minor: u64) -> Node {
    Node { name, major, minor }
}

pub(crate) const NODES: [Node; 6] = [
    node("null", 1, 3),
    node("zero", 1, 5),
    node("full", 1, 7),
    node("random", 1, 8),
    node("urandom", 1, 9),
    node("tty", 5, 0),
];

/// A rootfs sandbox's fresh `dev` (a tmpfs; `nodev`: its mount flags say
/// so): nodes made, or bound from the host's `/dev` where mknod is refused.
pub(crate) fn populate(dev: &Path, nodev: bool) -> Result<(), Step> {
    let mut bind_rest = nodev;
    // mknod honours the umask: the nodes are 0666 exactly.
    let old = umask(Mode::empty());
    let mut made = Ok(());
    for n in &NODES {
        let dst = dev.join(n.name);
        if !bind_rest {
            let mode = Mode::from_bits_truncate(0o666);
            match mknod(&dst, SFlag::S_IFCHR, mode, makedev(n.major, n.minor)) {
                Ok(()) => continue,
                Err(e) if mknod_refused(e) => bind_rest = true,
                Err(e) => {
                    made = Err(("mount", format!("mknod {}: {e}", dst.display())));
                    break;
                }
            }
        }
        if let Err(e) = bind_host_node(&Path::new("/dev").join(n.name), &dst) {
            made = Err(("mount", e));
            break;
        }
    }
    umask(old);
    made?;
    links(dev);
    Ok(())
}

/// Host-root mode's fresh `dev`: every node bound from `source(name)`.
pub(crate) fn populate_bound(dev: &Path, source: impl Fn(&str) -> PathBuf) -> Result<(), Step> {
    for n in &NODES {
        bind_host_node(&source(n.name), &dev.join(n.name)).map_err(|e| ("mount", e))?;
    }
    links(dev);
    Ok(())
}

/// mknod was refused where a bind of the host's node may still work: a
/// user namespace of the sandbox's own (EPERM) or a security module
/// (EACCES). Also for `linux.devices` (`super::nodes`).
pub(crate) fn mknod_refused(e: Errno) -> bool {
    matches!(e, Errno::EPERM | Errno::EACCES)
}

/// The host's node `src` at `dst`: a file made there, `src` bound on it.
pub(crate) fn bind_host_node(src: &Path, dst: &Path) -> Result<(), String> {
    std::fs::File::create(dst).map_err(|e| format!("create {}: {e}", dst.display()))?;
    mount(Some(src), dst, None::<&str>, MsFlags::MS_BIND, None::<&str>)
        .map_err(|e| format!("bind {}: {e}", src.display()))
}

fn links(dev: &Path) {
    for (link, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("ptmx", "pts/ptmx"),
    ] {
        let _ = std::os::unix::fs::symlink(target, dev.join(link));
    }
}
