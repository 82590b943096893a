//! The `isola` command line.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use isola_runtime::{cgroup, init, sandbox, spec, starter, Plan, SpecError};
use nix::sys::signal::{SigSet, SigmaskHow};
use nix::sys::signalfd::{SfdFlags, SignalFd};

#[derive(Parser)]
#[command(
    name = "isola",
    version,
    about = "Run services isolated and capped on one Linux host"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one service in a sandbox, attached; exit with its status.
    Run {
        /// Sandbox name (cgroup directory, messages) [default: spec file stem + pid].
        #[arg(long)]
        name: Option<String>,
        /// Parent cgroup of the sandbox's group.
        #[arg(long, default_value = cgroup::DEFAULT_ROOT)]
        cgroup_root: PathBuf,
        /// Skip the cgroup (only for specs without linux.resources).
        #[arg(long)]
        no_cgroup: bool,
        /// The service spec (JSON), or - for standard input.
        spec: String,
    },
    /// Validate a spec: exit 0 when isola would run it, 2 with the reason when not.
    Check {
        /// The service spec (JSON), or - for standard input.
        spec: String,
    },
    /// Print a starter spec (Docker's default capabilities and seccomp allow list).
    Spec,
}

/// A failure with the exit code it maps to.
struct Exit(u8, String);

fn main() -> ExitCode {
    let cli = Cli::parse();
    let res = match cli.command {
        Command::Run {
            name,
            cgroup_root,
            no_cgroup,
            spec,
        } => run(&spec, name, cgroup_root, no_cgroup),
        Command::Check { spec } => check(&spec),
        Command::Spec => print_starter().map_err(|e| Exit(1, format!("{e:#}"))),
    };
    match res {
        Ok(code) => ExitCode::from(code),
        Err(Exit(code, msg)) => {
            eprintln!("isola: {msg}");
            ExitCode::from(code)
        }
    }
}

fn usage(e: SpecError) -> Exit {
    Exit(2, e.to_string())
}

/// Read and validate: nothing is created before this succeeds.
fn load(path: &str) -> Result<Plan, Exit> {
    let (text, base) = if path == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .map_err(|e| Exit(2, format!("-: cannot read standard input: {e}")))?;
        (
            s,
            std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/")),
        )
    } else {
        let text = std::fs::read_to_string(path).map_err(|e| Exit(2, format!("{path}: {e}")))?;
        let base = Path::new(path)
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let base = if base.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            base
        };
        (text, std::fs::canonicalize(&base).unwrap_or(base))
    };
    let svc = spec::parse_str(&text, &base).map_err(|e| Exit(2, format!("{path}: {e}")))?;
    // `run` ignores supervision, but a typo there is still a typo.
    isola_supervisor::policy::parse(&svc.supervision, "")
        .map_err(|e| Exit(2, format!("{path}: {e}")))?;
    Plan::from_spec(&svc).map_err(|e| match e.field.as_str() {
        "process.args[0]" => Exit(127, format!("{path}: {e}")),
        _ => Exit(2, format!("{path}: {e}")),
    })
}

fn check(path: &str) -> Result<u8, Exit> {
    load(path)?;
    println!("{path}: ok");
    Ok(0)
}

fn default_name(path: &str) -> String {
    let stem = Path::new(path)
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .filter(|s| path != "-" && !s.is_empty())
        .unwrap_or_else(|| "run".to_string());
    let clean: String = stem
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .take(48)
        .collect();
    format!("{clean}-{}", std::process::id())
}

fn run(
    path: &str,
    name: Option<String>,
    cgroup_root: PathBuf,
    no_cgroup: bool,
) -> Result<u8, Exit> {
    let plan = load(path)?;
    let name = name.unwrap_or_else(|| default_name(path));
    cgroup::check_name(&name).map_err(usage)?;
    if !no_cgroup {
        cgroup::check_root(&cgroup_root).map_err(|e| Exit(2, e.to_string()))?;
    }
    // Block the forwarded signals (and SIGCHLD) before the init is cloned:
    // it inherits the mask and takes them with sigwait; we read ours from a
    // signalfd and pass them on.
    let mask = init::signal_set();
    nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&mask), None)
        .map_err(|e| Exit(125, format!("sigprocmask: {e}")))?;
    let mut fwd = SigSet::empty();
    for s in init::FORWARDED {
        fwd.add(*s);
    }
    let mut sfd = SignalFd::with_flags(&fwd, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
        .map_err(|e| Exit(125, format!("signalfd: {e}")))?;

    let opts = sandbox::Options {
        name: name.clone(),
        cgroup_root,
        no_cgroup,
        stdio: None,
    };
    let mut sb = sandbox::start(&plan, &opts)
        .map_err(|e| Exit(e.exit_code() as u8, format!("{name}: {e}")))?;
    let waited = sb.wait(Some(&mut sfd));
    let outcome = sb.finish().map_err(|e| Exit(125, format!("{name}: {e}")))?;
    waited.map_err(|e| Exit(125, format!("{name}: {e}")))?;
    if outcome.oom_kills > 0 {
        eprintln!(
            "isola: {name}: killed by the OOM killer (memory.max={})",
            outcome.memory_max.as_deref().unwrap_or("max")
        );
        return Ok(137);
    }
    Ok(u8::try_from(outcome.status.code()).unwrap_or(125))
}

fn print_starter() -> Result<u8> {
    let text =
        serde_json::to_string_pretty(&starter::starter_spec()).context("serialise starter spec")?;
    println!("{text}");
    Ok(0)
}
