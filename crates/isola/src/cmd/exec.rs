//! `isola exec NAME -- CMD…`: a command inside a running service's
//! sandbox. The supervisor says where the sandbox is; the command joins it
//! from here, through the same runtime code as exec probes, so its stdio is
//! ours and its exit status becomes ours.

use std::ffi::CString;
use std::os::fd::AsFd;
use std::path::Path;

use isola_runtime::join::{self, Target};
use isola_runtime::{exit, Plan};
use isola_supervisor::control::{Client, ExecTarget, Request};
use isola_supervisor::spec::images::ImageContext;
use isola_supervisor::supervisor;
use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::unistd::Pid;

use crate::cmd::common::SocketArg;
use crate::Exit;

#[derive(clap::Args)]
pub(crate) struct ExecArgs {
    #[command(flatten)]
    socket: SocketArg,
    /// Run as UID[:GID] (numeric) instead of the service's user.
    #[arg(long)]
    user: Option<String>,
    /// Set an environment variable (NAME=VALUE), on top of the service's.
    #[arg(long = "env", short = 'e')]
    env: Vec<String>,
    name: String,
    /// The command and its arguments (after --).
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

pub(crate) fn run(args: ExecArgs) -> Result<u8, Exit> {
    let ExecArgs {
        socket,
        user,
        env,
        name,
        command,
    } = args;
    exec(&socket.path(), &name, user.as_deref(), &env, &command)
}

fn usage(msg: String) -> Exit {
    Exit(exit::USAGE, msg)
}

/// `--user UID[:GID]`.
fn parse_user(u: &str) -> Result<(u32, Option<u32>), Exit> {
    let bad = || usage(format!("--user: {u:?}: expected UID or UID:GID (numbers)"));
    let (uid, gid) = match u.split_once(':') {
        Some((a, b)) => (a, Some(b)),
        None => (u, None),
    };
    let uid = uid.parse().map_err(|_| bad())?;
    let gid = gid.map(|g| g.parse().map_err(|_| bad())).transpose()?;
    Ok((uid, gid))
}

/// The command's arguments and `--env` entries, checked.
fn command_parts(env: &[String], command: &[String]) -> Result<(Vec<CString>, Vec<CString>), Exit> {
    let env = env
        .iter()
        .map(|e| match e.split_once('=') {
            Some((k, _)) if !k.is_empty() => cstring("--env", e),
            _ => Err(usage(format!("--env: {e:?}: expected NAME=VALUE"))),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let args = command
        .iter()
        .map(|a| cstring("command", a))
        .collect::<Result<Vec<_>, _>>()?;
    if command.first().is_none_or(String::is_empty) {
        return Err(usage(
            "exec: no command given (isola exec NAME -- CMD ARGS…)".into(),
        ));
    }
    Ok((args, env))
}

/// Where the supervisor says service `name`'s sandbox is.
fn target_of(socket: &Path, name: &str) -> Result<ExecTarget, Exit> {
    let mut client = Client::connect(socket).map_err(|e| Exit(exit::FAILURE, e.to_string()))?;
    let resp = client
        .request(&Request::Exec {
            name: name.to_string(),
        })
        .map_err(|e| Exit(exit::FAILURE, e.to_string()))?;
    resp.exec
        .ok_or_else(|| Exit(exit::FAILURE, format!("exec: {name}: no answer")))
}

/// The service's plan — its credentials and seccomp — from the stack file,
/// which must be the one the supervisor runs.
fn plan_of(name: &str, target: &ExecTarget) -> Result<Plan, Exit> {
    let images = ImageContext::new(
        target
            .image_store
            .clone()
            .unwrap_or_else(isola_images::store::default_root),
        supervisor::stack_name(&target.stack),
    );
    crate::rootless_net::read_plans_as_its_supervisor(&target.stack);
    let stack = supervisor::load_stack_with(&target.stack, &images)
        .map_err(|e| Exit(exit::FAILURE, format!("{}: {e}", target.stack.display())))?;
    stack
        .services
        .into_iter()
        .find(|d| d.name == name && d.fingerprint == target.fingerprint)
        .map(|d| d.plan)
        .ok_or_else(|| {
            Exit(
                exit::FAILURE,
                format!(
                    "exec: {name}: {} changed since isola up loaded it (reload it with SIGHUP, or undo the change)",
                    target.stack.display()
                ),
            )
        })
}

fn cstring(what: &str, s: &str) -> Result<CString, Exit> {
    CString::new(s).map_err(|_| usage(format!("{what}: {s:?}: contains a NUL byte")))
}

fn exec(
    socket: &Path,
    name: &str,
    user: Option<&str>,
    env: &[String],
    command: &[String],
) -> Result<u8, Exit> {
    let user = user.map(parse_user).transpose()?;
    let (args, env) = command_parts(env, command)?;
    let target = target_of(socket, name)?;
    let plan = plan_of(name, &target)?;
    let pidfd = join::pidfd_of(Pid::from_raw(target.pid))
        .map_err(|e| Exit(exit::FAILURE, format!("exec: {name}: {e}")))?;
    let plan = &plan;
    let opts = join::Options {
        args,
        env,
        user: user.map(|(u, g)| (u, g.unwrap_or(plan.gid))),
        cwd: None,
        stdio: None,
        kill_group: false,
        detached: false,
        console: None,
    };
    let target = Target {
        init: pidfd.as_fd(),
        cgroup: target.cgroup.as_deref(),
        plan,
    };
    // Ctrl-C and Ctrl-\ reach the command from the terminal; we stay to
    // pass its status on.
    let mut quiet = SigSet::empty();
    quiet.add(Signal::SIGINT);
    quiet.add(Signal::SIGQUIT);
    let _ = nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&quiet), None);
    let joined = join::spawn(&target, &opts).map_err(|e| {
        let group = target.cgroup.map(|c| c.display().to_string());
        let cloning = e.to_string().contains("clone3");
        match (e.errno(), group) {
            // Moving a process into a group takes write access to the
            // common ancestor's cgroup.procs: a user's shell outside the
            // subtree delegated to them has none.
            (Some(nix::errno::Errno::EACCES), Some(g))
                if cloning && isola_runtime::plan::rootless::unprivileged() =>
            {
                Exit(
                    exit::FAILURE,
                    format!("exec: {name}: cannot join its cgroup {g} from outside the subtree delegated to you: run isola exec in a shell of that subtree (where isola up runs)"),
                )
            }
            _ => Exit(exit::FAILURE, format!("exec: {name}: {e}")),
        }
    })?;
    let code = joined.wait();
    Ok(u8::try_from(code & 0xff).unwrap_or(exit::FAILURE))
}
