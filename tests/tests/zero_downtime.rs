//! Zero downtime: sockets the supervisor holds across restarts (socket
//! activation), the fd store, replicas sharing a port, overlapping
//! restarts. Each test runs a load client against the port while the
//! service is restarted or killed, and counts what failed; the control — a
//! service that binds its own port — shows the failures the feature
//! removes.

use std::io::Read;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use isola_tests::load::*;
use isola_tests::up::*;
use isola_tests::*;
use serde_json::{json, Value};

fn fast_restart(mode: &str) -> Value {
    json!({"policy": "always", "mode": mode, "delayMs": 50, "limit": {"burst": 1000, "intervalMs": 60000}})
}

/// `isola restart web` `n` times under load; what the client saw.
fn restarts_under_load(up: &Up, port: u16, n: usize) -> Tally {
    wait_serving(port);
    let load = Load::start(port);
    for _ in 0..n {
        let (code, out, err) = up.cli(&["restart", "web"]);
        assert_eq!(code, 0, "{out}{err}");
        // The new instance serves before the next restart.
        load.wait_answers(3);
    }
    let t = load.finish();
    eprintln!("{t:?}");
    t
}

#[test]
fn ten_restarts_under_load_fail_no_request_with_held_sockets() {
    require_vm();
    for (k, mode) in ["replace", "overlap"].into_iter().enumerate() {
        let port = 18100 + u16::try_from(k).unwrap();
        let up = Up::start(
            &format!("held-{mode}"),
            json!({"web": python(&server(port), json!({
                "restart": fast_restart(mode),
                "sockets": held(port)
            }))}),
            &[],
        );
        let t = restarts_under_load(&up, port, 10);
        assert!(t.ok >= 30, "{mode}: {t:?}");
        assert_eq!((t.refused, t.other), (0, 0), "{mode}: {t:?}");
        let s = up.service("web");
        assert_eq!(s["state"], "running", "{s}");
        // Each overlap started the new sandbox first and stopped the old
        // one only once it served; a replace never did.
        let (_, log, _) = up.cli(&["logs", "-n", "1000", "web"]);
        let handovers = log
            .matches("overlap: ready; stopping the old sandbox")
            .count();
        assert_eq!(
            handovers,
            if mode == "overlap" { 10 } else { 0 },
            "{mode}: {log}"
        );
        up.down();
    }
    assert_clean();
}

#[test]
fn a_service_binding_its_own_port_refuses_connections_while_it_restarts() {
    require_vm();
    let port = 18110;
    let up = Up::start(
        "control",
        json!({"web": python(&server(port), json!({"restart": fast_restart("replace")}))}),
        &[],
    );
    let t = restarts_under_load(&up, port, 10);
    assert!(t.ok >= 10, "{t:?}");
    assert!(t.refused + t.other > 0, "the control lost nothing: {t:?}");
    up.down();
    assert_clean();
}

#[test]
fn sigkill_from_outside_refuses_nothing_connections_wait_in_the_backlog() {
    require_vm();
    let port = 18111;
    let up = Up::start(
        "killed",
        json!({"web": python(&server(port), json!({
            "restart": fast_restart("replace"),
            "sockets": held(port)
        }))}),
        &[],
    );
    wait_serving(port);
    let load = Load::start(port);
    for n in 1..=10u64 {
        let s = up.wait_state("web", "running");
        let pid = i32::try_from(s["pid"].as_i64().expect("pid")).unwrap();
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL).unwrap();
        up.wait_for("web", "a restart", Duration::from_secs(60), |s| {
            s["restarts"].as_u64() >= Some(n) && s["state"] == "running"
        });
        load.wait_answers(3);
    }
    std::thread::sleep(Duration::from_millis(300));
    let t = load.finish();
    eprintln!("{t:?}");
    // A connection the killed process had taken dies with it (`other`);
    // none that arrived while no process served is refused.
    assert_eq!(t.refused, 0, "{t:?}");
    assert!(t.ok >= 10, "{t:?}");
    up.down();
    assert_clean();
}

/// The payload checks its environment and fds and prints what it found.
const ACTIVATION_CHECK: &str = r#"import os
names = os.environ["LISTEN_FDNAMES"]
n = int(os.environ["LISTEN_FDS"])
def is_open(fd):
    try:
        os.fstat(fd)
        return True
    except OSError:
        return False
print("pid", os.getpid(), "listen_pid", os.environ["LISTEN_PID"], "fds", n, "names", names,
      "open", [fd for fd in range(3, 3 + n) if is_open(fd)], "next_open", is_open(3 + n),
      "any_other", [fd for fd in range(3 + n, 64) if is_open(fd)], flush=True)
"#;

