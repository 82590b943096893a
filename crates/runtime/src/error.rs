//! Errors of the runtime, each mapped to the exit code `isola run` uses.

use std::fmt;

use crate::exit;

/// A spec (or usage) problem: found before anything is created.
/// Displays as one line naming the field and the value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecError {
    pub field: String,
    pub message: String,
}

impl SpecError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> SpecError {
        SpecError {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.field, self.message)
        }
    }
}

impl std::error::Error for SpecError {}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Spec(#[from] SpecError),
    #[error("cgroup: {0}")]
    Cgroup(#[from] crate::cgroup::CgroupError),
    /// A step inside the sandbox failed before the payload started.
    #[error("sandbox setup failed: {step}: {message}")]
    Setup { step: String, message: String },
    #[error("{command}: command not found")]
    NotFound { command: String },
    #[error("{command}: cannot execute: {message}")]
    NotExecutable { command: String, message: String },
    /// A host-side system call failed while starting or stopping a sandbox.
    #[error("{context}: {source}")]
    Sys {
        context: String,
        #[source]
        source: nix::errno::Errno,
    },
}

impl Error {
    pub fn sys(context: impl Into<String>, source: nix::errno::Errno) -> Error {
        Error::Sys {
            context: context.into(),
            source,
        }
    }

    /// The exit code `isola run` reports for this error (docker/runc style).
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Spec(_) => exit::code(exit::USAGE),
            Error::NotFound { .. } => exit::code(exit::NOT_FOUND),
            Error::NotExecutable { .. } => exit::code(exit::NOT_EXECUTABLE),
            Error::Cgroup(c) if c.is_usage() => exit::code(exit::USAGE),
            _ => exit::code(exit::SETUP),
        }
    }
}
