//! Where an image comes from. Each transport answers two questions: which
//! manifest (an index resolved to this machine's platform), and the bytes
//! of a blob it names. The pull ([`crate::pull`]) verifies both; a source
//! trusts nothing it reads.

use std::io::Read;

use oci_spec::image::{Descriptor, ImageIndex, ImageManifest};

use crate::{Digest, Error, Reference};

mod archive;
mod auth;
mod layout;
mod registry;

/// The image manifest a reference resolved to.
pub struct Manifest {
    pub digest: Digest,
    pub bytes: Vec<u8>,
    pub image: ImageManifest,
}

pub trait Source {
    fn manifest(&mut self) -> Result<Manifest, Error>;
    /// A blob's content, streamed; the caller verifies it.
    fn blob(&mut self, d: &Descriptor) -> Result<Box<dyn Read + '_>, Error>;
}

/// How a pull may reach registries.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// `HOST[:PORT]`s spoken to over plain HTTP.
    pub insecure: Vec<String>,
}

/// The source `r` names; `scratch` is a directory of the store's where an
/// archive is unpacked for the pull's length.
pub fn open(
    r: &Reference,
    opts: &Options,
    scratch: &std::path::Path,
) -> Result<Box<dyn Source>, Error> {
    Ok(match r {
        Reference::Registry(rr) => Box::new(registry::Registry::new(rr.clone(), opts)?),
        Reference::Layout { path, tag } => Box::new(layout::Layout::open(path, tag.as_deref())?),
        Reference::OciArchive(p) => Box::new(archive::oci_archive(p, scratch)?),
        Reference::DockerArchive(p) => Box::new(archive::DockerArchive::open(p, scratch)?),
    })
}

/// Media types of manifests we read, in the order we prefer them.
pub(crate) const MANIFEST_TYPES: &[&str] = &[
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];

/// A manifest document: an image manifest, or an index of them.
pub(crate) enum Document {
    Image(Box<ImageManifest>),
    Index(Box<ImageIndex>),
}

/// Read a manifest or an index (told by `manifests` vs `layers`, as the
/// media type is optional in OCI documents).
pub(crate) fn document(bytes: &[u8], what: &str) -> Result<Document, Error> {
    let v: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| Error::Source(format!("{what}: not a manifest: {e}")))?;
    let bad = |e: serde_json::Error| Error::Source(format!("{what}: not a manifest: {e}"));
    if v.get("manifests").is_some() {
        return serde_json::from_value(v)
            .map(|i| Document::Index(Box::new(i)))
            .map_err(bad);
    }
    if v.get("schemaVersion").and_then(|s| s.as_u64()) == Some(1) {
        return Err(Error::Source(format!(
            "{what}: a Docker schema 1 manifest (deprecated; push the image again with a current tool)"
        )));
    }
    serde_json::from_value(v)
        .map(|m| Document::Image(Box::new(m)))
        .map_err(bad)
}

/// The entry of an index for this machine: linux and our architecture.
pub(crate) fn pick_platform(index: &ImageIndex, what: &str) -> Result<Descriptor, Error> {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    index
        .manifests()
        .iter()
        .find(|m| {
            m.platform().as_ref().is_some_and(|p| {
                p.os().to_string() == "linux" && p.architecture().to_string() == arch
            })
        })
        .cloned()
        .ok_or_else(|| Error::Source(format!("{what}: no image for linux/{arch} in the index")))
}

/// The image manifest of a document (`first`, its digest and bytes): an
/// index is resolved to this machine's entry, which `fetch` reads.
pub(crate) fn resolve(
    what: &str,
    first: (Digest, Vec<u8>),
    mut fetch: impl FnMut(&Descriptor) -> Result<(Digest, Vec<u8>), Error>,
) -> Result<Manifest, Error> {
    let (mut digest, mut bytes) = first;
    if let Document::Index(idx) = document(&bytes, what)? {
        (digest, bytes) = fetch(&pick_platform(&idx, what)?)?;
    }
    match document(&bytes, what)? {
        Document::Image(image) => Ok(Manifest {
            digest,
            bytes,
            image: *image,
        }),
        Document::Index(_) => Err(Error::Source(format!("{what}: an index inside an index"))),
    }
}

/// Our digest of a descriptor's.
pub(crate) fn digest_of(d: &Descriptor) -> Result<Digest, Error> {
    Digest::parse(d.digest().as_ref())
}
