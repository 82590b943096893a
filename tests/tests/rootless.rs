//! isola as an unprivileged user (uid 1001, with a subordinate id range):
//! `isola run` (quick form and a spec with a rootfs), ids inside the
//! namespace, limits in a cgroup subtree delegated to the user and the
//! one line without one, and `isola up` with its client commands on the
//! user's own default paths.

use std::time::{Duration, Instant};

use isola_tests::rootless::{
    self, busybox_rootfs, http_get, text, user, Delegated, SUB_START, UID,
};
use isola_tests::*;
use serde_json::{json, Value};

const LIMIT: Duration = Duration::from_secs(120);

#[test]
fn a_user_runs_the_quick_form_and_a_rootfs_spec_as_root_of_its_own_namespace() {
    require_vm();
    let u = user();
    let out = u.isola(
        None,
        &[
            "run",
            "--",
            "sh",
            "-c",
            "id -u; id -g; cat /proc/self/uid_map",
        ],
        "",
        LIMIT,
    );
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    let lines: Vec<Vec<&str>> = stdout
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(lines[0], ["0"], "{stdout}");
    assert_eq!(lines[1], ["0"], "{stdout}");
    let uid = UID.to_string();
    let sub = SUB_START.to_string();
    assert_eq!(lines[2], ["0", uid.as_str(), "1"], "{stdout}");
    assert_eq!(lines[3], ["1", sub.as_str(), "65536"], "{stdout}");

    // A spec with a rootfs, its payload as uid 33 (in the user's range).
    let dir = u.dir("spec");
    let root = busybox_rootfs(&dir);
    let spec = json!({
        "root": {"path": root},
        "process": {"args": ["/bin/busybox", "sh", "-c", "id -u; id -g; echo x > /tmp/f && /bin/busybox stat -c '%u %g' /tmp/f"],
                    "cwd": "/", "user": {"uid": 33, "gid": 33}},
        "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"},
                   {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs"}],
        "linux": {"namespaces": [{"type": "pid"}, {"type": "mount"}, {"type": "uts"}, {"type": "ipc"}, {"type": "network"}]}
    });
    let out = u.isola(None, &["run", "-"], &spec.to_string(), LIMIT);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        ["33", "33", "33 33"],
        "{stdout}"
    );

    // Ids beyond what the user owns: one line naming the field and the ranges.
    let mut far = spec.clone();
    far["process"]["user"] = json!({"uid": 70000, "gid": 0});
    let out = u.isola(None, &["run", "-"], &far.to_string(), LIMIT);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    for want in [
        "process.user.uid: 70000",
        &format!("0 (your uid {UID})"),
        "1-65536 (/etc/subuid 200000-265535)",
    ] {
        assert!(err.contains(want), "missing {want:?}: {err}");
    }
    assert!(
        rootless::user_processes().is_empty(),
        "{:?}",
        rootless::user_processes()
    );
}

#[test]
fn without_a_delegated_subtree_limits_are_refused_in_one_line() {
    require_vm();
    let u = user();
    let out = u.isola(None, &["run", "--memory", "64M", "--", "true"], "", LIMIT);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    for want in [
        "linux.resources: limits need a cgroup v2 subtree delegated to uid 1001",
        "systemd-run --user --scope -p Delegate=yes",
        "--no-cgroup",
    ] {
        assert!(err.contains(want), "missing {want:?}: {err}");
    }
    // A group the user does not own, named outright.
    let out = u.isola(
        None,
        &["run", "--cgroup-root", "/sys/fs/cgroup/isola", "--", "true"],
        "",
        LIMIT,
    );
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--cgroup-root /sys/fs/cgroup/isola: not delegated to uid 1001"),
        "{err}"
    );
}

