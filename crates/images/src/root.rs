//! A sandbox's root from an image: the image's layers as overlay lower
//! directories (shared by every sandbox of the image, never written),
//! and a directory of the sandbox's own in the store's `roots/`: `upper/`
//! (its writes, kept across its restarts) and `work/` (overlayfs's). The
//! overlay is mounted inside the sandbox's mount namespace, so nothing is
//! mounted on the host and every sandbox can use the one mount point,
//! the store's `mnt/`. The root's `lock` (which names the image's digest)
//! is held while a sandbox may use it, so `rmi` and `prune` can tell a
//! running sandbox's root from one a killed supervisor left. A writable
//! root is three directories and a file (made and removed on every
//! `isola run` of an image: each costs a journal write); a read-only one
//! is a directory and its lock, its upper layer a tmpfs of the sandbox's
//! (the runtime's `root_layers`).

use std::fs::{self, File};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

use crate::store::{remove_any, ImageRecord, Lock};
use crate::{Digest, Error, Store};

/// What the runtime mounts: lower directories top first, and the
/// writable pair unless the root is read-only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layers {
    pub lower: Vec<PathBuf>,
    pub upper: Option<(PathBuf, PathBuf)>,
    /// The store's `mnt/`, one for all (each sandbox mounts in its own
    /// namespace): the mount point of a writable root, the place of a
    /// read-only root's scratch tmpfs.
    pub mnt: PathBuf,
}

/// A sandbox's root directory, held (locked) while this lives.
pub struct SandboxRoot {
    dir: PathBuf,
    layers: Layers,
    _held: Flock<File>,
}

/// Whether the root gets a writable layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Writable {
    Yes,
    /// `root.readonly`: the image's layers, under a scratch tmpfs for
    /// mount points only.
    No,
}

impl SandboxRoot {
    /// Make (or take up again, keeping its writes) the root `name` for
    /// `image`. Fails when another live sandbox holds it.
    pub fn prepare(
        store: &Store,
        name: &str,
        image: &ImageRecord,
        w: Writable,
    ) -> Result<SandboxRoot, Error> {
        let layers = Layers::of(store, name, image, w)?;
        let dir = store.root().join("roots").join(name);
        let held = claim(&dir, name)?;
        let digest = image.digest.to_string();
        let lock = dir.join("lock");
        let mut was = String::new();
        let mut f: &File = &held;
        std::io::Read::read_to_string(&mut f, &mut was).map_err(Error::io(&lock))?;
        if was != digest {
            if !was.is_empty() {
                // Another image's writes do not belong on this one.
                for sub in ["upper", "work"] {
                    let p = dir.join(sub);
                    remove_any(&p).map_err(Error::io(&p))?;
                }
            }
            f.set_len(0).map_err(Error::io(&lock))?;
            std::os::unix::fs::FileExt::write_all_at(f, digest.as_bytes(), 0)
                .map_err(Error::io(&lock))?;
        }
        if let Some((upper, work)) = &layers.upper {
            for p in [upper, work] {
                match fs::create_dir(p) {
                    Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                        return Err(Error::io(p)(e))
                    }
                    _ => {}
                }
            }
        }
        Ok(SandboxRoot {
            dir,
            layers,
            _held: held,
        })
    }

    pub fn layers(&self) -> &Layers {
        &self.layers
    }

    /// The held lock's fd (a supervisor's upgrade keeps it across its exec,
    /// so the root is never unheld for `rmi` or `prune` to take).
    pub fn lock_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self._held.as_fd()
    }

    /// The root `name` for `image` as a process image before an exec of
    /// ours held it: `lock` is that hold's open lock file (taking the lock
    /// again on it cannot fail on our own lock); nothing in the root moves.
    pub fn adopt(
        store: &Store,
        name: &str,
        image: &ImageRecord,
        w: Writable,
        lock: std::os::fd::OwnedFd,
    ) -> Result<SandboxRoot, Error> {
        let layers = Layers::of(store, name, image, w)?;
        let dir = store.root().join("roots").join(name);
        let held = Flock::lock(File::from(lock), FlockArg::LockExclusiveNonblock)
            .map_err(|_| Error::Store(format!("root {name}: the lock handed over is not ours")))?;
        Ok(SandboxRoot {
            dir,
            layers,
            _held: held,
        })
    }

    /// The sandbox is gone for good: drop its writes. The layout is
    /// known, so an untouched root goes in six calls (a one-shot `isola
    /// run` pays them on every start); anything else, the long way.
    pub fn remove(self) -> Result<(), Error> {
        // Out of the way first: a sandbox that takes the name up at this
        // moment gets a root of its own, not one being deleted.
        let aside = aside(&self.dir)?;
        let d = &aside;
        let quick = fs::remove_file(d.join("lock")).is_ok()
            && ["work/work", "work", "upper", ""].iter().all(|sub| {
                match fs::remove_dir(d.join(sub)) {
                    Ok(()) => true,
                    Err(e) => e.kind() == std::io::ErrorKind::NotFound,
                }
            });
        if quick {
            return Ok(());
        }
        remove_any(d).map_err(Error::io(d))
    }

    /// Set the root aside (`roots/.gone-…`, returned) for a later
    /// [`delete`] or a prune: a large writable layer is not deleted on the
    /// caller's time (a supervisor's loop).
    pub fn discard(self) -> Result<PathBuf, Error> {
        aside(&self.dir)
    }
}

