//! isola-supervisor: many sandboxes over time. [`spec`] reads the
//! supervision fields of a service spec and the stack file; [`lifecycle`]
//! is the pure state machine of every service; [`supervisor`] is the loop
//! of `isola up` around it, built of parts that own their state
//! ([`sandboxes`], [`reaper`], [`outputs`], [`control`]'s server,
//! [`probes`], [`readiness`], [`held_sockets`]) and the `shell` where
//! they meet.

#![forbid(unsafe_code)]

pub mod autoscale;
mod config;
pub mod control;
pub mod fuzzing;
#[cfg(test)]
mod garbage_tests;
mod held_sockets;
mod host;
pub mod keeper;
pub mod lifecycle;
pub mod logs;
pub mod metrics;
mod networks;
mod outputs;
mod probes;
mod readiness;
mod reaper;
mod sandboxes;
mod shell;
pub mod spawner;
pub mod spec;
pub mod supervisor;
pub mod upgrade;
pub mod user_dirs;

/// The spec modules at their old paths (the CLI's).
pub use spec::{health, policy, sockets, stack};