#[test]
fn limits_hold_in_a_subtree_delegated_to_the_user() {
    require_vm();
    let u = user();
    let d = Delegated::new("limits");
    let group = d.user.join("isola/lim");
    let show = format!(
        "cat {g}/memory.max {g}/pids.max {g}/cpu.max",
        g = group.display()
    );
    let out = u.isola(
        Some(&d.login),
        &[
            "run", "--name", "lim", "--memory", "48M", "--pids", "20", "--cpus", "0.5", "--", "sh",
            "-c", &show,
        ],
        "",
        LIMIT,
    );
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        ["50331648", "20", "50000 100000"],
        "the sandbox's group is the user's isola/lim: {stdout}"
    );
    assert!(!group.exists(), "group left behind");

    // Memory: the OOM killer, reported.
    let out = u.isola(
        Some(&d.login),
        &[
            "run",
            "--memory",
            "32M",
            "--memory-swap",
            "0",
            "--",
            "sh",
            "-c",
            "x=$(head -c 200000000 /dev/zero | tr '\\0' a); echo survived",
        ],
        "",
        LIMIT,
    );
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(137), "{}{err}", text(&out.stdout));
    assert!(
        err.contains("killed by the OOM killer (memory.max=33554432)"),
        "{err}"
    );

    // Pids: forks beyond the limit fail.
    let out = u.isola(
        Some(&d.login),
        &[
            "run",
            "--pids",
            "8",
            "--",
            "sh",
            "-c",
            "for i in 1 2 3 4 5 6 7 8 9 10 11 12; do sleep 5 & done; echo looped",
        ],
        "",
        LIMIT,
    );
    // The shell itself says so (dash: "sh: 0: Cannot fork"), not isola.
    let err = text(&out.stderr);
    assert_ne!(out.status.code(), Some(125), "{err}");
    assert!(
        err.lines()
            .any(|l| l.starts_with("sh:") && l.to_lowercase().contains("fork")),
        "forks beyond pids.max should fail: {err}"
    );

    // A controller the subtree does not have (io is not delegated here):
    // named.
    let out = u.isola(
        Some(&d.login),
        &["run", "--io-weight", "200", "--", "true"],
        "",
        LIMIT,
    );
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("controller io is not delegated to this user"),
        "{err}"
    );
    assert!(
        rootless::user_processes().is_empty(),
        "{:?}",
        rootless::user_processes()
    );
}

/// A server on the held socket (fd 3) answering each request with its
/// uid inside.
const SERVER: &str = r#"import os, socket
s = socket.socket(fileno=3)
while True:
    c, _ = s.accept()
    c.recv(1024)
    c.sendall(b"HTTP/1.0 200 OK\r\n\r\nuid " + str(os.getuid()).encode())
    c.close()
"#;

fn cli(d: &Delegated, args: &[&str]) -> (i32, String, String) {
    let out = user().isola(Some(&d.login), args, "", LIMIT);
    (
        out.status.code().unwrap_or(-1),
        text(&out.stdout),
        text(&out.stderr),
    )
}

