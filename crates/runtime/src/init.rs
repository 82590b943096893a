//! The sandbox's init: the first process inside, PID 1 of a new PID
//! namespace. It builds the sandbox around itself (namespaces joined, ids,
//! mounts, credentials, seccomp on itself), starts the payload, then only
//! reaps children and forwards signals until the payload exits, and exits
//! with the payload's status.
//!
//! Runs in a fork of `isola run`/`isola up` (clone3 without CLONE_VM): no
//! re-exec, the validated plan is already in memory.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::sys::signal::{kill, SigSet, SigmaskHow, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{Gid, Pid, Uid};

use crate::fs::mounts::{self, Layout};
use crate::ipc::listen::Listen;
use crate::ipc::sync::{self, Msg};
use crate::net::attach::{self, AttachError, NetInterface, Networking};
use crate::plan::{capabilities, Plan};
use crate::{exit, sys};

/// Signals `isola run` and the init pass on to the payload.
pub const FORWARDED: &[Signal] = &[
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGWINCH,
];

/// The init's signal set: the forwarded ones and SIGCHLD. The caller blocks
/// these before clone3 so none is lost between fork and the wait loop.
pub fn signal_set() -> SigSet {
    let mut set = SigSet::empty();
    for s in FORWARDED {
        set.add(*s);
    }
    set.add(Signal::SIGCHLD);
    set
}

pub(crate) type Step = (&'static str, String);

pub mod hookrun;
mod payload;
mod user;
use payload::spawn_payload;
pub(crate) use payload::{exec_exit_code, resolve};
use user::switch_user;

/// Entry point in the child of clone3. Never returns.
/// `unshare` holds the namespaces the init creates itself
/// ([`Plan::deferred_ns_flags`]).
/// `pass` holds the fds (in the caller's numbering) that the payload gets
/// at [`Plan::pass_fds`], `listen` the sockets it gets at 3, 4, ….
pub(crate) fn run(
    plan: &Plan,
    sock: OwnedFd,
    unshare: u64,
    pass: &[RawFd],
    listen: Listen,
    detach: Option<Detach>,
    net: Networking,
) -> ! {
    let (sock, held, mut targets) = keep_only_ours(plan, sock, pass, listen, detach);
    let gated = detach.map(|d| {
        #[allow(unsafe_code)]
        // SAFETY: the caller's owners of these fds live on in its memory,
        // never dropped here: this clone leaves by exec or exit_now.
        let adopt = |fd| unsafe { sys::adopt_inherited_fd(fd) };
        Gated {
            gate: adopt(held[1]),
            console: d.console.map(|_| adopt(held[2])),
        }
    });
    // Our parent may not block all of these; a forwarded SIGUSR1 must not
    // kill the init with its default action. Detached, every signal is the
    // payload's (`kill ID SIGNAL` names any).
    let set = if gated.is_some() {
        SigSet::all()
    } else {
        signal_set()
    };
    if nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&set), None).is_err() {
        sys::exit_now(exit::code(exit::SETUP));
    }
    targets.sort_unstable();
    let payload_fds = PayloadFds {
        all: &targets,
        listen: (!listen.fds.is_empty()).then_some(listen),
    };
    let outcome = prepare(plan, &sock, unshare, &payload_fds, gated, net);
    leave(plan, sock, outcome, &set)
}

