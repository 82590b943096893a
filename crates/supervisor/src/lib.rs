//! isola-supervisor: many sandboxes over time. [`policy`] reads the
//! supervision fields of a service spec (restart, oom, stop, dependsOn).

pub mod policy;