#[test]
fn listen_pid_is_the_payloads_own_pid_and_fds_come_in_order_with_nothing_else() {
    require_vm();
    let dir = Scratch::new("activation");
    let sock = dir.path("admin.sock");
    let up = Up::start(
        "activation",
        json!({"web": python(ACTIVATION_CHECK, json!({
            "restart": {"policy": "no"},
            "process": {"env": ["LISTEN_PID=1", "LISTEN_FDS=9", "PATH=/usr/bin:/bin"]},
            "sockets": [
                {"name": "http", "listen": "tcp://127.0.0.1:18112"},
                {"name": "admin", "listen": format!("unix://{}", sock.display()), "mode": "0600"},
                {"name": "dns", "listen": "udp://127.0.0.1:18113"}
            ]
        }))}),
        &[],
    );
    up.wait_state("web", "exited");
    let (_, line, _) = up.cli(&["logs", "-n", "10", "web"]);
    assert!(
        line.contains(
            "pid 2 listen_pid 2 fds 3 names http:admin:dns open [3, 4, 5] next_open False any_other []"
        ),
        "{line}"
    );
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&sock).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
    up.down();
    assert!(!sock.exists(), "the unix socket's file outlived the stack");
    assert_clean();
}

#[test]
fn a_service_in_its_own_network_namespace_serves_the_hosts_port() {
    require_vm();
    let port = 18114;
    let up = Up::start(
        "netns",
        json!({"web": python(&server(port), json!({
            "sockets": held(port),
            "linux": {"namespaces": [{"type": "pid"}, {"type": "mount"}, {"type": "network"}]}
        }))}),
        &[],
    );
    wait_serving(port);
    up.down();
    assert_clean();
}

#[test]
fn a_port_in_use_stops_up_with_the_field_and_nothing_started() {
    require_vm();
    let taken = std::net::TcpListener::bind("127.0.0.1:18115").unwrap();
    let dir = Scratch::new("port-in-use");
    let stack = dir.write(
        "inuse.json",
        &json!({"services": {
            "first": svc("sleep 100", json!({})),
            "web": svc("sleep 100", json!({"sockets": held(18115)}))
        }})
        .to_string(),
    );
    let sock = dir.path("sock");
    let out = isola(
        &[
            "up",
            "--socket",
            &sock.to_string_lossy(),
            &stack.to_string_lossy(),
        ],
        "",
        Duration::from_secs(60),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(
            "services.web.sockets[0]: tcp://127.0.0.1:18115: bind: Address already in use"
        ),
        "{err}"
    );
    assert!(processes_matching("sleep 100").is_empty());
    drop(taken);
    assert_clean();
}

/// Replicas of `web` in status that serve: running, not a successor.
fn running_replicas(up: &Up) -> usize {
    up.status()
        .iter()
        .filter(|s| s["group"] == "web" && s["state"] == "running" && s["replacing"].is_null())
        .count()
}

#[test]
fn four_replicas_share_the_port_and_a_rolling_restart_keeps_three_serving() {
    require_vm();
    let port = 18116;
    let up = Up::start(
        "replicas",
        json!({"web": python(&server(port), json!({
            "restart": fast_restart("replace"),
            "sockets": held(port),
            "replicas": 4
        }))}),
        &[],
    );
    for k in 1..=4 {
        up.wait_state(&format!("web.{k}"), "running");
    }
    wait_serving(port);
    let load = Load::start(port);
    // Every replica answers (the kernel hands connections to whichever
    // waits in accept).
    let until = Instant::now() + Duration::from_secs(60);
    let mut seen = std::collections::BTreeSet::new();
    while seen.len() < 4 && Instant::now() < until {
        if let Ok(mut c) = TcpStream::connect(("127.0.0.1", port)) {
            let mut s = String::new();
            if c.read_to_string(&mut s).is_ok() {
                seen.insert(s.trim().to_string());
            }
        }
    }
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), ["1", "2", "3", "4"]);
    let mut restart = up.spawn_cli(&["restart", "web"]);
    let mut fewest = 4;
    let mut polls = 0;
    while restart.try_wait().expect("restart client").is_none() {
        fewest = fewest.min(running_replicas(&up));
        polls += 1;
    }
    let out = restart.wait_with_output().expect("restart output");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        polls > 3,
        "the rolling restart was not watched ({polls} polls)"
    );
    assert_eq!(
        fewest, 3,
        "fewest replicas running during the rolling restart"
    );
    for k in 1..=4 {
        let s = up.service(&format!("web.{k}"));
        assert_eq!(
            (s["state"].as_str(), s["restarts"].as_u64()),
            (Some("running"), Some(1)),
            "{s}"
        );
    }
    load.wait_answers(3);
    let (code, out, err) = up.cli(&["scale", "web", "2"]);
    assert_eq!((code, out.trim()), (0, "web: 2 replicas"), "{err}");
    up.wait_for("web.1", "scaled down", Duration::from_secs(60), |_| {
        up.status().len() == 2
    });
    load.wait_answers(3);
    let t = load.finish();
    eprintln!("{t:?}");
    assert_eq!((t.refused, t.other), (0, 0), "{t:?}");
    let (code, _, err) = up.cli(&["scale", "nope", "2"]);
    assert_eq!(code, 1, "{err}");
    up.down();
    assert_clean();
}

