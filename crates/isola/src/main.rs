//! The `isola` command line. This file routes: each command's arguments
//! and code are in `cmd/`, the OCI runtime's command line in `oci/`.

#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// glibc malloc, except in a sandbox's init (see the runtime's allocator).
#[global_allocator]
static ALLOCATOR: isola_runtime::Allocator = isola_runtime::Allocator;

mod client;
mod cmd;
mod detach;
mod image;
mod kube;
mod oci;
mod outbound;
mod placement;
mod quick;
mod rootless_net;
mod schema;
mod top;
mod view;

#[derive(Parser)]
#[command(
    name = "isola",
    version,
    about = "Run services isolated and capped on one Linux host",
    after_help = oci::HELP
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// The doc comments of the variants are the commands' about texts.
#[derive(Subcommand)]
enum Command {
    /// Run one service in a sandbox, attached; exit with its status. With
    /// `-- CMD ARGS…` instead of a spec: the starter sandbox around a host
    /// command (host-root mode).
    Run(cmd::run::RunArgs),
    /// Validate a service spec or a stack file: exit 0 when isola would run it, 2 with the reason when not.
    Check(cmd::check::CheckArgs),
    /// Print a starter spec (Docker's default capabilities and seccomp allow list).
    Spec(cmd::spec::SpecArgs),
    /// Supervise a stack of services in the foreground until SIGTERM/SIGINT or `isola down`.
    Up(cmd::up::UpArgs),
    /// Show the services of the running supervisor.
    Status(cmd::status::StatusArgs),
    /// Print the running supervisor's metrics in the Prometheus text format.
    Metrics(cmd::status::MetricsArgs),
    /// The status table full-screen, refreshed every second (CPU % from
    /// deltas); q quits.
    Top(cmd::status::TopArgs),
    /// Stop a service (it stays down until started).
    Stop(cmd::service::ServiceArgs),
    /// Start a stopped, exited or failed service.
    Start(cmd::service::ServiceArgs),
    /// Restart a service.
    Restart(cmd::service::ServiceArgs),
    /// Run N replicas of a replicated service (added or removed live,
    /// until the next reload of the stack file).
    Scale(cmd::service::ScaleArgs),
    /// Print a service's log, or every service's interleaved by time.
    Logs(cmd::logs::LogsArgs),
    /// Print the supervisor's events (starts, exits, OOM kills, restarts)
    /// for every service as they happen, until the supervisor ends.
    Events(cmd::logs::EventsArgs),
    /// Stop every service (reverse dependency order) and end the supervisor.
    Down(cmd::up::DownArgs),
    /// Change a running service's limits live (its cgroup files, no
    /// restart); kept until the next reload of the stack file.
    Update(cmd::service::UpdateArgs),
    /// Print shell completions (bash, zsh, fish) to standard output.
    Completions(cmd::docs::CompletionsArgs),
    /// Write the man pages (isola.1, one per command, isola-oci.1) into DIR.
    Manpages(cmd::docs::ManpagesArgs),
    /// Print the JSON Schema of a service spec or of a stack file (copies
    /// in specs/schema/ for editors).
    Schema(cmd::spec::SchemaArgs),
    /// Run a command inside a running service's sandbox (its namespaces,
    /// cgroup, user, capabilities and seccomp), attached; exit with its status.
    Exec(cmd::exec::ExecArgs),
    /// Pull an image into the store (docker://, oci:, docker-archive:,
    /// oci-archive:) and print its digest.
    Pull(cmd::images::PullArgs),
    /// List the images in the store.
    Images(cmd::images::ImagesArgs),
    /// Remove an image from the store (refused while a sandbox uses it).
    Rmi(cmd::images::RmiArgs),
    /// Manage the image store (prune).
    Image(cmd::images::ImageArgs),
    /// Re-execute the running supervisor from a new isola binary in place:
    /// every service keeps running (same pid, sandbox, sockets, log).
    Upgrade(cmd::upgrade::UpgradeArgs),
    /// Show the running supervisor: pid, version, start, upgrades, stack.
    Info(cmd::upgrade::InfoArgs),
    /// Kubernetes objects for a stack file (`kube generate STACK`).
    Kube(cmd::kube::KubeArgs),
    /// An upgrade's new binary checks the state on stdin against `up ARGS…`
    /// (run by `isola up` before it re-executes itself).
    #[command(name = "handover-check", hide = true)]
    HandoverCheck {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<std::ffi::OsString>,
    },
}

