//! A root made of image layers: an overlay mounted on the rootfs path
//! inside the sandbox's own mount namespace (so nothing is mounted on the
//! host, and the mount goes when the sandbox does), where a directory
//! rootfs is bound onto itself. The mount options are built at plan time:
//! the init allocates nothing it need not.

use std::ffi::CString;
use std::path::{Path, PathBuf};

use nix::mount::{mount, MsFlags};

use crate::error::SpecError;

/// Overlay's options are read from one page.
const OPTIONS_MAX: usize = 4095;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootLayers {
    source: Source,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Source {
    /// `lowerdir=…[,upperdir=…,workdir=…]`.
    Overlay(CString),
    /// One read-only layer: overlayfs wants two lower directories without
    /// an upper one, so the layer itself is bound.
    Bind(PathBuf),
}

impl RootLayers {
    /// `lower`: the layers, top first; `upper`: the writable directory and
    /// overlayfs's work directory (None: a read-only root).
    pub fn new(lower: &[PathBuf], upper: Option<(&Path, &Path)>) -> Result<RootLayers, SpecError> {
        let bad = |m: String| SpecError::new("image", m);
        let text = |p: &Path| -> Result<String, SpecError> {
            let s = p
                .to_str()
                .ok_or_else(|| bad(format!("{}: not UTF-8", p.display())))?;
            if s.contains([',', ':', '=']) {
                return Err(bad(format!("{s}: a layer path with , : or =")));
            }
            Ok(s.to_string())
        };
        let source = match (lower, upper) {
            ([], _) => return Err(bad("an image root needs at least one layer".into())),
            ([one], None) => Source::Bind(one.clone()),
            (_, _) => {
                let lowers: Vec<String> =
                    lower.iter().map(|p| text(p)).collect::<Result<_, _>>()?;
                let mut opts = format!("lowerdir={}", lowers.join(":"));
                if let Some((u, w)) = upper {
                    opts.push_str(&format!(",upperdir={},workdir={}", text(u)?, text(w)?));
                }
                if opts.len() > OPTIONS_MAX {
                    return Err(bad(format!(
                        "{} layers: overlay's options ({} bytes) exceed one page; a shorter store path (--store) helps",
                        lower.len(),
                        opts.len()
                    )));
                }
                Source::Overlay(CString::new(opts).map_err(|e| bad(e.to_string()))?)
            }
        };
        Ok(RootLayers { source })
    }

    /// Run `plan` on these layers, mounted at `merged` (an empty directory
    /// the plan's root becomes).
    pub fn attach(self, plan: &mut crate::Plan, merged: PathBuf) {
        plan.root = Some(merged);
        plan.root_layers = Some(self);
    }

    /// Mount the layers on `root` (in the init, before the view is built).
    pub(crate) fn mount_on(&self, root: &Path) -> nix::Result<()> {
        match &self.source {
            Source::Overlay(opts) => mount(
                Some("overlay"),
                root,
                Some("overlay"),
                MsFlags::empty(),
                Some(opts.as_c_str()),
            ),
            Source::Bind(layer) => mount(
                Some(layer.as_path()),
                root,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_name_lowers_top_first_then_upper() {
        let l = RootLayers::new(
            &[PathBuf::from("/s/l/b"), PathBuf::from("/s/l/a")],
            Some((Path::new("/s/r/u"), Path::new("/s/r/w"))),
        )
        .unwrap();
        assert_eq!(
            l.source,
            Source::Overlay(c"lowerdir=/s/l/b:/s/l/a,upperdir=/s/r/u,workdir=/s/r/w".into())
        );
        let one = RootLayers::new(&[PathBuf::from("/s/l/a")], None).unwrap();
        assert_eq!(one.source, Source::Bind(PathBuf::from("/s/l/a")));
    }

    #[test]
    fn too_many_layers_or_odd_paths_are_refused() {
        let many: Vec<PathBuf> = (0..100)
            .map(|i| PathBuf::from(format!("/var/lib/isola/images/layers/{i:064}")))
            .collect();
        let e = RootLayers::new(&many, None).unwrap_err();
        assert!(e.to_string().starts_with("image: 100 layers"), "{e}");
        assert!(RootLayers::new(&[PathBuf::from("/a:b"), PathBuf::from("/c")], None).is_err());
    }
}