/// Says READY=1 over sd_notify only while `flag` exists.
fn notify_if(flag: &str) -> String {
    format!(
        r#"if os.path.exists("{flag}"):
    n = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    n.connect(os.environ["NOTIFY_SOCKET"])
    n.send(b"READY=1")"#
    )
}

#[test]
fn an_overlap_whose_new_sandbox_never_gets_ready_keeps_the_old_one_serving() {
    require_vm();
    let port = 18117;
    let dir = Scratch::new("overlap-unready");
    let flag = dir.path("ready");
    std::fs::write(&flag, "").unwrap();
    let flag = flag.to_string_lossy().into_owned();
    let mut restart = fast_restart("overlap");
    restart["readyTimeoutMs"] = json!(3000);
    let up = Up::start(
        "overlap-unready",
        json!({"web": python(&server_then(port, &notify_if(&flag)), json!({
            "restart": restart,
            "sockets": held(port),
            "notify": "systemd",
            "mounts": [dir.shared()]
        }))}),
        &[],
    );
    let before = up.wait_for("web", "ready", Duration::from_secs(60), |s| {
        s["ready"] == true
    });
    wait_serving(port);
    let load = Load::start(port);
    std::fs::remove_file(&flag).unwrap();
    let (code, out, err) = up.cli(&["restart", "web"]);
    assert_eq!((code, out.trim()), (0, "web: failed"), "{err}");
    let s = up.service("web");
    assert_eq!(
        (&s["pid"], &s["state"], &s["ready"]),
        (&before["pid"], &json!("running"), &json!(true)),
        "{s}"
    );
    // The unready sandbox is stopped and forgotten.
    up.wait_for("web", "one sandbox left", Duration::from_secs(60), |_| {
        up.status().len() == 1
    });
    load.wait_answers(3);
    // Ready again: the same restart hands over (the new sandbox's READY=1
    // comes over the socket the old one still holds).
    std::fs::write(&flag, "").unwrap();
    let (code, out, err) = up.cli(&["restart", "web"]);
    assert_eq!((code, out.trim()), (0, "web: running"), "{err}");
    let s = up.service("web");
    assert_ne!(s["pid"], before["pid"], "{s}");
    assert_eq!(
        (&s["restarts"], &s["ready"]),
        (&json!(1), &json!(true)),
        "{s}"
    );
    load.wait_answers(3);
    let t = load.finish();
    eprintln!("{t:?}");
    assert_eq!((t.refused, t.other), (0, 0), "{t:?}");
    let err = up.down();
    assert!(
        err.contains(
            "web: overlap: the new sandbox was not ready within 3000 ms; this one keeps serving"
        ),
        "{err}"
    );
    assert_clean();
}

/// Counts its starts in a memfd it keeps in the supervisor's fd store.
const FD_STORE_COUNTER: &str = r#"import os, socket, time
names = os.environ.get("LISTEN_FDNAMES", "").split(":") if "LISTEN_FDS" in os.environ else []
if "counter" in names:
    fd = 3 + names.index("counter")
    n = int(os.pread(fd, 32, 0) or b"0") + 1
else:
    fd = os.memfd_create("counter")
    n = 1
os.ftruncate(fd, 0)
os.pwrite(fd, str(n).encode(), 0)
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.connect(os.environ["NOTIFY_SOCKET"])
if "counter" not in names:
    socket.send_fds(s, [b"FDSTORE=1\nFDNAME=counter"], [fd])
s.send(b"READY=1")
print("count", n, flush=True)
time.sleep(0.5)
raise SystemExit(3)
"#;

#[test]
fn the_fd_store_keeps_a_memfd_across_restarts_until_a_stop() {
    require_vm();
    let up = Up::start(
        "fdstore",
        json!({"web": python(FD_STORE_COUNTER, json!({
            "restart": {"policy": "on-failure", "delayMs": 200, "limit": {"burst": 100, "intervalMs": 60000}},
            "notify": "systemd",
            "fdStoreMax": 2
        }))}),
        &[],
    );
    up.wait_log("web", "count 3");
    let (code, out, err) = up.cli(&["stop", "web"]);
    assert_eq!((code, out.trim()), (0, "web: stopped"), "{err}");
    let (code, _, err) = up.cli(&["start", "web"]);
    assert_eq!(code, 0, "{err}");
    // Stopped on purpose: the store was dropped, counting starts over.
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, log, _) = up.cli(&["logs", "-n", "50", "web"]);
        let after_stop = log.rsplit_once("stopped").map_or("", |(_, tail)| tail);
        if after_stop.contains("count 1") {
            break;
        }
        assert!(
            Instant::now() < until,
            "no fresh count after the stop:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    up.down();
    assert_clean();
}
