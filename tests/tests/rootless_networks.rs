//! isola's networks as an unprivileged user (uid 1001, with a
//! subordinate range): `isola run --net pasta`, and a stack's networks
//! inside a user and network namespace of the supervisor's own.

use std::io::Write;
use std::process::Stdio;
use std::time::{Duration, Instant};

use isola_tests::rootless::{self, http_get, text, try_http_get, user, Uplink, SUB_START};
use isola_tests::*;
use serde_json::{json, Value};

const LIMIT: Duration = Duration::from_secs(120);

/// A port nothing listens on now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn net_pasta_gives_a_users_sandbox_outbound_access() {
    require_vm();
    let u = user();
    let _up = Uplink::up();
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
    // Nothing is forwarded into the sandbox: a listener of its own stays
    // its own (pasta's default would publish it on the host).
    let inner = free_port();
    let listen = format!(
        "python3 -c \"import socket,time; s=socket.socket(); s.bind(('0.0.0.0', {inner})); s.listen(); print('listening', flush=True); time.sleep(4)\""
    );
    let mut child = u
        .command(
            None,
            &isola_bin(),
            &["run", "--net", "pasta", "--", "sh", "-c", &listen],
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    let mut r = std::io::BufReader::new(child.stdout.take().unwrap());
    std::io::BufRead::read_line(&mut r, &mut line).unwrap();
    assert_eq!(line.trim(), "listening");
    // pasta's automatic forwards would have looked by now (once a second).
    std::thread::sleep(Duration::from_millis(2500));
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", inner)).is_err(),
        "the sandbox's listener is reachable from the host"
    );
    assert!(child.wait().unwrap().success());
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
    rootless::wait_no_user_processes();
    // isola run killed outright: pasta goes with it (PDEATHSIG), as does
    // the sandbox.
    let mut child = u
        .command(
            None,
            &isola_bin(),
            &["run", "--net", "pasta", "--", "sleep", "30"],
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while !rootless::user_processes()
        .iter()
        .any(|p| p.contains("pasta"))
    {
        assert!(t.elapsed() < Duration::from_secs(20), "pasta never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    rootless::wait_no_user_processes();
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
    let _up = Uplink::up();
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
    let mut up = u.spawn_up(None, &path);
    let sock = u.runtime.join("isola/isola.sock");
    let t = Instant::now();
    let answer = loop {
        rootless::assert_up(&mut up);
        let answer = sock.exists().then(|| try_http_get(18433).ok()).flatten();
        if let Some(a) = answer.filter(|a| a.ends_with("db says hi")) {
            break a;
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
    // An upgrade in place keeps the namespace, pasta and its forwards.
    let out = u.isola(None, &["upgrade"], "", LIMIT);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(
        http_get(18433).ends_with("db says hi"),
        "served after the upgrade"
    );
    // A reload (after the upgrade: the forwards came across) that adds a
    // held TCP socket pasta does not forward is refused, the running
    // stack kept.
    let mut more = stack.clone();
    more["services"]["front"]["sockets"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "more", "listen": "tcp://127.0.0.1:18435"}));
    std::fs::write(&path, more.to_string()).unwrap();
    let pid = nix::unistd::Pid::from_raw(i32::try_from(up.id()).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    assert!(http_get(18433).ends_with("db says hi"), "still serving");
    let out = u.isola(None, &["down"], "", LIMIT);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let out = up.wait_with_output().unwrap();
    assert!(out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("reload failed, keeping the running stack")
            && err
                .contains("services.front.sockets[1].listen: tcp://127.0.0.1:18435: not forwarded"),
        "{err}"
    );
    rootless::wait_no_user_processes();
}
