//! OCI hooks that run inside the container's namespaces, run by the init:
//! `createContainer` after the mounts and before pivot_root (so the path
//! resolves in the runtime's filesystem, the hook sees the container's
//! namespaces), `startContainer` after `start` opened the gate and before
//! the payload (the path resolves in the container). Each gets the
//! container's state on stdin (sent by `isola create` once it knows the
//! init's host pid) and is killed past its timeout. (`prestart`,
//! `createRuntime`, `poststart` and `poststop` run in the runtime's
//! namespaces, by the CLI.)

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use oci_spec::runtime::Hook;

/// How often a running hook is checked against its timeout.
const POLL: Duration = Duration::from_millis(5);

/// One hook, as the spec gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookRun {
    pub path: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub timeout: Option<Duration>,
}

impl HookRun {
    pub fn from_oci(h: &Hook) -> HookRun {
        HookRun {
            path: h.path().clone(),
            args: h.args().clone().unwrap_or_default(),
            env: h.env().clone().unwrap_or_default(),
            timeout: h
                .timeout()
                .and_then(|t| u64::try_from(t).ok())
                .filter(|t| *t > 0)
                .map(Duration::from_secs),
        }
    }
}

/// The hooks the init runs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct InContainer {
    pub(crate) create_container: Vec<HookRun>,
    pub(crate) start_container: Vec<HookRun>,
}

impl InContainer {
    pub(crate) fn is_empty(&self) -> bool {
        self.create_container.is_empty() && self.start_container.is_empty()
    }
}

/// Run `hooks` in order with `state` on stdin; the first failure is the
/// error (`stage` names the field).
pub(crate) fn run(
    stage: &'static str,
    hooks: &[HookRun],
    state: &str,
) -> Result<(), (&'static str, String)> {
    for (i, h) in hooks.iter().enumerate() {
        run_one(h, state).map_err(|e| (stage, format!("[{i}] {}: {e}", h.path.display())))?;
    }
    Ok(())
}

/// Run one hook with `state` on stdin.
pub fn run_one(h: &HookRun, state: &str) -> Result<(), String> {
    let mut cmd = Command::new(&h.path);
    if let Some(arg0) = h.args.first() {
        use std::os::unix::process::CommandExt;
        cmd.arg0(arg0);
        cmd.args(&h.args[1..]);
    }
    cmd.env_clear();
    for e in &h.env {
        if let Some((k, v)) = e.split_once('=') {
            cmd.env(k, v);
        }
    }
    cmd.stdin(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| e.to_string())?;
    if let Some(mut stdin) = child.stdin.take() {
        // A hook that does not read its stdin is no failure.
        let _ = stdin.write_all(state.as_bytes());
    }
    let deadline = h.timeout.map(|t| Instant::now() + t);
    loop {
        match child.try_wait().map_err(|e| e.to_string())? {
            Some(st) if st.success() => return Ok(()),
            Some(st) => return Err(format!("failed ({st})")),
            None => {}
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            let _ = child.kill();
            let _ = child.wait();
            return Err("timed out".into());
        }
        std::thread::sleep(POLL);
    }
}
