//! Stack networks for an unprivileged user: `isola up` of a stack with
//! `networks` moves itself, before anything else, into a user and network
//! namespace of its own, as rootlesskit does. There it is root: it makes
//! the bridges, pairs, nftables rules and nameserver as root makes them on
//! the host, and its services' namespaces are owned by that user
//! namespace (they get none of their own).
//!
//! The namespace's way out is pasta (Debian passt), attached by our pid
//! from the host's side: outbound traffic and NAT go through it, and the
//! held TCP and UDP sockets (and `--metrics`) are reached through its port
//! forwards from the host's same address and port to ours (a connection
//! from the host's loopback arrives from our loopback). Unix sockets —
//! the control socket, held `unix://` ones — are files and need nothing.
//!
//! The ids: our uid and gid are root inside, and the user's /etc/subuid
//! and /etc/subgid ranges follow (mapped by `newuidmap`/`newgidmap`, run
//! by a helper forked before we unshare, which then becomes pasta). The
//! helper carries PDEATHSIG: pasta ends when the supervisor does.

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use isola_runtime::exit;
use isola_runtime::plan::rootless::{self, OwnedIds};
use isola_supervisor::metrics::MetricsAddr;
use isola_supervisor::supervisor::Forwarded;
use serde_json::Value;

use crate::Exit;

/// Where the forwards are kept for an upgrade's new binary (same process,
/// same environment: pasta and its forwards stay as they are).
const FORWARDED_ENV: &str = "ISOLA_ROOTLESS_FORWARDS";

/// How long pasta may take to set the namespace up.
const PASTA_READY: Duration = Duration::from_secs(20);

/// The ports pasta forwards from the host into our namespace.
type Forwards = Forwarded;

/// Enter our own user and network namespace when an unprivileged user's
/// stack has networks, and say what pasta forwards into it; nothing
/// otherwise (root, no networks, or already root of a namespace of ours:
/// an upgrade's new binary).
pub(crate) fn enter_if_needed(
    stack: &Path,
    metrics: Option<&MetricsAddr>,
) -> Result<Option<Forwarded>, Exit> {
    let Some(v) = users_networked_stack(stack) else {
        return Ok(None);
    };
    let forwards = forwards(&v, metrics)?;
    // The runtime directory as the user sees it, kept for an upgrade's new
    // binary (inside, our uid is 0 and would choose another).
    if std::env::var_os("XDG_RUNTIME_DIR").is_none_or(|d| d.is_empty()) {
        std::env::set_var(
            "XDG_RUNTIME_DIR",
            isola_supervisor::user_dirs::runtime_dir(),
        );
    }
    let mut ids = OwnedIds::read()
        .ok_or_else(|| Exit(exit::SETUP, "rootless networks: not unprivileged".into()))?;
    // The ranges are mapped only both together (by the helper); else our
    // own ids alone.
    if ids.sub_uids.is_empty() || ids.sub_gids.is_empty() {
        ids.sub_uids.clear();
        ids.sub_gids.clear();
    }
    check_users(&v, &ids)?;
    enter(&forwards, &ids)?;
    // From here on we are root of the namespace: plans get no user
    // namespace of their own (their ids were checked just now).
    rootless::plans_for_namespace_root();
    if let Ok(text) = serde_json::to_string(&forwards) {
        std::env::set_var(FORWARDED_ENV, text);
    }
    Ok(Some(forwards))
}

/// After an upgrade's exec: the forwards the first `isola up` set, if it
/// entered a namespace of its own.
pub(crate) fn inherited_forwards() -> Option<Forwarded> {
    let text = std::env::var(FORWARDED_ENV).ok()?;
    let forwards = serde_json::from_str(&text).ok()?;
    rootless::plans_for_namespace_root();
    Some(forwards)
}

/// Each service's `process.user` among the ids the namespace maps: once
/// inside, the plans cannot tell (we are root there).
fn check_users(stack: &Value, ids: &OwnedIds) -> Result<(), Exit> {
    let id = |v: &Value| v.as_u64().and_then(|n| u32::try_from(n).ok()).unwrap_or(0);
    for (name, svc) in stack["services"].as_object().into_iter().flatten() {
        let user = &svc["process"]["user"];
        let extra: Vec<u32> = user["additionalGids"]
            .as_array()
            .into_iter()
            .flatten()
            .map(id)
            .collect();
        ids.check(id(&user["uid"]), id(&user["gid"]), &extra)
            .map_err(|(field, why)| Exit(exit::USAGE, format!("services.{name}.{field}: {why}")))?;
    }
    Ok(())
}

/// The stack file, when the caller is an unprivileged user (not root of
/// a namespace of its own yet) and the stack has networks.
fn users_networked_stack(stack: &Path) -> Option<Value> {
    if nix::unistd::geteuid().is_root() {
        return None;
    }
    // Unreadable or bad: the supervisor says why, as for root.
    let text = std::fs::read_to_string(stack).ok()?;
    let v: Value = serde_json::from_str(&text).ok()?;
    v["networks"]
        .as_object()
        .is_some_and(|n| !n.is_empty())
        .then_some(v)
}

