//! isola-runtime: one sandbox. A service spec (OCI runtime-spec body) is
//! parsed ([`spec`]) and validated into a [`plan::Plan`] before anything is
//! created; [`sandbox::start`] then makes its cgroup ([`cgroup`]), clones the
//! init ([`init`]) into new namespaces and waits for the payload to start.
//!
//! The modules are the layers, top down (each a file with its parts in the
//! folder of the same name):
//! - [`spec`]: the spec's text read into a [`ServiceSpec`] (its short form
//!   of limits in `spec/shorthand`, the spec `isola spec` writes in
//!   `spec/starter`);
//! - [`plan`]: a spec checked and resolved into a [`Plan`] (`plan/read`
//!   reads it section by section, `plan/fields` checks single fields,
//!   `plan/capabilities` the capability sets);
//! - [`sandbox`]: the host side — clone3 of the init, its cgroup, waiting
//!   (`sandbox/gate`: created now and started later; `sandbox/join`: a
//!   process joining a running sandbox);
//! - [`init`]: the sandbox's PID 1 (`init/payload` starts the payload,
//!   `init/hookrun` runs OCI hooks in the container);
//! - `fs`: the sandbox's view — mounts, host-root mode, paths resolved
//!   inside a rootfs, `linux.devices` nodes;
//! - [`cgroup`]: cgroup v2 files (`cgroup/limits`, `cgroup/stats`) and the
//!   device filter (`cgroup/devices`);
//! - `seccomp`: `linux.seccomp` compiled to BPF;
//! - `ipc`: fds between processes (`fdpass`), socket activation
//!   (`listen`), unix listeners' queues (`sock_diag`), the parent↔init protocol (`sync`);
//! - `sys`: the only `unsafe` code, the syscalls nix lacks.
//!
//! Modules of a layer that other crates use are re-exported here under
//! their old names ([`fdpass`], [`listen`], [`mounts`], [`gate`],
//! [`join`], [`hookrun`], [`shorthand`], [`starter`]).

pub mod cgroup;
pub mod error;
pub mod exit;
mod fs;
pub mod init;
mod ipc;
pub mod net;
pub mod plan;
pub mod sandbox;
mod seccomp;
pub mod spec;
mod sys;

pub use fs::{mounts, root_layers};
pub use init::hookrun;
pub use ipc::{fdpass, handover, listen, sock_diag};
pub use sandbox::{gate, join};
pub use spec::{shorthand, starter};

pub use sys::{
    as_helper, fork_keeper, in_shared_arena, release_free_memory, spawn_helper,
    spawn_sibling_helper, spawn_with_fds_at, Allocator,
};

pub use error::{Error, SpecError};
pub use plan::Plan;
pub use sandbox::{ExitStatus, Options, Outcome, Sandbox};
pub use spec::ServiceSpec;
