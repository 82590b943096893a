//! A validated, fully resolved sandbox: everything is checked here, before
//! any cgroup, process or mount exists, so bad input leaves nothing behind.
//! [`Plan::read`] (in `plan/read`) reads a spec section by section, with
//! the checks of single fields in `plan/fields` and the capability sets in
//! `plan/capabilities`.

use std::ffi::CString;
use std::path::PathBuf;

use nix::mount::MsFlags;
use nix::sys::resource::Resource;

use crate::cgroup::devices::Insn;
use crate::cgroup::limits::CgroupFile;
use crate::fs::mounts::MountSpec;
use crate::fs::nodes::DeviceNode;
use crate::init::hookrun::InContainer;
use crate::seccomp::Program;

pub(crate) mod capabilities;
mod fields;
mod read;
pub mod rootless;
mod view;

use capabilities::CapSets;

/// A resource limit the init sets before the payload starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rlimit {
    pub resource: Resource,
    pub soft: u64,
    pub hard: u64,
}

/// A new time namespace: the parent makes it for the init (a time
/// namespace's offsets can be set only before any process is in it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimeNs {
    /// What is written to `/proc/self/timens_offsets`: `CLOCK SECS NANOS`
    /// lines (monotonic, boottime).
    pub offsets: String,
}

#[derive(Debug, Clone)]
pub struct Plan {
    pub args: Vec<CString>,
    pub env: Vec<CString>,
    /// PATH of the payload's environment, searched inside the sandbox.
    pub search_path: Vec<PathBuf>,
    pub cwd: PathBuf,
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    pub umask: Option<u32>,
    pub(crate) caps: CapSets,
    pub rlimits: Vec<Rlimit>,
    pub no_new_privs: bool,
    pub oom_score_adj: Option<i32>,
    pub root: Option<PathBuf>,
    pub root_readonly: bool,
    /// The root is an image's layers, mounted on `root` (set by the caller
    /// that prepared them, after [`Plan::read`]).
    pub root_layers: Option<crate::fs::root_layers::RootLayers>,
    pub propagation: MsFlags,
    pub mounts: Vec<MountSpec>,
    pub masked: Vec<PathBuf>,
    pub readonly: Vec<PathBuf>,
    pub hostname: Option<String>,
    /// CLONE_NEW* flags for namespaces created with the sandbox (but the
    /// time namespace: `time_ns`).
    pub clone_flags: u64,
    /// A new time namespace and its clock offsets (`linux.timeOffsets`).
    pub time_ns: Option<TimeNs>,
    /// Existing namespaces to join, by path.
    pub join: Vec<(nix::sched::CloneFlags, PathBuf)>,
    pub uid_map: Option<String>,
    pub gid_map: Option<String>,
    pub sysctl: Vec<(String, String)>,
    pub(crate) seccomp: Vec<Program>,
    /// cgroup file writes; empty when the spec sets no limits.
    pub cgroup_files: Vec<CgroupFile>,
    /// The device cgroup program (`linux.resources.devices` and the
    /// default allow list), attached to the sandbox's cgroup.
    pub(crate) device_filter: Vec<Insn>,
    /// The spec allows devices beyond the defaults: a cgroup is needed.
    pub device_allows: bool,
    /// fd numbers (3 and up) the payload gets from the caller: the fds of
    /// [`crate::Options::pass_fds`], in this order, land here.
    pub pass_fds: Vec<std::os::fd::RawFd>,
    /// `linux.devices`, created in the view.
    pub(crate) devices: Vec<DeviceNode>,
    /// `process.terminal` (OCI only, with a console socket).
    pub terminal: bool,
    /// `linux.cgroupsPath` as written (OCI only: `isola run` and stacks
    /// place sandboxes themselves).
    pub cgroups_path: Option<String>,
    /// `hooks.createContainer` and `hooks.startContainer` (OCI only): the
    /// init runs them ([`crate::init::hookrun`]).
    pub(crate) container_hooks: InContainer,
    /// What the spec asks that isola leaves out, and says so (ambient
    /// capabilities the kernel would refuse, an LSM label on a host
    /// without that LSM).
    pub warnings: Vec<String>,
}

/// How a spec is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// `isola run`, stacks: hooks, terminals and cgroup paths are refused.
    Isola,
    /// A bundle driven through the OCI command line (`isola create`): the
    /// caller runs hooks and passes the terminal; `linux.cgroupsPath` places
    /// the group.
    Oci,
}