/// `isola exec` outside a user's networked stack reads its plans as its
/// supervisor does: as root of the stack's namespace.
pub(crate) fn read_plans_as_its_supervisor(stack: &Path) {
    if users_networked_stack(stack).is_some() {
        rootless::plans_for_namespace_root();
    }
}

/// The held sockets' (and the metrics endpoint's) TCP and UDP addresses,
/// each at or above the first unprivileged port: pasta binds them on the
/// host as the user.
fn forwards(stack: &Value, metrics: Option<&MetricsAddr>) -> Result<Forwards, Exit> {
    let mut f = Forwards::default();
    let services = stack["services"].as_object().into_iter().flatten();
    for (name, svc) in services {
        for (i, s) in svc["sockets"].as_array().into_iter().flatten().enumerate() {
            let Some(listen) = s["listen"].as_str() else {
                continue;
            };
            let field = format!("services.{name}.sockets[{i}].listen");
            let parsed = |rest: &str| {
                rest.parse::<std::net::SocketAddr>()
                    .map_err(|_| Exit(exit::USAGE, format!("{field}: {listen}: not IP:PORT")))
            };
            if let Some(rest) = listen.strip_prefix("tcp://") {
                f.tcp.push(checked_port(parsed(rest)?, &field)?);
            } else if let Some(rest) = listen.strip_prefix("udp://") {
                f.udp.push(checked_port(parsed(rest)?, &field)?);
            }
        }
    }
    if let Some(MetricsAddr::Tcp(a)) = metrics {
        f.tcp.push(checked_port(*a, "--metrics")?);
    }
    Ok(f)
}

fn checked_port(a: std::net::SocketAddr, field: &str) -> Result<std::net::SocketAddr, Exit> {
    let start: u16 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(1024);
    if a.port() < start && a.port() != 0 {
        return Err(Exit(
            exit::FAILURE,
            format!(
                "{field}: {a}: port {} is below net.ipv4.ip_unprivileged_port_start ({start}), which uid {} may not bind: pick a port at or above it, or lower the sysctl",
                a.port(),
                nix::unistd::geteuid()
            ),
        ));
    }
    Ok(a)
}

/// pasta's `-t`/`-u` options for `addrs` (`none` for no forward).
fn forward_args(flag: &str, addrs: &[std::net::SocketAddr]) -> Vec<String> {
    if addrs.is_empty() {
        return vec![flag.into(), "none".into()];
    }
    addrs
        .iter()
        .flat_map(|a| [flag.to_string(), format!("{}/{}", a.ip(), a.port())])
        .collect()
}

fn enter(forwards: &Forwards, ids: &OwnedIds) -> Result<(), Exit> {
    let fail = |what: &str, e: &dyn std::fmt::Display| {
        Exit(exit::SETUP, format!("rootless networks: {what}: {e}"))
    };
    let run_dir = isola_supervisor::user_dirs::runtime_dir();
    std::fs::create_dir_all(&run_dir).map_err(|e| fail(&run_dir.display().to_string(), &e))?;
    let me = nix::unistd::getpid();
    let pid_file = run_dir.join(format!("isola-pasta-up-{me}.pid"));
    let _ = std::fs::remove_file(&pid_file);
    let mut args = vec![
        "--config-net".into(),
        "--quiet".into(),
        "--foreground".into(),
    ];
    args.extend(forward_args("-t", &forwards.tcp));
    args.extend(forward_args("-u", &forwards.udp));
    // No forward from the namespace to the host's loopback, and the
    // gateway is not the host's loopback either (`--no-map-gw`): the
    // stack's services reach what root's would, the host's services on
    // its addresses, nothing bound to its loopback alone.
    args.extend(["-T", "none", "-U", "none", "--no-map-gw", "--pid"].map(String::from));
    args.push(pid_file.display().to_string());
    args.push(me.as_raw().to_string());
    let helper = Helper {
        ids: ids.clone(),
        parent: me.as_raw(),
        pasta_args: args,
    };
    let (mut ours, theirs) = UnixStream::pair().map_err(|e| fail("socketpair", &e))?;
    let child = isola_runtime::spawn_helper(OwnedFd::from(theirs), move |fd| helper.run(fd))
        .map_err(|e| fail("fork", &e))?;
    nix::sched::unshare(
        nix::sched::CloneFlags::CLONE_NEWUSER | nix::sched::CloneFlags::CLONE_NEWNET,
    )
    .map_err(|e| fail("unshare", &e))?;
    if ids.sub_uids.is_empty() {
        map_own_ids(ids).map_err(|e| fail("id maps", &e))?;
    }
    ours.write_all(b"G").map_err(|e| fail("helper", &e))?;
    let mut said = [0u8; 1];
    match ours.read(&mut said) {
        Ok(1) if said[0] == b'M' => {}
        _ => return Err(fail("id maps", &"newuidmap/newgidmap failed (see above)")),
    }
    wait_for_pasta(&pid_file, child)?;
    let _ = std::fs::remove_file(&pid_file);
    Ok(())
}

