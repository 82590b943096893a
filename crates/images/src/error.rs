//! The one error type of image handling: each variant prints as one line
//! naming what failed (the reference, the blob, the layer entry).

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The user's input: a reference, a flag, a field.
    #[error("{field}: {message}")]
    Usage { field: String, message: String },
    /// The source (registry, layout, archive) failed or answered nonsense.
    #[error("{0}")]
    Source(String),
    /// A blob whose content is not what its digest or size says.
    #[error("{what}: {message}")]
    Verify { what: String, message: String },
    /// A layer that cannot be unpacked safely (a path escaping it…).
    #[error("layer {layer}: {message}")]
    Layer { layer: String, message: String },
    /// The store's own files.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// An image the store does not have, or one it must keep.
    #[error("{0}")]
    Store(String),
}

impl Error {
    pub fn usage(field: impl Into<String>, message: impl Into<String>) -> Error {
        Error::Usage {
            field: field.into(),
            message: message.into(),
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { path, source }
    }

    /// Whether the user's input is at fault (exit 2) rather than the
    /// source or the machine.
    pub fn is_usage(&self) -> bool {
        matches!(self, Error::Usage { .. })
    }
}