#[test]
fn up_as_a_user_on_its_own_paths_with_limits_a_held_socket_and_every_client_command() {
    require_vm();
    let u = user();
    let d = Delegated::new("up");
    let dir = u.dir("up");
    let ns = json!([{"type": "pid"}, {"type": "mount"}, {"type": "network"}]);
    let stack = json!({"services": {
        "web": {"process": {"args": ["python3", "-c", SERVER]},
                "sockets": [{"name": "http", "listen": "tcp://127.0.0.1:18431"}],
                "linux": {"namespaces": ns, "resources": {"memory": {"limit": 67108864}}}},
        "hog": {"process": {"args": ["sh", "-c", "echo hog-up; sleep 1; x=$(head -c 200000000 /dev/zero | tr '\\0' a)"]},
                "restart": {"policy": "no"},
                "linux": {"namespaces": ns, "resources": {"memory": {"limit": 33554432, "swap": 33554432}}}}
    }});
    let path = dir.join("rl.json");
    std::fs::write(&path, stack.to_string()).unwrap();
    let path = path.display().to_string();
    let mut up = u.spawn_up(Some(&d.login), &path);
    // The user's default socket, in its runtime directory.
    let sock = u.runtime.join("isola/isola.sock");
    let t = Instant::now();
    while std::os::unix::net::UnixStream::connect(&sock).is_err() {
        rootless::assert_up(&mut up);
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "no socket at {}",
            sock.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        http_get(18431).lines().last(),
        Some("uid 0"),
        "served as root of its namespace"
    );

    // The hog is killed by the OOM killer in its group, and said so.
    let t = Instant::now();
    let hog = loop {
        let (_, out, _) = cli(&d, &["status", "--json"]);
        let all: Vec<Value> = serde_json::from_str(&out).unwrap_or_default();
        let hog = all
            .into_iter()
            .find(|s| s["name"] == "hog")
            .unwrap_or_default();
        if hog["oomKills"].as_u64().unwrap_or(0) > 0 && hog["state"] == "exited" {
            break hog;
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "no OOM kill seen: {hog}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(hog["lastExit"]["reason"], "oom-kill", "{hog}");
    assert!(
        d.user.join("isola/rl/web/memory.max").exists(),
        "web runs in the user's subtree"
    );

    let (code, out, err) = cli(
        &d,
        &[
            "exec",
            "web",
            "--",
            "sh",
            "-c",
            "id -u; cat /proc/self/uid_map",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.starts_with("0\n"), "{out}");
    // Root exec'ing into the user's sandbox takes on the user's namespace
    // (not the host's root in there), without root's groups.
    let sock = u.runtime.join("isola/isola.sock").display().to_string();
    let out = isola(
        &[
            "exec",
            "--socket",
            &sock,
            "web",
            "--",
            "sh",
            "-c",
            "head -1 /proc/self/uid_map; id -G",
        ],
        "",
        LIMIT,
    );
    let said = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{said}{}", text(&out.stderr));
    let lines: Vec<Vec<&str>> = said
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(lines[0], ["0", &UID.to_string(), "1"], "{said}");
    assert_eq!(lines[1], ["0"], "{said}");
    // From a shell outside the delegated subtree the exec cannot enter
    // the service's group: one line says where to run it.
    let out = u.isola(None, &["exec", "web", "--", "true"], "", LIMIT);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("cannot join its cgroup"), "{err}");
    let (code, out, _) = cli(&d, &["logs", "hog"]);
    assert_eq!(code, 0);
    assert!(out.contains("hog-up"), "{out}");
    let log = u.home.join(".local/state/isola/rl/hog.log");
    assert!(log.exists(), "the user's log directory: {}", log.display());
    let (code, _, err) = cli(&d, &["stop", "web"]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = cli(&d, &["down"]);
    assert_eq!(code, 0, "{err}");
    let st = up.wait().unwrap();
    assert!(st.success(), "isola up: {st}");
    assert!(!d.user.join("isola/rl").exists(), "stack group left behind");
    assert!(
        rootless::user_processes().is_empty(),
        "{:?}",
        rootless::user_processes()
    );
}

#[test]
fn a_privileged_port_is_refused_naming_the_sysctl() {
    require_vm();
    let u = user();
    let dir = u.dir("port");
    let stack = json!({"services": {"web": {
        "process": {"args": ["sleep", "100"]},
        "sockets": [{"name": "http", "listen": "tcp://127.0.0.1:80"}],
        "linux": {"namespaces": [{"type": "pid"}, {"type": "mount"}]}}}});
    let path = dir.join("p.json");
    std::fs::write(&path, stack.to_string()).unwrap();
    let out = u.isola(None, &["up", &path.display().to_string()], "", LIMIT);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("port 80 is below net.ipv4.ip_unprivileged_port_start (1024)"),
        "{err}"
    );
    assert!(
        rootless::user_processes().is_empty(),
        "{:?}",
        rootless::user_processes()
    );
}
