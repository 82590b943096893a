//! One layer blob into one directory, in overlayfs's format: the tar
//! stream decompressed (gzip, zstd or none, told by its first bytes),
//! verified by the blob's digest (and the config's diff id, the digest of
//! the uncompressed tar) as it streams, each entry kept inside the
//! directory. OCI whiteouts become overlay whiteouts (`.wh.NAME` → a 0:0
//! character device `NAME`; `.wh..wh..opq` → the directory's
//! `trusted.overlay.opaque` = `y`), so the layers stack as overlay lower
//! directories without being merged. Character and block devices are
//! skipped: a sandbox gets a fresh `/dev`, and a node in the store would
//! be a door to the host's disks for whoever can reach it. Of an entry's
//! extended attributes only `user.*` and `security.capability` are kept
//! (an image must not set overlayfs's own `trusted.overlay.*`).

use std::io::{BufRead, BufReader, Read};
use std::path::{Component, Path, PathBuf};

use nix::sys::stat::{makedev, mknod, Mode, SFlag};
use tar::EntryType;

use crate::digest::Hashing;
use crate::{Digest, Error};

const GZIP_MAGIC: &[u8] = &[0x1f, 0x8b];
const ZSTD_MAGIC: &[u8] = &[0x28, 0xb5, 0x2f, 0xfd];
const WHITEOUT: &str = ".wh.";
const OPAQUE: &str = ".wh..wh..opq";

/// What the layer is checked against.
pub struct Expect<'a> {
    /// The blob's digest and size (as the manifest names them).
    pub blob: &'a Digest,
    pub size: Option<u64>,
    /// The uncompressed tar's digest (the config's `rootfs.diff_ids`).
    pub diff_id: Option<&'a Digest>,
}

/// Unpack `blob` into the empty directory `dst`, verifying it.
pub fn unpack(blob: impl Read, expect: &Expect<'_>, dst: &Path) -> Result<(), Error> {
    let what = format!("layer {}", expect.blob);
    let mut raw = BufReader::with_capacity(1 << 16, Hashing::new(blob));
    let head = raw.fill_buf().map_err(|e| read_err(&what, &e))?.to_vec();
    let tar_stream: Box<dyn Read + '_> = if head.starts_with(GZIP_MAGIC) {
        Box::new(flate2::read::MultiGzDecoder::new(&mut raw))
    } else if head.starts_with(ZSTD_MAGIC) {
        Box::new(
            zstd::stream::read::Decoder::with_buffer(&mut raw).map_err(|e| read_err(&what, &e))?,
        )
    } else {
        Box::new(&mut raw)
    };
    let mut tar_hash = Hashing::new(tar_stream);
    entries(&mut tar_hash, expect.blob, dst)?;
    if let Some(diff_id) = expect.diff_id {
        tar_hash.finish(diff_id, None, &format!("{what} (uncompressed)"))?;
    } else {
        drop(tar_hash);
    }
    raw.into_inner().finish(expect.blob, expect.size, &what)
}

fn read_err(what: &str, e: &std::io::Error) -> Error {
    Error::Verify {
        what: what.to_string(),
        message: format!("reading: {e}"),
    }
}

fn entries(stream: &mut impl Read, blob: &Digest, dst: &Path) -> Result<(), Error> {
    let fail = |message: String| Error::Layer {
        layer: blob.to_string(),
        message,
    };
    let mut archive = tar::Archive::new(stream);
    archive.set_preserve_permissions(true);
    // Owners are kept where we may set them (root); a user's unpack keeps
    // its own.
    archive.set_preserve_ownerships(nix::unistd::geteuid().is_root());
    archive.set_preserve_mtime(true);
    archive.set_unpack_xattrs(false);
    archive.set_overwrite(true);
    for entry in archive.entries().map_err(|e| fail(e.to_string()))? {
        let mut entry = entry.map_err(|e| fail(e.to_string()))?;
        let path = entry.path().map_err(|e| fail(e.to_string()))?.into_owned();
        let rel = inside(&path)
            .ok_or_else(|| fail(format!("{}: path escapes the layer", path.display())))?;
        if rel.as_os_str().is_empty() {
            continue;
        }
        let at = |e: std::io::Error| fail(format!("{}: {}", path.display(), chain(&e)));
        match special(&rel, entry.header().entry_type()) {
            Special::Opaque(dir) => opaque(dst, &dir).map_err(at)?,
            Special::Whiteout(name) => whiteout(dst, &name).map_err(at)?,
            Special::Fifo => fifo(dst, &rel, &entry).map_err(at)?,
            Special::Device => {}
            Special::None => {
                let xattrs = kept_xattrs(&mut entry).map_err(at)?;
                entry.unpack_in(dst).map_err(at)?;
                for (name, value) in xattrs {
                    xattr::set(dst.join(&rel), &name, &value).map_err(at)?;
                }
            }
        }
    }
    Ok(())
}

