//! The sandbox's filesystem view, built by the init inside its mount
//! namespace: spec mounts (read at plan time in `mount_spec`) and
//! pivot_root ([`mounts`]), host-root mode (`hostroot`: the host
//! read-only, a fresh /dev and /tmp), rootfs paths resolved inside the
//! rootfs (`inroot`), the nodes of a fresh `/dev` (`devnodes`),
//! `linux.devices` nodes (`nodes`), and the `cgroup` mount without a cgroup
//! namespace as a bind of the host's hierarchy (`cgroup_mount`), and a root
//! made of image layers (`root_layers`).

pub(crate) mod cgroup_mount;
mod devnodes;
mod hostroot;
mod inroot;
mod mount_spec;
pub mod mounts;
pub(crate) mod nodes;
pub mod root_layers;
