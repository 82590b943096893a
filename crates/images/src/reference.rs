//! Image references, in the transports skopeo and podman understand
//! (containers-transports(5)): `docker://HOST[:PORT]/NAME[:TAG|@DIGEST]`,
//! `oci:PATH[:TAG]`, `docker-archive:PATH`, `oci-archive:PATH`. A bare
//! `NAME:TAG` is refused: there is no silent default registry.

use std::fmt;
use std::path::PathBuf;

use crate::{Digest, Error};

/// The accepted forms, for messages.
pub const FORMS: &str = "docker://HOST[:PORT]/NAME[:TAG|@DIGEST], oci:PATH[:TAG], docker-archive:PATH or oci-archive:PATH";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reference {
    Registry(RegistryRef),
    /// An OCI image layout directory, and the tag (`org.opencontainers.
    /// image.ref.name`) to take from its index.
    Layout {
        path: PathBuf,
        tag: Option<String>,
    },
    /// What `docker save` / `podman save` write.
    DockerArchive(PathBuf),
    /// A tar of an OCI image layout (`podman save --format oci-archive`).
    OciArchive(PathBuf),
}

/// An image in a registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryRef {
    /// `HOST[:PORT]`.
    pub host: String,
    /// `NAME`: path components, lowercase.
    pub repository: String,
    pub version: Version,
}

/// Which manifest of a repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Version {
    Tag(String),
    Digest(Digest),
}

impl Reference {
    /// Parse `text`; `field` names where it came from, for the message.
    pub fn parse(text: &str, field: &str) -> Result<Reference, Error> {
        let bad = |why: &str| Error::usage(field, format!("{text}: {why}"));
        if let Some(rest) = text.strip_prefix("docker://") {
            return RegistryRef::parse(rest)
                .map(Reference::Registry)
                .map_err(|w| bad(&w));
        }
        if let Some(rest) = text.strip_prefix("oci:") {
            let (path, tag) = split_tag(rest);
            if path.is_empty() {
                return Err(bad("oci: needs a PATH"));
            }
            return Ok(Reference::Layout {
                path: PathBuf::from(path),
                tag,
            });
        }
        for (prefix, make) in [
            (
                "docker-archive:",
                Reference::DockerArchive as fn(PathBuf) -> Reference,
            ),
            ("oci-archive:", Reference::OciArchive),
        ] {
            if let Some(rest) = text.strip_prefix(prefix) {
                if rest.is_empty() {
                    return Err(bad(&format!("{prefix} needs a PATH")));
                }
                return Ok(make(PathBuf::from(rest)));
            }
        }
        Err(bad(&format!(
            "not an image reference; use {FORMS} (there is no default registry)"
        )))
    }

    /// Whether `text` names an image rather than a spec file: it starts
    /// with one of the transports.
    pub fn looks_like(text: &str) -> bool {
        ["docker://", "oci:", "docker-archive:", "oci-archive:"]
            .iter()
            .any(|p| text.starts_with(p))
    }
}

/// `PATH[:TAG]`: a tag is what follows the last `:`, when it holds no `/`.
fn split_tag(rest: &str) -> (&str, Option<String>) {
    match rest.rsplit_once(':') {
        Some((p, t)) if !t.is_empty() && !t.contains('/') => (p, Some(t.to_string())),
        _ => (rest, None),
    }
}

impl RegistryRef {
    fn parse(rest: &str) -> Result<RegistryRef, String> {
        let Some((host, name)) = rest.split_once('/') else {
            return Err("name the registry and the image: docker://HOST[:PORT]/NAME[:TAG]".into());
        };
        if host.is_empty()
            || !host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b))
        {
            return Err(format!("registry host {host:?} is not HOST[:PORT]"));
        }
        let (name, version) = match name.split_once('@') {
            Some((n, d)) => (
                n,
                Version::Digest(Digest::parse(d).map_err(|e| e.to_string())?),
            ),
            None => match split_tag(name) {
                (n, Some(t)) => (n, Version::Tag(t)),
                (n, None) => (n, Version::Tag("latest".into())),
            },
        };
        check_repository(name)?;
        if let Version::Tag(t) = &version {
            check_tag(t)?;
        }
        Ok(RegistryRef {
            host: host.to_string(),
            repository: name.to_string(),
            version,
        })
    }
}

