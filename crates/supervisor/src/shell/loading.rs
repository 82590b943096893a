//! What `isola up` does before its loop, and again at a reload: read the
//! stack file (forking the spawner first), check that it fits, claim the
//! stack's cgroup, and complete every service with what the supervisor
//! adds to it.

use std::path::Path;

use isola_runtime::{init, SpecError};
use nix::errno::Errno;
use nix::sys::signal::{SigmaskHow, Signal};

use crate::held_sockets::HeldSockets;
use crate::host::{self, PlanAdditions, StackGroup};
use crate::lifecycle::Core;
use crate::outputs::{Forwarders, Outputs, OwnSinks, Sink, JOURNAL_SOCKET};
use crate::sandboxes::{self, spawner_plans::Build};
use crate::spawner::Spawner;
use crate::spec::rules::RuleMetric;
use crate::spec::stack::{self, ServiceDef, Stack};
use crate::supervisor::{now_ms, setup, stack_name, Config, NoCgroup, UpError, MAX_STARTING};

pub(crate) fn read_stack(path: &Path) -> Result<String, SpecError> {
    std::fs::read_to_string(path)
        .map_err(|e| SpecError::new("", format!("{}: {e}", path.display())))
}

/// A parsed stack that fits: `--no-cgroup` leaves room for its limits,
/// the host for its fds and tasks. With how many stat files may stay open.
pub(crate) struct Checked {
    pub(crate) stack: Stack,
    pub(crate) stats_cap: usize,
}

/// When a stack is loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Loading {
    /// `isola up`: the cgroup root is checked too.
    Start,
    /// SIGHUP, or an upgrade's new binary: `running` of the stack's
    /// sandboxes run already (their processes are not asked for again).
    Reload { running: usize },
}

/// What `new` and a reload check of a parsed stack, alike.
pub(crate) fn check_stack(cfg: &Config, stack: Stack, when: Loading) -> Result<Checked, UpError> {
    if let Some(why) = &cfg.no_cgroup {
        check_no_cgroup(&stack, why)?;
    }
    if when == Loading::Start && cfg.no_cgroup.is_none() {
        isola_runtime::cgroup::check_root(&cfg.cgroup_root)
            .map_err(|e| UpError::Spec(SpecError::new("--cgroup-root", e.to_string())))?;
        isola_runtime::cgroup::check_unified().map_err(setup("cgroup"))?;
    }
    check_pressure(&stack)?;
    check_unix_queues(&stack)?;
    if let Some(f) = &cfg.forwarded {
        check_forwarded(&stack, f)?;
    }
    let running = match when {
        Loading::Start => 0,
        Loading::Reload { running } => running,
    };
    let stats_cap = host::check_capacity(&stack.services, &stack.autoscaled, running)?;
    Ok(Checked { stack, stats_cap })
}

/// What reads or writes a sandbox's cgroup cannot be had with
/// `--no-cgroup`: the first such field, named.
fn check_no_cgroup(stack: &Stack, off: &NoCgroup) -> Result<(), UpError> {
    let refuse = |field: String, why: &str| {
        let why = match off {
            NoCgroup::Asked => why.to_string(),
            NoCgroup::Undelegated(line) => line.clone(),
        };
        Err(UpError::Spec(SpecError::new(field, why)))
    };
    for d in stack.services.iter().chain(&stack.autoscaled) {
        if !d.policy.resource_rules.is_empty() {
            return refuse(
                format!("services.{}.resourceRules", d.name),
                "conflicts with --no-cgroup (rules read the sandbox's cgroup)",
            );
        }
        if d.plan.has_resources() {
            return refuse(
                format!("services.{}.linux.resources", d.name),
                "conflicts with --no-cgroup",
            );
        }
        if d.policy.autoscale.as_ref().is_some_and(|a| a.cpu.is_some()) {
            return refuse(
                format!("services.{}.autoscale.cpu", d.group_name()),
                "conflicts with --no-cgroup (the replicas' CPU is read from their cgroups)",
            );
        }
    }
    Ok(())
}

