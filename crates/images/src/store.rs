//! The image store: content-addressed, one directory per machine (root:
//! `/var/lib/isola/images`). Layers are kept unpacked, once, named by
//! their diff id (the digest of the uncompressed tar); manifests and configs are kept as
//! blobs; `images.json` maps names to images. Writers take the store's
//! lock; work in progress lives in `tmp/` and is renamed into place only
//! once verified, so a failed or killed pull leaves nothing behind.
//!
//! ```text
//! images.json            names → manifest, config, layers
//! blobs/sha256/<hex>     manifests and configs
//! layers/<hex>/          one unpacked layer by diff id (overlay's format)
//! roots/<name>/          a sandbox's root: upper/ work/ lock (root.rs)
//! mnt/, empty/           the roots' mount point, a layerless image's root
//! tmp/                   pulls in progress
//! lock                   flock: one writer at a time
//! ```

use std::fs::{self, File};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use crate::{Digest, Error};

/// Root's store.
pub const DEFAULT_ROOT: &str = "/var/lib/isola/images";

/// The store a user gets without `--store`: root's, or
/// `$XDG_DATA_HOME/isola/images` (`~/.local/share/isola/images`).
pub fn default_root() -> PathBuf {
    if nix::unistd::geteuid().is_root() {
        return PathBuf::from(DEFAULT_ROOT);
    }
    let data = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("/tmp"));
    data.join("isola/images")
}

pub struct Store {
    root: PathBuf,
}

/// The store's directories; `mnt` is the mount point of every image root
/// (each in its sandbox's own namespace), `empty` the root of an image
/// without layers.
const SUBDIRS: [&str; 6] = ["blobs/sha256", "layers", "roots", "tmp", "empty", "mnt"];

/// One image in the store.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ImageRecord {
    /// The references it was pulled as (`docker://host/name:tag`…).
    pub names: Vec<String>,
    /// The manifest's digest: the image's identity.
    pub digest: Digest,
    pub config: Digest,
    /// Layer diff ids (uncompressed digests), lowest first.
    pub layers: Vec<Digest>,
    /// Bytes of the layers as pulled (compressed, for most sources).
    pub size: u64,
    /// Seconds since the epoch.
    pub pulled: u64,
}

/// The store's writer lock, held while it lives.
pub struct Lock {
    _flock: Flock<File>,
}

