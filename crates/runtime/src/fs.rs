//! The sandbox's filesystem view, built by the init inside its mount
//! namespace: spec mounts and pivot_root ([`mounts`]), host-root mode
//! (`hostroot`: the host read-only, a fresh /dev and /tmp), rootfs paths
//! resolved inside the rootfs (`inroot`) and `linux.devices` nodes
//! (`nodes`).

mod hostroot;
mod inroot;
pub mod mounts;
pub(crate) mod nodes;
