//! `create` and `start`.
//!
//! `create` reads the bundle's config.json as OCI clients write it
//! (unknown fields ignored, as the runtime spec asks), makes the state
//! directory with its start gate, clones the init detached
//! ([`isola_runtime::sandbox::Options::detach`]) and returns once the init
//! waits at the gate: the init is then the caller's caller's (conmon, the
//! containerd shim — subreapers that wait on the pid file's pid). Its exit
//! status is the payload's: code N → N, signal N → 128+N.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Component, Path, PathBuf};

use isola_runtime::cgroup;
use isola_runtime::plan::Dialect;
use isola_runtime::spec::ServiceSpec;
use isola_runtime::{exit, gate, init, sandbox, Plan};

use super::hooks::{self, Stage};
use super::state::{self, Saved, Status};
use super::{Failed, Globals};

const CGROUP_MOUNT: &str = "/sys/fs/cgroup";
/// Where containers without `linux.cgroupsPath` get their group.
const DEFAULT_PARENT: &str = "/sys/fs/cgroup/isola-oci";

pub(crate) struct CreateArgs {
    pub(crate) bundle: PathBuf,
    pub(crate) pid_file: Option<PathBuf>,
    pub(crate) console_socket: Option<PathBuf>,
    pub(crate) preserve_fds: u32,
    pub(crate) id: String,
}

/// A bundle read and checked: nothing exists yet.
pub(crate) struct Bundle {
    pub(crate) dir: PathBuf,
    pub(crate) spec: ServiceSpec,
    pub(crate) plan: Plan,
}

/// Read `dir/config.json` into a plan (OCI dialect).
pub(crate) fn load_bundle(dir: &Path) -> Result<Bundle, Failed> {
    let dir = std::fs::canonicalize(dir)
        .map_err(|e| Failed::usage(format!("--bundle {}: {e}", dir.display())))?;
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path)
        .map_err(|e| Failed::usage(format!("{}: {e}", path.display())))?;
    let oci: oci_spec::runtime::Spec = serde_json::from_str(&text)
        .map_err(|e| Failed::usage(format!("{}: {e}", path.display())))?;
    let spec = ServiceSpec {
        oci,
        supervision: serde_json::Map::new(),
        base_dir: dir.clone(),
    };
    let plan = Plan::read(&spec, Dialect::Oci).map_err(|e| {
        let code = if e.field == "process.args[0]" {
            exit::NOT_FOUND
        } else {
            exit::USAGE
        };
        Failed(code, format!("{}: {e}", path.display()))
    })?;
    Ok(Bundle { dir, spec, plan })
}

pub(crate) fn create(g: &Globals, a: &CreateArgs) -> Result<u8, Failed> {
    state::valid_id(&a.id)?;
    let mut b = load_bundle(&a.bundle)?;
    if b.plan.terminal && a.console_socket.is_none() {
        return Err(Failed::usage(
            "process.terminal is true: --console-socket is needed to hand over the pty",
        ));
    }
    let console = match (&a.console_socket, b.plan.terminal) {
        (Some(p), true) => Some(
            gate::connect_console(p)
                .map_err(|e| Failed::usage(format!("--console-socket {}: {e}", p.display())))?,
        ),
        _ => None,
    };
    let place = placement(g, &b.plan, &a.id)?;
    let first = 3;
    let preserved: Vec<RawFd> = (0..a.preserve_fds)
        .map(|k| RawFd::try_from(first + k).unwrap_or(RawFd::MAX))
        .collect();
    b.plan.pass_fds = preserved.clone();
    for w in &b.plan.warnings {
        g.warn(w);
    }

    std::fs::create_dir_all(&g.root)
        .map_err(|e| Failed::failure(format!("--root {}: {e}", g.root.display())))?;
    let dir = state::dir(&g.root, &a.id);
    match std::fs::create_dir(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(Failed::failure(format!(
                "container {} already exists",
                a.id
            )))
        }
        Err(e) => return Err(Failed::failure(format!("{}: {e}", dir.display()))),
    }
    // From here on, a failure removes the state directory again.
    let made = made_container(g, a, &b, &place, console, &preserved);
    if made.is_err() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    made
}