/// The distribution spec's name grammar, in short: lowercase path
/// components of `[a-z0-9]` joined by `.`, `_`, `__` or `-`.
fn check_repository(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.split('/').all(|c| {
            !c.is_empty()
                && c.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
                && c.as_bytes()[0].is_ascii_alphanumeric()
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "image name {name:?}: lowercase letters, digits and . _ - in /-separated parts"
        ))
    }
}

fn check_tag(tag: &str) -> Result<(), String> {
    let ok = tag.len() <= 128
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        && !tag.starts_with(['.', '-']);
    if ok {
        Ok(())
    } else {
        Err(format!(
            "tag {tag:?}: letters, digits and . _ - (up to 128)"
        ))
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reference::Registry(r) => write!(f, "docker://{r}"),
            Reference::Layout { path, tag: Some(t) } => write!(f, "oci:{}:{t}", path.display()),
            Reference::Layout { path, tag: None } => write!(f, "oci:{}", path.display()),
            Reference::DockerArchive(p) => write!(f, "docker-archive:{}", p.display()),
            Reference::OciArchive(p) => write!(f, "oci-archive:{}", p.display()),
        }
    }
}

impl fmt::Display for RegistryRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.version {
            Version::Tag(t) => write!(f, "{}/{}:{t}", self.host, self.repository),
            Version::Digest(d) => write!(f, "{}/{}@{d}", self.host, self.repository),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(t: &str) -> Result<Reference, Error> {
        Reference::parse(t, "image")
    }

    #[test]
    fn registry_references() {
        let Reference::Registry(r) = parse("docker://127.0.0.1:5000/lib/busybox:1").unwrap() else {
            panic!()
        };
        assert_eq!(r.host, "127.0.0.1:5000");
        assert_eq!(r.repository, "lib/busybox");
        assert_eq!(r.version, Version::Tag("1".into()));
        let d = format!("sha256:{}", "a".repeat(64));
        let Reference::Registry(r) = parse(&format!("docker://r.example/busybox@{d}")).unwrap()
        else {
            panic!()
        };
        assert_eq!(r.version, Version::Digest(Digest::parse(&d).unwrap()));
        assert_eq!(
            parse("docker://h/x").unwrap().to_string(),
            "docker://h/x:latest"
        );
    }

    #[test]
    fn other_transports() {
        assert_eq!(
            parse("oci:/tmp/layout:v1").unwrap(),
            Reference::Layout {
                path: "/tmp/layout".into(),
                tag: Some("v1".into())
            }
        );
        assert_eq!(
            parse("oci:/tmp/layout").unwrap(),
            Reference::Layout {
                path: "/tmp/layout".into(),
                tag: None
            }
        );
        assert_eq!(
            parse("docker-archive:/a.tar").unwrap(),
            Reference::DockerArchive("/a.tar".into())
        );
        assert_eq!(
            parse("oci-archive:/a.tar").unwrap(),
            Reference::OciArchive("/a.tar".into())
        );
    }

    #[test]
    fn bad_references_name_the_field_and_the_forms() {
        for t in [
            "busybox:1",
            "docker://busybox",
            "docker://h/Busybox",
            "docker://h/x:-t",
            "oci:",
            "docker://h/x@sha256:1",
        ] {
            let e = parse(t).unwrap_err().to_string();
            assert!(e.starts_with(&format!("image: {t}: ")), "{e}");
        }
        assert!(parse("busybox:1")
            .unwrap_err()
            .to_string()
            .contains("docker://HOST"));
    }
}
