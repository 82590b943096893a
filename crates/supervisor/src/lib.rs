//! isola-supervisor: many sandboxes over time. [`policy`] reads the
//! supervision fields of a service spec (restart, oom, stop, dependsOn).

#![forbid(unsafe_code)]

pub mod control;
pub mod decide;
mod exec;
pub mod fuzzing;
#[cfg(test)]
mod garbage_tests;
mod handover;
pub mod health;
mod host;
mod launch;
pub mod lifecycle;
pub mod logs;
mod notify;
mod output;
pub mod policy;
mod probe;
mod progress;
mod reap;
mod sdnotify;
mod server;
pub mod sockets;
mod spawn;
pub mod spawner;
pub mod stack;
mod status;
pub mod supervisor;
mod token;
mod update;
