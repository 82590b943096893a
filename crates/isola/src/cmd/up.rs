//! `isola up` and `isola down`: a stack's supervisor started, in the
//! foreground or (`-d`) the background, and ended.

use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::time::Duration;

use isola_runtime::{cgroup, exit};
use isola_supervisor::keeper;
use isola_supervisor::logs::LogConfig;
use isola_supervisor::metrics::MetricsAddr;
use isola_supervisor::supervisor::{self, NoCgroup};
use isola_supervisor::user_dirs;

use crate::placement::{self, Placement};

use crate::cmd::common::SocketArg;
use crate::image::{self, ImageFlags};
use crate::{client, detach, Exit};

#[derive(clap::Args)]
pub(crate) struct UpArgs {
    #[command(flatten)]
    socket: SocketArg,
    /// Directory of the per-service log files [default: /var/log/isola/<stack>;
    /// for a user, ${XDG_STATE_HOME:-~/.local/state}/isola/<stack>].
    #[arg(long)]
    log_dir: Option<PathBuf>,
    /// Rotate a service's log when it would exceed this many bytes.
    #[arg(long, default_value_t = 10 << 20)]
    log_max_bytes: u64,
    /// Log files kept per service, the live one included.
    #[arg(long, default_value_t = 5)]
    log_files: u32,
    /// Parent cgroup: services run in <cgroup-root>/<stack>/<service>
    /// [default: /sys/fs/cgroup/isola; for a user, isola/ in the cgroup
    /// subtree delegated to them].
    #[arg(long)]
    cgroup_root: Option<PathBuf>,
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
    /// Serve GET /metrics for Prometheus at tcp://HOST:PORT or unix:///PATH
    /// (OpenMetrics when the scraper asks for it, else the text format).
    #[arg(long, value_name = "ADDR", value_parser = metrics_addr)]
    metrics: Option<MetricsAddr>,
    #[command(flatten)]
    images: ImageFlags,
    /// The stack file: {"services": {"NAME": SPEC, ...}}.
    stack: PathBuf,
}

#[derive(clap::Args)]
pub(crate) struct DownArgs {
    #[command(flatten)]
    socket: SocketArg,
}

pub(crate) fn up(args: UpArgs) -> Result<u8, Exit> {
    // First, before any fd of ours is opened: an upgrade's handover.
    let handover = isola_runtime::handover::receive(supervisor::HANDOVER_ENV)
        .map_err(|e| Exit(exit::FAILURE, e))?;
    // And the keeper's socket, when a keeper or an upgrade exec'd us.
    let keeper = keeper::Channel::from_env().map_err(|e| Exit(exit::FAILURE, e))?;
    let (mut cfg, images, detach, wait_seconds) = config(args)?;
    // Images are pulled here, before anything starts (and before `-d`
    // detaches, so progress and failures show where the user looks).
    let detached = std::env::var_os(detach::DETACHED_ENV).is_some();
    if !detached && handover.is_none() {
        image::pull_stack(&cfg.stack_path, &images)?;
    }
    // The process that will supervise, before the supervisor starts: an
    // unprivileged user's stack with networks gets a user and network
    // namespace of its own (an upgrade's new binary is in it already).
    if handover.is_none() && (detached || !detach) {
        cfg.forwarded =
            crate::rootless_net::enter_if_needed(&cfg.stack_path, cfg.metrics.as_ref())?;
    } else if handover.is_some() {
        cfg.forwarded = crate::rootless_net::inherited_forwards();
    }
    if detach && handover.is_none() {
        let wait = Duration::from_secs(wait_seconds);
        return detach::up_detached(&cfg.logs.dir, &cfg.socket, wait);
    }
    if detached && handover.is_none() {
        // The background supervisor of `up -d`: a session of its own.
        let _ = nix::unistd::setsid();
    }
    cfg.keeper = match keeper {
        Some(k) => Some(k),
        None => start_keeper(),
    };
    let keeper = cfg.keeper.clone();
    let result = supervise(cfg, handover);
    if let Some(k) = keeper {
        k.bye(match &result {
            Ok(code) => *code,
            Err(Exit(code, _)) => *code,
        });
    }
    result
}