/// An autoscaled service on a unix socket needs the kernel to tell that
/// socket's accept queue (sock_diag's `unix_diag`): known before anything
/// is touched, not found out by a service that never scales.
fn check_unix_queues(stack: &Stack) -> Result<(), UpError> {
    for d in &stack.autoscaled {
        let unix = d
            .policy
            .sockets
            .iter()
            .enumerate()
            .find(|(_, s)| matches!(s.address, crate::spec::sockets::Address::Unix(_)));
        let Some((k, s)) = unix else {
            continue;
        };
        if let Err(e) = isola_runtime::sock_diag::available() {
            return Err(UpError::Setup(format!(
                "services.{}.sockets[{k}]: {}: its accept queue cannot be read (sock_diag: {}; autoscaling on a unix socket needs the kernel's unix_diag module)",
                d.name,
                s.listen,
                e.desc()
            )));
        }
    }
    Ok(())
}

/// Held TCP and UDP sockets of a user's networked stack: only those
/// pasta forwards from the host (see `Config::forwarded`).
fn check_forwarded(stack: &Stack, f: &crate::supervisor::Forwarded) -> Result<(), UpError> {
    use crate::spec::sockets::Address;
    for d in stack.services.iter().chain(&stack.autoscaled) {
        for (k, s) in d.policy.sockets.iter().enumerate() {
            let known = match &s.address {
                Address::Tcp(a) => f.tcp.contains(a),
                Address::Udp(a) => f.udp.contains(a),
                Address::Unix(_) => true,
            };
            if !known {
                return Err(UpError::Spec(SpecError::new(
                    format!("services.{}.sockets[{k}].listen", d.group_name()),
                    format!("{}: not forwarded into this user's stack namespace (pasta's forwards are set when isola up starts: restart it to add one)", s.listen),
                )));
            }
        }
    }
    Ok(())
}

/// A pressure rule needs the kernel's pressure stall information.
fn check_pressure(stack: &Stack) -> Result<(), UpError> {
    if std::path::Path::new(PSI).exists() {
        return Ok(());
    }
    for d in stack.services.iter().chain(&stack.autoscaled) {
        let pressure = d
            .policy
            .resource_rules
            .iter()
            .position(|r| !matches!(r.metric, RuleMetric::Memory | RuleMetric::Cpu));
        if let Some(k) = pressure {
            let metric = d.policy.resource_rules[k].metric.as_str();
            return Err(UpError::Spec(SpecError::new(
                format!("services.{}.resourceRules[{k}].metric", d.name),
                format!("{metric}: this kernel has no pressure stall information ({PSI}: CONFIG_PSI, or psi=1 on its command line)"),
            )));
        }
    }
    Ok(())
}

/// Where the kernel shows pressure stall information, when it has it.
const PSI: &str = "/proc/pressure";

/// Complete what the supervisor adds to every loaded service.
pub(crate) fn add_to_all(additions: &PlanAdditions, defs: &mut [ServiceDef]) {
    for def in defs {
        additions.add_to(def);
    }
}

/// What `new` checked, bound and claimed, for `assemble`.
pub(crate) struct Prepared {
    pub(crate) additions: PlanAdditions,
    pub(crate) defs: Vec<ServiceDef>,
    /// The autoscaled services as written (replicas are made from them).
    pub(crate) autoscaled: Vec<ServiceDef>,
    /// The fixed `replicas` services as written (`isola scale` makes
    /// replicas from them).
    pub(crate) replicated: Vec<ServiceDef>,
    pub(crate) held: HeldSockets,
    pub(crate) listener: std::os::unix::net::UnixListener,
    pub(crate) metrics: Option<crate::metrics::server::BoundMetrics>,
    pub(crate) stderr: Sink,
    pub(crate) group: Option<StackGroup>,
    pub(crate) spawner: Result<Spawner, Errno>,
    pub(crate) stats_cap: usize,
    /// The stack's networks, as decided before the loop.
    pub(crate) networks: Option<crate::networks::Prepared>,
    /// The stack file's text, as loaded.
    pub(crate) stack_text: String,
}

/// Block the signals we take (every init starts with them blocked):
/// everything we handle arrives through the signalfd, SIGCHLD too.
pub(crate) fn block_signals() -> Result<(), UpError> {
    let mut mask = init::signal_set();
    mask.add(Signal::SIGPIPE);
    nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&mask), None)
        .map_err(setup("sigprocmask"))
}

