//! A root made of image layers: an overlay mounted inside the sandbox's
//! own mount namespace (so nothing is mounted on the host, and the mount
//! goes when the sandbox does), where a directory rootfs is bound onto
//! itself. Two kinds:
//!
//! - writable: the layers under the sandbox's own upper directory (kept by
//!   the caller across restarts), mounted on an empty directory;
//! - read-only (`root.readonly`): the layers under a scratch upper layer in
//!   a small tmpfs mounted first, in the namespace only, so that the mount
//!   points the spec needs and the image lacks (`/proc` …) can be made
//!   without writing a shared layer; `/` is remounted read-only after
//!   pivot_root, as for a directory rootfs. Nothing is left on the host.
//!
//! The mount options are built at plan time: the init allocates nothing it
//! need not.

use std::ffi::CString;
use std::path::{Path, PathBuf};

use nix::mount::{mount, MsFlags};
use nix::sys::stat::Mode;

use crate::error::SpecError;

/// Overlay's options are read from one page.
const OPTIONS_MAX: usize = 4095;
/// The scratch tmpfs of a read-only root holds mount points only.
const SCRATCH_OPTIONS: &str = "mode=0755,size=1m";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootLayers {
    /// `lowerdir=…,upperdir=…,workdir=…`.
    options: CString,
    /// The directory the lower layers are named from (overlayfs resolves
    /// relative paths from the mounter's working directory): a layer then
    /// costs its name, not its path, of the one page of options — some
    /// 60 layers instead of 40.
    lower_base: Option<PathBuf>,
    /// Where the overlay is mounted: the plan's root.
    merged: PathBuf,
    scratch: Option<Scratch>,
}

/// A read-only root's tmpfs, mounted at `dir` before the overlay; its
/// `upper`, `work` and the mount point `merged` made in it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Scratch {
    dir: PathBuf,
    upper: PathBuf,
    work: PathBuf,
}

/// Where the upper layer is.
#[derive(Debug, Clone, Copy)]
pub enum Upper<'a> {
    /// The sandbox's own directories (`upper`, overlayfs's `work`),
    /// mounted on `merged`, an empty directory that exists.
    Dirs {
        upper: &'a Path,
        work: &'a Path,
        merged: &'a Path,
    },
    /// A tmpfs mounted at `dir` in the sandbox's namespace (a directory
    /// that exists); the root is `dir/merged`.
    Scratch { dir: &'a Path },
}

impl RootLayers {
    /// `lower`: the layers, top first.
    pub fn new(lower: &[PathBuf], upper: Upper<'_>) -> Result<RootLayers, SpecError> {
        if lower.is_empty() {
            return Err(SpecError::new(
                "image",
                "an image root needs at least one layer",
            ));
        }
        let lower_base = lower
            .first()
            .and_then(|p| p.parent())
            .filter(|base| lower.iter().all(|p| p.parent() == Some(*base)))
            .map(Path::to_path_buf);
        let lowers: Vec<String> = match &lower_base {
            Some(base) => lower
                .iter()
                .map(|p| text(p.strip_prefix(base).unwrap_or(p)))
                .collect::<Result<_, _>>()?,
            None => lower.iter().map(|p| text(p)).collect::<Result<_, _>>()?,
        };
        let (upper, work, merged, scratch) = match upper {
            Upper::Dirs {
                upper,
                work,
                merged,
            } => (
                upper.to_path_buf(),
                work.to_path_buf(),
                merged.to_path_buf(),
                None,
            ),
            Upper::Scratch { dir } => {
                let s = Scratch {
                    dir: dir.to_path_buf(),
                    upper: dir.join("upper"),
                    work: dir.join("work"),
                };
                (s.upper.clone(), s.work.clone(), dir.join("merged"), Some(s))
            }
        };
        let options = format!(
            "lowerdir={},upperdir={},workdir={}",
            lowers.join(":"),
            text(&upper)?,
            text(&work)?
        );
        if options.len() > OPTIONS_MAX {
            return Err(SpecError::new(
                "image",
                format!(
                    "{} layers: overlay's options ({} bytes) exceed one page; a shorter store path (--store) helps",
                    lower.len(),
                    options.len()
                ),
            ));
        }
        let options = CString::new(options).map_err(|e| SpecError::new("image", e.to_string()))?;
        Ok(RootLayers {
            options,
            lower_base,
            merged,
            scratch,
        })
    }

