//! The `isola` command line.

#![forbid(unsafe_code)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use isola_runtime::{cgroup, exit, init, sandbox, spec, starter, Plan, SpecError};
use isola_supervisor::control::{self, Request};
use isola_supervisor::logs::LogConfig;
use isola_supervisor::supervisor;
use nix::sys::signal::{SigSet, SigmaskHow};
use nix::sys::signalfd::{SfdFlags, SignalFd};

/// glibc malloc, except in a sandbox's init (see the runtime's allocator).
#[global_allocator]
static ALLOCATOR: isola_runtime::Allocator = isola_runtime::Allocator;

mod client;
mod detach;
mod exec;
mod oci;
mod quick;
mod schema;
mod top;
mod view;

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
    /// Run one service in a sandbox, attached; exit with its status. With
    /// `-- CMD ARGS…` instead of a spec: the starter sandbox around a host
    /// command (host-root mode).
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
        #[command(flatten)]
        limits: quick::LimitFlags,
        #[command(flatten)]
        quick: quick::QuickFlags,
        /// The service spec (JSON), or - for standard input.
        spec: Option<String>,
        /// A host command to run in the starter sandbox (after --).
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// Validate a service spec or a stack file: exit 0 when isola would run it, 2 with the reason when not.
    Check {
        /// The service spec (JSON), or - for standard input.
        spec: String,
    },
    /// Print a starter spec (Docker's default capabilities and seccomp allow list).
    Spec,
    /// Supervise a stack of services in the foreground until SIGTERM/SIGINT or `isola down`.
    Up {
        #[command(flatten)]
        socket: SocketArg,
        /// Directory of the per-service log files [default: /var/log/isola/<stack>].
        #[arg(long)]
        log_dir: Option<PathBuf>,
        /// Rotate a service's log when it would exceed this many bytes.
        #[arg(long, default_value_t = 10 << 20)]
        log_max_bytes: u64,
        /// Log files kept per service, the live one included.
        #[arg(long, default_value_t = 5)]
        log_files: u32,
        /// Parent cgroup: services run in <cgroup-root>/<stack>/<service>.
        #[arg(long, default_value = cgroup::DEFAULT_ROOT)]
        cgroup_root: PathBuf,
        /// Run without cgroups (no service may set linux.resources).
        #[arg(long)]
        no_cgroup: bool,
        /// Do not echo service output to standard output (log files only).
        #[arg(long)]
        quiet: bool,
        /// Run in the background (output in <log-dir>/isola-up.log); return
        /// once every service is up, or say which is not and exit 1.
        #[arg(short, long)]
        detach: bool,
        /// With --detach: how long to wait for the stack to come up.
        #[arg(long, default_value_t = 120)]
        wait_seconds: u64,
        /// The stack file: {"services": {"NAME": SPEC, ...}}.
        stack: PathBuf,
    },
    /// Show the services of the running supervisor.
    Status {
        #[command(flatten)]
        socket: SocketArg,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// The status table full-screen, refreshed every second (CPU % from
    /// deltas); q quits.
    Top {
        #[command(flatten)]
        socket: SocketArg,
    },
    /// Stop a service (it stays down until started).
    Stop {
        #[command(flatten)]
        socket: SocketArg,
        name: String,
    },
    /// Start a stopped, exited or failed service.
    Start {
        #[command(flatten)]
        socket: SocketArg,
        name: String,
    },
    /// Restart a service.
    Restart {
        #[command(flatten)]
        socket: SocketArg,
        name: String,
    },
    /// Run N replicas of a replicated service (added or removed live,
    /// until the next reload of the stack file).
    Scale {
        #[command(flatten)]
        socket: SocketArg,
        name: String,
        replicas: u32,
    },
    /// Print a service's log, or every service's interleaved by time.
    Logs {
        #[command(flatten)]
        socket: SocketArg,
        /// Keep printing new lines as they arrive.
        #[arg(short, long)]
        follow: bool,
        /// Lines of history to print first.
        #[arg(short = 'n', long, default_value_t = 100)]
        lines: usize,
        /// Only lines since then: 30s, 10m, 2h, 1d, or an RFC 3339 time.
        #[arg(long)]
        since: Option<String>,
        /// Show each line's time.
        #[arg(short, long)]
        timestamps: bool,
        /// The service [default: every service, as NAME | line].
        name: Option<String>,
    },
    /// Print the supervisor's events (starts, exits, OOM kills, restarts)
    /// for every service as they happen, until the supervisor ends.
    Events {
        #[command(flatten)]
        socket: SocketArg,
        /// One JSON object per line: {"time", "service", "event"}.
        #[arg(long)]
        json: bool,
    },
    /// Stop every service (reverse dependency order) and end the supervisor.
    Down {
        #[command(flatten)]
        socket: SocketArg,
    },
    /// Change a running service's limits live (its cgroup files, no
    /// restart); kept until the next reload of the stack file.
    Update {
        #[command(flatten)]
        socket: SocketArg,
        #[command(flatten)]
        limits: quick::LimitFlags,
        name: String,
    },
    /// Print shell completions (bash, zsh, fish) to standard output.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write the man pages (isola.1, one per command, isola-oci.1) into DIR.
    Manpages { dir: PathBuf },
    /// Print the JSON Schema of a service spec or of a stack file (copies
    /// in specs/schema/ for editors).
    Schema {
        #[arg(value_enum)]
        kind: schema::Kind,
    },
    /// Run a command inside a running service's sandbox (its namespaces,
    /// cgroup, user, capabilities and seccomp), attached; exit with its status.
    Exec {
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
    },
}

