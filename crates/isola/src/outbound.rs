//! `isola run --net pasta`: a sandbox of its own network namespace with
//! outbound access through pasta (Debian passt), as podman's
//! `--network pasta`: pasta attaches to the namespace by the init's pid
//! while the init waits (it holds before going on once its namespaces
//! exist), gives it an interface with the host's addresses and routes, and
//! forwards its traffic with the user's own sockets — so it works for an
//! unprivileged user, and the host's loopback is reached at the gateway's
//! address. pasta goes on in the background; it is ended with the sandbox
//! (Debian 12's does not quit by itself once the namespace is gone).

use std::process::{Command, Stdio};

use isola_runtime::exit;
use isola_runtime::sandbox::{self, Progress, Sandbox};
use isola_runtime::Plan;

use crate::Exit;

/// The pasta process serving a sandbox: ended on drop.
pub(crate) struct Pasta {
    pid: Option<nix::unistd::Pid>,
}

impl Drop for Pasta {
    fn drop(&mut self) {
        if let Some(pid) = self.pid {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        }
    }
}

/// Start `plan`, attach pasta once its network namespace exists, and let
/// it go on.
pub(crate) fn start(
    plan: &Plan,
    opts: &sandbox::Options,
    name: &str,
) -> Result<(Sandbox, Pasta), Exit> {
    let failed = |e: isola_runtime::Error| {
        let code = u8::try_from(e.exit_code()).unwrap_or(exit::SETUP);
        Exit(code, format!("{name}: {e}"))
    };
    let mut starting = sandbox::spawn(plan, opts).map_err(failed)?;
    let mut pasta = Pasta { pid: None };
    loop {
        match starting.progress().map_err(failed)? {
            Progress::Started(sb) => return Ok((sb, pasta)),
            Progress::NetworkHeld(s) => {
                // Dropping `s` on an error kills the sandbox.
                pasta.pid = Some(attach(s.pid().as_raw(), name)?);
                s.go_on()
                    .map_err(|e| Exit(exit::SETUP, format!("{name}: sync: {e}")))?;
                starting = s;
            }
        }
    }
}

/// `pasta --config-net PID`: returns once the namespace is configured
/// (pasta then forks into the background), with pasta's pid.
fn attach(pid: i32, name: &str) -> Result<nix::unistd::Pid, Exit> {
    let dir = isola_supervisor::user_dirs::runtime_dir();
    std::fs::create_dir_all(&dir)
        .map_err(|e| Exit(exit::SETUP, format!("--net pasta: {}: {e}", dir.display())))?;
    let pid_file = dir.join(format!("isola-pasta-{name}.pid"));
    let mut cmd = Command::new("pasta");
    let out = isola_runtime::with_no_signals_blocked(&mut cmd)
        .args(["--config-net", "--quiet", "--pid"])
        .arg(&pid_file)
        .arg(pid.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Exit(
                exit::USAGE,
                "--net pasta: pasta not found (install Debian's passt)".into(),
            ),
            _ => Exit(exit::SETUP, format!("--net pasta: {e}")),
        })?;
    let written = std::fs::read_to_string(&pid_file);
    let _ = std::fs::remove_file(&pid_file);
    if out.status.success() {
        return written
            .ok()
            .and_then(|t| t.trim().parse::<i32>().ok())
            .map(nix::unistd::Pid::from_raw)
            .ok_or_else(|| {
                Exit(
                    exit::SETUP,
                    format!("--net pasta: no pid in {}", pid_file.display()),
                )
            });
    }
    // pasta also tells syslog, and says so where there is none.
    let said: Vec<String> = String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| !l.starts_with("Failed to send") && !l.trim().is_empty())
        .map(str::to_string)
        .collect();
    Err(Exit(
        exit::SETUP,
        format!("--net pasta: {} ({})", said.join("; "), out.status),
    ))
}
