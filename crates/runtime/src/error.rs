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
        if !self.field.is_empty() {
            write_one_line(f, &self.field)?;
            f.write_str(": ")?;
        }
        write_one_line(f, &self.message)
    }
}

/// `text` with control characters escaped (`\n`, `\u{1b}`): a field name or
/// value from a spec is the user's text, and one line must stay one line
/// (a newline in a JSON key once split an error in two).
fn write_one_line(f: &mut fmt::Formatter<'_>, text: &str) -> fmt::Result {
    f.write_str(&one_line(text))
}

/// `text` with its control characters escaped, so it prints as one line.
pub fn one_line(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
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

/// The errnos of a shortage of something the host has only so much of.
pub(crate) const SHORTAGES: [nix::errno::Errno; 5] = [
    nix::errno::Errno::EMFILE,
    nix::errno::Errno::ENFILE,
    nix::errno::Errno::EAGAIN,
    nix::errno::Errno::ENOMEM,
    nix::errno::Errno::ENOSPC,
];

pub fn is_shortage(e: nix::errno::Errno) -> bool {
    SHORTAGES.contains(&e)
}

impl Error {
    pub fn sys(context: impl Into<String>, source: nix::errno::Errno) -> Error {
        Error::Sys {
            context: context.into(),
            source,
        }
    }

    /// The errno of a failed syscall, if that is what it was.
    pub fn errno(&self) -> Option<nix::errno::Errno> {
        match self {
            Error::Sys { source, .. } => Some(*source),
            Error::Cgroup(c) => c.errno(),
            _ => None,
        }
    }

    /// A shortage that goes away by itself (file descriptors, memory, pids,
    /// namespaces): worth trying again later, not a broken service.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Sys { source, .. } => is_shortage(*source),
            Error::Cgroup(c) => c.errno().is_some_and(is_shortage),
            // The init reports a failed step as text; the errno is in it as
            // nix prints one ("EMFILE: Too many open files").
            Error::Setup { message, .. } => SHORTAGES
                .iter()
                .any(|e| message.contains(&format!("{e:?}: "))),
            _ => false,
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

#[cfg(test)]
mod tests {

    #[test]
    fn spec_errors_stay_one_line() {
        let e = SpecError::new(
            "services.web.stop.sig\nal",
            "unknown field `sig\nal`\u{1b}[31m",
        );
        assert_eq!(
            e.to_string(),
            "services.web.stop.sig\\nal: unknown field `sig\\nal`\\u{1b}[31m"
        );
    }

    use super::*;
    use nix::errno::Errno;

    #[test]
    fn shortages_are_transient_and_mistakes_are_not() {
        assert!(Error::sys("socketpair", Errno::EMFILE).is_transient());
        assert!(Error::sys("clone3", Errno::EAGAIN).is_transient());
        assert!(!Error::sys("clone3", Errno::EPERM).is_transient());
        let setup = |m: &str| Error::Setup {
            step: "namespaces".into(),
            message: m.into(),
        };
        assert!(setup("unshare: ENOSPC: No space left on device").is_transient());
        assert!(!setup("unshare: EPERM: Operation not permitted").is_transient());
        let not_found = Error::NotFound {
            command: "x".into(),
        };
        assert!(!not_found.is_transient());
        let cg = crate::cgroup::CgroupError::Io {
            path: "/sys/fs/cgroup/x".into(),
            source: std::io::Error::from_raw_os_error(libc::ENOMEM),
        };
        assert!(Error::from(cg).is_transient());
    }
}
