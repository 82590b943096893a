//! A `cgroup` mount (`/sys/fs/cgroup` in `crun spec` and every podman
//! container) without a cgroup namespace of the sandbox's own.
//!
//! A fresh `cgroup2` mount in the host's cgroup namespace is not private to
//! the sandbox: it reuses the one cgroup2 superblock, and the kernel applies
//! the new mount's options (`nsdelegate`, `memory_recursiveprot`, …) to the
//! whole hierarchy — a mount without them takes them away from the host
//! (runc#5258). Since 6.18 every such mount also takes the cgroup
//! threadgroup lock for writing, which waits for an RCU grace period and
//! for every fork and exit in flight: 2–40 ms on a busy host. A bind of the
//! host's cgroup2 mount shows the same tree (the root of the same
//! hierarchy, as a fresh mount outside a cgroup namespace does), changes
//! nothing for the host and costs a mount and a remount. runc and crun
//! fall back to the same bind when the fresh mount is refused.
//!
//! With a cgroup namespace of its own (new, or joined and not ours) the
//! fresh mount stays: it shows the namespace's root, and the kernel ignores
//! its options there. So does a mount that names filesystem options
//! (`nsdelegate`, …): whoever writes them asks for exactly that mount.
//! Inside a cgroup namespace of isola's own, "the host's hierarchy" is that
//! namespace's root, as a fresh mount would show it.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::mount::MsFlags;
use nix::sched::CloneFlags;
use nix::sys::statfs::{statfs, CGROUP2_SUPER_MAGIC};
use nix::sys::statvfs::{statvfs, FsFlags};

use super::mounts::MountSpec;

/// Does the sandbox get a cgroup namespace other than isola's own: a new
/// one, or one it joins that is not ours (joining ours is no namespace of
/// its own).
pub(crate) fn has_own_cgroup_ns(clone_flags: u64, join: &[(CloneFlags, PathBuf)]) -> bool {
    if clone_flags & libc::CLONE_NEWCGROUP as u64 != 0 {
        return true;
    }
    // Our own namespace is looked up only for a spec that joins one (a
    // stack of 10,000 services stat'ed it 10,000 times otherwise).
    let Some((_, path)) = join
        .iter()
        .find(|(f, _)| f.contains(CloneFlags::CLONE_NEWCGROUP))
    else {
        return false;
    };
    let ino = |p: &std::path::Path| std::fs::metadata(p).map(|m| m.ino()).ok();
    ino(path) != ino(std::path::Path::new("/proc/self/ns/cgroup"))
}

/// Turn every fresh cgroup2 mount of `mounts` (without filesystem options)
/// into a bind of the host's cgroup2 mount, when the sandbox has no cgroup
/// namespace of its own and the host has such a mount. Where it has none
/// (a cgroup v1 host), the mounts stay fresh: no host mount has options to
/// lose.
pub(crate) fn bind_host_hierarchy(mounts: &mut [MountSpec], own_cgroup_ns: bool) {
    if own_cgroup_ns || !mounts.iter().any(is_fresh_cgroup2) {
        return;
    }
    if let Some(host) = host_hierarchy() {
        convert(mounts, &host);
    }
}

/// The host's cgroup2 mount: where, and what a bind remount of it must keep.
struct Hierarchy {
    path: PathBuf,
    /// Its atime mode (which a bind in a user namespace may not change) and
    /// read-only state (which it may not lift), as mount flags.
    kept: MsFlags,
}

const ATIME: MsFlags = MsFlags::MS_NOATIME
    .union(MsFlags::MS_RELATIME)
    .union(MsFlags::MS_STRICTATIME)
    .union(MsFlags::MS_NODIRATIME);

fn convert(mounts: &mut [MountSpec], host: &Hierarchy) {
    for m in mounts.iter_mut().filter(|m| is_fresh_cgroup2(m)) {
        m.bind = true;
        m.recursive = false;
        m.source = Some(host.path.clone());
        m.fstype = "bind".into();
        m.flags = (m.flags - ATIME) | host.kept;
    }
}

fn is_fresh_cgroup2(m: &MountSpec) -> bool {
    m.fstype == "cgroup2" && !m.bind && m.data.is_empty()
}

/// Where the host shows its cgroup2 hierarchy from the root, checked to be
/// cgroup2 now. In the initial cgroup namespace the usual places first: a
/// kernfs root directory is inode 1, so a cgroup2 directory of that inode
/// is the hierarchy's root, whatever mount shows it (two syscalls each,
/// where mountinfo costs some 50 µs to generate). Elsewhere mountinfo,
/// whose roots are relative to our namespace.
fn host_hierarchy() -> Option<Hierarchy> {
    const KERNFS_ROOT_INO: u64 = 1;
    const INITIAL_CGROUP_NS_INO: u64 = 0xEFFF_FFFB;
    let is_cgroup2 = |p: &Path| statfs(p).is_ok_and(|s| s.filesystem_type() == CGROUP2_SUPER_MAGIC);
    let initial =
        std::fs::metadata("/proc/self/ns/cgroup").is_ok_and(|m| m.ino() == INITIAL_CGROUP_NS_INO);
    let usual = ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| {
            initial
                && is_cgroup2(p)
                && std::fs::metadata(p).is_ok_and(|m| m.ino() == KERNFS_ROOT_INO)
        });
    let path = match usual {
        Some(p) => p,
        None => {
            let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
            let found = hierarchy_root_mounts(&info).find(|p| is_cgroup2(p));
            found?
        }
    };
    let st = statvfs(&path).ok()?;
    let mut kept = MsFlags::empty();
    for (a, b) in [
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (FsFlags::ST_RDONLY, MsFlags::MS_RDONLY),
    ] {
        if st.flags().contains(a) {
            kept |= b;
        }
    }
    // Neither noatime nor relatime: strictatime (a remount without any of
    // the three would ask for relatime).
    if !kept.intersects(MsFlags::MS_NOATIME | MsFlags::MS_RELATIME) {
        kept |= MsFlags::MS_STRICTATIME;
    }
    Some(Hierarchy { path, kept })
}