/// Close every fd the host process had (cgroup directory, signalfd,
/// other sandboxes' pidfds in a supervisor) but the sync socket, the
/// detached init's and the payload's, and place the payload's at their
/// numbers. The sync socket (moved if it sat on a target), the numbers of
/// the fds we keep, and the payload's targets.
fn keep_only_ours(
    plan: &Plan,
    sock: OwnedFd,
    pass: &[RawFd],
    listen: Listen,
    detach: Option<Detach>,
) -> (OwnedFd, Vec<RawFd>, Vec<RawFd>) {
    let mut held = vec![sock.as_raw_fd()];
    if let Some(d) = detach {
        held.push(d.gate);
        held.extend(d.console);
    }
    let mut keep = held.clone();
    keep.extend_from_slice(pass);
    keep.extend_from_slice(listen.fds);
    let sources: Vec<RawFd> = listen.fds.iter().chain(pass).copied().collect();
    let targets: Vec<RawFd> = listen
        .targets()
        .chain(plan.pass_fds.iter().copied())
        .collect();
    #[allow(unsafe_code)]
    // SAFETY: we are a fresh clone that never returns (every path below ends
    // in exit_now or exec), and no Rust owner of a closed fd is used here.
    let closed = unsafe { sys::close_fds_except_all(&keep) };
    if closed.is_err() {
        sys::exit_now(exit::code(exit::SETUP));
    }
    if !sources.is_empty() {
        #[allow(unsafe_code)]
        // SAFETY: as above: this clone owns these fds by number only.
        let placed = unsafe { sys::place_fds(&sources, &targets, &mut held) };
        if placed.is_err() {
            sys::exit_now(exit::code(exit::SETUP));
        }
    }
    let sock = if held[0] == sock.as_raw_fd() {
        sock
    } else {
        // The sync socket sat on a target: it lives on at `held[0]`.
        std::mem::forget(sock);
        #[allow(unsafe_code)]
        // SAFETY: place_fds made this copy for us alone.
        unsafe {
            sys::adopt_inherited_fd(held[0])
        }
    };
    (sock, held, targets)
}

/// After `prepare`: supervise the payload, or report why there is none
/// and exit.
fn leave(plan: &Plan, sock: OwnedFd, outcome: Result<Option<Pid>, Failure>, set: &SigSet) -> ! {
    match outcome {
        Ok(Some(payload)) => {
            // Nothing more to report: the host learns of our exit by
            // SIGCHLD or its pidfd.
            drop(sock);
            supervise(plan, payload, set)
        }
        // Parent vanished before saying go: nothing to report to.
        Ok(None) => sys::exit_now(exit::code(exit::SETUP)),
        Err(Failure::Setup((step, message))) => {
            let _ = sync::write(
                &sock,
                &Msg::SetupFailed {
                    step: step.to_string(),
                    message,
                },
            );
            sys::exit_now(exit::code(exit::SETUP))
        }
        Err(Failure::Exec(errno, code)) => {
            let _ = sync::write(
                &sock,
                &Msg::ExecFailed {
                    errno: errno as i32,
                    command: plan.command(),
                },
            );
            sys::exit_now(code)
        }
        Err(Failure::Signaled(code)) => sys::exit_now(code),
    }
}

/// An init that outlives its caller and starts the payload only when told
/// (OCI `create`, then `start`: see [`crate::sandbox::gate`]). Raw fds of the
/// caller's, which the init keeps.
#[derive(Debug, Clone, Copy)]
pub struct Detach {
    /// The start FIFO, open read-write.
    pub gate: RawFd,
    /// A connected `--console-socket`: the payload gets a pty.
    pub console: Option<RawFd>,
}

/// [`Detach`] in the init, its fds owned.
struct Gated {
    gate: OwnedFd,
    console: Option<OwnedFd>,
}

/// The fds the payload gets, as the init sees them after placing them.
struct PayloadFds<'a> {
    /// Every fd number passed (sockets and `Plan::pass_fds`), ascending.
    all: &'a [RawFd],
    /// Sockets with their names, for the `LISTEN_*` variables.
    listen: Option<Listen<'a>>,
}

enum Failure {
    Setup(Step),
    Exec(Errno, i32),
    /// A signal ended the wait at the gate: leave with this code.
    Signaled(i32),
}

impl From<Step> for Failure {
    fn from(s: Step) -> Failure {
        Failure::Setup(s)
    }
}

fn step<E: std::fmt::Display>(
    name: &'static str,
    what: impl std::fmt::Display,
) -> impl FnOnce(E) -> Step {
    move |e| (name, format!("{what}: {e}"))
}

