//! OCI hooks that run in the runtime's namespaces: `prestart` and
//! `createRuntime` (after `create` set the container up, before it
//! returns), `poststart` (after `start`), `poststop` (at `delete`). Each
//! gets the container's state on stdin, its `args` and `env`, and is
//! killed past its `timeout`. `createContainer` and `startContainer` must
//! run inside the container's mount namespace with a binary of the host's:
//! isola refuses them at `create`, clearly (see docs/oci.md).

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use oci_spec::runtime::{Hook, Hooks};

use super::Failed;

/// How often a running hook is checked against its timeout.
const POLL: Duration = Duration::from_millis(5);

#[derive(Debug, Clone, Copy)]
pub(crate) enum Stage {
    Prestart,
    CreateRuntime,
    Poststart,
    Poststop,
}

impl Stage {
    fn name(self) -> &'static str {
        match self {
            Stage::Prestart => "prestart",
            Stage::CreateRuntime => "createRuntime",
            Stage::Poststart => "poststart",
            Stage::Poststop => "poststop",
        }
    }

    fn of(self, h: &Hooks) -> Vec<Hook> {
        #[allow(deprecated)]
        let list = match self {
            Stage::Prestart => h.prestart(),
            Stage::CreateRuntime => h.create_runtime(),
            Stage::Poststart => h.poststart(),
            Stage::Poststop => h.poststop(),
        };
        list.clone().unwrap_or_default()
    }
}

/// The hooks of config.json, refused when isola cannot run them.
pub(crate) fn check(h: Option<&Hooks>) -> Result<(), Failed> {
    let Some(h) = h else { return Ok(()) };
    for (field, list) in [
        ("hooks.createContainer", h.create_container()),
        ("hooks.startContainer", h.start_container()),
    ] {
        if list.as_ref().is_some_and(|l| !l.is_empty()) {
            return Err(Failed::usage(format!(
                "{field}: not supported (hooks in the container's namespaces; prestart, createRuntime, poststart and poststop are)"
            )));
        }
    }
    Ok(())
}

/// Run one stage's hooks in order; the first failure is the error.
pub(crate) fn run(
    hooks: Option<&Hooks>,
    stage: Stage,
    state: &serde_json::Value,
) -> Result<(), Failed> {
    let Some(h) = hooks else { return Ok(()) };
    for (i, hook) in stage.of(h).iter().enumerate() {
        run_one(hook, state).map_err(|e| {
            Failed::failure(format!(
                "hooks.{}[{i}] {}: {e}",
                stage.name(),
                hook.path().display()
            ))
        })?;
    }
    Ok(())
}

fn run_one(hook: &Hook, state: &serde_json::Value) -> Result<(), String> {
    let args = hook.args().clone().unwrap_or_default();
    let mut cmd = Command::new(hook.path());
    if let Some(arg0) = args.first() {
        use std::os::unix::process::CommandExt;
        cmd.arg0(arg0);
        cmd.args(&args[1..]);
    }
    cmd.env_clear();
    for e in hook.env().iter().flatten() {
        if let Some((k, v)) = e.split_once('=') {
            cmd.env(k, v);
        }
    }
    cmd.stdin(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| e.to_string())?;
    if let Some(mut stdin) = child.stdin.take() {
        // A hook that does not read its stdin is no failure.
        let _ = stdin.write_all(state.to_string().as_bytes());
    }
    let Some(deadline) = hook
        .timeout()
        .and_then(|t| u64::try_from(t).ok())
        .filter(|t| *t > 0)
        .map(|t| Instant::now() + Duration::from_secs(t))
    else {
        let st = child.wait().map_err(|e| e.to_string())?;
        return if st.success() {
            Ok(())
        } else {
            Err(format!("failed ({st})"))
        };
    };
    loop {
        match child.try_wait().map_err(|e| e.to_string())? {
            Some(st) if st.success() => return Ok(()),
            Some(st) => return Err(format!("failed ({st})")),
            None => {}
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err("timed out".into());
        }
        std::thread::sleep(POLL);
    }
}