/// The mount points of the cgroup2 mounts whose root is the root of the
/// hierarchy as we see it (`/`: not a bind of a subtree), in
/// /proc/self/mountinfo's text.
fn hierarchy_root_mounts(mountinfo: &str) -> impl Iterator<Item = PathBuf> + '_ {
    mountinfo.lines().filter_map(|line| {
        // ID PARENT MAJ:MIN ROOT MOUNT_POINT OPTIONS [OPTIONAL…] - FSTYPE SOURCE SUPER
        let (mount, fs) = line.split_once(" - ")?;
        let fields: Vec<&str> = mount.split(' ').collect();
        let fstype = fs.split(' ').next()?;
        (fstype == "cgroup2" && fields.get(3) == Some(&"/"))
            .then(|| fields.get(4).map(|p| PathBuf::from(unescape(p))))
            .flatten()
    })
}

/// mountinfo writes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (b[i], octal) {
            (b'\\', Some(d)) => {
                out.push((d[0] - b'0') << 6 | (d[1] - b'0') << 3 | (d[2] - b'0'));
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime shared:9 - cgroup cgroup rw,cpu
41 31 0:38 /sub /mnt/sub rw - cgroup2 cgroup2 rw
42 31 0:38 / /sys/fs/cgroup/unified\\040dir rw,nosuid shared:3 - cgroup2 cgroup2 rw,nsdelegate
43 31 0:38 / /srv/again rw - cgroup2 cgroup2 rw,nsdelegate
";

    #[test]
    fn hierarchy_root_mounts_are_found_in_order_and_unescaped() {
        let found: Vec<PathBuf> = hierarchy_root_mounts(HYBRID).collect();
        assert_eq!(
            found,
            [
                PathBuf::from("/sys/fs/cgroup/unified dir"),
                PathBuf::from("/srv/again")
            ]
        );
        let tmpfs = "31 23 0:28 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n";
        assert_eq!(hierarchy_root_mounts(tmpfs).count(), 0);
    }

    fn cgroup_mount(options: &str) -> MountSpec {
        let m: oci_spec::runtime::Mount = serde_json::from_str(&format!(
            r#"{{"destination":"/sys/fs/cgroup","type":"cgroup","source":"cgroup","options":[{options}]}}"#
        ))
        .unwrap();
        MountSpec::from_oci(0, &m, Path::new("/")).unwrap()
    }

    const CRUN: &str = r#""nosuid","noexec","nodev","relatime","ro""#;

    #[test]
    fn a_cgroup_namespace_of_its_own_keeps_the_fresh_mount() {
        let mut m = [cgroup_mount(CRUN)];
        bind_host_hierarchy(&mut m, true);
        assert!(!m[0].bind);
        assert_eq!(m[0].fstype, "cgroup2");
    }

    #[test]
    fn without_one_the_mount_becomes_a_bind_with_the_host_atime_and_its_own_flags() {
        let host = Hierarchy {
            path: PathBuf::from("/sys/fs/cgroup/unified"),
            kept: MsFlags::MS_NOATIME,
        };
        let mut m = [cgroup_mount(CRUN), cgroup_mount(r#""nsdelegate""#)];
        convert(&mut m, &host);
        assert!(m[0].bind && !m[0].recursive);
        assert_eq!(m[0].source.as_deref(), Some(host.path.as_path()));
        // The spec's ro, nosuid, noexec, nodev stay; relatime gives way to
        // the host mount's atime, which a bind may not change.
        let want = MsFlags::MS_RDONLY
            | MsFlags::MS_NOSUID
            | MsFlags::MS_NOEXEC
            | MsFlags::MS_NODEV
            | MsFlags::MS_NOATIME;
        assert_eq!(m[0].flags, want);
        // A mount naming filesystem options is the fresh mount it asks for.
        assert!(!m[1].bind);
        assert_eq!(m[1].fstype, "cgroup2");
    }

    #[test]
    fn a_read_only_host_mount_stays_read_only() {
        let host = Hierarchy {
            path: PathBuf::from("/sys/fs/cgroup"),
            kept: MsFlags::MS_RDONLY | MsFlags::MS_RELATIME,
        };
        let mut m = [cgroup_mount(r#""rw""#)];
        convert(&mut m, &host);
        assert!(m[0].flags.contains(MsFlags::MS_RDONLY));
    }

    #[test]
    fn joining_our_own_cgroup_namespace_is_no_namespace_of_its_own() {
        let ours = (
            CloneFlags::CLONE_NEWCGROUP,
            PathBuf::from("/proc/self/ns/cgroup"),
        );
        assert!(!has_own_cgroup_ns(0, &[ours]));
        assert!(has_own_cgroup_ns(libc::CLONE_NEWCGROUP as u64, &[]));
        assert!(!has_own_cgroup_ns(libc::CLONE_NEWNET as u64, &[]));
    }
}