impl Layers {
    /// Where the root `name` of `image` lives in `store`, its layers
    /// checked. Nothing is made here: [`SandboxRoot::prepare`] makes it.
    pub fn of(
        store: &Store,
        name: &str,
        image: &ImageRecord,
        w: Writable,
    ) -> Result<Layers, Error> {
        Layers::check(store, image)?;
        Layers::at(store.root(), name, image, w)
    }

    /// Fail unless every layer of `image` is in the store.
    pub fn check(store: &Store, image: &ImageRecord) -> Result<(), Error> {
        match image
            .layers
            .iter()
            .map(|l| store.layer_dir(l))
            .find(|l| !l.is_dir())
        {
            Some(missing) => Err(Error::Store(format!(
                "{}: layer missing from the store; pull the image again",
                missing.display()
            ))),
            None => Ok(()),
        }
    }

    /// [`Layers::of`] without a look at the disk (the store at `root`,
    /// its layers checked before).
    pub fn at(root: &Path, name: &str, image: &ImageRecord, w: Writable) -> Result<Layers, Error> {
        check_name(name)?;
        let dir = root.join("roots").join(name);
        // Top first; a layer repeated (the classic builder's empty one)
        // counts where it is highest: overlayfs refuses a lower twice.
        let mut lower: Vec<PathBuf> = Vec::with_capacity(image.layers.len());
        for l in image.layers.iter().rev() {
            let p = root.join("layers").join(l.hex());
            if !lower.contains(&p) {
                lower.push(p);
            }
        }
        if lower.is_empty() {
            // An image with no layers: an empty directory stands in.
            lower.push(root.join("empty"));
        }
        let upper = (w == Writable::Yes).then(|| (dir.join("upper"), dir.join("work")));
        Ok(Layers {
            lower,
            upper,
            mnt: root.join("mnt"),
        })
    }

    /// A file of the image as the sandbox sees it, read without mounting
    /// (`/etc/passwd` to resolve the image's `User`): top layer first; a
    /// whiteout hides it, an opaque directory hides the layers below. No
    /// symlink is followed (one in a layer would lead onto the host's
    /// files): a path through one is not found.
    pub fn read_image_file(&self, rel: &str) -> Option<Vec<u8>> {
        let rel = Path::new(rel.trim_start_matches('/'));
        for l in &self.lower {
            match in_layer(l, rel) {
                InLayer::File(bytes) => return Some(bytes),
                InLayer::Hidden => return None,
                InLayer::Absent => {}
            }
        }
        None
    }
}

/// What one layer says of a path.
enum InLayer {
    File(Vec<u8>),
    /// Deleted here, behind a symlink, or not a file: the layers below do
    /// not count.
    Hidden,
    Absent,
}