/// Join the namespaces the plan names, make the rest, and put the
/// sandbox on its networks (from a netlink socket opened in the host's
/// namespace before ours was made).
fn enter_namespaces(plan: &Plan, unshare: u64, net: &[NetInterface]) -> Result<(), Failure> {
    for (flag, path) in &plan.join {
        let f = std::fs::File::open(path).map_err(step("setns", path.display()))?;
        nix::sched::setns(f, *flag).map_err(step("setns", path.display()))?;
    }
    let network = |(what, e): AttachError| Failure::Setup(("network", format!("{what}: {e}")));
    let mut host = attach::host_socket(net).map_err(network)?;
    if unshare != 0 {
        let bits = i32::try_from(unshare)
            .map_err(|_| ("namespaces", format!("flags {unshare:#x}")))
            .map_err(Failure::Setup)?;
        let flags = nix::sched::CloneFlags::from_bits_retain(bits);
        nix::sched::unshare(flags).map_err(step("namespaces", "unshare"))?;
    }
    if let Some(host) = host.as_mut() {
        attach::attach(host, net).map_err(network)?;
    }
    Ok(())
}

/// Everything up to a running payload; returns its pid.
fn prepare(
    plan: &Plan,
    sock: &OwnedFd,
    unshare: u64,
    fds: &PayloadFds,
    gated: Option<Gated>,
    net: Networking,
) -> Result<Option<Pid>, Failure> {
    // If isola dies, so does the sandbox (the rest of the PID namespace dies
    // with its init).
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(step("prctl", "PR_SET_PDEATHSIG"))?;
    let Some(hook_state) = wait_for_go(plan, sock)? else {
        return Ok(None);
    };
    enter_namespaces(plan, unshare, net.interfaces)?;
    if net.hold && !hold_for_networks(sock)? {
        return Ok(None);
    }
    become_namespace_root(plan)?;
    set_up_inside(plan, &hook_state)?;
    let detached = gated.is_some();
    let (gate, terminal) = take_console(gated)?;
    // Made while seccomp cannot refuse it yet; read at the gate.
    let gate_signals = match &gate {
        Some(_) => Some(
            nix::sys::signalfd::SignalFd::with_flags(
                &SigSet::all(),
                nix::sys::signalfd::SfdFlags::SFD_CLOEXEC
                    | nix::sys::signalfd::SfdFlags::SFD_NONBLOCK,
            )
            .map_err(step("signals", "signalfd"))?,
        ),
        None => None,
    };
    become_payload(plan, plan.uid, plan.gid, &plan.cwd)?;
    if let (Some(gate), Some(signals)) = (gate, gate_signals) {
        wait_at_gate(plan, sock, &gate, &signals, &hook_state)?;
    }
    let pid = spawn_payload(plan, fds, terminal)?;
    // Passed fds are the payload's alone (a pipe's writer must not be
    // held open by us).
    for fd in fds.all {
        let _ = nix::unistd::close(*fd);
    }
    let reported = sync::write(sock, &Msg::Started);
    // Detached, nobody listens any more: a failed write is no failure.
    if !detached {
        reported.map_err(step("sync", "report start"))?;
    }
    Ok(Some(pid))
}

/// Tell the parent our network namespace exists and wait for its `G`
/// (it ran the CNI plugins meanwhile); false when it vanished first.
fn hold_for_networks(sock: &OwnedFd) -> Result<bool, Failure> {
    sync::write(sock, &Msg::NetReady).map_err(step("sync", "report the network namespace"))?;
    match sync::read(sock).map_err(step("sync", "wait for networks"))? {
        Some(Msg::Go) => Ok(true),
        _ => Ok(false),
    }
}

/// The parent's `G` (and the container's state, for in-container hooks);
/// `None` when the parent vanished first.
fn wait_for_go(plan: &Plan, sock: &OwnedFd) -> Result<Option<String>, Failure> {
    match sync::read(sock).map_err(step("sync", "wait for parent"))? {
        Some(Msg::Go) => {}
        _ => return Ok(None),
    }
    if plan.container_hooks.is_empty() {
        return Ok(Some(String::new()));
    }
    match sync::read(sock).map_err(step("sync", "wait for the state"))? {
        Some(Msg::State { json }) => Ok(Some(json)),
        _ => Ok(None),
    }
}

