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
        match fs::create_dir(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                return Err(Error::io(&dir)(e))
            }
            _ => {}
        }
        let held = hold(&dir)?
            .ok_or_else(|| Error::Store(format!("root {name}: in use by another sandbox")))?;
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
            std::io::Write::write_all(&mut f, digest.as_bytes()).map_err(Error::io(&lock))?;
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

    /// The sandbox is gone for good: drop its writes. The layout is
    /// known, so an untouched root goes in five calls (a one-shot `isola
    /// run` pays them on every start); anything else, the long way.
    pub fn remove(self) -> Result<(), Error> {
        let d = &self.dir;
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

    /// Set the root aside for a prune to remove: a large writable layer is
    /// not deleted on the caller's time (a supervisor's loop).
    pub fn discard(self) -> Result<(), Error> {
        let name = self
            .dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let aside = self
            .dir
            .with_file_name(format!(".gone-{name}-{}", crate::store::now_nanos()));
        fs::rename(&self.dir, &aside).map_err(Error::io(&self.dir))
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
        let mut lower: Vec<PathBuf> = image
            .layers
            .iter()
            .rev()
            .map(|l| root.join("layers").join(l.hex()))
            .collect();
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

    /// A file of the image as the sandbox sees it (top layer first; a
    /// whiteout hides it), read without mounting: `/etc/passwd` to resolve
    /// the image's `User`.
    pub fn read_image_file(&self, rel: &str) -> Option<Vec<u8>> {
        use std::os::unix::fs::FileTypeExt;
        for l in &self.lower {
            let p = l.join(rel.trim_start_matches('/'));
            match fs::symlink_metadata(&p) {
                Ok(m) if m.file_type().is_char_device() => return None,
                Ok(m) if m.is_file() => return fs::read(&p).ok(),
                _ => {}
            }
        }
        None
    }
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

/// Remove the roots named `prefix…` that no live sandbox holds: what a
/// killed supervisor of the same stack left (a new stack starts from its
/// images, not from an old run's writes).
pub fn clear_stale(store: &Store, prefix: &str) -> Result<usize, Error> {
    let roots = store.root().join("roots");
    let mut gone = 0;
    for e in fs::read_dir(&roots).map_err(Error::io(&roots))?.flatten() {
        if !e.file_name().to_string_lossy().starts_with(prefix) {
            continue;
        }
        if let Some(held) = hold(&e.path())? {
            remove_any(&e.path()).map_err(Error::io(e.path()))?;
            drop(held);
            gone += 1;
        }
    }
    Ok(gone)
}

/// Remove the roots no live sandbox holds. Returns how many went.
pub(crate) fn sweep(store: &Store, _lock: &Lock) -> Result<usize, Error> {
    let roots = store.root().join("roots");
    let mut gone = 0;
    for e in fs::read_dir(&roots).map_err(Error::io(&roots))?.flatten() {
        if let Some(held) = hold(&e.path())? {
            remove_any(&e.path()).map_err(Error::io(e.path()))?;
            drop(held);
            gone += 1;
        }
    }
    Ok(gone)
}