#[derive(clap::Args)]
struct SocketArg {
    /// Control socket [default: $ISOLA_SOCKET or /run/isola/isola.sock].
    #[arg(long)]
    socket: Option<PathBuf>,
}

impl SocketArg {
    fn path(self) -> PathBuf {
        control::socket_path(self.socket)
    }
}

/// A failure with the exit code it maps to.
pub struct Exit(pub u8, pub String);

fn up(cfg: supervisor::Config) -> Result<u8, Exit> {
    let path = cfg.stack_path.display().to_string();
    let sup = supervisor::Supervisor::new(cfg)
        .map_err(|e| Exit(e.exit_code(), format!("{path}: {e}")))?;
    sup.run()
        .map_err(|e| Exit(e.exit_code(), format!("{path}: {e}")))?;
    Ok(exit::OK)
}

fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if oci::wants(&args) {
        return oci::main(args);
    }
    let cli = Cli::parse_from(args);
    let res = match cli.command {
        Command::Run {
            name,
            cgroup_root,
            no_cgroup,
            limits,
            quick,
            spec,
            command,
        } => {
            let plan = match (&spec, command.is_empty()) {
                (Some(s), true) => quick::load(s, &limits, &quick),
                (None, false) => quick::command(&command, &limits, &quick, no_cgroup),
                (Some(_), false) => Err(Exit(
                    exit::USAGE,
                    "run: give a SPEC or -- CMD ARGS…, not both".into(),
                )),
                (None, true) => Err(Exit(
                    exit::USAGE,
                    "run: give a SPEC (a file or -) or -- CMD ARGS…".into(),
                )),
            };
            let label = spec
                .clone()
                .or_else(|| command.first().cloned())
                .unwrap_or_default();
            plan.and_then(|p| run(p, &label, name, cgroup_root, no_cgroup))
        }
        Command::Check { spec } => check(&spec),
        Command::Update {
            socket,
            limits,
            name,
        } => quick::resources(&limits).and_then(|r| client::update(&socket.path(), &name, r)),
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "isola", &mut std::io::stdout());
            Ok(exit::OK)
        }
        Command::Manpages { dir } => manpages(&dir),
        Command::Schema { kind } => Ok(schema::print(kind)),
        Command::Spec => print_starter(),
        Command::Up {
            socket,
            log_dir,
            log_max_bytes,
            log_files,
            cgroup_root,
            no_cgroup,
            quiet,
            detach,
            wait_seconds,
            stack,
        } => {
            let dir = log_dir.unwrap_or_else(|| {
                Path::new("/var/log/isola").join(supervisor::stack_name(&stack))
            });
            if detach {
                let wait = std::time::Duration::from_secs(wait_seconds);
                return finish(detach::up_detached(&dir, &socket.path(), wait));
            }
            if std::env::var_os(detach::DETACHED_ENV).is_some() {
                // The background supervisor of `up -d`: a session of its own.
                let _ = nix::unistd::setsid();
            }
            let cfg = supervisor::Config {
                stack_path: stack,
                socket: socket.path(),
                cgroup_root,
                no_cgroup,
                logs: LogConfig {
                    dir,
                    max_bytes: log_max_bytes,
                    files: log_files,
                },
                echo: !quiet,
            };
            up(cfg)
        }
        Command::Status { socket, json } => client::status(&socket.path(), json),
        Command::Top { socket } => top::top(&socket.path()),
        Command::Stop { socket, name } => client::lifecycle(&socket.path(), Request::Stop { name }),
        Command::Start { socket, name } => {
            client::lifecycle(&socket.path(), Request::Start { name })
        }
        Command::Restart { socket, name } => {
            client::lifecycle(&socket.path(), Request::Restart { name })
        }
        Command::Scale {
            socket,
            name,
            replicas,
        } => client::scale(&socket.path(), &name, replicas),
        Command::Logs {
            socket,
            follow,
            lines,
            since,
            timestamps,
            name,
        } => client::logs(
            &socket.path(),
            name.as_deref(),
            lines,
            follow,
            since.as_deref(),
            timestamps,
        ),
        Command::Events { socket, json } => client::events(&socket.path(), json),
        Command::Down { socket } => client::down(&socket.path()),
        Command::Exec {
            socket,
            user,
            env,
            name,
            command,
        } => exec::exec(&socket.path(), &name, user.as_deref(), &env, &command),
    };
    finish(res)
}