/// Put `entry` (`NAME=VALUE`) into `env`, replacing a variable of that name.
pub fn set_env(env: &mut Vec<CString>, entry: CString) {
    let name_of = |e: &[u8]| -> usize { e.iter().position(|b| *b == b'=').unwrap_or(e.len()) };
    let bytes = entry.as_bytes();
    let name = &bytes[..name_of(bytes)];
    env.retain(|old| {
        let o = old.as_bytes();
        &o[..name_of(o)] != name
    });
    env.push(entry);
}

impl Plan {
    pub fn new_pid_ns(&self) -> bool {
        self.clone_flags & libc::CLONE_NEWPID as u64 != 0
    }
    pub fn new_net_ns(&self) -> bool {
        self.clone_flags & libc::CLONE_NEWNET as u64 != 0
    }
    pub fn new_user_ns(&self) -> bool {
        self.clone_flags & libc::CLONE_NEWUSER as u64 != 0
    }
    /// Whether the sandbox has a mount namespace of its own to build its
    /// view in: a new one, or one joined by path (built in there, as runc
    /// does: the joined namespace's root becomes the rootfs).
    pub fn has_mount_ns(&self) -> bool {
        self.clone_flags & libc::CLONE_NEWNS as u64 != 0 || self.joins(libc::CLONE_NEWNS)
    }
    /// Whether `linux.namespaces` joins a namespace of type `flag` by path.
    pub fn joins(&self, flag: libc::c_int) -> bool {
        let f = nix::sched::CloneFlags::from_bits_retain(flag);
        self.join.iter().any(|(j, _)| j.contains(f))
    }
    /// Which of `clone_flags` the init creates itself, with unshare(2),
    /// rather than clone3 in the host process. Namespace creation (a
    /// network namespace above all) is work of whoever asks for it: left to
    /// the init, it runs in the sandbox's own time, in parallel with other
    /// starts, not in the supervisor's loop. Only PID must come with the
    /// clone (the init is its PID 1). With a user namespace everything stays
    /// in clone3, so that the others are owned by it and the host can write
    /// its id maps before the init goes on.
    pub fn deferred_ns_flags(&self) -> u64 {
        let joins_user = self
            .join
            .iter()
            .any(|(f, _)| f.contains(nix::sched::CloneFlags::CLONE_NEWUSER));
        if self.new_user_ns() || joins_user {
            return 0;
        }
        self.clone_flags & !(libc::CLONE_NEWPID as u64)
    }