/// Fork the stack's keeper (`isola_supervisor::keeper`): this process
/// keeps, and exits when the stack ended; the child returns, to
/// supervise. Without a keeper (a fork refused) the stack lives and dies
/// with its supervisor, as said.
fn start_keeper() -> Option<keeper::Channel> {
    use std::io::Write;
    // Blocked in both before the fork: no signal finds the keeper
    // without its signalfd (the supervisor blocks the same set).
    let blocked = nix::sys::signal::sigprocmask(
        nix::sys::signal::SigmaskHow::SIG_BLOCK,
        Some(&keeper::signals()),
        None,
    );
    let pair = blocked.and_then(|()| {
        nix::sys::socket::socketpair(
            nix::sys::socket::AddressFamily::Unix,
            nix::sys::socket::SockType::SeqPacket,
            None,
            nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        )
    });
    // Nothing buffered is printed twice.
    let _ = std::io::stdout().flush();
    // The keeper lives as long as the stack: what this process freed (the
    // image pull's parse of the stack file, ~6 KiB a service) goes back
    // first, or the keeper would keep those pages alone once the
    // supervisor reused its copy of them.
    isola_runtime::release_free_memory();
    let fork = |(ours, theirs): (OwnedFd, OwnedFd)| {
        isola_runtime::fork_keeper(ours, keeper::keep).map(|()| theirs)
    };
    match pair.and_then(fork) {
        Ok(theirs) => {
            // The keeper's death ends the stack: its inits die with it
            // (their PDEATHSIG), and so do we.
            let keeper = nix::unistd::getppid();
            let armed = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL);
            if armed.is_err() || nix::unistd::getppid() != keeper {
                std::process::exit(i32::from(exit::FAILURE));
            }
            Some(keeper::Channel::new(theirs))
        }
        Err(e) => {
            eprintln!("isola: warning: no keeper ({e}): the services end with this supervisor");
            None
        }
    }
}

/// `isola handover-check up ARGS…`: can this binary take over from the
/// supervisor whose snapshot is on stdin (started with these arguments)?
pub(crate) fn handover_check(args: UpArgs) -> Result<u8, Exit> {
    let (cfg, ..) = config(args)?;
    let (_, payload) = isola_runtime::handover::read(std::io::stdin().lock())
        .map_err(|e| Exit(exit::FAILURE, e))?;
    let said = isola_supervisor::upgrade::check_resume(&cfg, &payload)
        .map_err(|e| Exit(exit::FAILURE, format!("{}: {e}", cfg.stack_path.display())))?;
    println!("{said}");
    Ok(exit::OK)
}

/// The supervisor's configuration, the image flags, `-d` and its wait.
fn config(args: UpArgs) -> Result<(supervisor::Config, ImageFlags, bool, u64), Exit> {
    let UpArgs {
        socket,
        log_dir,
        log_max_bytes,
        log_files,
        cgroup_root,
        no_cgroup,
        quiet,
        detach,
        wait_seconds,
        metrics,
        images,
        stack,
    } = args;
    let dir = log_dir.unwrap_or_else(|| user_dirs::log_dir(&supervisor::stack_name(&stack)));
    let placement = Placement::choose(cgroup_root, no_cgroup)?;
    let no_cgroup = match placement {
        Placement::Under(_) => None,
        Placement::Without => Some(NoCgroup::Asked),
        Placement::Undelegated => Some(NoCgroup::Undelegated(placement::undelegated_line())),
    };
    let cfg = supervisor::Config {
        stack_path: stack,
        socket: socket.path(),
        cgroup_root: placement
            .root()
            .map_or_else(|| PathBuf::from(cgroup::DEFAULT_ROOT), PathBuf::from),
        no_cgroup,
        logs: LogConfig {
            dir,
            max_bytes: log_max_bytes,
            files: log_files,
        },
        echo: !quiet,
        metrics,
        image_store: images.store.root(),
        forwarded: None,
        keeper: None,
    };
    Ok((cfg, images, detach, wait_seconds))
}

/// The supervisor in the foreground (or taking over from the one an
/// upgrade replaced), until it ends.
fn supervise(
    cfg: supervisor::Config,
    handover: Option<isola_runtime::handover::Incoming>,
) -> Result<u8, Exit> {
    let path = cfg.stack_path.display().to_string();
    let sup = match handover {
        Some(h) => supervisor::Supervisor::resume(cfg, h),
        None => supervisor::Supervisor::new(cfg),
    }
    .map_err(|e| Exit(e.exit_code(), format!("{path}: {e}")))?;
    sup.run()
        .map_err(|e| Exit(e.exit_code(), format!("{path}: {e}")))?;
    Ok(exit::OK)
}

fn metrics_addr(s: &str) -> Result<MetricsAddr, String> {
    MetricsAddr::parse(s)
}

pub(crate) fn down(args: DownArgs) -> Result<u8, Exit> {
    client::down(&args.socket.path())
}