fn made_container(
    g: &Globals,
    a: &CreateArgs,
    b: &Bundle,
    place: &Placement,
    console: Option<OwnedFd>,
    preserved: &[RawFd],
) -> Result<u8, Failed> {
    let dir = state::dir(&g.root, &a.id);
    // What in-container hooks read (the runtime fills in the init's pid).
    let hook_state = serde_json::json!({
        "ociVersion": state::OCI_VERSION,
        "id": a.id,
        "status": "creating",
        "bundle": b.dir,
        "annotations": annotations(&b.spec),
    });
    let gate_fd = gate::make(&dir.join(state::GATE_FILE))
        .map_err(|e| Failed::failure(format!("{}: mkfifo: {e}", dir.display())))?;
    let opts = sandbox::Options {
        name: &place.leaf,
        cgroup_root: &place.parent,
        no_cgroup: place.none,
        stdio: None,
        sibling: false,
        pass_fds: preserved,
        listen: isola_runtime::listen::Listen::default(),
        detach: Some(init::Detach {
            gate: gate_fd.as_raw_fd(),
            console: console.as_ref().map(AsRawFd::as_raw_fd),
        }),
        hook_state: Some(&hook_state),
        net: isola_runtime::net::Networking::default(),
    };
    let starting = sandbox::spawn(&b.plan, &opts).map_err(|e| {
        Failed(
            u8::try_from(e.exit_code()).unwrap_or(exit::SETUP),
            format!("{}: {e}", a.id),
        )
    })?;
    let (pid, cgroup) = starting.created().map_err(|e| {
        Failed(
            u8::try_from(e.exit_code()).unwrap_or(exit::SETUP),
            format!("{}: {e}", a.id),
        )
    })?;
    drop(gate_fd);
    drop(console);
    let pid = pid.as_raw();
    let saved = Saved {
        id: a.id.clone(),
        pid,
        start_time: state::proc_start(pid).map(|(t, _)| t).unwrap_or(0),
        bundle: b.dir.clone(),
        rootfs: b.plan.root.clone().unwrap_or_else(|| PathBuf::from("/")),
        created: isola_supervisor::logs::timestamp(std::time::SystemTime::now()),
        owner: state::owner(),
        cgroup,
        annotations: annotations(&b.spec),
        hooks: b
            .spec
            .oci
            .hooks()
            .as_ref()
            .and_then(|h| serde_json::to_value(h).ok()),
    };
    let undo = |e: Failed| {
        kill_and_forget(&saved);
        e
    };
    saved.save(&g.root).map_err(undo)?;
    if let Some(p) = &a.pid_file {
        write_pid_file(p, pid).map_err(undo)?;
    }
    let st = saved.to_oci(&g.root);
    let hooks = b.spec.oci.hooks().as_ref();
    hooks::run(hooks, Stage::Prestart, &st).map_err(undo)?;
    hooks::run(hooks, Stage::CreateRuntime, &st).map_err(undo)?;
    Ok(exit::OK)
}

/// Kill a container `create` is giving up on, and remove its cgroup.
fn kill_and_forget(s: &Saved) {
    if let Ok(fd) = isola_runtime::join::pidfd_of(nix::unistd::Pid::from_raw(s.pid)) {
        let _ = isola_runtime::join::signal(&fd, libc::SIGKILL);
    }
    if let Some(c) = &s.cgroup {
        if let Ok(cg) = cgroup::Cgroup::open(c) {
            let _ = cg.destroy();
        }
    }
}

fn annotations(spec: &ServiceSpec) -> serde_json::Map<String, serde_json::Value> {
    spec.oci
        .annotations()
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), serde_json::Value::from(v.clone())))
        .collect()
}

/// The pid file, written whole or not at all (conmon reads it as soon as
/// `create` exits).
pub(super) fn write_pid_file(path: &Path, pid: i32) -> Result<(), Failed> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    std::fs::write(&tmp, pid.to_string())
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| Failed::failure(format!("--pid-file {}: {e}", path.display())))
}

/// Where the container's cgroup goes.
pub(crate) struct Placement {
    parent: PathBuf,
    leaf: String,
    /// No cgroup: a host without cgroup v2, or a parent an unprivileged
    /// caller may not write, and a spec without resources.
    none: bool,
}

