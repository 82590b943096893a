//! The OCI runtime command line: runc's contract, as conmon (podman, CRI-O)
//! and containerd-shim-runc-v2 drive it. `isola create` sets a container up
//! and leaves its init waiting; `start` lets the payload run; `state`,
//! `kill`, `delete`, `exec`, `list`, `ps`, `pause`, `resume`, `update` and
//! `features` do what runc's do. See docs/oci.md.
//!
//! Called as `isola-runtime` (the name clients should be given) argv is
//! always this command line. Called as `isola`, the commands share a name
//! space with the supervisor's (`start`, `exec`): [`wants`] sends argv
//! here when it has a global OCI flag, an OCI-only command, OCI-only `exec`
//! flags, or names a container of the state root.

use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use isola_runtime::exit;

mod create;
mod exec;
mod hooks;
mod ops;
mod state;

/// The state root when `--root` is not given: `isola-oci` in our runtime
/// directory — `/run/isola-oci` for root, the user's otherwise (podman
/// rootless calls us as root of its user namespace, with its
/// `XDG_RUNTIME_DIR`).
fn default_root() -> PathBuf {
    isola_supervisor::user_dirs::runtime_dir().join("isola-oci")
}

#[derive(Parser)]
#[command(
    name = "isola",
    version,
    about = "OCI runtime commands (runc's command line; see docs/oci.md)"
)]
struct OciCli {
    /// Directory of the containers' state [default: /run/isola-oci; for a
    /// user, $XDG_RUNTIME_DIR/isola-oci].
    #[arg(long)]
    root: Option<PathBuf>,
    /// Also write errors to this file.
    #[arg(long)]
    log: Option<PathBuf>,
    /// Format of --log: text or json.
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
    /// cgroupsPath is slice:prefix:name (mapped to a path: no systemd).
    #[arg(long)]
    systemd_cgroup: bool,
    /// Accepted (runc's).
    #[arg(long)]
    debug: bool,
    /// Accepted (runc's); isola runs containers as the caller.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    rootless: Option<String>,
    #[command(subcommand)]
    command: OciCommand,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum OciCommand {
    /// Create a container: set up, the payload not started yet.
    Create {
        /// The bundle directory (config.json, rootfs).
        #[arg(short, long, default_value = ".")]
        bundle: PathBuf,
        /// Write the init's pid here.
        #[arg(long)]
        pid_file: Option<PathBuf>,
        /// Send the pty master here (process.terminal).
        #[arg(long)]
        console_socket: Option<PathBuf>,
        /// Accepted (runc's).
        #[arg(long)]
        no_pivot: bool,
        /// Accepted (runc's).
        #[arg(long)]
        no_new_keyring: bool,
        /// Pass fds 3 … 3+N-1 on to the payload.
        #[arg(long, default_value_t = 0)]
        preserve_fds: u32,
        id: String,
    },
    /// Start a created container's payload.
    Start { id: String },
    /// Print a container's state (JSON).
    State { id: String },
    /// Send a signal to a container's init (by default SIGTERM).
    Kill {
        /// Every process of the container's cgroup.
        #[arg(short, long)]
        all: bool,
        id: String,
        /// A number, TERM or SIGTERM.
        #[arg(default_value = "SIGTERM")]
        signal: String,
    },
    /// Remove a stopped container's state and cgroup.
    Delete {
        /// Kill a container that still runs; no error for an unknown id.
        #[arg(short, long)]
        force: bool,
        id: String,
    },
    /// Run a process in a running container.
    Exec(exec::ExecArgs),
    /// List the containers.
    List {
        #[arg(short, long, value_enum, default_value = "table")]
        format: Format,
        /// Only the ids.
        #[arg(short, long)]
        quiet: bool,
    },
    /// The processes of a container.
    Ps {
        #[arg(short, long, value_enum, default_value = "table")]
        format: Format,
        id: String,
        /// Arguments for ps(1) (table format) [default: -ef].
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        ps_args: Vec<String>,
    },
    /// Freeze every process of a container (cgroup.freeze).
    Pause { id: String },
    /// Thaw a paused container.
    Resume { id: String },
    /// Change a running container's limits.
    Update {
        /// linux.resources JSON, a file or - for standard input.
        #[arg(short, long)]
        resources: String,
        id: String,
    },
    /// What this runtime supports (JSON, as runc's).
    Features,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    Table,
    Json,
}

/// `isola --help`'s section on this command line: the main parser never
/// sees these commands ([`wants`] takes their argv first), so they are
/// listed here; a test holds the list to `OciCommand`.
pub(crate) const HELP: &str = "\
OCI runtime (runc's command line, as podman, CRI-O and containerd drive it):
  create, start, state, kill, delete, exec, list, ps, pause, resume, update, features
  Always when called as isola-runtime (give clients that name: make install links
  it). As isola: chosen by a runc global flag before the command (--root, …), a
  command only runc has, runc's exec or update flags, or start/exec naming an
  existing container. Their help: isola-runtime --help; man isola-oci; docs/oci.md.";

/// Global flags runc takes before the command, with a value or without.
const FLAGS_WITH_VALUE: &[&str] = &["--root", "--log", "--log-format", "--criu"];
const FLAGS_ALONE: &[&str] = &["--systemd-cgroup", "--debug", "--rootless"];
/// Commands only the OCI command line has.
const OCI_ONLY: &[&str] = &[
    "create", "state", "kill", "delete", "list", "ps", "pause", "resume", "features",
];
/// `exec` flags only runc's exec has (the supervisor's: --socket, --user, --env).
const OCI_EXEC_FLAGS: &[&str] = &[
    "--process",
    "-p",
    "--detach",
    "-d",
    "--pid-file",
    "--tty",
    "-t",
    "--console-socket",
    "--cwd",
    "--cap",
    "--no-new-privs",
    "--preserve-fds",
    "--process-label",
    "--apparmor",
    "--ignore-paused",
    "--cgroup",
];

/// The name that always means the OCI command line (`make install` links
/// it to isola): `isola-runtime start ID` of an unknown id is an OCI error,
/// never the supervisor's `start`.
pub(crate) const RUNTIME_NAME: &str = "isola-runtime";

/// Whether isola was called by [`RUNTIME_NAME`] (argv[0]'s file name).
pub(crate) fn called_as_runtime(args: &[OsString]) -> bool {
    args.first()
        .and_then(|a| Path::new(a).file_name())
        .is_some_and(|n| n == RUNTIME_NAME)
}

/// Whether argv is an OCI command when called as `isola` (the module doc).
pub(crate) fn wants(args: &[OsString]) -> bool {
    let args: Vec<String> = args
        .iter()
        .skip(1)
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let mut i = 0;
    while i < args.len() {
        let a = args[i].as_str();
        let name = a.split('=').next().unwrap_or(a);
        if FLAGS_WITH_VALUE.contains(&name) || FLAGS_ALONE.contains(&name) {
            return true;
        }
        if a.starts_with('-') {
            i += 1;
            continue;
        }
        let rest = &args[i + 1..];
        return match a {
            c if OCI_ONLY.contains(&c) => true,
            "update" => rest
                .iter()
                .any(|r| r == "--resources" || r == "-r" || r.starts_with("--resources=")),
            "exec" => {
                rest.iter()
                    .any(|r| OCI_EXEC_FLAGS.contains(&r.split('=').next().unwrap_or(r)))
                    || rest
                        .iter()
                        .find(|r| !r.starts_with('-'))
                        .is_some_and(|id| exists(&default_root(), id))
            }
            "start" => rest.first().is_some_and(|id| exists(&default_root(), id)),
            _ => false,
        };
    }
    false
}

/// The OCI command line's definition (for its man page).
pub(crate) fn command() -> clap::Command {
    <OciCli as clap::CommandFactory>::command()
}

fn exists(root: &Path, id: &str) -> bool {
    state::valid_id(id).is_ok() && root.join(id).join(state::STATE_FILE).is_file()
}

/// A failure: its exit code and one line.
#[derive(Debug)]
pub(crate) struct Failed(pub u8, pub String);

impl Failed {
    pub(crate) fn usage(msg: impl Into<String>) -> Failed {
        Failed(exit::USAGE, msg.into())
    }
    pub(crate) fn failure(msg: impl Into<String>) -> Failed {
        Failed(exit::FAILURE, msg.into())
    }
}

pub(crate) struct Globals {
    pub(crate) root: PathBuf,
    pub(crate) systemd_cgroup: bool,
    log: Option<PathBuf>,
    log_format: LogFormat,
}

impl Globals {
    /// A warning: to `--log` when given (the container's stdio is ours
    /// under conmon: a line on stderr would land in its log), else stderr.
    pub(crate) fn warn(&self, msg: &str) {
        match &self.log {
            Some(p) => log_line(p, self.log_format, "warning", msg),
            None => eprintln!("isola: warning: {msg}"),
        }
    }
}

pub(crate) fn main(args: Vec<OsString>) -> ExitCode {
    let cli = match OciCli::try_parse_from(&args) {
        Ok(c) => c,
        Err(e) => {
            // Help and version are no errors; clap prints them.
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() {
                exit::USAGE
            } else {
                exit::OK
            });
        }
    };
    let g = Globals {
        root: cli.root.unwrap_or_else(default_root),
        systemd_cgroup: cli.systemd_cgroup,
        log: cli.log,
        log_format: cli.log_format,
    };
    let _ = (cli.debug, cli.rootless);
    let res = match cli.command {
        OciCommand::Create {
            bundle,
            pid_file,
            console_socket,
            no_pivot: _,
            no_new_keyring: _,
            preserve_fds,
            id,
        } => create::create(
            &g,
            &create::CreateArgs {
                bundle,
                pid_file,
                console_socket,
                preserve_fds,
                id,
            },
        ),
        OciCommand::Start { id } => create::start(&g, &id),
        OciCommand::State { id } => ops::state(&g, &id),
        OciCommand::Kill { all, id, signal } => ops::kill(&g, &id, &signal, all),
        OciCommand::Delete { force, id } => ops::delete(&g, &id, force),
        OciCommand::Exec(a) => exec::exec(&g, a),
        OciCommand::List { format, quiet } => ops::list(&g, format == Format::Json, quiet),
        OciCommand::Ps {
            format,
            id,
            ps_args,
        } => ops::ps(&g, &id, format == Format::Json, &ps_args),
        OciCommand::Pause { id } => ops::freeze(&g, &id, true),
        OciCommand::Resume { id } => ops::freeze(&g, &id, false),
        OciCommand::Update { resources, id } => ops::update(&g, &id, &resources),
        OciCommand::Features => ops::features(),
    };
    match res {
        Ok(code) => ExitCode::from(code),
        Err(Failed(code, msg)) => {
            let msg = isola_runtime::error::one_line(&msg);
            eprintln!("isola: {msg}");
            if let Some(path) = &g.log {
                log_line(path, g.log_format, "error", &msg);
            }
            ExitCode::from(code)
        }
    }
}