fn finish(res: Result<u8, Exit>) -> ExitCode {
    match res {
        Ok(code) => ExitCode::from(code),
        Err(Exit(code, msg)) => {
            eprintln!("isola: {msg}");
            ExitCode::from(code)
        }
    }
}

fn usage(e: SpecError) -> Exit {
    Exit(exit::USAGE, e.to_string())
}

/// Read and validate: nothing is created before this succeeds.
fn load(path: &str) -> Result<Plan, Exit> {
    let (text, base) = read_spec(path)?;
    let svc =
        spec::parse_str(&text, &base).map_err(|e| Exit(exit::USAGE, format!("{path}: {e}")))?;
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

/// `isola check` names at most this many services of a stack (10,000
/// names made one 70 KB line).
const CHECK_NAMES_SHOWN: usize = 20;

/// A service spec, or a stack file (an object with `services`).
fn check(path: &str) -> Result<u8, Exit> {
    let is_stack = path != "-"
        && std::fs::read_to_string(path)
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .is_some_and(|v| v.get("services").is_some());
    if is_stack {
        let stack = supervisor::load_stack(Path::new(path))
            .map_err(|e| Exit(exit::USAGE, format!("{path}: {e}")))?;
        let n = stack.services.len();
        let names: Vec<&str> = stack
            .services
            .iter()
            .take(CHECK_NAMES_SHOWN)
            .map(|d| d.name.as_str())
            .collect();
        let more = match n.checked_sub(CHECK_NAMES_SHOWN) {
            Some(rest) if rest > 0 => format!(" and {rest} more"),
            _ => String::new(),
        };
        println!(
            "{path}: ok (services in start order: {}{more})",
            names.join(", ")
        );
    } else {
        load(path)?;
        println!("{path}: ok");
    }
    Ok(exit::OK)
}

/// A sandbox name from the spec's file name (cgroup-safe) and our pid.
fn default_name(path: &str) -> String {
    let stem = Path::new(path)
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .filter(|s| path != "-" && !s.is_empty())
        .unwrap_or_else(|| "run".to_string());
    let clean: String = cgroup::sanitize_name(&stem)
        .chars()
        .take(NAME_STEM_MAX)
        .collect();
    format!("{clean}-{}", std::process::id())
}

/// Characters of the spec's stem kept in a default sandbox name (a cgroup
/// name may hold 64, and the pid follows).
const NAME_STEM_MAX: usize = 48;

/// `path`: the spec's (or the command's) name, for the default sandbox name.
fn run(
    plan: Plan,
    path: &str,
    name: Option<String>,
    cgroup_root: PathBuf,
    no_cgroup: bool,
) -> Result<u8, Exit> {
    let name = name.unwrap_or_else(|| default_name(path));
    cgroup::check_name(&name).map_err(usage)?;
    if !no_cgroup {
        cgroup::check_root(&cgroup_root).map_err(|e| Exit(exit::USAGE, e.to_string()))?;
    }
    // Block the forwarded signals (and SIGCHLD) before the init is cloned:
    // it inherits the mask and takes them with sigwait; we read ours from a
    // signalfd and pass them on.
    let mask = init::signal_set();
    nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&mask), None)
        .map_err(|e| Exit(exit::SETUP, format!("sigprocmask: {e}")))?;
    let mut fwd = SigSet::empty();
    for s in init::FORWARDED {
        fwd.add(*s);
    }
    let mut sfd = SignalFd::with_flags(&fwd, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
        .map_err(|e| Exit(exit::SETUP, format!("signalfd: {e}")))?;

    let opts = sandbox::Options {
        pass_fds: &[],
        listen: isola_runtime::listen::Listen::default(),
        detach: None,
        hook_state: None,
        name: &name,
        cgroup_root: &cgroup_root,
        no_cgroup,
        stdio: None,
        sibling: false,
    };
    let mut sb = sandbox::start(&plan, &opts).map_err(|e| {
        let code = u8::try_from(e.exit_code()).unwrap_or(exit::SETUP);
        Exit(code, format!("{name}: {e}"))
    })?;
    let waited = sb.wait(Some(&mut sfd));
    let outcome = sb
        .finish()
        .map_err(|e| Exit(exit::SETUP, format!("{name}: {e}")))?;
    waited.map_err(|e| Exit(exit::SETUP, format!("{name}: {e}")))?;
    if outcome.oom_kills > 0 {
        eprintln!(
            "isola: {name}: killed by the OOM killer (memory.max={})",
            outcome.memory_max.as_deref().unwrap_or("max")
        );
        return Ok(OOM_KILLED);
    }
    Ok(u8::try_from(outcome.status.code()).unwrap_or(exit::SETUP))
}

/// Man pages: the command, each subcommand, and the OCI command line.
fn manpages(dir: &Path) -> Result<u8, Exit> {
    let fail = |e: std::io::Error| Exit(exit::FAILURE, format!("{}: {e}", dir.display()));
    std::fs::create_dir_all(dir).map_err(fail)?;
    let cmd = <Cli as clap::CommandFactory>::command();
    clap_mangen::generate_to(cmd, dir).map_err(fail)?;
    clap_mangen::generate_to(oci::command().name("isola-oci"), dir).map_err(fail)?;
    Ok(exit::OK)
}

/// `isola run`'s status for a payload the OOM killer took: SIGKILL's.
const OOM_KILLED: u8 = 128 + 9;

fn print_starter() -> Result<u8, Exit> {
    let text = serde_json::to_string_pretty(&starter::starter_spec())
        .map_err(|e| Exit(exit::FAILURE, format!("serialise starter spec: {e}")))?;
    println!("{text}");
    Ok(exit::OK)
}