/// Inside the namespaces: OOM score, sysctls, `lo`, hostname, mounts (or
/// the createContainer hooks without a mount namespace).
fn set_up_inside(plan: &Plan, hook_state: &str) -> Result<(), Failure> {
    if let Some(adj) = plan.oom_score_adj {
        std::fs::write("/proc/self/oom_score_adj", adj.to_string())
            .map_err(step("oomScoreAdj", adj))?;
    }
    for (k, v) in &plan.sysctl {
        let p = PathBuf::from("/proc/sys").join(k.replace('.', "/"));
        std::fs::write(&p, v).map_err(step("sysctl", k))?;
    }
    if plan.new_net_ns() {
        sys::set_link_up(c"lo").map_err(step("network", "bring lo up"))?;
    }
    if let Some(h) = &plan.hostname {
        nix::unistd::sethostname(h).map_err(step("hostname", h))?;
    }
    if plan.has_mount_ns() {
        mounts::setup(&Layout {
            root: plan.root.as_deref(),
            root_readonly: plan.root_readonly,
            root_layers: plan.root_layers.as_ref(),
            propagation: plan.propagation,
            mounts: &plan.mounts,
            fresh_proc: plan.new_pid_ns(),
            masked: &plan.masked,
            readonly: &plan.readonly,
            devices: &plan.devices,
            create_hooks: &plan.container_hooks.create_container,
            hook_state,
        })?;
    } else {
        // No mount namespace, no pivot_root: the container's namespaces
        // are all there is.
        hookrun::run(
            "hooks.createContainer",
            &plan.container_hooks.create_container,
            hook_state,
        )?;
    }
    Ok(())
}

/// Detached: the gate, and the console as stdio when there is one (true
/// then: the payload gets a terminal).
fn take_console(gated: Option<Gated>) -> Result<(Option<OwnedFd>, bool), Failure> {
    let (gate, console) = match gated {
        Some(g) => (Some(g.gate), g.console),
        None => (None, None),
    };
    let Some(console) = console else {
        return Ok((gate, false));
    };
    let slave = crate::sandbox::gate::console(console).map_err(|e| ("console", e))?;
    for target in 0..=2 {
        sys::dup2_raw(slave.as_raw_fd(), target).map_err(step("console", "stdio"))?;
    }
    Ok((gate, true))
}

/// OCI `create`: report created and wait at the gate for `start`.
fn wait_at_gate(
    plan: &Plan,
    sock: &OwnedFd,
    gate: &OwnedFd,
    signals: &nix::sys::signalfd::SignalFd,
    hook_state: &str,
) -> Result<(), Failure> {
    // A command that is not there fails `create`, not `start`.
    let path = resolve(&plan.args[0], &plan.search_path)
        .map_err(|e| Failure::Exec(e, exec_exit_code(e)))?;
    nix::unistd::access(path.as_c_str(), nix::unistd::AccessFlags::X_OK)
        .map_err(|e| Failure::Exec(e, exec_exit_code(e)))?;
    // The caller (`isola create`) exits now; we live on, reaped by
    // whoever reaps its orphans (conmon, the containerd shim).
    nix::sys::prctl::set_pdeathsig(None).map_err(step("prctl", "PR_SET_PDEATHSIG"))?;
    sync::write(sock, &Msg::Created).map_err(step("sync", "report created"))?;
    crate::sandbox::gate::wait(gate, signals).map_err(Failure::Signaled)?;
    hookrun::run(
        "hooks.startContainer",
        &plan.container_hooks.start_container,
        hook_state,
    )?;
    Ok(())
}

/// In a new user namespace we still carry the host's ids, which mean
/// nothing there: a file we create (the fresh /dev and /tmp of host-root
/// mode) would be refused with EOVERFLOW. Become the namespace's root when
/// the maps have one (the capabilities stay: they are the namespace's);
/// the payload's own ids come later.
fn become_namespace_root(plan: &Plan) -> Result<(), Step> {
    let maps_root = |m: &Option<String>| {
        m.as_deref()
            .is_some_and(|m| m.lines().any(|l| l.split_whitespace().next() == Some("0")))
    };
    if !plan.new_user_ns() || !maps_root(&plan.uid_map) || !maps_root(&plan.gid_map) {
        return Ok(());
    }
    let root_g = Gid::from_raw(0);
    nix::unistd::setresgid(root_g, root_g, root_g)
        .map_err(step("user", "setgid 0 in the user namespace"))?;
    let root_u = Uid::from_raw(0);
    nix::unistd::setresuid(root_u, root_u, root_u)
        .map_err(step("user", "setuid 0 in the user namespace"))?;
    // A credential change clears the death signal.
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(step("prctl", "PR_SET_PDEATHSIG"))
}