fn in_layer(layer: &Path, rel: &Path) -> InLayer {
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let mut at = layer.to_path_buf();
    let mut opaque = false;
    for c in rel.components() {
        at.push(c);
        let Ok(m) = fs::symlink_metadata(&at) else {
            return if opaque {
                InLayer::Hidden
            } else {
                InLayer::Absent
            };
        };
        let last = at.as_path() == layer.join(rel).as_path();
        if m.file_type().is_char_device() || m.file_type().is_symlink() {
            return InLayer::Hidden;
        }
        // A file where a directory is on the way hides the path below, as
        // in the overlay; so does anything but a regular file at the end
        // (a fifo would block the open).
        if !last && !m.is_dir() || last && !m.is_file() {
            return InLayer::Hidden;
        }
        if last {
            let file = fs::File::options()
                .read(true)
                .custom_flags(libc_o_nofollow() | nix::fcntl::OFlag::O_NONBLOCK.bits())
                .open(&at);
            let mut bytes = Vec::new();
            return match file.and_then(|f| {
                if !f.metadata()?.is_file() {
                    return Err(std::io::Error::other("not a file"));
                }
                std::io::Read::read_to_end(&mut std::io::Read::take(f, 1 << 20), &mut bytes)
            }) {
                Ok(_) => InLayer::File(bytes),
                Err(_) => InLayer::Hidden,
            };
        }
        opaque |= xattr::get(&at, "trusted.overlay.opaque")
            .ok()
            .flatten()
            .as_deref()
            == Some(b"y");
    }
    InLayer::Absent
}

/// O_NOFOLLOW, without a libc dependency of our own.
fn libc_o_nofollow() -> i32 {
    nix::fcntl::OFlag::O_NOFOLLOW.bits()
}

fn check_name(name: &str) -> Result<(), Error> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-@".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Error::usage(
            "name",
            format!("{name}: letters, digits and . _ - @ only"),
        ))
    }
}

/// Make the root directory `dir` and lock it. A sweep (`rmi`, `prune`)
/// that looks at the same moment locks every root briefly, and may take
/// a directory not yet locked: both are tried again, a few times.
fn claim(dir: &Path, name: &str) -> Result<Flock<File>, Error> {
    const TRIES: u32 = 3;
    for _ in 0..TRIES {
        match fs::create_dir(dir) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                return Err(Error::io(dir)(e))
            }
            _ => {}
        }
        match hold(dir) {
            // The lock locked is the one in the directory (a sweep may
            // have removed it between our open and our flock).
            Ok(Some(held)) if same_file(&held, &dir.join("lock")) => return Ok(held),
            Ok(_) => {}
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    Err(Error::Store(format!(
        "root {name}: in use by another sandbox"
    )))
}

fn same_file(f: &File, p: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (f.metadata(), fs::metadata(p)) {
        (Ok(a), Ok(b)) => a.ino() == b.ino() && a.dev() == b.dev(),
        _ => false,
    }
}

/// Lock `dir/lock`; None when a live holder has it.
fn hold(dir: &Path) -> Result<Option<Flock<File>>, Error> {
    let p = dir.join("lock");
    let f = File::options()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&p)
        .map_err(Error::io(&p))?;
    match Flock::lock(f, FlockArg::LockExclusiveNonblock) {
        Ok(l) => Ok(Some(l)),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(None),
        Err((_, e)) => Err(Error::io(&p)(e.into())),
    }
}

/// The running sandboxes (root names) using the image `digest`.
pub(crate) fn users(store: &Store, digest: &Digest) -> Result<Vec<String>, Error> {
    let roots = store.root().join("roots");
    let mut out = Vec::new();
    for e in fs::read_dir(&roots).map_err(Error::io(&roots))?.flatten() {
        let uses = fs::read_to_string(e.path().join("lock")).is_ok_and(|d| d == digest.to_string());
        if uses && hold(&e.path())?.is_none() {
            out.push(e.file_name().to_string_lossy().into_owned());
        }
    }
    Ok(out)
}

/// Set aside the roots named `prefix…` that no live sandbox holds, what a
/// killed supervisor of the same stack left (a new stack starts from its
/// images, not from an old run's writes), and return them with those it
/// had already set aside, for [`delete`]. Renames only: quick, whatever
/// the roots hold.
pub fn clear_stale(store: &Store, prefix: &str) -> Result<Vec<PathBuf>, Error> {
    let roots = store.root().join("roots");
    let gone_prefix = format!("{GONE}{prefix}");
    let mut out = Vec::new();
    for e in fs::read_dir(&roots).map_err(Error::io(&roots))?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(&gone_prefix) {
            out.push(e.path());
        } else if name.starts_with(prefix) {
            if let Some(held) = hold(&e.path())? {
                out.push(aside(&e.path())?);
                drop(held);
            }
        }
    }
    Ok(out)
}

