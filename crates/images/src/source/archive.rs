//! `oci-archive:PATH` (a tar of an OCI layout) and `docker-archive:PATH`
//! (`docker save` / `podman save`: `manifest.json`, a config file and one
//! uncompressed tar per layer). Both are unpacked into the pull's scratch
//! directory first: a tar cannot be read out of order.

use std::fs::{self, File};
use std::io::Read;
use std::path::{Path, PathBuf};

use oci_spec::image::{
    Descriptor, DescriptorBuilder, ImageManifest, ImageManifestBuilder, MediaType,
};
use serde::Deserialize;

use super::layout::Layout;
use super::{digest_of, Manifest, Source};
use crate::digest::Hashing;
use crate::{Digest, Error};

/// Unpack the archive at `p` into `into`. Only directories, regular
/// files and symlinks that stay inside are taken (`docker save` links
/// repeated layers): a link to `/dev/zero` or a fifo named `manifest.json`
/// would hang the pull, a link out of the archive would read the host.
fn extract(p: &Path, into: &Path) -> Result<(), Error> {
    let bad = |m: String| Error::Source(format!("{}: {m}", p.display()));
    let f = File::open(p).map_err(|e| bad(e.to_string()))?;
    let mut a = tar::Archive::new(f);
    for entry in a.entries().map_err(|e| bad(e.to_string()))? {
        let mut entry = entry.map_err(|e| bad(e.to_string()))?;
        let path = entry.path().map_err(|e| bad(e.to_string()))?.into_owned();
        match entry.header().entry_type() {
            tar::EntryType::Regular | tar::EntryType::Directory => {}
            tar::EntryType::Symlink => {
                let target = entry.link_name().map_err(|e| bad(e.to_string()))?;
                let target = target.unwrap_or_default();
                if !stays_inside(&path, &target) {
                    return Err(bad(format!(
                        "{}: a link out of the archive",
                        path.display()
                    )));
                }
            }
            other => {
                return Err(bad(format!(
                    "{}: entry type {other:?} in an image archive",
                    path.display()
                )))
            }
        }
        // Links are leaves: an entry under one (`up/x` where `up ->
        // ../..`) would let the lexical check above be walked around.
        if through_link(into, &path) {
            return Err(bad(format!("{}: a path through a link", path.display())));
        }
        let ok = entry.unpack_in(into).map_err(|e| bad(e.to_string()))?;
        if !ok {
            return Err(bad("an entry escapes the archive".into()));
        }
    }
    Ok(())
}

/// Whether a parent directory of `rel` under `dir` is a symlink.
fn through_link(dir: &Path, rel: &Path) -> bool {
    let mut at = dir.to_path_buf();
    let parents: Vec<_> = rel
        .parent()
        .map(|p| p.components().collect())
        .unwrap_or_default();
    parents.into_iter().any(|c| {
        at.push(c);
        fs::symlink_metadata(&at).is_ok_and(|m| m.file_type().is_symlink())
    })
}

/// Whether a relative link at `at` to `target` names a path inside the
/// archive (lexically: `..` may not climb above its top).
fn stays_inside(at: &Path, target: &Path) -> bool {
    use std::path::Component;
    if target.is_absolute() {
        return false;
    }
    let mut depth = at.parent().map_or(0usize, |d| {
        d.components()
            .filter(|c| matches!(c, Component::Normal(_)))
            .count()
    });
    for c in target.components() {
        match c {
            Component::ParentDir => match depth.checked_sub(1) {
                Some(d) => depth = d,
                None => return false,
            },
            Component::Normal(_) => depth += 1,
            _ => {}
        }
    }
    true
}

/// A small file of an archive or layout (an index, a manifest), read no
/// further than a document of its kind can be.
pub(super) fn read_small(p: &Path) -> Result<Vec<u8>, Error> {
    const SMALL_MAX: u64 = 4 << 20;
    let f = File::open(p).map_err(|e| Error::Source(format!("{}: {e}", p.display())))?;
    let mut bytes = Vec::new();
    f.take(SMALL_MAX + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::Source(format!("{}: {e}", p.display())))?;
    if bytes.len() as u64 > SMALL_MAX {
        return Err(Error::Source(format!("{}: larger than 4 MiB", p.display())));
    }
    Ok(bytes)
}

pub(crate) fn oci_archive(p: &Path, scratch: &Path) -> Result<Layout, Error> {
    let dir = scratch.join("archive");
    std::fs::create_dir(&dir).map_err(Error::io(&dir))?;
    extract(p, &dir)?;
    Layout::open(&dir, None)
}