/// Take on the payload's limits and credentials, in the OCI order: rlimits,
/// bounding set, user (as `uid`:`gid`), capabilities, umask, `cwd`,
/// no_new_privs and seccomp. The init does it before starting the payload;
/// a process joining a running sandbox ([`crate::sandbox::join`]) does the same.
pub(crate) fn become_payload(plan: &Plan, uid: u32, gid: u32, cwd: &Path) -> Result<(), Step> {
    for r in &plan.rlimits {
        let (res, soft, hard) = (r.resource, r.soft, r.hard);
        nix::sys::resource::setrlimit(res, soft, hard)
            .map_err(step("rlimits", format!("{res:?}")))?;
    }
    // With noNewPrivileges false the filter needs CAP_SYS_ADMIN, so it goes
    // in while we still have it (the OCI order); otherwise as late as possible.
    if !plan.no_new_privs {
        install_seccomp(plan)?;
    }
    capabilities::apply_bounding(&plan.caps).map_err(|e| ("capabilities", e))?;
    switch_user(plan, uid, gid)?;
    capabilities::apply_process_sets(&plan.caps).map_err(|e| ("capabilities", e))?;
    if let Some(m) = plan.umask {
        nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(m));
    }
    nix::unistd::chdir(cwd).map_err(step("cwd", cwd.display()))?;
    // The credential change cleared the death signal; set it again.
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(step("prctl", "PR_SET_PDEATHSIG"))?;
    // Nothing in the sandbox may open /proc/1/exe, /proc/1/mem or our fds:
    // non-dumpable makes them root-owned and ptrace-protected.
    nix::sys::prctl::set_dumpable(false).map_err(step("prctl", "PR_SET_DUMPABLE"))?;
    if plan.no_new_privs {
        nix::sys::prctl::set_no_new_privs().map_err(step("prctl", "PR_SET_NO_NEW_PRIVS"))?;
        install_seccomp(plan)?;
    }
    Ok(())
}

fn install_seccomp(plan: &Plan) -> Result<(), Step> {
    for prog in &plan.seccomp {
        sys::seccomp_set_filter(prog).map_err(step("seccomp", "install filter"))?;
    }
    Ok(())
}

/// The init's life after the payload started: reap, forward, exit.
/// `set`: the signals the init takes (blocked): SIGCHLD, the rest passed on.
/// Once the memory of setting up is released (`sys::release_setup_memory`)
/// nothing here may allocate, print, or use anything allocated before: it
/// never returns, and reads only what is on its own stack.
fn supervise(plan: &Plan, payload: Pid, set: &SigSet) -> ! {
    // Read before the inherited heap (where `plan` lives) goes.
    let new_pid_ns = plan.new_pid_ns();
    sys::drop_inherited_heap();
    sys::release_setup_memory();
    let mut status: Option<i32> = None;
    while status.is_none() {
        let Ok(sig) = set.wait() else { continue };
        if sig == Signal::SIGCHLD {
            status = reap(payload);
        } else {
            let _ = kill(payload, sig);
        }
    }
    // The payload is gone: so is everything it left behind.
    if new_pid_ns {
        let _ = kill(Pid::from_raw(-1), Signal::SIGKILL);
    }
    loop {
        match waitpid(None::<Pid>, Some(WaitPidFlag::__WALL)) {
            Err(Errno::EINTR) => continue,
            Err(_) => break,
            Ok(_) if !new_pid_ns => break,
            Ok(_) => {}
        }
    }
    sys::exit_now(status.unwrap_or(exit::code(exit::SETUP)))
}

/// Reap every exited child; the payload's exit status when it is among them.
fn reap(payload: Pid) -> Option<i32> {
    let mut result = None;
    loop {
        match waitpid(
            None::<Pid>,
            Some(WaitPidFlag::WNOHANG | WaitPidFlag::__WALL),
        ) {
            Ok(WaitStatus::Exited(pid, code)) if pid == payload => result = Some(code),
            Ok(WaitStatus::Signaled(pid, sig, _)) if pid == payload => {
                result = Some(128 + sig as i32)
            }
            Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return result,
            Err(Errno::EINTR) | Ok(_) => {}
            Err(_) => return result,
        }
    }
}
