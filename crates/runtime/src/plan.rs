//! A validated, fully resolved sandbox: everything is checked here, before
//! any cgroup, process or mount exists, so bad input leaves nothing behind.

use std::ffi::CString;
use std::path::{Path, PathBuf};

use nix::mount::MsFlags;
use nix::sys::resource::Resource;

use crate::capabilities::{self, CapSets};
use crate::cgroup::limits::{self, CgroupFile};
use crate::error::SpecError;
use crate::mounts::MountSpec;
use crate::seccomp::{self, Program};
use crate::spec::ServiceSpec;

mod fields;
use fields::{abs_paths, check_sysctl, cstrings, id_map, rlimit};

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A resource limit the init sets before the payload starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rlimit {
    pub resource: Resource,
    pub soft: u64,
    pub hard: u64,
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
    pub caps: CapSets,
    pub rlimits: Vec<Rlimit>,
    pub no_new_privs: bool,
    pub oom_score_adj: Option<i32>,
    pub root: Option<PathBuf>,
    pub root_readonly: bool,
    pub propagation: MsFlags,
    pub mounts: Vec<MountSpec>,
    pub masked: Vec<PathBuf>,
    pub readonly: Vec<PathBuf>,
    pub hostname: Option<String>,
    /// CLONE_NEW* flags for namespaces created with the sandbox.
    pub clone_flags: u64,
    /// Existing namespaces to join, by path.
    pub join: Vec<(nix::sched::CloneFlags, PathBuf)>,
    pub uid_map: Option<String>,
    pub gid_map: Option<String>,
    pub sysctl: Vec<(String, String)>,
    pub seccomp: Vec<Program>,
    /// cgroup file writes; empty when the spec sets no limits.
    pub cgroup_files: Vec<CgroupFile>,
    /// The device cgroup program (`linux.resources.devices` and the
    /// default allow list), attached to the sandbox's cgroup.
    pub device_filter: Vec<crate::devices::Insn>,
    /// The spec allows devices beyond the defaults: a cgroup is needed.
    pub device_allows: bool,
    /// fd numbers (3 and up) the payload gets from the caller: the fds of
    /// [`crate::Options::pass_fds`], in this order, land here.
    pub pass_fds: Vec<std::os::fd::RawFd>,
    /// `linux.devices`, created in the view.
    pub devices: Vec<crate::nodes::DeviceNode>,
    /// `process.terminal` (OCI only, with a console socket).
    pub terminal: bool,
    /// `linux.cgroupsPath` as written (OCI only: `isola run` and stacks
    /// place sandboxes themselves).
    pub cgroups_path: Option<String>,
    /// `hooks.createContainer` and `hooks.startContainer` (OCI only): the
    /// init runs them ([`crate::hookrun`]).
    pub container_hooks: crate::hookrun::InContainer,
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

    pub fn from_spec(s: &ServiceSpec) -> Result<Plan, SpecError> {
        Plan::read(s, Dialect::Isola)
    }

    pub fn read(s: &ServiceSpec, dialect: Dialect) -> Result<Plan, SpecError> {
        let oci = &s.oci;
        let is_oci = dialect == Dialect::Oci;
        let mut warnings = Vec::new();
        if oci.hooks().is_some() && !is_oci {
            return Err(SpecError::new(
                "hooks",
                "not supported by isola run and stacks (the OCI commands run them: isola create)",
            ));
        }
        let container_hooks = match oci.hooks() {
            Some(h) if is_oci => {
                let runs = |l: &Option<Vec<oci_spec::runtime::Hook>>| {
                    l.iter()
                        .flatten()
                        .map(crate::hookrun::HookRun::from_oci)
                        .collect()
                };
                crate::hookrun::InContainer {
                    create_container: runs(h.create_container()),
                    start_container: runs(h.start_container()),
                }
            }
            _ => crate::hookrun::InContainer::default(),
        };
        let process = oci
            .process()
            .as_ref()
            .ok_or_else(|| SpecError::new("process", "missing: a service needs process.args"))?;
        let terminal = process.terminal() == Some(true);
        if terminal && !is_oci {
            return Err(SpecError::new(
                "process.terminal",
                "true: not supported by isola run (stdio is inherited; isola create --console-socket gives a pty)",
            ));
        }
        let args = process.args().clone().unwrap_or_default();
        if args.is_empty() || args[0].is_empty() {
            return Err(SpecError::new("process.args", "must name a command"));
        }
        let args = cstrings("process.args", &args)?;
        let env_list = process.env().clone().unwrap_or_default();
        for (i, e) in env_list.iter().enumerate() {
            if !e.contains('=') {
                return Err(SpecError::new(
                    format!("process.env[{i}]"),
                    format!("{e:?}: expected NAME=VALUE"),
                ));
            }
        }
        let search_path = env_list
            .iter()
            .rev()
            .find_map(|e| e.strip_prefix("PATH="))
            .unwrap_or(DEFAULT_PATH)
            .split(':')
            .filter(|d| !d.is_empty())
            .map(PathBuf::from)
            .collect();
        let env = cstrings("process.env", &env_list)?;
        let cwd = process.cwd().clone();
        if !cwd.is_absolute() {
            return Err(SpecError::new(
                "process.cwd",
                format!("{}: must be an absolute path", cwd.display()),
            ));
        }
        let user = process.user();
        let caps = capabilities::from_oci(process.capabilities().as_ref(), &mut warnings)?;
        let rlimits = process
            .rlimits()
            .iter()
            .flatten()
            .enumerate()
            .map(|(i, r)| rlimit(i, r))
            .collect::<Result<_, _>>()?;
        if let Some(adj) = process.oom_score_adj() {
            if !(-1000..=1000).contains(&adj) {
                return Err(SpecError::new(
                    "process.oomScoreAdj",
                    format!("{adj}: must be between -1000 and 1000"),
                ));
            }
        }
        fields::check_labels(process, &mut warnings)?;

        let (root, root_readonly) = match oci.root() {
            Some(r) => {
                if r.path().as_os_str().is_empty() {
                    return Err(SpecError::new(
                        "root.path",
                        "missing: the rootfs directory (leave `root` out for the host's, read-only)",
                    ));
                }
                let p = if r.path().is_absolute() {
                    r.path().clone()
                } else {
                    s.base_dir.join(r.path())
                };
                if !p.is_dir() {
                    return Err(SpecError::new(
                        "root.path",
                        format!("{}: no such directory", p.display()),
                    ));
                }
                let p = std::fs::canonicalize(&p)
                    .map_err(|e| SpecError::new("root.path", format!("{}: {e}", p.display())))?;
                (Some(p), r.readonly().unwrap_or(false))
            }
            None => (None, false),
        };

        // Not Linux::default(): oci-spec's default carries namespaces and
        // masked paths the user did not ask for.
        let linux = match oci.linux() {
            Some(l) => l.clone(),
            None => {
                serde_json::from_str("{}").map_err(|e| SpecError::new("linux", e.to_string()))?
            }
        };
        let (clone_flags, join) = fields::namespaces(&linux)?;
        let new_mount = clone_flags & libc::CLONE_NEWNS as u64 != 0;

        let mounts = oci
            .mounts()
            .iter()
            .flatten()
            .enumerate()
            .map(|(i, m)| MountSpec::from_oci(i, m, &s.base_dir))
            .collect::<Result<Vec<_>, _>>()?;
        let masked = abs_paths("linux.maskedPaths", linux.masked_paths())?;
        let readonly = abs_paths("linux.readonlyPaths", linux.readonly_paths())?;
        if !new_mount {
            for (field, used) in [
                ("root", root.is_some()),
                ("mounts", !mounts.is_empty()),
                ("linux.maskedPaths", !masked.is_empty()),
                ("linux.readonlyPaths", !readonly.is_empty()),
            ] {
                if used {
                    return Err(SpecError::new(field, "needs a new mount namespace (add {\"type\": \"mount\"} to linux.namespaces)"));
                }
            }
        }
        let hostname = oci.hostname().clone();
        if hostname.is_some() && clone_flags & libc::CLONE_NEWUTS as u64 == 0 {
            return Err(SpecError::new(
                "hostname",
                "needs a new uts namespace (add {\"type\": \"uts\"} to linux.namespaces)",
            ));
        }
        if let Some(h) = &hostname {
            if h.is_empty() || h.len() > 64 {
                return Err(SpecError::new(
                    "hostname",
                    format!("{h:?}: must be 1-64 bytes"),
                ));
            }
        }
        let propagation = match linux.rootfs_propagation().as_deref() {
            None | Some("private") | Some("rprivate") => MsFlags::MS_PRIVATE,
            Some("slave") | Some("rslave") => MsFlags::MS_SLAVE,
            Some("unbindable") | Some("runbindable") => MsFlags::MS_UNBINDABLE,
            Some(other) => {
                return Err(SpecError::new("linux.rootfsPropagation", format!("{other}: use private, slave or unbindable (shared would leak mounts to the host)")));
            }
        };

        let new_user = clone_flags & libc::CLONE_NEWUSER as u64 != 0;
        let uid_map = id_map("linux.uidMappings", linux.uid_mappings(), new_user)?;
        let gid_map = id_map("linux.gidMappings", linux.gid_mappings(), new_user)?;

        let mut sysctl: Vec<(String, String)> = linux
            .sysctl()
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect();
        sysctl.sort();
        for (k, _) in &sysctl {
            check_sysctl(k, clone_flags)?;
        }

        let seccomp = match linux.seccomp() {
            Some(p) => seccomp::compile(p, is_oci)?,
            None => Vec::new(),
        };
        let cgroup_files = match linux.resources() {
            Some(r) => limits::translate(r)?,
            None => Vec::new(),
        };
        let spec_devices = linux
            .resources()
            .as_ref()
            .and_then(|r| r.devices().clone())
            .unwrap_or_default();
        let device_allows = spec_devices.iter().any(|d| d.allow());
        let spec_nodes = linux.devices().clone().unwrap_or_default();
        let device_filter =
            crate::devices::program(&crate::devices::rules(&spec_devices, &spec_nodes)?);
        let devices = linux
            .devices()
            .iter()
            .flatten()
            .enumerate()
            .map(|(i, d)| crate::nodes::DeviceNode::from_oci(i, d))
            .collect::<Result<Vec<_>, _>>()?;
        if !devices.is_empty() && (root.is_none() || !new_mount) {
            return Err(SpecError::new(
                "linux.devices",
                "needs root and a mount namespace (host-root mode gets a fresh /dev with null, zero, full, random, urandom, tty)",
            ));
        }
        for (field, set) in [
            ("linux.intelRdt", linux.intel_rdt().is_some()),
            ("linux.personality", linux.personality().is_some()),
            ("linux.timeOffsets", linux.time_offsets().is_some()),
            ("linux.memoryPolicy", linux.memory_policy().is_some()),
        ] {
            if set {
                return Err(SpecError::new(field, "not supported"));
            }
        }
        let cgroups_path = match linux.cgroups_path() {
            Some(p) if !is_oci => {
                return Err(SpecError::new(
                    "linux.cgroupsPath",
                    format!(
                        "{}: isola places sandboxes itself (use --cgroup-root and --name)",
                        p.display()
                    ),
                ));
            }
            p => p.as_ref().map(|p| p.display().to_string()),
        };

        let plan = Plan {
            args,
            env,
            search_path,
            cwd,
            uid: user.uid(),
            gid: user.gid(),
            additional_gids: user.additional_gids().clone().unwrap_or_default(),
            umask: user.umask(),
            caps,
            rlimits,
            no_new_privs: process.no_new_privileges().unwrap_or(false),
            oom_score_adj: process.oom_score_adj(),
            root,
            root_readonly,
            propagation,
            mounts,
            masked,
            readonly,
            hostname,
            clone_flags,
            join,
            uid_map,
            gid_map,
            sysctl,
            seccomp,
            cgroup_files,
            device_filter,
            device_allows,
            pass_fds: Vec::new(),
            devices,
            terminal,
            cgroups_path,
            container_hooks,
            warnings,
        };
        plan.precheck_command()?;
        Ok(plan)
    }

    /// Fail before starting anything when the command cannot exist in the
    /// sandbox's view (unless a mount could still provide it).
    fn precheck_command(&self) -> Result<(), SpecError> {
        let cmd = self.command();
        let base = self.root.clone().unwrap_or_else(|| PathBuf::from("/"));
        let in_view = |p: &Path| base.join(p.strip_prefix("/").unwrap_or(p));
        let candidates: Vec<PathBuf> = if cmd.contains('/') {
            let p = Path::new(&cmd);
            vec![if p.is_absolute() {
                p.to_path_buf()
            } else {
                self.cwd.join(p)
            }]
        } else {
            self.search_path.iter().map(|d| d.join(&cmd)).collect()
        };
        let covered_by_mount = |p: &Path| self.mounts.iter().any(|m| p.starts_with(&m.destination));
        if candidates
            .iter()
            .any(|c| covered_by_mount(c) || in_view(c).exists())
        {
            return Ok(());
        }
        // Symlinked rootfs paths (e.g. /bin -> usr/bin) can hide a binary
        // from the simple join above; let the real exec decide then.
        if self.root.is_some() {
            return Ok(());
        }
        Err(SpecError::new(
            "process.args[0]",
            format!("{cmd}: command not found"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
        ];
        for (spec, want) in cases {
            assert_eq!(plan(spec).unwrap_err().to_string(), want);
        }
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
