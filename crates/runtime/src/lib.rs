//! isola-runtime: one sandbox. A service spec (OCI runtime-spec body) is
//! parsed ([`spec`]) and validated into a [`plan::Plan`] before anything is
//! created; [`sandbox::start`] then makes its cgroup ([`cgroup`]), clones the
//! init ([`init`]) into new namespaces and waits for the payload to start.

pub mod capabilities;
pub mod cgroup;
pub mod devices;
pub mod error;
pub mod exit;
pub mod fdpass;
pub mod gate;
pub mod hookrun;
mod hostroot;
pub mod init;
mod inroot;
pub mod join;
pub mod listen;
pub mod mounts;
pub mod nodes;
pub mod plan;
pub mod sandbox;
pub mod seccomp;
pub mod shorthand;
pub mod spec;
pub mod starter;
mod sync;
mod sys;

pub use sys::{in_shared_arena, release_free_memory, spawn_helper, Allocator};

pub use error::{Error, SpecError};
pub use plan::Plan;
pub use sandbox::{ExitStatus, Options, Outcome, Sandbox};
pub use spec::ServiceSpec;