/// What roots set aside are called, before their name.
const GONE: &str = ".gone-";

/// Rename the root `dir` aside.
fn aside(dir: &Path) -> Result<PathBuf, Error> {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let to = dir.with_file_name(format!("{GONE}{name}-{}", crate::store::now_nanos()));
    fs::rename(dir, &to).map_err(Error::io(dir))?;
    Ok(to)
}

/// Delete a root set aside.
pub fn delete(p: &Path) -> Result<(), Error> {
    remove_any(p).map_err(Error::io(p))
}

/// Remove the roots no live sandbox holds. Returns how many went.
pub(crate) fn sweep(store: &Store, _lock: &Lock) -> Result<usize, Error> {
    let roots = store.root().join("roots");
    let mut gone = 0;
    for e in fs::read_dir(&roots).map_err(Error::io(&roots))?.flatten() {
        if let Some(held) = hold(&e.path())? {
            let p = if e.file_name().to_string_lossy().starts_with(GONE) {
                e.path()
            } else {
                // Renamed first: a sandbox taking the name up gets a
                // fresh root, not this one half-deleted.
                aside(&e.path())?
            };
            remove_any(&p).map_err(Error::io(&p))?;
            drop(held);
            gone += 1;
        }
    }
    Ok(gone)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(tag: &str) -> (PathBuf, Store) {
        let dir = std::env::temp_dir().join(format!("isola-root-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let s = Store::open(&dir).unwrap();
        (dir, s)
    }

    fn image(s: &Store, layers: &[&[u8]]) -> ImageRecord {
        let layers: Vec<Digest> = layers.iter().map(|l| Digest::of(l)).collect();
        for l in &layers {
            fs::create_dir_all(s.layer_dir(l)).unwrap();
        }
        ImageRecord {
            names: vec![],
            digest: Digest::of(format!("{layers:?}").as_bytes()),
            config: Digest::of(b"c"),
            layers,
            size: 0,
            pulled: 0,
        }
    }

    #[test]
    fn a_root_taken_up_by_another_image_names_it_and_drops_the_old_writes() {
        let (dir, s) = store("relock");
        let (a, b) = (image(&s, &[b"a"]), image(&s, &[b"b"]));
        let r = SandboxRoot::prepare(&s, "x", &a, Writable::Yes).unwrap();
        fs::write(dir.join("roots/x/upper/mine"), b"1").unwrap();
        drop(r);
        let r = SandboxRoot::prepare(&s, "x", &b, Writable::Yes).unwrap();
        assert_eq!(
            fs::read_to_string(dir.join("roots/x/lock")).unwrap(),
            b.digest.to_string()
        );
        assert!(!dir.join("roots/x/upper/mine").exists());
        // While held, the image is in use; a second holder is refused.
        assert_eq!(users(&s, &b.digest).unwrap(), ["x"]);
        assert!(SandboxRoot::prepare(&s, "x", &b, Writable::Yes).is_err());
        r.remove().unwrap();
        assert!(!dir.join("roots/x").exists());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_repeated_layer_is_one_lower_and_symlinks_are_not_followed() {
        let (dir, s) = store("layers");
        let img = image(&s, &[b"empty", b"base", b"empty"]);
        let l = Layers::of(&s, "y", &img, Writable::No).unwrap();
        assert_eq!(
            l.lower,
            [
                s.layer_dir(&Digest::of(b"empty")),
                s.layer_dir(&Digest::of(b"base"))
            ]
        );
        // /etc/passwd: from the top layer that has it, never through a link.
        let base = s.layer_dir(&Digest::of(b"base"));
        fs::create_dir_all(base.join("etc")).unwrap();
        fs::write(base.join("etc/passwd"), b"root:x:0:0::/:/bin/sh\n").unwrap();
        assert!(l.read_image_file("/etc/passwd").is_some());
        let top = s.layer_dir(&Digest::of(b"empty"));
        std::os::unix::fs::symlink("/etc", top.join("etc")).unwrap();
        assert_eq!(l.read_image_file("/etc/passwd"), None);
        fs::remove_dir_all(&dir).unwrap();
    }
}
