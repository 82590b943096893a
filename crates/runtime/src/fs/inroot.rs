//! Paths of the sandbox's view resolved the way the sandbox will see them:
//! inside its rootfs. A rootfs is the image author's, and its symlinks may
//! point anywhere (`/evil -> /etc`, `x -> ../../../../etc`). Before
//! pivot_root the init still sees the host: a mount target, a device node or
//! a masked path joined naively onto the rootfs path would follow such a
//! link out of it — creating directories and files on the host. Here every
//! symlink is read and followed *within* the root, as after a chroot: an
//! absolute target starts again at the root, `..` stops at the root.

use std::ffi::OsString;
use std::fs;
use std::path::{Component, Path, PathBuf};

/// Symlinks followed before giving up (the kernel's ELOOP limit).
const MAX_LINKS: u32 = 40;

enum Part {
    Up,
    Name(OsString),
}

fn parts(p: &Path) -> impl DoubleEndedIterator<Item = Part> + '_ {
    p.components().filter_map(|c| match c {
        Component::ParentDir => Some(Part::Up),
        Component::Normal(n) => Some(Part::Name(n.to_owned())),
        Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
    })
}

/// `path` (as the sandbox names it) inside `root`, every existing symlink
/// on the way resolved inside `root`. Components that do not exist yet are
/// kept as they are. The result always starts with `root`.
pub(crate) fn resolve(root: &Path, path: &Path) -> Result<PathBuf, String> {
    // What is left to walk, last component first.
    let mut todo: Vec<Part> = parts(path).collect();
    todo.reverse();
    let mut done = PathBuf::new();
    let mut links = 0;
    while let Some(part) = todo.pop() {
        let name = match part {
            Part::Up => {
                done.pop();
                continue;
            }
            Part::Name(n) => n,
        };
        let candidate = done.join(&name);
        let on_host = root.join(&candidate);
        match fs::symlink_metadata(&on_host) {
            Ok(m) if m.file_type().is_symlink() => {
                links += 1;
                if links > MAX_LINKS {
                    return Err(format!(
                        "{}: more than {MAX_LINKS} symlinks",
                        path.display()
                    ));
                }
                let target = fs::read_link(&on_host)
                    .map_err(|e| format!("{}: readlink: {e}", on_host.display()))?;
                if target.is_absolute() {
                    done = PathBuf::new();
                }
                let mut rest: Vec<Part> = parts(&target).collect();
                while let Some(p) = rest.pop() {
                    todo.push(p);
                }
            }
            _ => done = candidate,
        }
    }
    Ok(root.join(done))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn scratch(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("isola-inroot-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(d.join("root/etc")).unwrap();
        fs::create_dir_all(d.join("root/usr/lib")).unwrap();
        d
    }

    #[test]
    fn symlinks_resolve_inside_the_root() {
        let d = scratch("links");
        let root = d.join("root");
        symlink("/etc", root.join("abs")).unwrap();
        symlink("../../../../../../etc", root.join("climb")).unwrap();
        symlink("usr/lib", root.join("lib")).unwrap();
        symlink("loop", root.join("loop")).unwrap();
        assert_eq!(
            resolve(&root, Path::new("/abs/x")).unwrap(),
            root.join("etc/x")
        );
        assert_eq!(
            resolve(&root, Path::new("/climb/x")).unwrap(),
            root.join("etc/x")
        );
        assert_eq!(
            resolve(&root, Path::new("/lib/y")).unwrap(),
            root.join("usr/lib/y")
        );
        assert_eq!(
            resolve(&root, Path::new("/../../etc")).unwrap(),
            root.join("etc")
        );
        assert_eq!(
            resolve(&root, Path::new("/new/dir")).unwrap(),
            root.join("new/dir")
        );
        assert!(resolve(&root, Path::new("/loop/x")).is_err());
        let _ = fs::remove_dir_all(&d);
    }
}