/// Append the error to `--log` (containerd's shim and podman read the last
/// line of it when a command fails).
fn log_line(path: &Path, format: LogFormat, level: &str, msg: &str) {
    let time = isola_supervisor::logs::timestamp(std::time::SystemTime::now());
    let line = match format {
        LogFormat::Json => {
            serde_json::json!({"level": level, "msg": msg, "time": time}).to_string()
        }
        LogFormat::Text => format!("time=\"{time}\" level={level} msg={msg:?}"),
    };
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path);
    if let Ok(mut f) = file {
        let _ = writeln!(f, "{line}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(s: &str) -> Vec<OsString> {
        std::iter::once("isola")
            .chain(s.split_whitespace())
            .map(OsString::from)
            .collect()
    }

    #[test]
    fn the_runtime_name_always_means_oci() {
        for argv0 in ["isola-runtime", "/usr/local/bin/isola-runtime"] {
            assert!(called_as_runtime(&[OsString::from(argv0)]), "{argv0}");
        }
        for argv0 in ["isola", "/usr/bin/isola", "isola-runtime-x"] {
            assert!(!called_as_runtime(&[OsString::from(argv0)]), "{argv0}");
        }
    }

    #[test]
    fn oci_argv_is_told_from_the_supervisor_commands() {
        for oci in [
            "--root /run/x start abc",
            "--root=/run/x exec abc true",
            "--log /l --log-format=json create --bundle b --pid-file p abc",
            "create --bundle b abc",
            "state abc",
            "kill abc KILL",
            "delete --force abc",
            "features",
            "exec --pid-file p --process f -d abc",
            "update --resources - abc",
            "--systemd-cgroup list",
        ] {
            assert!(wants(&argv(oci)), "{oci}");
        }
        for ours in [
            "run spec.json",
            "start web",
            "exec web -- ls",
            "exec --user 1000 web -- id",
            "up stack.json",
            "status --json",
            "--help",
            "--version",
        ] {
            assert!(!wants(&argv(ours)), "{ours}");
        }
    }

    #[test]
    fn the_main_help_names_every_oci_command() {
        let listed = HELP.lines().nth(1).unwrap_or_default();
        let listed: Vec<&str> = listed.split(',').map(str::trim).collect();
        let cmd = command();
        let names: Vec<&str> = cmd
            .get_subcommands()
            .map(clap::Command::get_name)
            .filter(|n| *n != "help")
            .collect();
        assert_eq!(listed, names, "oci::HELP's list");
    }
}
