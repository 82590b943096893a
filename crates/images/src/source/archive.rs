//! `oci-archive:PATH` (a tar of an OCI layout) and `docker-archive:PATH`
//! (`docker save` / `podman save`: `manifest.json`, a config file and one
//! uncompressed tar per layer). Both are unpacked into the pull's scratch
//! directory first: a tar cannot be read out of order.

use std::fs::File;
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

/// Unpack the archive at `p` into `into` (nothing may escape it).
fn extract(p: &Path, into: &Path) -> Result<(), Error> {
    let f = File::open(p).map_err(|e| Error::Source(format!("{}: {e}", p.display())))?;
    let mut a = tar::Archive::new(f);
    for entry in a
        .entries()
        .map_err(|e| Error::Source(format!("{}: {e}", p.display())))?
    {
        let mut entry = entry.map_err(|e| Error::Source(format!("{}: {e}", p.display())))?;
        let ok = entry
            .unpack_in(into)
            .map_err(|e| Error::Source(format!("{}: {e}", p.display())))?;
        if !ok {
            return Err(Error::Source(format!(
                "{}: an entry escapes the archive",
                p.display()
            )));
        }
    }
    Ok(())
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
        let text = std::fs::read(&mpath)
            .map_err(|e| Error::Source(format!("{what}: manifest.json: {e}")))?;
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
    Ok(dir.join(rel))
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