    pub fn has_resources(&self) -> bool {
        !self.cgroup_files.is_empty() || self.device_allows
    }
    /// The command as the user wrote it, for messages.
    pub fn command(&self) -> String {
        self.args
            .first()
            .map(|a| a.to_string_lossy().into_owned())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::error::SpecError;
    use crate::spec::parse_str;

    fn plan(j: &str) -> Result<Plan, SpecError> {
        Plan::from_spec(&parse_str(j, Path::new("/"))?)
    }

    #[test]
    fn set_env_replaces_by_name_only() {
        let c = |s: &str| CString::new(s).unwrap();
        let mut env = vec![c("PATH=/bin"), c("PATHX=1"), c("A=1")];
        set_env(&mut env, c("PATH=/usr/bin"));
        set_env(&mut env, c("B=2"));
        assert_eq!(env, [c("PATHX=1"), c("A=1"), c("PATH=/usr/bin"), c("B=2")]);
    }

    #[test]
    fn a_plain_host_command() {
        let p = plan(r#"{"process":{"args":["true"],"cwd":"/"},"linux":{"namespaces":[{"type":"pid"},{"type":"mount"},{"type":"network"}]}}"#).unwrap();
        assert!(p.new_pid_ns() && p.new_net_ns() && !p.new_user_ns());
        assert!(!p.has_resources());
    }

    #[test]
    fn bad_input_names_field_and_value() {
        let cases = [
            (r#"{"process":{"args":["no-such-cmd-isola"],"cwd":"/"}}"#, "process.args[0]: no-such-cmd-isola: command not found"),
            (r#"{"process":{"args":["true"],"cwd":"tmp"}}"#, "process.cwd: tmp: must be an absolute path"),
            (r#"{"process":{"args":["true"],"cwd":"/"},"root":{"path":"/nonexistent-rootfs"},"linux":{"namespaces":[{"type":"mount"}]}}"#, "root.path: /nonexistent-rootfs: no such directory"),
            (r#"{"process":{"args":["true"],"cwd":"/"},"hostname":"x"}"#, "hostname: needs a new uts namespace (add {\"type\": \"uts\"} to linux.namespaces)"),
            (r#"{"process":{"args":["true"],"cwd":"/"},"linux":{"sysctl":{"kernel.panic":"1"}}}"#, "linux.sysctl.kernel.panic: not a sysctl of a namespace this sandbox creates"),
            (r#"{"process":{"args":["true"],"cwd":"/","rlimits":[{"type":"RLIMIT_NOFILE","soft":10,"hard":5}]}}"#, "process.rlimits[0].soft: 10: above hard limit 5"),
            (r#"{"process":{"args":["true"],"cwd":"/"},"linux":{"uidMappings":[{"containerID":0,"hostID":0,"size":1}]}}"#, "linux.uidMappings: needs a new user namespace (add {\"type\": \"user\"} to linux.namespaces)"),
            (r#"{"process":{"args":["true"],"cwd":"/"},"linux":{"namespaces":[{"type":"network","path":"run/netns/x"}]}}"#, "linux.namespaces[0].path: run/netns/x: must be an absolute path"),
            (r#"{"process":{"args":["true"],"cwd":"/"},"mounts":[{"destination":"/tmp","type":"tmpfs"}]}"#, "mounts: needs a new mount namespace (add {\"type\": \"mount\"} to linux.namespaces)"),
            (r#"{"process":{"args":["true"],"cwd":"/"},"linux":{"namespaces":[{"type":"mount"}],"rootfsPropagation":"shared"}}"#, "linux.rootfsPropagation: shared: needs root.path (without a rootfs the root is the host's: its mounts would be shared with the host)"),
            (r#"{"process":{"args":["true"],"cwd":"/"},"linux":{"namespaces":[{"type":"mount"}],"rootfsPropagation":"both"}}"#, "linux.rootfsPropagation: both: use private, slave, shared or unbindable"),
            (r#"{"process":{"args":["true"],"cwd":"/"},"linux":{"timeOffsets":{"monotonic":{"secs":1}}}}"#, "linux.timeOffsets: needs a new time namespace (add {\"type\": \"time\"} to linux.namespaces)"),
            (r#"{"process":{"args":["true"],"cwd":"/"},"linux":{"namespaces":[{"type":"time"}],"timeOffsets":{"realtime":{"secs":1}}}}"#, "linux.timeOffsets.realtime: only monotonic and boottime have offsets"),
        ];
        for (spec, want) in cases {
            assert_eq!(plan(spec).unwrap_err().to_string(), want);
        }
    }

    #[test]
    fn namespaces_joined_by_path_count_as_the_sandboxs_own_but_never_ours() {
        // As runc, a hostname is set and a view built in a joined namespace
        // (the VM test joins another process's); never in isola's own.
        let p = plan(
            r#"{"process":{"args":["true"],"cwd":"/"},"hostname":"j","linux":{"namespaces":[{"type":"uts","path":"/proc/self/ns/uts"}]}}"#,
        );
        let e = p.unwrap_err().to_string();
        assert!(
            e.starts_with("linux.namespaces[0].path: /proc/self/ns/uts: isola's own uts namespace"),
            "{e}"
        );
        let p = plan(
            r#"{"process":{"args":["true"],"cwd":"/"},"mounts":[{"destination":"/tmp","type":"tmpfs"}],"linux":{"namespaces":[{"type":"mount","path":"/proc/self/ns/mnt"}]}}"#,
        );
        assert!(p
            .unwrap_err()
            .to_string()
            .contains("isola's own mount namespace"));
        let p = plan(r#"{"process":{"args":["true"],"cwd":"/"},"linux":{"namespaces":[{"type":"network","path":"/proc/self/ns/net"}]}}"#).unwrap();
        assert!(
            p.joins(libc::CLONE_NEWNET) && !p.has_mount_ns(),
            "others may be ours"
        );
    }

    #[test]
    fn a_time_namespace_and_its_offsets() {
        let p = plan(r#"{"process":{"args":["true"],"cwd":"/"},"linux":{"namespaces":[{"type":"time"}],"timeOffsets":{"monotonic":{"secs":86400},"boottime":{"secs":-5,"nanosecs":7}}}}"#).unwrap();
        let t = p.time_ns.expect("a new time namespace");
        assert_eq!(t.offsets, "boottime -5 7\nmonotonic 86400 0\n");
        assert_eq!(p.clone_flags, 0, "not a clone3 flag: the parent makes it");
    }

    #[test]
    fn user_namespace_maps() {
        let p = plan(r#"{"process":{"args":["true"],"cwd":"/"},"linux":{"namespaces":[{"type":"user"}],"uidMappings":[{"containerID":0,"hostID":1000,"size":1}],"gidMappings":[{"containerID":0,"hostID":1000,"size":1}]}}"#).unwrap();
        assert_eq!(p.uid_map.as_deref(), Some("0 1000 1\n"));
        assert!(plan(
            r#"{"process":{"args":["true"],"cwd":"/"},"linux":{"namespaces":[{"type":"user"}]}}"#
        )
        .is_err());
    }
}
