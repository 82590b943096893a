//! A pull: resolve the reference to a manifest, fetch and verify its
//! config, then each layer the store lacks, unpacked while it streams and
//! verified by blob digest, size and diff id before it is moved into
//! place. The image is recorded last: an interrupted pull leaves layers
//! no image names (a prune takes them) and never a half-unpacked one.

use std::io::Read;

use oci_spec::image::{ImageConfiguration, MediaType};

use crate::source::{self, digest_of, Options};
use crate::store::{now, ImageRecord};
use crate::unpack::{self, Expect};
use crate::{Digest, Error, Reference, Store};

/// Image configs are small; a larger one is not one.
const CONFIG_MAX: u64 = 8 << 20;

/// When `isola up` and `isola run` pull (`--pull`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Policy {
    Never,
    #[default]
    Missing,
    Always,
}

impl Policy {
    pub fn parse(text: &str) -> Result<Policy, Error> {
        match text {
            "never" => Ok(Policy::Never),
            "missing" => Ok(Policy::Missing),
            "always" => Ok(Policy::Always),
            other => Err(Error::usage(
                "--pull",
                format!("{other}: use never, missing or always"),
            )),
        }
    }
}

/// The image `r` names, pulled as `policy` says. `say` gets progress lines.
pub fn ensure(
    store: &Store,
    r: &Reference,
    opts: &Options,
    policy: Policy,
    say: &mut dyn FnMut(&str),
) -> Result<ImageRecord, Error> {
    if policy != Policy::Always {
        if let Some(found) = store.find(&r.to_string())? {
            return Ok(found);
        }
        if policy == Policy::Never {
            return Err(Error::Store(format!(
                "{r}: not in the image store (--pull never); isola pull {r}"
            )));
        }
    }
    pull(store, r, opts, say)
}

pub fn pull(
    store: &Store,
    r: &Reference,
    opts: &Options,
    say: &mut dyn FnMut(&str),
) -> Result<ImageRecord, Error> {
    if !nix::unistd::geteuid().is_root() {
        // Layers keep their files' owners and overlayfs's whiteouts, which
        // only root may make (an unprivileged store is future work).
        return Err(Error::Store(format!(
            "{r}: pulling images needs root for now"
        )));
    }
    let lock = store.lock()?;
    store.clear_tmp(&lock)?;
    let scratch = store.scratch("pull")?;
    let mut src = source::open(r, opts, scratch.path())?;
    let m = src.manifest()?;
    let config_bytes = config(src.as_mut(), &m.image)?;
    let cfg: ImageConfiguration = serde_json::from_slice(&config_bytes)
        .map_err(|e| Error::Source(format!("{r}: image config: {e}")))?;
    let diff_ids = cfg.rootfs().diff_ids();
    if diff_ids.len() != m.image.layers().len() {
        return Err(Error::Source(format!(
            "{r}: the manifest has {} layers, the config {} diff ids",
            m.image.layers().len(),
            diff_ids.len()
        )));
    }
    let mut layers = Vec::new();
    let mut size = 0;
    for (i, (desc, diff_id)) in m.image.layers().iter().zip(diff_ids).enumerate() {
        // Layers are kept by diff id (the uncompressed tar's digest): the
        // same layer compressed otherwise, or not at all (a docker
        // archive), is unpacked once.
        let diff_id = Digest::parse(diff_id)?;
        size += desc.size();
        if !store.has_layer(&diff_id) {
            let d = digest_of(desc)?;
            check_layer_type(desc.media_type(), &d)?;
            say(&format!(
                "{r}: layer {}/{} {} ({} bytes)",
                i + 1,
                diff_ids.len(),
                d.short(),
                desc.size()
            ));
            let dir = store.scratch("layer")?;
            // No more than the manifest says (a registry that streams on
            // must not fill the disk): one byte over fails the size check.
            let blob = src.blob(desc)?.take(desc.size().saturating_add(1));
            let expect = Expect {
                blob: &d,
                size: Some(desc.size()),
                diff_id: Some(&diff_id),
            };
            unpack::unpack(blob, &expect, dir.path())?;
            store.commit_layer(dir, &diff_id)?;
        }
        layers.push(diff_id);
    }
    let config = digest_of(m.image.config())?;
    store.put_blob(&config, &config_bytes)?;
    store.put_blob(&m.digest, &m.bytes)?;
    let record = ImageRecord {
        names: vec![r.to_string()],
        digest: m.digest,
        config,
        layers,
        size,
        pulled: now(),
    };
    let kept = store.record(record, &lock)?;
    say(&format!("{r}: {}", kept.digest));
    Ok(kept)
}

/// The config blob, verified.
fn config(
    src: &mut dyn source::Source,
    m: &oci_spec::image::ImageManifest,
) -> Result<Vec<u8>, Error> {
    let desc = m.config();
    let d = digest_of(desc)?;
    let mut bytes = Vec::new();
    src.blob(desc)?
        .take(CONFIG_MAX)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::Source(format!("config {d}: {e}")))?;
    d.verify(&bytes, Some(desc.size()), &format!("config {d}"))?;
    Ok(bytes)
}

/// Layers we can unpack: tar, gzip or zstd (encrypted and foreign ones
/// are refused by name).
fn check_layer_type(mt: &MediaType, d: &Digest) -> Result<(), Error> {
    let t = mt.to_string();
    let known = t.starts_with("application/vnd.oci.image.layer.v1.tar")
        || t.starts_with("application/vnd.docker.image.rootfs.diff.tar");
    if known && !t.contains("encrypted") {
        Ok(())
    } else {
        Err(Error::Source(format!(
            "layer {d}: media type {t} is not supported"
        )))
    }
}