/// Without subordinate ranges: our own ids, written by ourselves (the one
/// map an unprivileged process may write, gid's after setgroups deny).
fn map_own_ids(ids: &OwnedIds) -> std::io::Result<()> {
    std::fs::write("/proc/self/setgroups", "deny")?;
    std::fs::write("/proc/self/uid_map", format!("0 {} 1\n", ids.uid))?;
    std::fs::write("/proc/self/gid_map", format!("0 {} 1\n", ids.gid))
}

/// pasta writes its pid file once the namespace is set up.
fn wait_for_pasta(pid_file: &Path, helper: nix::unistd::Pid) -> Result<(), Exit> {
    let t = Instant::now();
    while !std::fs::read_to_string(pid_file).is_ok_and(|s| !s.trim().is_empty()) {
        let gone = nix::sys::wait::waitpid(helper, Some(nix::sys::wait::WaitPidFlag::WNOHANG));
        if !matches!(gone, Ok(nix::sys::wait::WaitStatus::StillAlive)) {
            return Err(Exit(
                exit::SETUP,
                format!("rootless networks: pasta ended before it was ready ({gone:?}; is Debian's passt installed?)"),
            ));
        }
        if t.elapsed() > PASTA_READY {
            return Err(Exit(
                exit::SETUP,
                format!("rootless networks: pasta not ready after {PASTA_READY:?}"),
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

/// The helper forked before the unshare, still in the host's namespaces.
struct Helper {
    ids: OwnedIds,
    parent: i32,
    pasta_args: Vec<String>,
}

impl Helper {
    /// Wait for `G`, map the parent's ids when it has ranges, say `M`, and
    /// become pasta, ended with the parent.
    fn run(self, fd: OwnedFd) -> i32 {
        let mut sock = UnixStream::from(fd);
        let mut go = [0u8; 1];
        if !matches!(sock.read(&mut go), Ok(1)) {
            return 1;
        }
        if !self.ids.sub_uids.is_empty() {
            let pid = self.parent.to_string();
            for (tool, own, subs) in [
                ("newuidmap", self.ids.uid, &self.ids.sub_uids),
                ("newgidmap", self.ids.gid, &self.ids.sub_gids),
            ] {
                let map = rootless::map_text(own, subs);
                let st = Command::new(tool)
                    .arg(&pid)
                    .args(map.split_whitespace())
                    .status();
                if !st.is_ok_and(|s| s.success()) {
                    eprintln!(
                        "isola: rootless networks: {tool} {pid} {}: failed",
                        map.trim()
                    );
                    return 1;
                }
            }
        }
        if sock.write_all(b"M").is_err() {
            return 1;
        }
        drop(sock);
        if nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM).is_err()
            || nix::unistd::getppid().as_raw() != self.parent
        {
            return 1;
        }
        // Forked before `isola up` blocks its signals; pasta must see
        // SIGTERM and SIGCHLD (said again, should that ever change).
        let _ = nix::sys::signal::sigprocmask(
            nix::sys::signal::SigmaskHow::SIG_SETMASK,
            Some(&nix::sys::signal::SigSet::empty()),
            None,
        );
        let e =
            std::os::unix::process::CommandExt::exec(Command::new("pasta").args(&self.pasta_args));
        eprintln!("isola: rootless networks: pasta: {e} (install Debian's passt)");
        1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_sockets_and_metrics_are_forwarded_and_privileged_ports_refused() {
        let stack: Value = serde_json::from_str(
            r#"{"networks": {"n": {}}, "services": {
                "web": {"sockets": [{"name": "h", "listen": "tcp://127.0.0.1:18080"},
                                    {"name": "d", "listen": "udp://0.0.0.0:15353"},
                                    {"name": "u", "listen": "unix:///tmp/x.sock"}]}}}"#,
        )
        .unwrap();
        let m = MetricsAddr::Tcp("127.0.0.1:19100".parse().unwrap());
        let f = forwards(&stack, Some(&m)).unwrap();
        assert_eq!(
            forward_args("-t", &f.tcp),
            ["-t", "127.0.0.1/18080", "-t", "127.0.0.1/19100"]
        );
        assert_eq!(forward_args("-u", &f.udp), ["-u", "0.0.0.0/15353"]);
        assert_eq!(forward_args("-u", &[]), ["-u", "none"]);
        let low: Value = serde_json::from_str(
            r#"{"services": {"web": {"sockets": [{"name": "h", "listen": "tcp://127.0.0.1:80"}]}}}"#,
        )
        .unwrap();
        let e = forwards(&low, None).unwrap_err();
        assert!(e.1.contains("services.web.sockets[0].listen"), "{}", e.1);
        assert!(e.1.contains("ip_unprivileged_port_start"), "{}", e.1);
    }
}
