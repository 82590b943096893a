//! `isola run --net pasta`: a sandbox of its own network namespace with
//! outbound access through pasta (Debian passt), as podman's
//! `--network pasta`: pasta attaches to the namespace by the init's pid
//! while the init waits (it holds before going on once its namespaces
//! exist), gives it an interface with the host's addresses and routes, and
//! forwards its traffic with the user's own sockets — so it works for an
//! unprivileged user, and the host's loopback is reached at the gateway's
//! address. Nothing is forwarded into the sandbox (`-t none -u none`): its
//! listeners stay its own. pasta runs in the foreground as our child, ends
//! with the sandbox, and with us if we are killed (PDEATHSIG).

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use isola_runtime::exit;
use isola_runtime::sandbox::{self, Progress, Sandbox};
use isola_runtime::Plan;

use crate::Exit;

/// How long pasta may take to set the namespace up.
const READY: Duration = Duration::from_secs(10);

/// The pasta process serving a sandbox: ended on drop.
pub(crate) struct Pasta {
    child: Option<Child>,
}

impl Drop for Pasta {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
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
    let mut pasta = Pasta { child: None };
    loop {
        match starting.progress().map_err(failed)? {
            Progress::Started(sb) => return Ok((sb, pasta)),
            Progress::NetworkHeld(s) => {
                // Dropping `s` on an error kills the sandbox.
                pasta.child = Some(attach(s.pid().as_raw(), name)?);
                s.go_on()
                    .map_err(|e| Exit(exit::SETUP, format!("{name}: sync: {e}")))?;
                starting = s;
            }
        }
    }
}

/// `pasta --foreground --config-net PID`, returned once it wrote its pid
/// file (its setup is done then).
fn attach(pid: i32, name: &str) -> Result<Child, Exit> {
    let fail = |m: String| Exit(exit::SETUP, format!("--net pasta: {m}"));
    let dir = isola_supervisor::user_dirs::runtime_dir();
    std::fs::create_dir_all(&dir).map_err(|e| fail(format!("{}: {e}", dir.display())))?;
    let pid_file = dir.join(format!("isola-pasta-{name}.pid"));
    let _ = std::fs::remove_file(&pid_file);
    // Its messages go to a file, not a pipe nobody reads while it runs.
    let err_path = dir.join(format!("isola-pasta-{name}.err"));
    let err = std::fs::File::create(&err_path)
        .map_err(|e| fail(format!("{}: {e}", err_path.display())))?;
    let _ = std::fs::remove_file(&err_path);
    let mut err_reader = err
        .try_clone()
        .map_err(|e| fail(format!("{}: {e}", err_path.display())))?;
    let mut cmd = Command::new("pasta");
    isola_runtime::as_helper(&mut cmd)
        .args(["--foreground", "--config-net", "--quiet"])
        .args([
            "-t", "none", "-u", "none", "-T", "none", "-U", "none", "--pid",
        ])
        .arg(&pid_file)
        .arg(pid.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(err);
    let mut child = cmd.spawn().map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Exit(
            exit::USAGE,
            "--net pasta: pasta not found (install Debian's passt)".into(),
        ),
        _ => fail(e.to_string()),
    })?;
    let t = Instant::now();
    loop {
        if std::fs::read_to_string(&pid_file).is_ok_and(|s| !s.trim().is_empty()) {
            let _ = std::fs::remove_file(&pid_file);
            return Ok(child);
        }
        if let Ok(Some(st)) = child.try_wait() {
            return Err(fail(format!("{} ({st})", said(&mut err_reader))));
        }
        if t.elapsed() > READY {
            let _ = child.kill();
            let _ = child.wait();
            return Err(fail(format!("not ready after {READY:?}")));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// What pasta said on stderr, without its syslog complaints.
fn said(err: &mut std::fs::File) -> String {
    use std::io::Seek;
    let mut text = String::new();
    let _ = err.rewind();
    let _ = err.read_to_string(&mut text);
    text.lines()
        .filter(|l| !l.starts_with("Failed to send") && !l.trim().is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}