    /// Run `plan` on these layers: its root is where they are mounted.
    pub fn attach(self, plan: &mut crate::Plan) {
        plan.root = Some(self.merged.clone());
        plan.root_layers = Some(self);
    }

    /// Mount the layers on the plan's root (in the init, in the sandbox's
    /// mount namespace, before the view is built).
    pub(crate) fn mount(&self) -> nix::Result<()> {
        if let Some(s) = &self.scratch {
            mount(
                Some("tmpfs"),
                &s.dir,
                Some("tmpfs"),
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
                Some(SCRATCH_OPTIONS),
            )?;
            for d in [&s.upper, &s.work, &self.merged] {
                nix::unistd::mkdir(d, Mode::from_bits_truncate(0o755))?;
            }
        }
        if let Some(base) = &self.lower_base {
            // Pivoting into the root changes directory again later.
            nix::unistd::chdir(base)?;
        }
        // nodev: an image's device node must not open a host device (the
        // sandbox gets a fresh /dev of its own, mounted over this).
        mount(
            Some("overlay"),
            &self.merged,
            Some("overlay"),
            MsFlags::MS_NODEV,
            Some(self.options.as_c_str()),
        )
    }
}

/// A path as overlay's options may hold it.
fn text(p: &Path) -> Result<String, SpecError> {
    let s = p
        .to_str()
        .ok_or_else(|| SpecError::new("image", format!("{}: not UTF-8", p.display())))?;
    if s.contains([',', ':', '=']) {
        return Err(SpecError::new(
            "image",
            format!("{s}: a layer path with , : or ="),
        ));
    }
    Ok(s.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_name_lowers_top_first_then_upper() {
        let l = RootLayers::new(
            &[PathBuf::from("/s/l/b"), PathBuf::from("/s/l/a")],
            Upper::Dirs {
                upper: Path::new("/s/r/u"),
                work: Path::new("/s/r/w"),
                merged: Path::new("/s/mnt"),
            },
        )
        .unwrap();
        assert_eq!(
            l.options.as_c_str(),
            c"lowerdir=b:a,upperdir=/s/r/u,workdir=/s/r/w"
        );
        assert_eq!(l.lower_base.as_deref(), Some(Path::new("/s/l")));
        assert_eq!(l.merged, Path::new("/s/mnt"));
        let ro = RootLayers::new(
            &[PathBuf::from("/s/l/a")],
            Upper::Scratch {
                dir: Path::new("/s/mnt"),
            },
        )
        .unwrap();
        assert_eq!(
            ro.options.as_c_str(),
            c"lowerdir=a,upperdir=/s/mnt/upper,workdir=/s/mnt/work"
        );
        assert_eq!(ro.merged, Path::new("/s/mnt/merged"));
    }

    #[test]
    fn too_many_layers_or_odd_paths_are_refused() {
        let many: Vec<PathBuf> = (0..100)
            .map(|i| PathBuf::from(format!("/var/lib/isola/images/layers/{i:064}")))
            .collect();
        let scratch = Upper::Scratch {
            dir: Path::new("/m"),
        };
        let e = RootLayers::new(&many, scratch).unwrap_err();
        assert!(e.to_string().starts_with("image: 100 layers"), "{e}");
        assert!(RootLayers::new(&[PathBuf::from("/x/a:b")], scratch).is_err());
        assert!(RootLayers::new(&[], scratch).is_err());
    }
}
