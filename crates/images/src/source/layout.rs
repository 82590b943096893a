//! `oci:PATH[:TAG]`: an OCI image layout directory (`index.json`,
//! `blobs/sha256/…`), as `skopeo copy … oci:DIR:TAG` writes.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use oci_spec::image::{Descriptor, ImageIndex};

use super::{digest_of, resolve, Manifest, Source};
use crate::{Digest, Error};

const REF_NAME: &str = "org.opencontainers.image.ref.name";

pub(crate) struct Layout {
    dir: PathBuf,
    /// The index entry the tag chose.
    chosen: Descriptor,
}

impl Layout {
    pub(crate) fn open(dir: &Path, tag: Option<&str>) -> Result<Layout, Error> {
        let index_path = dir.join("index.json");
        let text = super::archive::read_small(&index_path).map_err(|e| {
            Error::Source(format!(
                "{}: not an OCI image layout ({e})",
                index_path.display()
            ))
        })?;
        let index: ImageIndex = serde_json::from_slice(&text)
            .map_err(|e| Error::Source(format!("{}: {e}", index_path.display())))?;
        let chosen = choose(&index, tag, dir)?;
        Ok(Layout {
            dir: dir.to_path_buf(),
            chosen,
        })
    }

    fn path(&self, d: &Digest) -> PathBuf {
        self.dir.join("blobs/sha256").join(d.hex())
    }

    fn read(&self, desc: &Descriptor) -> Result<(Digest, Vec<u8>), Error> {
        let d = digest_of(desc)?;
        let p = self.path(&d);
        let bytes = super::archive::read_small(&p)?;
        d.verify(&bytes, Some(desc.size()), &format!("manifest {d}"))?;
        Ok((d, bytes))
    }
}

/// The manifest `tag` names in the layout's index (without a tag: the only
/// one there is).
fn choose(index: &ImageIndex, tag: Option<&str>, dir: &Path) -> Result<Descriptor, Error> {
    let name_of = |m: &Descriptor| {
        m.annotations()
            .as_ref()
            .and_then(|a| a.get(REF_NAME).cloned())
    };
    let tags: Vec<String> = index.manifests().iter().filter_map(name_of).collect();
    let found = match tag {
        Some(t) => index
            .manifests()
            .iter()
            .find(|m| name_of(m).as_deref() == Some(t)),
        None if index.manifests().len() == 1 => index.manifests().first(),
        None => None,
    };
    found.cloned().ok_or_else(|| {
        Error::Source(format!(
            "{}: {} (tags there: {})",
            dir.display(),
            match tag {
                Some(t) => format!("no image tagged {t}"),
                None => "several images: name one as oci:PATH:TAG".into(),
            },
            if tags.is_empty() {
                "none".into()
            } else {
                tags.join(", ")
            }
        ))
    })
}

impl Source for Layout {
    fn manifest(&mut self) -> Result<Manifest, Error> {
        let what = format!("oci:{}", self.dir.display());
        let first = self.read(&self.chosen)?;
        resolve(&what, first, |d| self.read(d))
    }

    fn blob(&mut self, d: &Descriptor) -> Result<Box<dyn Read + '_>, Error> {
        let p = self.path(&digest_of(d)?);
        let f = File::open(&p).map_err(|e| Error::Source(format!("{}: {e}", p.display())))?;
        Ok(Box::new(f))
    }
}
