//! What several commands share: the control socket flag, and a spec file
//! read, validated and planned.

use std::io::Read;
use std::path::{Path, PathBuf};

use isola_runtime::{exit, spec, Plan};
use isola_supervisor::control;

use crate::Exit;

#[derive(clap::Args)]
pub(crate) struct SocketArg {
    /// Control socket [default: $ISOLA_SOCKET or /run/isola/isola.sock; for a
    /// user, $XDG_RUNTIME_DIR/isola/isola.sock].
    #[arg(long)]
    socket: Option<PathBuf>,
}

impl SocketArg {
    pub(crate) fn path(self) -> PathBuf {
        control::socket_path(self.socket)
    }
}

/// Validate a spec's text (read from `path`): nothing is created before
/// this succeeds.
pub(crate) fn load_text(text: &str, base: &Path, path: &str) -> Result<Plan, Exit> {
    let svc = spec::parse_str(text, base).map_err(|e| Exit(exit::USAGE, format!("{path}: {e}")))?;
    plan_of(&svc, path)
}

/// A spec file's text (`-`: standard input) and the directory its
/// relative paths start from.
pub(crate) fn read_spec(path: &str) -> Result<(String, PathBuf), Exit> {
    if path == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .map_err(|e| Exit(exit::USAGE, format!("-: cannot read standard input: {e}")))?;
        let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
        return Ok((s, cwd));
    }
    let text =
        std::fs::read_to_string(path).map_err(|e| Exit(exit::USAGE, format!("{path}: {e}")))?;
    Ok((text, spec::base_dir(Path::new(path))))
}

/// The plan of a parsed spec (`what` names it in messages); its warnings
/// on stderr.
pub(crate) fn plan_of(svc: &spec::ServiceSpec, what: &str) -> Result<Plan, Exit> {
    let bad = |e: &dyn std::fmt::Display| Exit(exit::USAGE, format!("{what}: {e}"));
    // `run` ignores supervision, but a typo there is still a typo.
    isola_supervisor::policy::parse(&svc.supervision, "").map_err(|e| bad(&e))?;
    let plan = Plan::from_spec(svc).map_err(|e| match e.field.as_str() {
        "process.args[0]" => Exit(exit::NOT_FOUND, format!("{what}: {e}")),
        _ => bad(&e),
    })?;
    for w in &plan.warnings {
        eprintln!("isola: warning: {what}: {w}");
    }
    Ok(plan)
}
