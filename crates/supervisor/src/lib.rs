//! isola-supervisor: many sandboxes over time. [`policy`] reads the
//! supervision fields of a service spec (restart, oom, stop, dependsOn).

pub mod control;
pub mod decide;
pub mod logs;
pub mod policy;
pub mod spawner;
pub mod stack;
pub mod supervisor;
