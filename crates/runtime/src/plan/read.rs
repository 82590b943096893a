//! [`Plan::read`]: a spec read section by section, each section a function
//! that returns what it resolved — the hooks, `process`, `root`, the
//! namespaces, the filesystem view, the id maps and sysctls, seccomp, the
//! resources and devices, and the fields isola refuses. The sections run in
//! this order, which is the order their errors are reported in.

use std::ffi::CString;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{Linux, Spec};

use super::capabilities::{self, CapSets};
use super::fields::{self, check_sysctl, cstrings, rlimit};
use super::view::view;
use super::{Dialect, Plan, Rlimit};
use crate::cgroup::devices::{self, Insn};
use crate::cgroup::limits::{self, CgroupFile};
use crate::error::SpecError;
use crate::fs::cgroup_mount;
use crate::fs::nodes::DeviceNode;
use crate::init::hookrun::{HookRun, InContainer};
use crate::seccomp::{self, Program};
use crate::spec::ServiceSpec;

use super::rootless;

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

impl Plan {
    /// A spec of `isola run` or a stack ([`Dialect::Isola`]).
    pub fn from_spec(s: &ServiceSpec) -> Result<Plan, SpecError> {
        Plan::read(s, Dialect::Isola)
    }

    /// Check and resolve `s`, read as `dialect` says.
    pub fn read(s: &ServiceSpec, dialect: Dialect) -> Result<Plan, SpecError> {
        let oci = &s.oci;
        let is_oci = dialect == Dialect::Oci;
        let mut warnings = Vec::new();
        let container_hooks = hooks(oci, is_oci)?;
        let p = process(oci, is_oci, &mut warnings)?;
        let (root, root_readonly) = rootfs(oci, &s.base_dir)?;
        let linux = linux_or_empty(oci)?;
        let (clone_flags, join) = fields::namespaces(&linux)?;
        let time_ns = fields::time_ns(&linux, clone_flags)?;
        let clone_flags = clone_flags & !(libc::CLONE_NEWTIME as u64);
        // Namespaces the sandbox has, new or joined by path (a view, a
        // hostname, are set up in a joined one as in a new one).
        let own_ns = join.iter().fold(clone_flags, |f, (j, _)| {
            f | u64::from(j.bits().unsigned_abs())
        });
        let mount_ns = own_ns & libc::CLONE_NEWNS as u64 != 0;
        let mut view = view(oci, &linux, &s.base_dir, root.is_some(), own_ns)?;
        let own_cgroup_ns = cgroup_mount::has_own_cgroup_ns(clone_flags, &join);
        cgroup_mount::bind_host_hierarchy(&mut view.mounts, own_cgroup_ns);
        let (uid_map, gid_map) = rootless::id_maps(&linux, clone_flags, dialect)?;
        let sysctl = sysctls(&linux, clone_flags)?;
        let seccomp = seccomp_programs(&linux, is_oci)?;
        let res = resources(&linux, root.is_some() && mount_ns)?;
        if let Some(r) = linux.resources() {
            warnings.extend(limits::ignored(r));
        }
        refuse_unsupported(&linux)?;
        let cgroups_path = cgroups_path(&linux, is_oci)?;

        let plan = Plan {
            args: p.args,
            env: p.env,
            search_path: p.search_path,
            cwd: p.cwd,
            uid: p.uid,
            gid: p.gid,
            additional_gids: p.additional_gids,
            umask: p.umask,
            caps: p.caps,
            rlimits: p.rlimits,
            no_new_privs: p.no_new_privs,
            oom_score_adj: p.oom_score_adj,
            root,
            root_readonly,
            root_layers: None,
            propagation: view.propagation,
            mounts: view.mounts,
            masked: view.masked,
            readonly: view.readonly,
            hostname: view.hostname,
            clone_flags,
            time_ns,
            join,
            uid_map,
            gid_map,
            sysctl,
            seccomp,
            cgroup_files: res.cgroup_files,
            device_filter: res.device_filter,
            device_allows: res.device_allows,
            pass_fds: Vec::new(),
            devices: res.devices,
            terminal: p.terminal,
            cgroups_path,
            container_hooks,
            warnings,
        };
        let mut plan = plan;
        if let (Dialect::Isola, Some(ids)) = (dialect, rootless::OwnedIds::of_caller()) {
            rootless::adapt(&mut plan, ids)?;
        }
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

/// `hooks`: only the OCI commands take them. The init runs
/// `createContainer` and `startContainer`; the CLI runs the others.
fn hooks(oci: &Spec, is_oci: bool) -> Result<InContainer, SpecError> {
    if oci.hooks().is_some() && !is_oci {
        return Err(SpecError::new(
            "hooks",
            "not supported by isola run and stacks (the OCI commands run them: isola create)",
        ));
    }
    Ok(match oci.hooks() {
        Some(h) if is_oci => {
            let runs = |l: &Option<Vec<oci_spec::runtime::Hook>>| {
                l.iter().flatten().map(HookRun::from_oci).collect()
            };
            InContainer {
                create_container: runs(h.create_container()),
                start_container: runs(h.start_container()),
            }
        }
        _ => InContainer::default(),
    })
}

/// `process`, resolved.
struct Process {
    args: Vec<CString>,
    env: Vec<CString>,
    search_path: Vec<PathBuf>,
    cwd: PathBuf,
    uid: u32,
    gid: u32,
    additional_gids: Vec<u32>,
    umask: Option<u32>,
    caps: CapSets,
    rlimits: Vec<Rlimit>,
    no_new_privs: bool,
    oom_score_adj: Option<i32>,
    terminal: bool,
}

/// `process`: the command, the user, capabilities, rlimits, oomScoreAdj
/// and LSM labels. What is left out with a warning goes to `warnings`.
fn process(oci: &Spec, is_oci: bool, warnings: &mut Vec<String>) -> Result<Process, SpecError> {
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
    let Command {
        args,
        env,
        search_path,
        cwd,
    } = command(process)?;
    let user = process.user();
    let caps = capabilities::from_oci(process.capabilities().as_ref(), warnings)?;
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
    fields::check_labels(process, warnings)?;
    Ok(Process {
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
        terminal,
    })
}

/// What runs, and where: `process.args`, `process.env` (with the PATH the
/// command is searched in) and `process.cwd`.
struct Command {
    args: Vec<CString>,
    env: Vec<CString>,
    search_path: Vec<PathBuf>,
    cwd: PathBuf,
}

fn command(process: &oci_spec::runtime::Process) -> Result<Command, SpecError> {
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
    Ok(Command {
        args,
        env,
        search_path,
        cwd,
    })
}

/// `root`: the rootfs directory (relative to the spec's directory),
/// canonical, and whether it is read-only. Without `root`: the host's.
fn rootfs(oci: &Spec, base_dir: &Path) -> Result<(Option<PathBuf>, bool), SpecError> {
    Ok(match oci.root() {
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
                base_dir.join(r.path())
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
    })
}

/// `linux`, or an empty one. Not Linux::default(): oci-spec's default
/// carries namespaces and masked paths the user did not ask for.
fn linux_or_empty(oci: &Spec) -> Result<Linux, SpecError> {
    match oci.linux() {
        Some(l) => Ok(l.clone()),
        None => serde_json::from_str("{}").map_err(|e| SpecError::new("linux", e.to_string())),
    }
}

/// `linux.sysctl`, sorted: only keys of a namespace the sandbox creates.
fn sysctls(linux: &Linux, clone_flags: u64) -> Result<Vec<(String, String)>, SpecError> {
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
    Ok(sysctl)
}

/// `linux.seccomp`, compiled. An OCI client's profile may name syscalls
/// this architecture lacks (`is_oci`: left out, not refused).
fn seccomp_programs(linux: &Linux, is_oci: bool) -> Result<Vec<Program>, SpecError> {
    match linux.seccomp() {
        Some(p) => seccomp::compile(p, is_oci),
        None => Ok(Vec::new()),
    }
}

/// What the sandbox may use: its cgroup files, its device filter and the
/// device nodes made for it.
struct Resources {
    cgroup_files: Vec<CgroupFile>,
    device_filter: Vec<Insn>,
    device_allows: bool,
    devices: Vec<DeviceNode>,
}

/// `linux.resources` (cgroup files; its `devices` with the default allow
/// list and the nodes of `linux.devices` make the device filter) and
/// `linux.devices`, which need a rootfs and a mount namespace
/// (`root_and_mount`).
fn resources(linux: &Linux, root_and_mount: bool) -> Result<Resources, SpecError> {
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
    let device_filter = devices::program(&devices::rules(&spec_devices, &spec_nodes)?);
    let nodes = linux
        .devices()
        .iter()
        .flatten()
        .enumerate()
        .map(|(i, d)| DeviceNode::from_oci(i, d))
        .collect::<Result<Vec<_>, _>>()?;
    if !nodes.is_empty() && !root_and_mount {
        return Err(SpecError::new(
            "linux.devices",
            "needs root and a mount namespace (host-root mode gets a fresh /dev with null, zero, full, random, urandom, tty)",
        ));
    }
    Ok(Resources {
        cgroup_files,
        device_filter,
        device_allows,
        devices: nodes,
    })
}

/// `linux` fields isola does not implement: refused, not ignored.
fn refuse_unsupported(linux: &Linux) -> Result<(), SpecError> {
    for (field, set) in [
        ("linux.intelRdt", linux.intel_rdt().is_some()),
        ("linux.personality", linux.personality().is_some()),
        ("linux.memoryPolicy", linux.memory_policy().is_some()),
    ] {
        if set {
            return Err(SpecError::new(field, "not supported"));
        }
    }
    Ok(())
}

/// `linux.cgroupsPath`: where the OCI commands place the group; refused
/// elsewhere.
fn cgroups_path(linux: &Linux, is_oci: bool) -> Result<Option<String>, SpecError> {
    match linux.cgroups_path() {
        Some(p) if !is_oci => Err(SpecError::new(
            "linux.cgroupsPath",
            format!(
                "{}: isola places sandboxes itself (use --cgroup-root and --name)",
                p.display()
            ),
        )),
        p => Ok(p.as_ref().map(|p| p.display().to_string())),
    }
}
