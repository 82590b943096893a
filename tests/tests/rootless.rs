//! isola as an unprivileged user (uid 1001, with a subordinate id range):
//! `isola run` (quick form and a spec with a rootfs), ids inside the
//! namespace, limits in a cgroup subtree delegated to the user and the
//! one line without one, and `isola up` with its client commands on the
//! user's own default paths.

use std::io::{Read, Write};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use isola_tests::rootless::{self, user, Delegated, SUB_START, UID};
use isola_tests::*;
use serde_json::{json, Value};

const LIMIT: Duration = Duration::from_secs(120);

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A busybox rootfs in the user's directory `dir`.
fn rootfs(dir: &Path) -> std::path::PathBuf {
    let root = dir.join("rootfs");
    for d in ["bin", "proc", "dev", "tmp", "etc"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).expect("busybox-static");
    std::os::unix::fs::symlink("busybox", root.join("bin/sh")).unwrap();
    root
}

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
    let root = rootfs(&dir);
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
    let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(
        all.to_lowercase().contains("fork"),
        "forks beyond pids.max should fail: {all}"
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

fn http_get(port: u16) -> String {
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    let mut s = String::new();
    c.read_to_string(&mut s).unwrap();
    s
}

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
    let mut up = u
        .command(Some(&d.login), &isola_bin(), &["up", &path])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The user's default socket, in its runtime directory.
    let sock = u.runtime.join("isola/isola.sock");
    let t = Instant::now();
    while std::os::unix::net::UnixStream::connect(&sock).is_err() {
        if up.try_wait().unwrap().is_some() {
            let out = up.wait_with_output().unwrap();
            panic!(
                "isola up exited: {}{}",
                text(&out.stdout),
                text(&out.stderr)
            );
        }
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

/// podman as the user (its own user namespace from the user's ranges,
/// cgroupfs, vfs storage, no network), driving isola as it drives crun.
struct Podman {
    dir: std::path::PathBuf,
}

impl Podman {
    fn new() -> Podman {
        let u = user();
        let dir = u.dir("podman");
        for d in ["home/.config/containers", "tmp", "net"] {
            std::fs::create_dir_all(dir.join(d)).unwrap();
        }
        let d = dir.display();
        let files = [
            ("containers.conf", format!("[containers]\nnetns = \"none\"\n[engine]\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\nruntime_supports_json = [\"crun\", \"runc\", \"isola\"]\n[engine.runtimes]\nisola = [\"{}\"]\n[network]\nnetwork_config_dir = \"{d}/net\"\n", isola_bin().display())),
            ("storage.conf", "[storage]\ndriver = \"vfs\"\n".to_string()),
            ("registries.conf", String::new()),
            ("home/.config/containers/policy.json", r#"{"default":[{"type":"insecureAcceptAnything"}]}"#.to_string()),
        ];
        for (f, t) in files {
            std::fs::write(dir.join(f), t).unwrap();
        }
        let root = rootfs(&dir);
        for a in ["echo", "true", "sleep", "cat", "id"] {
            std::os::unix::fs::symlink("busybox", root.join("bin").join(a)).unwrap();
        }
        let tar = dir.join("rootfs.tar");
        let st = std::process::Command::new("tar")
            .args([
                "-C",
                &root.display().to_string(),
                "-cf",
                &tar.display().to_string(),
                ".",
            ])
            .status()
            .unwrap();
        assert!(st.success());
        let chown = std::process::Command::new("chown")
            .args(["-R", &format!("{UID}:{UID}"), &d.to_string()])
            .status()
            .unwrap();
        assert!(chown.success());
        Podman { dir }
    }

    fn run(&self, cgroup: Option<&Path>, args: &[&str]) -> std::process::Output {
        let d = &self.dir;
        let mut all = vec!["-k", "5", "120", "podman"];
        all.extend_from_slice(args);
        let mut c = user().command(cgroup, Path::new("/usr/bin/timeout"), &all);
        c.env("CONTAINERS_CONF", d.join("containers.conf"))
            .env("CONTAINERS_STORAGE_CONF", d.join("storage.conf"))
            .env("CONTAINERS_REGISTRIES_CONF", d.join("registries.conf"))
            .env("HOME", d.join("home"))
            .env("TMPDIR", d.join("tmp"))
            .stdin(Stdio::null());
        c.output().expect("podman (Debian package podman)")
    }

    fn ok(&self, cgroup: Option<&Path>, args: &[&str]) -> String {
        let out = self.run(cgroup, args);
        assert!(
            out.status.success(),
            "podman {args:?}: {}",
            text(&out.stderr)
        );
        text(&out.stdout).trim().to_string()
    }
}

impl Drop for Podman {
    /// podman leaves its user namespace's pause process behind.
    fn drop(&mut self) {
        let _ = std::process::Command::new("pkill")
            .args(["-KILL", "-U", &UID.to_string()])
            .status();
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn podman_rootless_runs_containers_with_isola_as_with_crun() {
    require_vm();
    let p = Podman::new();
    let tar = p.dir.join("rootfs.tar").display().to_string();
    p.ok(None, &["import", &tar, "localhost/bb"]);
    let show = "id -u; cat /proc/self/uid_map";
    // crun is the control: the same container the same way.
    let want = p.ok(
        None,
        &[
            "run",
            "--rm",
            "--runtime",
            "crun",
            "localhost/bb",
            "sh",
            "-c",
            show,
        ],
    );
    let got = p.ok(
        None,
        &[
            "run",
            "--rm",
            "--runtime",
            "isola",
            "localhost/bb",
            "sh",
            "-c",
            show,
        ],
    );
    assert_eq!(got, want, "isola as crun");
    let lines: Vec<Vec<&str>> = got
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(lines[0], ["0"], "{got}");
    assert_eq!(
        lines[1],
        ["0", &UID.to_string(), "1"],
        "podman's namespace: {got}"
    );

    let out = p.run(
        None,
        &[
            "run",
            "--rm",
            "--runtime",
            "isola",
            "localhost/bb",
            "sh",
            "-c",
            "exit 7",
        ],
    );
    assert_eq!(out.status.code(), Some(7), "{}", text(&out.stderr));

    let id = p.ok(
        None,
        &[
            "run",
            "-d",
            "--runtime",
            "isola",
            "localhost/bb",
            "sleep",
            "100",
        ],
    );
    let running = p.ok(
        None,
        &["ps", "-q", "--no-trunc", "--filter", "status=running"],
    );
    assert!(running.contains(&id), "{running}");
    let said = p.ok(None, &["exec", &id, "sh", "-c", "echo in; id -u"]);
    assert_eq!(said, "in\n0", "podman exec");
    p.ok(None, &["stop", "-t", "2", &id]);
    let running = p.ok(
        None,
        &["ps", "-q", "--no-trunc", "--filter", "status=running"],
    );
    assert!(!running.contains(&id), "{running}");
    p.ok(None, &["rm", &id]);

    // --memory, with a subtree delegated to the user: enforced in it.
    let d = Delegated::new("podman");
    let got = p.ok(
        Some(&d.login),
        &[
            "run",
            "--rm",
            "--runtime",
            "isola",
            "--memory",
            "64m",
            "localhost/bb",
            "cat",
            "/sys/fs/cgroup/memory.max",
        ],
    );
    assert_eq!(got, "67108864");
}

/// An uplink for pasta to copy: the VM has no network device, and pasta
/// takes the host's addresses and routes from its default route. Removed
/// on drop.
struct Uplink;

impl Uplink {
    fn new() -> Uplink {
        let ip = |args: &str| {
            let st = std::process::Command::new("sh")
                .args(["-c", &format!("ip {args}")])
                .status()
                .unwrap();
            assert!(st.success(), "ip {args}");
        };
        ip("link add isola-up0 type veth peer name isola-up1");
        ip("addr add 10.250.0.2/24 dev isola-up0");
        ip("link set isola-up0 up");
        ip("link set isola-up1 up");
        ip("route add default via 10.250.0.1");
        Uplink
    }
}

impl Drop for Uplink {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["link", "del", "isola-up0"])
            .status();
    }
}

#[test]
fn net_pasta_gives_a_users_sandbox_outbound_access() {
    require_vm();
    let u = user();
    let _up = Uplink::new();
    // A server on the VM's loopback: pasta maps the gateway's address to it.
    let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = server.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for c in server.incoming().flatten() {
            let mut c = c;
            let _ = c.write_all(b"outside\n");
        }
    });
    let fetch = format!(
        "G=$(ip route | awk '/default/ {{print $3}}'); [ -n \"$G\" ] || {{ echo no-route; exit 3; }}; python3 -c \"import socket; s=socket.create_connection(('$G', {port}), 5); print(s.recv(100).decode().strip())\""
    );
    let out = u.isola(
        None,
        &["run", "--net", "pasta", "--", "sh", "-c", &fetch],
        "",
        LIMIT,
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert_eq!(text(&out.stdout).trim(), "outside");
    // The control: its own namespace without pasta has no way out.
    let out = u.isola(
        None,
        &["run", "--net", "none", "--", "sh", "-c", &fetch],
        "",
        LIMIT,
    );
    assert_eq!(
        text(&out.stdout).trim(),
        "no-route",
        "{}",
        text(&out.stderr)
    );
    // pasta quits with the namespace.
    let t = Instant::now();
    while !rootless::user_processes().is_empty() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "{:?}",
            rootless::user_processes()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Root is told what to use instead.
    let out = isola(&["run", "--net", "pasta", "--", "true"], "", LIMIT);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("--net pasta: for unprivileged users"));
}

/// A service that answers every connection on port 7000 with a line.
const DB: &str = r#"import socket
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 7000))
s.listen()
while True:
    c, _ = s.accept()
    c.sendall(b"db says hi")
    c.close()
