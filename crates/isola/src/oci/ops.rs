//! `state`, `kill`, `delete`, `list`, `ps`, `pause`, `resume`, `update`,
//! `features`: each reads the container's state directory and acts on its
//! init (by pidfd, checked against its start time) or its cgroup.

use std::io::Read;
use std::os::fd::AsFd;
use std::path::Path;
use std::str::FromStr;
use std::time::{Duration, Instant};

use isola_runtime::cgroup::{self, Cgroup};
use isola_runtime::exit;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::Signal;
use nix::unistd::Pid;

use super::hooks::{self, Stage};
use super::state::{self, Saved, Status};
use super::{Failed, Globals};

/// How long `delete --force` and `pause` wait for the kernel.
const PATIENCE: Duration = Duration::from_secs(10);
/// Between looks at a cgroup's state.
const LOOK: Duration = Duration::from_millis(5);

pub(crate) fn state(g: &Globals, id: &str) -> Result<u8, Failed> {
    let s = Saved::load(&g.root, id)?;
    print_json(&s.to_oci(&g.root))
}

fn print_json(v: &serde_json::Value) -> Result<u8, Failed> {
    let text =
        serde_json::to_string_pretty(v).map_err(|e| Failed::failure(format!("serialise: {e}")))?;
    println!("{text}");
    Ok(exit::OK)
}

/// `9`, `KILL`, `SIGKILL`, `sigkill`.
pub(crate) fn parse_signal(text: &str) -> Result<Signal, Failed> {
    let bad = || Failed::usage(format!("signal {text:?}: use a number, TERM or SIGTERM"));
    if let Ok(n) = text.parse::<i32>() {
        return Signal::try_from(n).map_err(|_| bad());
    }
    let upper = text.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    Signal::from_str(&name).map_err(|_| bad())
}

/// The init's pidfd, if it still runs.
fn init_pidfd(s: &Saved) -> Option<std::os::fd::OwnedFd> {
    let fd = isola_runtime::join::pidfd_of(Pid::from_raw(s.pid)).ok()?;
    // Checked after opening: a pidfd pins the process, so if the start
    // time matches now, the pidfd is the init's.
    s.init_alive().then_some(fd)
}

pub(crate) fn kill(g: &Globals, id: &str, signal: &str, all: bool) -> Result<u8, Failed> {
    let sig = parse_signal(signal)?;
    let s = Saved::load(&g.root, id)?;
    let not_running = || Failed::failure(format!("container {id} is not running"));
    let fd = init_pidfd(&s).ok_or_else(not_running)?;
    if all {
        if let Some(c) = &s.cgroup {
            for pid in cgroup_pids(c) {
                let _ = nix::sys::signal::kill(Pid::from_raw(pid), sig);
            }
        }
    }
    isola_runtime::join::signal(&fd, sig as i32).map_err(|e| match e {
        nix::errno::Errno::ESRCH => not_running(),
        e => Failed::failure(format!("kill {id}: {e}")),
    })?;
    Ok(exit::OK)
}

