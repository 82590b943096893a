//! Content digests (`sha256:<64 hex>`), and a reader that hashes and
//! counts what passes through it, so a blob is verified as it streams.

use std::fmt;
use std::io::Read;

use sha2::{Digest as _, Sha256};

use crate::Error;

/// A sha256 content digest. Other algorithms are refused when parsed:
/// every registry and tool writes sha256.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    hex: String,
}

impl Digest {
    pub fn parse(text: &str) -> Result<Digest, Error> {
        let bad = |why: &str| Error::Source(format!("digest {text:?}: {why}"));
        let Some(hex) = text.strip_prefix("sha256:") else {
            return Err(bad("only sha256:<64 hex digits> is supported"));
        };
        if hex.len() != 64
            || !hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(bad("not 64 lowercase hex digits"));
        }
        Ok(Digest {
            hex: hex.to_string(),
        })
    }

    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Digest {
        Digest::from_hasher(Sha256::new_with_prefix(bytes))
    }

    fn from_hasher(h: Sha256) -> Digest {
        let sum = h.finalize();
        let mut hex = String::with_capacity(64);
        for b in sum {
            hex.push_str(&format!("{b:02x}"));
        }
        Digest { hex }
    }

    /// The 64 hex digits: a file name in the store.
    pub fn hex(&self) -> &str {
        &self.hex
    }

    /// The first 12 hex digits, as `podman images` shows an id.
    pub fn short(&self) -> &str {
        &self.hex[..12]
    }

    /// Fail unless `bytes` are what this digest (and `size`, when known)
    /// names. `what` says which blob, for the message.
    pub fn verify(&self, bytes: &[u8], size: Option<u64>, what: &str) -> Result<(), Error> {
        check_size(bytes.len() as u64, size, what)?;
        let got = Digest::of(bytes);
        if got != *self {
            return Err(mismatch(what, self, &got));
        }
        Ok(())
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex)
    }
}

fn mismatch(what: &str, want: &Digest, got: &Digest) -> Error {
    Error::Verify {
        what: what.to_string(),
        message: format!("content does not match its digest (expected {want}, got {got})"),
    }
}

fn check_size(got: u64, want: Option<u64>, what: &str) -> Result<(), Error> {
    match want {
        Some(w) if w != got => Err(Error::Verify {
            what: what.to_string(),
            message: format!("size {got} bytes, expected {w}"),
        }),
        _ => Ok(()),
    }
}

/// A reader that hashes and counts every byte read through it.
pub struct Hashing<R> {
    inner: R,
    hasher: Sha256,
    count: u64,
}

impl<R: Read> Hashing<R> {
    pub fn new(inner: R) -> Hashing<R> {
        Hashing {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }

    /// Read what is left (a tar stream ends before its padding does),
    /// then check digest and size.
    pub fn finish(mut self, want: &Digest, size: Option<u64>, what: &str) -> Result<(), Error> {
        std::io::copy(&mut self, &mut std::io::sink()).map_err(|e| Error::Verify {
            what: what.to_string(),
            message: format!("reading: {e}"),
        })?;
        check_size(self.count, size, what)?;
        let got = Digest::from_hasher(self.hasher);
        if got != *want {
            return Err(mismatch(what, want, &got));
        }
        Ok(())
    }

    /// The digest of what was read so far, and its size.
    pub fn digest(self) -> (Digest, u64) {
        (Digest::from_hasher(self.hasher), self.count)
    }
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Digest, D::Error> {
        let text = String::deserialize(d)?;
        Digest::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_of_empty_is_the_well_known_one() {
        let d = Digest::of(b"");
        assert_eq!(
            d.to_string(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(Digest::parse(&d.to_string()).unwrap(), d);
    }

    #[test]
    fn bad_digests_are_refused() {
        for t in [
            "sha512:00",
            "sha256:abc",
            "e3b0",
            &format!("sha256:{}", "G".repeat(64)),
        ] {
            assert!(Digest::parse(t).is_err(), "{t}");
        }
    }

    #[test]
    fn a_tampered_stream_fails_verification() {
        let want = Digest::of(b"hello");
        let r = Hashing::new(&b"hellO"[..]);
        assert!(r.finish(&want, Some(5), "blob").is_err());
        let r = Hashing::new(&b"hello"[..]);
        assert!(r.finish(&want, Some(5), "blob").is_ok());
        let r = Hashing::new(&b"hello"[..]);
        assert!(r.finish(&want, Some(6), "blob").is_err());
    }
}
