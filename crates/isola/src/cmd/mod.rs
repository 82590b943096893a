//! The commands of `isola`'s own command line, one file per command or per
//! family of small ones: each holds the command's `clap::Args` and the
//! function that runs it. `main.rs` routes to them; the OCI runtime's
//! commands (runc's command line) are in `crate::oci`.

pub(crate) mod check;
pub(crate) mod common;
pub(crate) mod docs;
pub(crate) mod exec;
pub(crate) mod images;
pub(crate) mod kube;
pub(crate) mod logs;
pub(crate) mod run;
pub(crate) mod service;
pub(crate) mod spec;
pub(crate) mod status;
pub(crate) mod up;
pub(crate) mod upgrade;
