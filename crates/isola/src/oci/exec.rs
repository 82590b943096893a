//! `exec`: a process in a running container, through the runtime's `join`
//! (the machinery of `isola exec` and exec probes): the container's cgroup
//! and namespaces, then its rlimits, user, capabilities, no_new_privs and
//! seccomp. The process (`--process F`, runc's process.json, or ARGS) may
//! set its args, env, cwd and user; its capabilities, rlimits and seccomp
//! are the container's (docs/oci.md lists what differs from runc).
//!
//! The pid written to `--pid-file` is the joining waiter's: it stays in
//! the host's PID namespace and exits with the command's status, so a
//! subreaper waiting on it (conmon) gets the command's exit code.

use std::ffi::CString;
use std::os::fd::AsRawFd;
use std::path::PathBuf;

use isola_runtime::exit;
use isola_runtime::join::{self, Target};

use super::create::load_bundle;
use super::state::{Saved, Status};
use super::{Failed, Globals};

#[derive(clap::Args)]
pub(crate) struct ExecArgs {
    /// The process as runc's process.json (OCI `process`).
    #[arg(short, long)]
    process: Option<PathBuf>,
    /// Return once the process started.
    #[arg(short, long)]
    detach: bool,
    /// Write the process's pid here.
    #[arg(long)]
    pid_file: Option<PathBuf>,
    /// Give the process a pty (its master goes to --console-socket).
    #[arg(short, long)]
    tty: bool,
    #[arg(long)]
    console_socket: Option<PathBuf>,
    /// NAME=VALUE, on top of the container's environment.
    #[arg(short, long)]
    env: Vec<String>,
    #[arg(long)]
    cwd: Option<PathBuf>,
    /// UID[:GID].
    #[arg(short, long)]
    user: Option<String>,
    /// Accepted (runc's); the container's capabilities apply.
    #[arg(long)]
    cap: Vec<String>,
    /// Accepted (runc's).
    #[arg(long)]
    no_new_privs: bool,
    /// Accepted (runc's).
    #[arg(long)]
    process_label: Option<String>,
    /// Accepted (runc's).
    #[arg(long)]
    apparmor: Option<String>,
    /// Accepted (runc's).
    #[arg(long)]
    ignore_paused: bool,
    /// Accepted (runc's).
    #[arg(long, default_value_t = 0)]
    preserve_fds: u32,
    id: String,
    /// The command and its arguments (without --process).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<String>,
}

/// What the process is: from --process or the command line.
struct Process {
    args: Vec<String>,
    env: Vec<String>,
    cwd: Option<PathBuf>,
    user: Option<(u32, u32)>,
    terminal: bool,
}

fn process_of(a: &ExecArgs) -> Result<Process, Failed> {
    let mut p = match &a.process {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| Failed::usage(format!("--process {}: {e}", path.display())))?;
            let oci: oci_spec::runtime::Process = serde_json::from_str(&text)
                .map_err(|e| Failed::usage(format!("--process {}: {e}", path.display())))?;
            if !a.args.is_empty() {
                return Err(Failed::usage(
                    "--process and a command conflict: give one of them",
                ));
            }
            Process {
                args: oci.args().clone().unwrap_or_default(),
                env: oci.env().clone().unwrap_or_default(),
                cwd: Some(oci.cwd().clone()),
                user: Some((oci.user().uid(), oci.user().gid())),
                terminal: oci.terminal() == Some(true),
            }
        }
        None => Process {
            args: a.args.clone(),
            env: Vec::new(),
            cwd: None,
            user: None,
            terminal: a.tty,
        },
    };
    if p.args.is_empty() {
        return Err(Failed::usage("exec: no command (give ARGS or --process)"));
    }
    p.env.extend(a.env.iter().cloned());
    if let Some(c) = &a.cwd {
        p.cwd = Some(c.clone());
    }
    if let Some(u) = &a.user {
        p.user = Some(parse_user(u)?);
    }
    Ok(p)
}

fn parse_user(u: &str) -> Result<(u32, u32), Failed> {
    let bad = || Failed::usage(format!("--user {u:?}: use UID or UID:GID (numbers)"));
    let (uid, gid) = match u.split_once(':') {
        Some((a, b)) => (a, Some(b)),
        None => (u, None),
    };
    let uid: u32 = uid.parse().map_err(|_| bad())?;
    let gid: u32 = match gid {
        Some(g) => g.parse().map_err(|_| bad())?,
        None => uid,
    };
    Ok((uid, gid))
}

fn cstrings(field: &str, v: &[String]) -> Result<Vec<CString>, Failed> {
    v.iter()
        .map(|s| {
            CString::new(s.as_bytes())
                .map_err(|_| Failed::usage(format!("{field}: {s:?} holds a NUL byte")))
        })
        .collect()
}

pub(crate) fn exec(g: &Globals, a: ExecArgs) -> Result<u8, Failed> {
    let p = process_of(&a)?;
    if p.env.iter().any(|e| !e.contains('=')) {
        return Err(Failed::usage("--env: expected NAME=VALUE"));
    }
    let s = Saved::load(&g.root, &a.id)?;
    let status = s.status(&g.root);
    if status != Status::Running {
        return Err(Failed::failure(format!(
            "container {} is {}: exec needs a running container",
            a.id,
            status.as_str()
        )));
    }
    if p.terminal && a.console_socket.is_none() {
        return Err(Failed::usage("--tty needs --console-socket"));
    }
    let console = match (&a.console_socket, p.terminal) {
        (Some(path), true) => Some(
            isola_runtime::gate::connect_console(path)
                .map_err(|e| Failed::usage(format!("--console-socket {}: {e}", path.display())))?,
        ),
        _ => None,
    };
    let bundle = load_bundle(&s.bundle)?;
    let init = join::pidfd_of(nix::unistd::Pid::from_raw(s.pid))
        .map_err(|e| Failed::failure(format!("{}: {e}", a.id)))?;
    if !s.init_alive() {
        return Err(Failed::failure(format!(
            "container {} is not running",
            a.id
        )));
    }
    let target = Target {
        init: std::os::fd::AsFd::as_fd(&init),
        cgroup: s.cgroup.as_deref(),
        plan: &bundle.plan,
    };
    let opts = join::Options {
        args: cstrings("args", &p.args)?,
        env: cstrings("env", &p.env)?,
        user: p.user,
        cwd: p.cwd,
        stdio: None,
        kill_group: false,
        detached: a.detach,
        console: console.as_ref().map(AsRawFd::as_raw_fd),
    };
    let joined = join::spawn(&target, &opts).map_err(|e| {
        Failed(
            u8::try_from(e.exit_code()).unwrap_or(exit::SETUP),
            format!("{}: {e}", a.id),
        )
    })?;
    drop(console);
    if let Some(path) = &a.pid_file {
        super::create::write_pid_file(path, joined.pid().as_raw())?;
    }
    if a.detach {
        return Ok(exit::OK);
    }
    Ok(u8::try_from(joined.wait()).unwrap_or(exit::SETUP))
}