/// Fork the spawner, then parse the stack file: the spawner is forked
/// while our heap holds little but the file's text (every init is a copy
/// of it), and builds its services from the same text meanwhile. A parse
/// error stops the spawner with the supervisor. The text is kept (an
/// upgrade hands it on).
pub(crate) fn spawner_and_stack(
    cfg: &Config,
    additions: &PlanAdditions,
) -> Result<(Stack, Result<Spawner, Errno>, String), UpError> {
    let text = read_stack(&cfg.stack_path)?;
    spawner_and_text(cfg, additions, text, Build::Now)
}

/// [`spawner_and_stack`] of a text in hand (an upgrade's), the spawner's
/// services built when `build` says.
pub(crate) fn spawner_and_text(
    cfg: &Config,
    additions: &PlanAdditions,
    mut text: String,
    build: Build,
) -> Result<(Stack, Result<Spawner, Errno>, String), UpError> {
    let base_dir = isola_runtime::spec::base_dir(&cfg.stack_path);
    let stack_root = cfg.cgroup_root.join(stack_name(&cfg.stack_path));
    isola_runtime::release_free_memory();
    let images = cfg.images();
    let spawner = sandboxes::spawner_plans::fork_spawner(
        &mut text,
        (&base_dir, &stack_root),
        additions,
        &images,
        cfg.keeper.is_some(),
        build,
    );
    let stack = stack::parse_with(&text, &base_dir, &images)?;
    Ok((stack, spawner, text))
}

/// The stack's cgroup, claimed (`None` with --no-cgroup); what a dead
/// supervisor left there is removed, and said.
pub(crate) fn claim_group(cfg: &Config, stderr: &mut Sink) -> Result<Option<StackGroup>, UpError> {
    if cfg.no_cgroup.is_some() {
        return Ok(None);
    }
    // Only once the group is ours: what is left in it is a dead
    // supervisor's (PDEATHSIG took its inits), never a live one's.
    let root = cfg.cgroup_root.join(stack_name(&cfg.stack_path));
    let (group, stale) = StackGroup::claim(&root)?;
    if !stale.is_empty() {
        stderr.line(&format!(
            "isola: removed stale cgroups of a previous run: {}",
            stale.join(", ")
        ));
        stderr.try_flush();
    }
    Ok(Some(group))
}

/// The stack's networks decided — once its group is ours, so that what a
/// killed supervisor of the stack left is cleared and nothing a live one
/// holds. On an error nothing is left behind: the group goes too.
pub(crate) fn networks_for(
    cfg: &Config,
    nets: &[crate::spec::networks::NetworkDef],
    group: &mut Option<StackGroup>,
) -> Result<Option<crate::networks::Prepared>, UpError> {
    let stack_root = cfg.cgroup_root.join(stack_name(&cfg.stack_path));
    crate::networks::prepare(&stack_root, nets).map_err(|e| {
        if let Some(g) = group.take() {
            let _ = g.release();
        }
        match e {
            Ok(spec) => UpError::Spec(SpecError::new("", spec)),
            Err(host) => UpError::Setup(format!("networks: {host}")),
        }
    })
}

/// Our own stdout and stderr, the forwarders, and a log per service.
pub(crate) fn outputs_for(
    cfg: &Config,
    stderr: Sink,
    defs: &[ServiceDef],
) -> Result<Outputs, UpError> {
    let own = OwnSinks {
        stdout: Sink::stdout(),
        stderr,
        echo: cfg.echo,
    };
    let forward = Forwarders::new(&stack_name(&cfg.stack_path), JOURNAL_SOCKET.into());
    let mut outputs = Outputs::new(cfg.logs.clone(), own, forward);
    for (i, def) in defs.iter().enumerate() {
        outputs
            .add(i, &def.name)
            .map_err(setup(format!("log file for {}", def.name)))?;
        outputs.set_route(i, def.policy.logging.route(), def.replica_number());
    }
    Ok(outputs)
}

/// The core, with the replicated services as written: each replica it
/// makes of them gets what every plan gets from us.
pub(crate) fn core_for(
    defs: Vec<ServiceDef>,
    autoscaled: Vec<ServiceDef>,
    replicated: Vec<ServiceDef>,
    additions: &PlanAdditions,
) -> Core {
    let seed = now_ms() ^ u64::from(std::process::id());
    let mut core = Core::new(defs, MAX_STARTING, seed);
    let additions = additions.clone();
    core.set_autoscaled(autoscaled, move |d| additions.add_to(d));
    core.set_replicated(replicated);
    core
}