/// An error with its causes (the tar crate wraps the one that matters).
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(&format!(": {c}"));
        cause = c.source();
    }
    text
}

/// An entry's path made relative, or None when a `..` would climb out.
fn inside(p: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// Entries that the tar crate would get wrong for a layer.
enum Special {
    /// `.wh..wh..opq`: the directory hides what lower layers have there.
    Opaque(PathBuf),
    /// `.wh.NAME`: NAME is deleted.
    Whiteout(PathBuf),
    /// A fifo (the tar crate writes it as an empty file).
    Fifo,
    /// A character or block device: skipped.
    Device,
    None,
}

fn special(rel: &Path, kind: EntryType) -> Special {
    let name = rel
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let parent = rel.parent().map(Path::to_path_buf).unwrap_or_default();
    if name == OPAQUE {
        return Special::Opaque(parent);
    }
    if let Some(hidden) = name.strip_prefix(WHITEOUT) {
        return Special::Whiteout(parent.join(hidden));
    }
    match kind {
        EntryType::Char | EntryType::Block => Special::Device,
        EntryType::Fifo => Special::Fifo,
        _ => Special::None,
    }
}

/// `rel`'s parent directory inside `dst`, created, with no symlink on the
/// way (a layer's own symlink must not carry a whiteout or node outside).
fn parent_in(dst: &Path, rel: &Path) -> std::io::Result<PathBuf> {
    let mut at = dst.to_path_buf();
    if let Some(parent) = rel.parent() {
        for c in parent.components() {
            at.push(c);
            match std::fs::symlink_metadata(&at) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => {
                    return Err(std::io::Error::other(format!(
                        "{} is not a directory in the layer",
                        at.display()
                    )))
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::create_dir(&at)?,
                Err(e) => return Err(e),
            }
        }
    }
    Ok(at)
}

fn opaque(dst: &Path, dir: &Path) -> std::io::Result<()> {
    let d = parent_in(dst, &dir.join("x"))?;
    xattr::set(&d, "trusted.overlay.opaque", b"y")
}

fn whiteout(dst: &Path, hidden: &Path) -> std::io::Result<()> {
    let parent = parent_in(dst, hidden)?;
    let target = parent.join(hidden.file_name().unwrap_or_default());
    crate::store::remove_any(&target)?;
    mknod(&target, SFlag::S_IFCHR, Mode::empty(), makedev(0, 0)).map_err(std::io::Error::from)
}

fn fifo<R: Read>(dst: &Path, rel: &Path, entry: &tar::Entry<'_, R>) -> std::io::Result<()> {
    let h = entry.header();
    let parent = parent_in(dst, rel)?;
    let target = parent.join(rel.file_name().unwrap_or_default());
    crate::store::remove_any(&target)?;
    let mode = Mode::from_bits_truncate(h.mode()? & 0o777);
    mknod(&target, SFlag::S_IFIFO, mode, 0)?;
    if nix::unistd::geteuid().is_root() {
        let uid = nix::unistd::Uid::from_raw(u32::try_from(h.uid()?).unwrap_or(0));
        let gid = nix::unistd::Gid::from_raw(u32::try_from(h.gid()?).unwrap_or(0));
        nix::unistd::fchownat(
            nix::fcntl::AT_FDCWD,
            &target,
            Some(uid),
            Some(gid),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )?;
    }
    Ok(())
}

/// The entry's extended attributes (PAX `SCHILY.xattr.NAME`) a layer may
/// set: `user.*`, and file capabilities (`ping`).
fn kept_xattrs<R: Read>(entry: &mut tar::Entry<'_, R>) -> std::io::Result<Vec<(String, Vec<u8>)>> {
    let Some(exts) = entry.pax_extensions()? else {
        return Ok(Vec::new());
    };
    let mut kept = Vec::new();
    for ext in exts {
        let ext = ext?;
        let Ok(key) = ext.key() else { continue };
        if let Some(name) = key.strip_prefix("SCHILY.xattr.") {
            if name.starts_with("user.") || name == "security.capability" {
                kept.push((name.to_string(), ext.value_bytes().to_vec()));
            }
        }
    }
    Ok(kept)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_kept_inside() {
        assert_eq!(
            inside(Path::new("/etc/passwd")),
            Some(PathBuf::from("etc/passwd"))
        );
        assert_eq!(inside(Path::new("./a/./b")), Some(PathBuf::from("a/b")));
        assert_eq!(inside(Path::new("a/../../etc")), None);
    }

    #[test]
    fn whiteouts_are_recognised() {
        assert!(
            matches!(special(Path::new("a/.wh.b"), EntryType::Regular), Special::Whiteout(p) if p == Path::new("a/b"))
        );
        assert!(
            matches!(special(Path::new("a/.wh..wh..opq"), EntryType::Regular), Special::Opaque(p) if p == Path::new("a"))
        );
        assert!(matches!(
            special(Path::new("dev/null"), EntryType::Char),
            Special::Device
        ));
    }
}

#[cfg(test)]
mod unpack_tests {
    use super::*;
    use tar::EntryType::{Directory, Link, Regular, Symlink};

    /// A tar of `(path, kind, data or link target)`; paths are written raw
    /// (the tar crate's builder refuses `..`, which a hostile layer has).
    fn layer(entries: &[(&str, EntryType, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, kind, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(0);
            h.set_entry_type(*kind);
            h.set_mode(0o755);
            let name = &mut h.as_old_mut().name;
            name[..path.len()].copy_from_slice(path.as_bytes());
            let body: &[u8] = if matches!(kind, Link | Symlink) {
                h.set_link_name(std::str::from_utf8(data).unwrap()).unwrap();
                &[]
            } else {
                data
            };
            h.set_size(body.len() as u64);
            h.set_cksum();
            b.append(&h, body).unwrap();
        }
        b.into_inner().unwrap()
    }

    /// Unpack `tar` into a fresh directory; the directory and the result.
    fn try_unpack(tag: &str, tar: &[u8]) -> (PathBuf, Result<(), Error>) {
        let dir = std::env::temp_dir().join(format!("isola-unpack-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let d = Digest::of(tar);
        let r = unpack(
            tar,
            &Expect {
                blob: &d,
                size: Some(tar.len() as u64),
                diff_id: Some(&d),
            },
            &dir,
        );
        (dir, r)
    }

    fn root() -> bool {
        nix::unistd::geteuid().is_root()
    }

    #[test]
    fn a_layer_unpacks_with_whiteouts_in_overlay_form() {
        if !root() {
            return; // whiteouts are device nodes: root only
        }
        let tar = layer(&[
            ("bin", Directory, b""),
            ("bin/f", Regular, b"hi"),
            ("bin/.wh.g", Regular, b""),
            ("d/.wh..wh..opq", Regular, b""),
        ]);
        let (dir, r) = try_unpack("wh", &tar);
        r.unwrap();
        assert_eq!(std::fs::read(dir.join("bin/f")).unwrap(), b"hi");
        use std::os::unix::fs::FileTypeExt;
        assert!(std::fs::symlink_metadata(dir.join("bin/g"))
            .unwrap()
            .file_type()
            .is_char_device());
        assert_eq!(
            xattr::get(dir.join("d"), "trusted.overlay.opaque").unwrap(),
            Some(b"y".to_vec())
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn hard_links_and_zstd_layers_unpack() {
        use std::os::unix::fs::MetadataExt;
        let tar = layer(&[("a", Regular, b"same"), ("b", Link, b"a")]);
        let zst = zstd::encode_all(&tar[..], 3).unwrap();
        let dir = std::env::temp_dir().join(format!("isola-unpack-zst-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let (blob, diff) = (Digest::of(&zst), Digest::of(&tar));
        unpack(
            &zst[..],
            &Expect {
                blob: &blob,
                size: Some(zst.len() as u64),
                diff_id: Some(&diff),
            },
            &dir,
        )
        .unwrap();
        let (a, b) = (
            std::fs::metadata(dir.join("a")).unwrap(),
            std::fs::metadata(dir.join("b")).unwrap(),
        );
        assert_eq!(a.ino(), b.ino());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn nothing_escapes_the_layer() {
        let outside =
            std::env::temp_dir().join(format!("isola-unpack-outside-{}", std::process::id()));
        std::fs::create_dir_all(&outside).unwrap();
        let target = outside.to_str().unwrap().as_bytes().to_vec();
        std::fs::write(outside.join("secret"), b"s").unwrap();
        // From a layer's directory beside it in the temp dir.
        let beside = format!("../isola-unpack-outside-{}", std::process::id());
        let beside_secret = format!("{beside}/secret");
        for (tag, tar) in [
            ("dotdot", layer(&[("../escaped", Regular, b"x")])),
            ("deep", layer(&[("a/../../escaped", Regular, b"x")])),
            (
                "abslink",
                layer(&[("l", Symlink, &target), ("l/escaped", Regular, b"x")]),
            ),
            (
                "rellink",
                layer(&[
                    ("l", Symlink, beside.as_bytes()),
                    ("l/escaped", Regular, b"x"),
                ]),
            ),
            ("hardlink", layer(&[("h", Link, beside_secret.as_bytes())])),
            (
                "whiteout",
                layer(&[("l", Symlink, &target), ("l/.wh.escaped", Regular, b"")]),
            ),
            (
                "node",
                layer(&[("l", Symlink, &target), ("l/escaped", EntryType::Fifo, b"")]),
            ),
        ] {
            let (dir, r) = try_unpack(tag, &tar);
            assert!(r.is_err(), "{tag}: unpacked");
            assert!(!outside.join("escaped").exists(), "{tag}: wrote outside");
            assert!(!dir.join("h").exists(), "{tag}: linked to a file outside");
            std::fs::remove_dir_all(&dir).unwrap();
        }
        std::fs::remove_dir_all(&outside).unwrap();
    }

    /// A PAX extended header holding `records` (`key=value`).
    fn pax(records: &[&str]) -> Vec<u8> {
        let mut out = Vec::new();
        for r in records {
            // "LEN KEY=VALUE\n", LEN counting itself.
            let body = format!(" {r}\n");
            let mut len = body.len() + 1;
            while format!("{len}{body}").len() != len {
                len += 1;
            }
            out.extend(format!("{len}{body}").into_bytes());
        }
        out
    }

    #[test]
    fn devices_are_skipped_and_only_safe_xattrs_kept() {
        if !root() {
            return; // trusted.* xattrs: root only
        }
        let ext = pax(&[
            "SCHILY.xattr.user.kept=1",
            "SCHILY.xattr.trusted.overlay.redirect=/etc",
        ]);
        let tar = layer(&[
            ("disk", EntryType::Block, b""),
            ("tty", EntryType::Char, b""),
            ("./PaxHeaders/f", EntryType::XHeader, &ext),
            ("f", Regular, b"x"),
        ]);
        let (dir, r) = try_unpack("xattr", &tar);
        r.unwrap();
        assert!(!dir.join("disk").exists() && !dir.join("tty").exists());
        assert_eq!(
            xattr::get(dir.join("f"), "user.kept").unwrap(),
            Some(b"1".to_vec())
        );
        assert_eq!(
            xattr::get(dir.join("f"), "trusted.overlay.redirect").unwrap(),
            None
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_layer_whose_content_is_not_its_diff_id_fails() {
        let tar = layer(&[("a", Regular, b"one")]);
        let other = Digest::of(b"something else");
        let dir = std::env::temp_dir().join(format!("isola-unpack-diff-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let blob = Digest::of(&tar);
        let e = unpack(
            &tar[..],
            &Expect {
                blob: &blob,
                size: None,
                diff_id: Some(&other),
            },
            &dir,
        )
        .unwrap_err();
        assert!(e.to_string().contains("does not match its digest"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
