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
//! With a cgroup namespace (new or joined) the fresh mount stays: it shows
//! the namespace's root, and the kernel ignores its options there.

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use super::mounts::MountSpec;

/// Turn every fresh cgroup2 mount of `mounts` into a read-only-capable bind
/// of the host's cgroup2 mount, when the sandbox has no cgroup namespace
/// and the host has such a mount. Where it has none (a cgroup v1 host), the
/// mounts stay fresh: no host mount has options to lose.
pub(crate) fn bind_host_hierarchy(mounts: &mut [MountSpec], cgroup_ns: bool) {
    if cgroup_ns || !mounts.iter().any(is_fresh_cgroup2) {
        return;
    }
    let Some(host) = host_hierarchy() else {
        return;
    };
    for m in mounts.iter_mut().filter(|m| is_fresh_cgroup2(m)) {
        m.bind = true;
        m.recursive = false;
        m.source = Some(host.clone());
        m.fstype = "bind".into();
    }
}

fn is_fresh_cgroup2(m: &MountSpec) -> bool {
    m.fstype == "cgroup2" && !m.bind
}

/// Where the host shows its cgroup2 hierarchy from the root. The usual
/// places first: a kernfs root directory is inode 1, so a cgroup2 directory
/// of that inode is the hierarchy's root, whatever mount shows it (two
/// syscalls each, where mountinfo costs some 50 µs to generate).
fn host_hierarchy() -> Option<PathBuf> {
    const KERNFS_ROOT_INO: u64 = 1;
    let usual = ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
        .into_iter()
        .find(|p| {
            nix::sys::statfs::statfs(*p)
                .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC)
                && std::fs::metadata(p).is_ok_and(|m| m.ino() == KERNFS_ROOT_INO)
        });
    match usual {
        Some(p) => Some(PathBuf::from(p)),
        None => hierarchy_root_mount(&std::fs::read_to_string("/proc/self/mountinfo").ok()?),
    }
}

/// The mount point of the first cgroup2 mount whose root is the root of
/// the hierarchy as we see it (`/`: not a bind of a subtree) in
/// /proc/self/mountinfo's text.
fn hierarchy_root_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
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
    use std::path::Path;

    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime shared:9 - cgroup cgroup rw,cpu
41 31 0:38 /sub /mnt/sub rw - cgroup2 cgroup2 rw
42 31 0:38 / /sys/fs/cgroup/unified\\040dir rw,nosuid shared:3 - cgroup2 cgroup2 rw,nsdelegate
";

    #[test]
    fn the_hierarchy_root_mount_is_found_and_unescaped() {
        assert_eq!(
            hierarchy_root_mount(HYBRID).as_deref(),
            Some(Path::new("/sys/fs/cgroup/unified dir"))
        );
        let unified = "25 1 0:22 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(
            hierarchy_root_mount(unified).as_deref(),
            Some(Path::new("/sys/fs/cgroup"))
        );
        assert_eq!(
            hierarchy_root_mount("31 23 0:28 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n"),
            None
        );
    }

    fn cgroup_mount() -> MountSpec {
        let m: oci_spec::runtime::Mount = serde_json::from_str(
            r#"{"destination":"/sys/fs/cgroup","type":"cgroup","source":"cgroup","options":["nosuid","noexec","nodev","relatime","ro"]}"#,
        )
        .unwrap();
        MountSpec::from_oci(0, &m, Path::new("/")).unwrap()
    }

    #[test]
    fn a_cgroup_namespace_keeps_the_fresh_mount() {
        let mut m = [cgroup_mount()];
        bind_host_hierarchy(&mut m, true);
        assert!(!m[0].bind);
        assert_eq!(m[0].fstype, "cgroup2");
    }

    #[test]
    fn without_one_the_mount_becomes_a_bind_keeping_its_flags() {
        let Some(host) = host_hierarchy() else {
            panic!("this host has no cgroup2 mount to bind: the test cannot run");
        };
        let mut m = [cgroup_mount()];
        let flags = m[0].flags;
        bind_host_hierarchy(&mut m, false);
        assert!(m[0].bind && !m[0].recursive);
        assert_eq!(m[0].source.as_deref(), Some(host.as_path()));
        assert_eq!(m[0].flags, flags);
        assert!(m[0].flags.contains(nix::mount::MsFlags::MS_RDONLY));
    }
}