fn cgroup_pids(c: &Path) -> Vec<i32> {
    std::fs::read_to_string(c.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

pub(crate) fn delete(g: &Globals, id: &str, force: bool) -> Result<u8, Failed> {
    let s = match Saved::load(&g.root, id) {
        Ok(s) => s,
        Err(_) if force && state::valid_id(id).is_ok() => {
            // Nothing to delete; a half-made directory goes too.
            let _ = std::fs::remove_dir_all(state::dir(&g.root, id));
            return Ok(exit::OK);
        }
        Err(e) => return Err(e),
    };
    let status = s.status(&g.root);
    if status != Status::Stopped {
        if !force {
            return Err(Failed::failure(format!(
                "container {id} is {}: stop it first, or delete --force",
                status.as_str()
            )));
        }
        stop_now(&s)?;
    }
    if let Some(c) = &s.cgroup {
        if let Ok(cg) = Cgroup::open(c) {
            cg.destroy()
                .map_err(|e| Failed::failure(format!("{id}: remove cgroup: {e}")))?;
        }
    }
    let hooks: Option<oci_spec::runtime::Hooks> =
        s.hooks.clone().and_then(|h| serde_json::from_value(h).ok());
    let mut st = s.to_oci(&g.root);
    st["status"] = serde_json::Value::from(Status::Stopped.as_str());
    if let Err(Failed(_, msg)) = hooks::run(hooks.as_ref(), Stage::Poststop, &st) {
        g.warn(&msg);
    }
    std::fs::remove_dir_all(state::dir(&g.root, id))
        .map_err(|e| Failed::failure(format!("{id}: remove state: {e}")))?;
    Ok(exit::OK)
}

/// SIGKILL the init (and with it the PID namespace) and everything in the
/// cgroup, and wait until they are gone.
fn stop_now(s: &Saved) -> Result<(), Failed> {
    if let Some(fd) = init_pidfd(s) {
        let _ = isola_runtime::join::signal(&fd, libc::SIGKILL);
        // A pidfd polls readable once its process has exited.
        let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
        let ms = u16::try_from(PATIENCE.as_millis()).unwrap_or(u16::MAX);
        let _ = poll(&mut fds, PollTimeout::from(ms));
    }
    if let Some(c) = &s.cgroup {
        if let Ok(cg) = Cgroup::open(c) {
            cg.kill_all(PATIENCE)
                .map_err(|e| Failed::failure(format!("{}: kill: {e}", s.id)))?;
        }
    }
    Ok(())
}

pub(crate) fn list(g: &Globals, json: bool, quiet: bool) -> Result<u8, Failed> {
    let mut all: Vec<Saved> = match std::fs::read_dir(&g.root) {
        Ok(entries) => entries
            .flatten()
            .filter_map(|e| Saved::load(&g.root, &e.file_name().to_string_lossy()).ok())
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(Failed::failure(format!("{}: {e}", g.root.display()))),
    };
    all.sort_by(|a, b| a.created.cmp(&b.created));
    if json {
        let v: Vec<serde_json::Value> = all.iter().map(|s| s.to_oci(&g.root)).collect();
        return print_json(&serde_json::Value::from(v));
    }
    if quiet {
        for s in &all {
            println!("{}", s.id);
        }
        return Ok(exit::OK);
    }
    println!(
        "{:<24} {:<8} {:<10} {:<40} {:<26} OWNER",
        "ID", "PID", "STATUS", "BUNDLE", "CREATED"
    );
    for s in &all {
        let st = s.to_oci(&g.root);
        println!(
            "{:<24} {:<8} {:<10} {:<40} {:<26} {}",
            s.id,
            st["pid"].as_i64().unwrap_or(0),
            st["status"].as_str().unwrap_or(""),
            s.bundle.display(),
            s.created,
            s.owner
        );
    }
    Ok(exit::OK)
}

/// Host pids of the container: its cgroup's, or the init alone.
fn pids_of(s: &Saved) -> Vec<i32> {
    match &s.cgroup {
        Some(c) => cgroup_pids(c),
        None if s.init_alive() => vec![s.pid],
        None => Vec::new(),
    }
}

pub(crate) fn ps(g: &Globals, id: &str, json: bool, ps_args: &[String]) -> Result<u8, Failed> {
    let s = Saved::load(&g.root, id)?;
    let pids = pids_of(&s);
    if json {
        return print_json(&serde_json::Value::from(pids));
    }
    // As runc: ps(1) over everything, then its header and our lines.
    let args: Vec<String> = if ps_args.is_empty() {
        vec!["-ef".into()]
    } else {
        ps_args.to_vec()
    };
    let out = std::process::Command::new("ps")
        .args(&args)
        .output()
        .map_err(|e| Failed::failure(format!("ps: {e}")))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    let header = lines.next().unwrap_or_default();
    let col = header
        .split_whitespace()
        .position(|h| h == "PID")
        .ok_or_else(|| Failed::usage("ps: its output has no PID column"))?;
    println!("{header}");
    for l in lines {
        let pid = l.split_whitespace().nth(col).and_then(|p| p.parse().ok());
        if pid.is_some_and(|p: i32| pids.contains(&p)) {
            println!("{l}");
        }
    }
    Ok(exit::OK)
}

/// `pause` (freeze) and `resume`.
pub(crate) fn freeze(g: &Globals, id: &str, on: bool) -> Result<u8, Failed> {
    let s = Saved::load(&g.root, id)?;
    let status = s.status(&g.root);
    let want = if on { Status::Running } else { Status::Paused };
    if status != want {
        return Err(Failed::failure(format!(
            "container {id} is {}: only a {} container can be {}",
            status.as_str(),
            want.as_str(),
            if on { "paused" } else { "resumed" }
        )));
    }
    let c = s
        .cgroup
        .as_ref()
        .ok_or_else(|| Failed::failure(format!("container {id} has no cgroup to freeze")))?;
    let cg = Cgroup::open(c).map_err(|e| Failed::failure(format!("{id}: {e}")))?;
    let v = if on { "1" } else { "0" };
    cg.write("cgroup.freeze", v)
        .map_err(|e| Failed::failure(format!("{id}: {e}")))?;
    // The write returns before every task stopped: wait for the kernel's word.
    let deadline = Instant::now() + PATIENCE;
    while cg.read_key("cgroup.events", "frozen") != Some(u64::from(on)) {
        if Instant::now() >= deadline {
            return Err(Failed::failure(format!(
                "{id}: cgroup.events never said frozen {v}"
            )));
        }
        std::thread::sleep(LOOK);
    }
    Ok(exit::OK)
}

pub(crate) fn update(g: &Globals, id: &str, resources: &str) -> Result<u8, Failed> {
    let s = Saved::load(&g.root, id)?;
    let mut text = String::new();
    if resources == "-" {
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| Failed::usage(format!("--resources -: {e}")))?;
    } else {
        text = std::fs::read_to_string(resources)
            .map_err(|e| Failed::usage(format!("--resources {resources}: {e}")))?;
    }
    let res: oci_spec::runtime::LinuxResources = serde_json::from_str(&text)
        .map_err(|e| Failed::usage(format!("--resources {resources}: {e}")))?;
    let files = cgroup::limits::translate(&res)
        .map_err(|e| Failed::usage(format!("--resources {resources}: {e}")))?;
    if s.status(&g.root) == Status::Stopped {
        return Err(Failed::failure(format!("container {id} is not running")));
    }
    let c = s
        .cgroup
        .as_ref()
        .ok_or_else(|| Failed::failure(format!("container {id} has no cgroup")))?;
    let cg = Cgroup::open(c).map_err(|e| Failed::failure(format!("{id}: {e}")))?;
    for f in &files {
        cg.write(&f.file, &f.value)
            .map_err(|e| Failed::failure(format!("{id}: {e}")))?;
    }
    Ok(exit::OK)
}

pub(crate) fn features() -> Result<u8, Failed> {
    let caps: Vec<String> = caps::all().iter().map(|c| c.to_string()).collect();
    let v = serde_json::json!({
        "ociVersionMin": "1.0.0",
        "ociVersionMax": state::OCI_VERSION,
        "hooks": ["prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop"],
        "mountOptions": [
            "async", "atime", "bind", "defaults", "dev", "diratime", "dirsync", "exec",
            "noatime", "nodev", "nodiratime", "noexec", "norelatime", "nostrictatime",
            "nosuid", "private", "rbind", "relatime", "ro", "rprivate", "rshared",
            "rslave", "runbindable", "rw", "shared", "slave", "strictatime", "suid",
            "sync", "unbindable"
        ],
        "linux": {
            "namespaces": ["cgroup", "ipc", "mount", "network", "pid", "time", "user", "uts"],
            "capabilities": caps,
            "cgroup": {"v1": false, "v2": true, "systemd": false, "systemdUser": false, "rdma": false},
            "seccomp": {
                "enabled": true,
                "actions": ["SCMP_ACT_ALLOW", "SCMP_ACT_ERRNO", "SCMP_ACT_KILL",
                    "SCMP_ACT_KILL_PROCESS", "SCMP_ACT_KILL_THREAD", "SCMP_ACT_LOG",
                    "SCMP_ACT_TRACE", "SCMP_ACT_TRAP"],
                "operators": ["SCMP_CMP_EQ", "SCMP_CMP_GE", "SCMP_CMP_GT", "SCMP_CMP_LE",
                    "SCMP_CMP_LT", "SCMP_CMP_MASKED_EQ", "SCMP_CMP_NE"],
                "archs": ["SCMP_ARCH_X86_64"],
                "knownFlags": [],
                "supportedFlags": []
            },
            "apparmor": {"enabled": false},
            "selinux": {"enabled": false},
            "intelRdt": {"enabled": false},
            "mountExtensions": {"idmap": {"enabled": false}}
        },
        "annotations": {
            "org.opencontainers.runc.checkpoint.enabled": "false",
            "io.isola.version": env!("CARGO_PKG_VERSION")
        }
    });
    print_json(&v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_by_number_and_name() {
        assert_eq!(parse_signal("9").ok(), Some(Signal::SIGKILL));
        assert_eq!(parse_signal("TERM").ok(), Some(Signal::SIGTERM));
        assert_eq!(parse_signal("SIGUSR1").ok(), Some(Signal::SIGUSR1));
        assert_eq!(parse_signal("hup").ok(), Some(Signal::SIGHUP));
        for bad in ["NOPE", "99", "-1", ""] {
            let e = parse_signal(bad).err().unwrap();
            assert_eq!(e.0, exit::USAGE);
            assert!(e.1.contains(bad), "{}", e.1);
        }
    }
}