fn placement(g: &Globals, plan: &Plan, id: &str) -> Result<Placement, Failed> {
    let field = "linux.cgroupsPath";
    let path = match &plan.cgroups_path {
        None => Path::new(DEFAULT_PARENT).join(id),
        Some(p) if g.systemd_cgroup => Path::new(CGROUP_MOUNT).join(systemd_path(p)?),
        Some(p) => Path::new(CGROUP_MOUNT).join(p.trim_start_matches('/')),
    };
    let rel = path.strip_prefix(CGROUP_MOUNT).unwrap_or(&path);
    let mut names = Vec::new();
    for c in rel.components() {
        match c {
            Component::Normal(n) => names.push(n.to_string_lossy().into_owned()),
            _ => {
                return Err(Failed::usage(format!(
                    "{field}: {}: must not hold . or ..",
                    path.display()
                )))
            }
        }
    }
    for n in &names {
        cgroup::check_name(n).map_err(|e| Failed::usage(format!("{field}: {e}")))?;
    }
    let (leaf, parents) = names
        .split_last()
        .ok_or_else(|| Failed::usage(format!("{field}: the root group is no container's")))?;
    // Directly below the root group too (`/name`), as runc and crun.
    let mut parent = parents
        .iter()
        .fold(PathBuf::from(CGROUP_MOUNT), |p, n| p.join(n));
    let mut none = cgroup::check_unified().is_err() && !plan.has_resources();
    // Unprivileged (podman rootless with cgroupfs asks for no path, or
    // one it may not make): in the subtree delegated to the caller, else
    // without a group — unless limits need one.
    if isola_runtime::plan::rootless::unprivileged() && !none && !cgroup::delegated::usable(&parent)
    {
        match cgroup::delegated::default_root() {
            Some(root) => parent = root,
            None if plan.has_resources() => {
                return Err(Failed::usage(format!(
                    "linux.resources: {}",
                    crate::placement::undelegated_line()
                )))
            }
            None => none = true,
        }
    }
    Ok(Placement {
        parent,
        leaf: leaf.clone(),
        none,
    })
}

/// `slice:prefix:name` → `a.slice/a-b.slice/prefix-name.scope`, the path
/// systemd would use (there is no systemd to ask in our VMs and many
/// containers; the group is made by hand where it would be).
fn systemd_path(p: &str) -> Result<PathBuf, Failed> {
    let parts: Vec<&str> = p.split(':').collect();
    let [slice, prefix, name] = parts[..] else {
        return Err(Failed::usage(format!(
            "linux.cgroupsPath: {p}: with --systemd-cgroup, use slice:prefix:name"
        )));
    };
    let slice = if slice.is_empty() {
        "system.slice"
    } else {
        slice
    };
    let stem = slice.strip_suffix(".slice").ok_or_else(|| {
        Failed::usage(format!(
            "linux.cgroupsPath: {slice}: a slice ends in .slice"
        ))
    })?;
    let mut out = PathBuf::new();
    let mut acc = String::new();
    for part in stem.split('-') {
        if !acc.is_empty() {
            acc.push('-');
        }
        acc.push_str(part);
        out.push(format!("{acc}.slice"));
    }
    let unit = if name.ends_with(".slice") {
        name.to_string()
    } else if prefix.is_empty() {
        format!("{name}.scope")
    } else {
        format!("{prefix}-{name}.scope")
    };
    out.push(unit);
    Ok(out)
}

pub(crate) fn start(g: &Globals, id: &str) -> Result<u8, Failed> {
    let s = Saved::load(&g.root, id)?;
    match s.status(&g.root) {
        Status::Created => {}
        other => {
            return Err(Failed::failure(format!(
                "container {id} is {}: only a created container can be started",
                other.as_str()
            )))
        }
    }
    let gate_path = s.gate(&g.root);
    let opened = gate::open(&gate_path)
        .map_err(|e| Failed::failure(format!("{}: {e}", gate_path.display())))?;
    let _ = std::fs::remove_file(&gate_path);
    if !opened {
        return Err(Failed::failure(format!(
            "container {id} is stopped: its init exited before the start"
        )));
    }
    let hooks: Option<oci_spec::runtime::Hooks> =
        s.hooks.clone().and_then(|h| serde_json::from_value(h).ok());
    if let Err(Failed(_, msg)) = hooks::run(hooks.as_ref(), Stage::Poststart, &s.to_oci(&g.root)) {
        // The payload runs: a failed poststart hook is reported, not fatal
        // (the spec: "log a warning").
        g.warn(&msg);
    }
    Ok(exit::OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn systemd_paths_as_systemd_makes_them() {
        assert_eq!(
            systemd_path("machine.slice:libpod:abc").unwrap(),
            PathBuf::from("machine.slice/libpod-abc.scope")
        );
        assert_eq!(
            systemd_path("a-b-c.slice:p:n").unwrap(),
            PathBuf::from("a.slice/a-b.slice/a-b-c.slice/p-n.scope")
        );
        assert_eq!(
            systemd_path(":cri:x").unwrap(),
            PathBuf::from("system.slice/cri-x.scope")
        );
        assert!(systemd_path("/a/b").is_err());
        assert!(systemd_path("bad:p:n").is_err());
    }
}