impl Store {
    /// Open (creating) the store at `root`. The path goes into overlay
    /// mount options, so `,` `:` and `=` are refused.
    pub fn open(root: &Path) -> Result<Store, Error> {
        let text = root.to_string_lossy();
        if text.contains([',', ':', '=']) || !root.is_absolute() {
            return Err(Error::usage(
                "--store",
                format!("{text}: an absolute path without , : or ="),
            ));
        }
        // Made once (the last made is looked for): `isola run` of an
        // image opens the store on every start.
        if !root.join(SUBDIRS[SUBDIRS.len() - 1]).is_dir() {
            if let Some(parent) = root.parent() {
                fs::create_dir_all(parent).map_err(Error::io(parent))?;
            }
            let mut b = fs::DirBuilder::new();
            b.recursive(true).mode(0o700);
            for sub in SUBDIRS {
                let d = root.join(sub);
                b.create(&d).map_err(Error::io(&d))?;
            }
        }
        // Only its owner may walk in, whoever made it: layers keep the
        // images' setuid files and capabilities, for the sandboxes alone.
        let mode = fs::metadata(root)
            .map_err(Error::io(root))?
            .permissions()
            .mode();
        if mode & 0o777 != 0o700 {
            fs::set_permissions(root, fs::Permissions::from_mode(0o700))
                .map_err(Error::io(root))?;
        }
        Ok(Store {
            root: root.to_path_buf(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Take the writer lock (waits for another pull or removal).
    pub fn lock(&self) -> Result<Lock, Error> {
        let p = self.root.join("lock");
        let f = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&p)
            .map_err(Error::io(&p))?;
        let flock = Flock::lock(f, FlockArg::LockExclusive)
            .map_err(|(_, e)| Error::io(&p)(std::io::Error::from(e)))?;
        Ok(Lock { _flock: flock })
    }

    pub fn layer_dir(&self, d: &Digest) -> PathBuf {
        self.root.join("layers").join(d.hex())
    }

    pub fn has_layer(&self, d: &Digest) -> bool {
        self.layer_dir(d).is_dir()
    }

    fn blob_path(&self, d: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(d.hex())
    }

    /// Keep a verified blob (a manifest or config).
    pub(crate) fn put_blob(&self, d: &Digest, bytes: &[u8]) -> Result<(), Error> {
        let p = self.blob_path(d);
        let tmp = self.root.join("tmp").join(format!("blob-{}", d.hex()));
        fs::write(&tmp, bytes).map_err(Error::io(&tmp))?;
        fs::rename(&tmp, &p).map_err(Error::io(&p))
    }

    /// A blob's bytes, checked against its digest again (the store is on
    /// disk; a changed file must not go unnoticed).
    pub fn blob(&self, d: &Digest) -> Result<Vec<u8>, Error> {
        let p = self.blob_path(d);
        let bytes = fs::read(&p).map_err(Error::io(&p))?;
        d.verify(&bytes, None, &format!("stored blob {d}"))?;
        Ok(bytes)
    }

    /// A fresh directory under `tmp/`, removed when the guard drops unless
    /// it was renamed away.
    pub(crate) fn scratch(&self, what: &str) -> Result<Scratch, Error> {
        let p = self
            .root
            .join("tmp")
            .join(format!("{what}-{}-{}", std::process::id(), unique()));
        fs::create_dir(&p).map_err(Error::io(&p))?;
        Ok(Scratch { path: p })
    }

    /// Move an unpacked, verified layer into place.
    pub(crate) fn commit_layer(&self, s: Scratch, d: &Digest) -> Result<(), Error> {
        let dst = self.layer_dir(d);
        fs::rename(&s.path, &dst).map_err(Error::io(&dst))?;
        std::mem::forget(s);
        Ok(())
    }

    /// Clear what a killed pull left in `tmp/` (with the lock held).
    pub(crate) fn clear_tmp(&self, _lock: &Lock) -> Result<(), Error> {
        let t = self.root.join("tmp");
        for e in fs::read_dir(&t).map_err(Error::io(&t))?.flatten() {
            let _ = remove_any(&e.path());
        }
        Ok(())
    }

    pub fn images(&self) -> Result<Vec<ImageRecord>, Error> {
        let p = self.root.join("images.json");
        match fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b)
                .map_err(|e| Error::Store(format!("{}: {e}", p.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(Error::io(&p)(e)),
        }
    }

    fn save(&self, images: &[ImageRecord], _lock: &Lock) -> Result<(), Error> {
        let p = self.root.join("images.json");
        let tmp = self.root.join("tmp/images.json");
        let text = serde_json::to_vec_pretty(images).map_err(|e| Error::Store(e.to_string()))?;
        fs::write(&tmp, text).map_err(Error::io(&tmp))?;
        fs::rename(&tmp, &p).map_err(Error::io(&p))
    }

    /// Record `image` under its names; a name another image had moves.
    pub(crate) fn record(&self, image: ImageRecord, lock: &Lock) -> Result<ImageRecord, Error> {
        let mut all = self.images()?;
        for other in &mut all {
            other.names.retain(|n| !image.names.contains(n));
        }
        let merged = match all.iter_mut().find(|i| i.digest == image.digest) {
            Some(old) => {
                old.names.extend(image.names);
                old.pulled = image.pulled;
                old.clone()
            }
            None => {
                all.push(image.clone());
                image
            }
        };
        self.save(&all, lock)?;
        Ok(merged)
    }

    /// The image a name or a digest (full, or 12+ hex digits) names.
    pub fn find(&self, what: &str) -> Result<Option<ImageRecord>, Error> {
        let hex = what.strip_prefix("sha256:").unwrap_or(what);
        Ok(self.images()?.into_iter().find(|i| {
            i.names.iter().any(|n| n == what)
                || (hex.len() >= 12 && i.digest.hex().starts_with(hex))
        }))
    }

    /// Forget an image (its layers go at the next prune); refused while a
    /// sandbox's root uses it.
    pub fn remove(&self, what: &str) -> Result<ImageRecord, Error> {
        let lock = self.lock()?;
        let Some(image) = self.find(what)? else {
            return Err(Error::Store(format!(
                "{what}: no such image in {}",
                self.root.display()
            )));
        };
        if let Some(user) = crate::root::users(self, &image.digest)?.first() {
            return Err(Error::Store(format!(
                "{what}: in use by the running sandbox {user}"
            )));
        }
        let mut all = self.images()?;
        all.retain(|i| i.digest != image.digest);
        self.save(&all, &lock)?;
        self.sweep(&all, &lock)?;
        Ok(image)
    }

    /// Remove the layers and blobs no image names, and the roots no
    /// running sandbox holds. Returns how many entries went.
    pub fn prune(&self) -> Result<usize, Error> {
        let lock = self.lock()?;
        self.clear_tmp(&lock)?;
        let all = self.images()?;
        Ok(self.sweep(&all, &lock)? + crate::root::sweep(self, &lock)?)
    }

    fn sweep(&self, keep: &[ImageRecord], _lock: &Lock) -> Result<usize, Error> {
        let mut wanted = std::collections::HashSet::new();
        for i in keep {
            wanted.insert(i.digest.hex().to_string());
            wanted.insert(i.config.hex().to_string());
            wanted.extend(i.layers.iter().map(|l| l.hex().to_string()));
        }
        let mut gone = 0;
        for dir in ["layers", "blobs/sha256"] {
            let d = self.root.join(dir);
            for e in fs::read_dir(&d).map_err(Error::io(&d))?.flatten() {
                if !wanted.contains(e.file_name().to_string_lossy().as_ref()) {
                    // Out of `layers/` first: a removal cut short must not
                    // leave half a layer that a later pull takes as whole.
                    let aside = self.root.join("tmp").join(format!("gone-{}", unique()));
                    fs::rename(e.path(), &aside).map_err(Error::io(e.path()))?;
                    remove_any(&aside).map_err(Error::io(&aside))?;
                    gone += 1;
                }
            }
        }
        Ok(gone)
    }
}

/// Bytes used by a directory tree (files' allocated blocks).
pub fn disk_usage(p: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(m) = fs::symlink_metadata(p) else {
        return 0;
    };
    let own = m.blocks() * 512;
    if !m.is_dir() {
        return own;
    }
    let children = fs::read_dir(p)
        .map(|rd| rd.flatten().map(|e| disk_usage(&e.path())).sum())
        .unwrap_or(0);
    own + children
}

pub(crate) fn remove_any(p: &Path) -> std::io::Result<()> {
    match fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(p),
        Ok(_) => fs::remove_file(p),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

pub(crate) fn now_nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    (u64::from(t) << 16) ^ N.fetch_add(1, Ordering::Relaxed)
}

/// A directory under the store's `tmp/`, removed on drop.
pub(crate) struct Scratch {
    path: PathBuf,
}

impl Scratch {
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = remove_any(&self.path);
    }
}

pub(crate) fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