pub(crate) struct DockerArchive {
    dir: PathBuf,
    manifest: ImageManifest,
    /// Layer digest → its file in the archive.
    files: Vec<(Digest, PathBuf)>,
    config: PathBuf,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Entry {
    config: String,
    layers: Vec<String>,
}

impl DockerArchive {
    pub(crate) fn open(p: &Path, scratch: &Path) -> Result<DockerArchive, Error> {
        let dir = scratch.join("archive");
        std::fs::create_dir(&dir).map_err(Error::io(&dir))?;
        extract(p, &dir)?;
        let what = format!("docker-archive:{}", p.display());
        let mpath = dir.join("manifest.json");
        let text =
            read_small(&mpath).map_err(|e| Error::Source(format!("{what}: manifest.json: {e}")))?;
        let entries: Vec<Entry> = serde_json::from_slice(&text)
            .map_err(|e| Error::Source(format!("{what}: manifest.json: {e}")))?;
        let [entry] = entries.as_slice() else {
            return Err(Error::Source(format!(
                "{what}: {} images in the archive; save one",
                entries.len()
            )));
        };
        // The archive names no digests: each file's content is its digest
        // (a layer here is an uncompressed tar, so it is also the diff id
        // the config lists, which the pull checks).
        let config = inside(&dir, &entry.config, &what)?;
        let mut files = Vec::new();
        let mut layers = Vec::new();
        for l in &entry.layers {
            let f = inside(&dir, l, &what)?;
            let (d, size) = file_digest(&f)?;
            layers.push(descriptor(MediaType::ImageLayer, &d, size)?);
            files.push((d, f));
        }
        let (cd, csize) = file_digest(&config)?;
        let manifest = ImageManifestBuilder::default()
            .schema_version(2u32)
            .media_type(MediaType::ImageManifest)
            .config(descriptor(MediaType::ImageConfig, &cd, csize)?)
            .layers(layers)
            .build()
            .map_err(|e| Error::Source(format!("{what}: {e}")))?;
        Ok(DockerArchive {
            dir,
            manifest,
            files,
            config,
        })
    }
}

/// `name` (from the archive's manifest) as a path inside `dir`.
fn inside(dir: &Path, name: &str, what: &str) -> Result<PathBuf, Error> {
    let rel = Path::new(name);
    if rel
        .components()
        .any(|c| !matches!(c, std::path::Component::Normal(_)))
    {
        return Err(Error::Source(format!(
            "{what}: {name}: not a path inside the archive"
        )));
    }
    // Through the archive's own links, to a regular file still inside it.
    let real = fs::canonicalize(dir.join(rel))
        .map_err(|e| Error::Source(format!("{what}: {name}: {e}")))?;
    let top = fs::canonicalize(dir).map_err(|e| Error::Source(format!("{what}: {e}")))?;
    if !real.starts_with(&top) || !fs::metadata(&real).is_ok_and(|m| m.is_file()) {
        return Err(Error::Source(format!(
            "{what}: {name}: not a file inside the archive"
        )));
    }
    Ok(real)
}

fn file_digest(p: &Path) -> Result<(Digest, u64), Error> {
    let f = File::open(p).map_err(|e| Error::Source(format!("{}: {e}", p.display())))?;
    let mut h = Hashing::new(f);
    std::io::copy(&mut h, &mut std::io::sink())
        .map_err(|e| Error::Source(format!("{}: {e}", p.display())))?;
    Ok(h.digest())
}

fn descriptor(mt: MediaType, d: &Digest, size: u64) -> Result<Descriptor, Error> {
    let digest: oci_spec::image::Digest = d
        .to_string()
        .parse()
        .map_err(|e| Error::Source(format!("{d}: {e}")))?;
    DescriptorBuilder::default()
        .media_type(mt)
        .digest(digest)
        .size(size)
        .build()
        .map_err(|e| Error::Source(e.to_string()))
}

impl Source for DockerArchive {
    fn manifest(&mut self) -> Result<Manifest, Error> {
        let bytes = serde_json::to_vec(&self.manifest).map_err(|e| Error::Source(e.to_string()))?;
        Ok(Manifest {
            digest: Digest::of(&bytes),
            bytes,
            image: self.manifest.clone(),
        })
    }

    fn blob(&mut self, d: &Descriptor) -> Result<Box<dyn Read + '_>, Error> {
        let want = digest_of(d)?;
        let path = if digest_of(self.manifest.config())? == want {
            self.config.clone()
        } else {
            self.files
                .iter()
                .find(|(fd, _)| *fd == want)
                .map(|(_, p)| p.clone())
                .ok_or_else(|| Error::Source(format!("{}: no blob {want}", self.dir.display())))?
        };
        let f = File::open(&path).map_err(|e| Error::Source(format!("{}: {e}", path.display())))?;
        Ok(Box::new(f))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_through_an_archives_own_link_is_refused() {
        let dir = std::env::temp_dir().join(format!("isola-archive-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        h.set_mode(0o777);
        b.append_link(&mut h, "d1/d2/up", "../..").unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_size(1);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, "d1/d2/up/d1/x", &b"x"[..]).unwrap();
        let tar = dir.with_extension("tar");
        fs::write(&tar, b.into_inner().unwrap()).unwrap();
        fs::create_dir_all(&dir).unwrap();
        let e = extract(&tar, &dir).unwrap_err().to_string();
        assert!(e.contains("a path through a link"), "{e}");
        fs::remove_dir_all(&dir).unwrap();
        fs::remove_file(&tar).unwrap();
    }

    #[test]
    fn links_in_an_archive_stay_inside_it() {
        let p = Path::new;
        assert!(stays_inside(p("a/layer.tar"), p("../b/layer.tar")));
        assert!(stays_inside(p("manifest.json"), p("blobs/sha256/x")));
        assert!(!stays_inside(p("manifest.json"), p("/dev/zero")));
        assert!(!stays_inside(p("a/layer.tar"), p("../../etc/passwd")));
        assert!(!stays_inside(p("x"), p("..")));
    }
}