"#;

/// On the held socket: each request asks `db` (by name) and answers with
/// what it said.
const FRONT: &str = r#"import socket
s = socket.socket(fileno=3)
while True:
    c, _ = s.accept()
    c.recv(1024)
    try:
        d = socket.create_connection(("db", 7000), 5)
        said = d.recv(100)
    except OSError as e:
        said = str(e).encode()
    c.sendall(b"HTTP/1.0 200 OK\r\n\r\n" + said)
    c.close()
"#;

#[test]
fn stack_networks_as_a_user_in_a_namespace_of_its_own() {
    require_vm();
    let u = user();
    let _up = Uplink::new();
    let dir = u.dir("net");
    let ns = json!([{"type": "pid"}, {"type": "mount"}, {"type": "network"}]);
    let stack = json!({
        "networks": {"back": {}},
        "services": {
            "db": {"process": {"args": ["python3", "-c", DB], "user": {"uid": 33, "gid": 33}},
                   "networks": ["back"], "linux": {"namespaces": ns}},
            "front": {"process": {"args": ["python3", "-c", FRONT]},
                      "sockets": [{"name": "http", "listen": "tcp://127.0.0.1:18433"}],
                      "networks": ["back"], "linux": {"namespaces": ns}}
        }
    });
    let path = dir.join("rn.json");
    std::fs::write(&path, stack.to_string()).unwrap();
    let path = path.display().to_string();
    let mut up = u
        .command(None, &isola_bin(), &["up", &path])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let sock = u.runtime.join("isola/isola.sock");
    let t = Instant::now();
    let answer = loop {
        if up.try_wait().unwrap().is_some() {
            let out = up.wait_with_output().unwrap();
            panic!(
                "isola up exited: {}{}",
                text(&out.stdout),
                text(&out.stderr)
            );
        }
        let served = sock.exists()
            && std::net::TcpStream::connect("127.0.0.1:18433").is_ok()
            && http_get(18433).ends_with("db says hi");
        if served {
            break http_get(18433);
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "front never answered from db"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(answer.ends_with("db says hi"), "{answer}");
    // Addresses on the stack's network, shown as for root.
    let out = u.isola(None, &["status", "--json"], "", LIMIT);
    let all: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    for s in &all {
        assert!(
            s["addresses"]["back"]
                .as_str()
                .is_some_and(|a| a.starts_with("10.")),
            "{s}"
        );
    }
    // db runs as uid 33 of the supervisor's namespace: a subordinate id.
    let (code, said, err) = {
        let o = u.isola(
            None,
            &[
                "exec",
                "db",
                "--",
                "sh",
                "-c",
                "id -u; cat /proc/self/uid_map",
            ],
            "",
            LIMIT,
        );
        (o.status.code(), text(&o.stdout), text(&o.stderr))
    };
    assert_eq!(code, Some(0), "{said}{err}");
    assert!(said.starts_with("33\n"), "{said}");
    assert!(
        said.contains(&SUB_START.to_string()),
        "the user's range is mapped: {said}"
    );
    let out = u.isola(None, &["down"], "", LIMIT);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(up.wait().unwrap().success());
    let t = Instant::now();
    while !rootless::user_processes().is_empty() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "{:?}",
            rootless::user_processes()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