/// A failure with the exit code it maps to.
#[derive(Debug)]
pub struct Exit(pub u8, pub String);

fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if oci::called_as_runtime(&args) || oci::wants(&args) {
        return oci::main(args);
    }
    if let Some(run) = run_args(&args) {
        return finish(cmd::run::run(run));
    }
    let cli = Cli::parse_from(args);
    let res = match cli.command {
        Command::Run(a) => cmd::run::run(a),
        Command::Check(a) => cmd::check::run(a),
        Command::Spec(a) => cmd::spec::spec(a),
        Command::Up(a) => cmd::up::up(a),
        Command::Status(a) => cmd::status::status(a),
        Command::Metrics(a) => cmd::status::metrics(a),
        Command::Top(a) => cmd::status::top(a),
        Command::Stop(a) => cmd::service::stop(a),
        Command::Start(a) => cmd::service::start(a),
        Command::Restart(a) => cmd::service::restart(a),
        Command::Scale(a) => cmd::service::scale(a),
        Command::Logs(a) => cmd::logs::logs(a),
        Command::Events(a) => cmd::logs::events(a),
        Command::Down(a) => cmd::up::down(a),
        Command::Update(a) => cmd::service::update(a),
        Command::Completions(a) => cmd::docs::completions(a, definition()),
        Command::Manpages(a) => cmd::docs::manpages(a, definition()),
        Command::Schema(a) => cmd::spec::schema(a),
        Command::Exec(a) => cmd::exec::run(a),
        Command::Pull(a) => cmd::images::pull(a),
        Command::Images(a) => cmd::images::images(a),
        Command::Rmi(a) => cmd::images::rmi(a),
        Command::Image(a) => cmd::images::image(a),
        Command::Upgrade(a) => cmd::upgrade::upgrade(a),
        Command::Info(a) => cmd::upgrade::info(a),
        Command::Kube(a) => cmd::kube::run(a),
        Command::HandoverCheck { args } => handover_check(args),
    };
    finish(res)
}

/// `isola handover-check up ARGS…`: the arguments are `isola up`'s.
fn handover_check(args: Vec<std::ffi::OsString>) -> Result<u8, Exit> {
    let argv = std::iter::once("isola".into()).chain(args);
    match Cli::try_parse_from(argv) {
        Ok(Cli {
            command: Command::Up(a),
        }) => cmd::up::handover_check(a),
        Ok(_) => Err(Exit(
            isola_runtime::exit::USAGE,
            "handover-check: not `up`".into(),
        )),
        Err(e) => Err(Exit(isola_runtime::exit::USAGE, e.to_string())),
    }
}

/// `isola run …` parsed by its own subcommand's definition alone: one-shot
/// sandboxes are started many times a second, and building every
/// command's definition costs more than the rest of the parse (~250 µs).
/// Help, version and every error go the long way, so they read the same.
fn run_args(args: &[std::ffi::OsString]) -> Option<cmd::run::RunArgs> {
    use clap::{Args, FromArgMatches};
    if args.get(1).is_none_or(|a| a != "run") {
        return None;
    }
    let def = cmd::run::RunArgs::augment_args(clap::Command::new("run").bin_name("isola run"));
    let matches = def.try_get_matches_from(&args[1..]).ok()?;
    cmd::run::RunArgs::from_arg_matches(&matches).ok()
}

/// The command line's definition (for completions and man pages).
fn definition() -> clap::Command {
    <Cli as clap::CommandFactory>::command()
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
