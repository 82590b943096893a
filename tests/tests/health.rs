//! Health probes, readiness, the watchdog, notify, dependency conditions
//! and `isola exec`: a supervised stack in the VM. Each test is built so
//! that it fails when the feature is missing (a probe run in the wrong
//! namespace fails; an ungated liveness probe kills a slow starter…).

use std::time::Duration;

use isola_tests::up::*;
use isola_tests::*;
use serde_json::{json, Value};

/// A python HTTP server on `port`: /healthz answers 200, or 500 while
/// `sick` exists; it starts listening after `delay` seconds.
fn http_server(port: u16, sick: &str, delay: f64) -> String {
    format!(
        r#"import http.server, os, time
time.sleep({delay})
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(500 if os.path.exists("{sick}") else 200)
        self.end_headers()
    def log_message(self, *a):
        pass
http.server.HTTPServer(("127.0.0.1", {port}), H).serve_forever()
"#
    )
}

fn python(code: &str, extra: Value) -> Value {
    let mut s = svc("", extra);
    s["process"]["args"] = json!(["python3", "-c", code]);
    s
}

fn fast_restart() -> Value {
    json!({"policy": "on-failure", "delayMs": 100, "limit": {"burst": 100, "intervalMs": 60000}})
}

#[test]
fn liveness_http_failure_restarts_with_reason_unhealthy() {
    require_vm();
    let dir = Scratch::new("health-http");
    let sick = dir.path("sick");
    let sick = sick.to_string_lossy();
    let up = Up::start(
        "livehttp",
        json!({"web": python(&http_server(18080, &sick, 0.0), json!({
            "restart": fast_restart(),
            "mounts": [dir.shared()],
            "probes": {
                "startup": {"tcp": {"port": 18080}, "periodMs": 200, "failureThreshold": 150},
                "liveness": {"http": {"port": 18080, "path": "/healthz"}, "periodMs": 300, "failureThreshold": 2}
            }
        }))}),
        &[],
    );
    // Healthy as soon as startup passed; then the first liveness check.
    let s = up.wait_for("web", "healthy and live", Duration::from_secs(60), |s| {
        s["health"] == "healthy" && s["probe"]["liveness"]["ok"] == true
    });
    assert_eq!(s["restarts"], 0, "{s}");
    std::fs::write(&*sick, "").unwrap();
    let s = up.wait_for(
        "web",
        "an unhealthy restart",
        Duration::from_secs(60),
        |s| s["restarts"].as_u64() >= Some(1),
    );
    assert_eq!(s["lastExit"]["reason"], "unhealthy", "{s}");
    assert_eq!(
        s["lastExit"]["message"], "liveness http :18080/healthz: 500 (2/2)",
        "{s}"
    );
    std::fs::remove_file(&*sick).unwrap();
    up.wait_for("web", "healthy again", Duration::from_secs(60), |s| {
        s["health"] == "healthy"
    });
    let err = up.down();
    assert!(
        err.contains("web: unhealthy: liveness http :18080/healthz: 500 (2/2)"),
        "{err}"
    );
    assert!(
        err.contains("web: probe failed: liveness http :18080/healthz: 500 (1/2)"),
        "{err}"
    );
    assert_clean();
}

#[test]
fn tcp_probe_reaches_the_service_in_its_own_network_namespace() {
    require_vm();
    // Nothing listens on 15432 on the host: only a probe made in the
    // sandbox's namespace connects.
    let listen = "import socket, time\ns = socket.socket()\ns.bind(('127.0.0.1', 15432))\ns.listen()\ntime.sleep(1000)\n";
    let up = Up::start(
        "tcpns",
        json!({"db": python(listen, json!({
            "linux": {"namespaces": [{"type": "pid"}, {"type": "mount"}, {"type": "network"}]},
            "restart": fast_restart(),
            "probes": {
                "startup": {"tcp": {"port": 15432}, "periodMs": 100, "failureThreshold": 300},
                "liveness": {"tcp": {"port": 15432}, "periodMs": 100, "failureThreshold": 1}
            }
        }))}),
        &[],
    );
    up.wait_for("db", "healthy", Duration::from_secs(60), |s| {
        s["health"] == "healthy"
    });
    std::thread::sleep(Duration::from_secs(2));
    let s = up.service("db");
    assert_eq!(
        (s["restarts"].as_u64(), s["health"].as_str()),
        (Some(0), Some("healthy")),
        "{s}"
    );
    assert_eq!(s["probe"]["liveness"]["message"], "connected", "{s}");
    assert!(
        std::net::TcpStream::connect("127.0.0.1:15432").is_err(),
        "the port is not the host's"
    );
    up.down();
    assert_clean();
}

#[test]
fn exec_probe_runs_inside_the_sandbox_and_is_killed_at_its_timeout() {
    require_vm();
    let inside = json!({
        "hostname": "probehost",
        "linux": {"namespaces": [{"type": "pid"}, {"type": "mount"}, {"type": "uts"}]},
    });
    // Passes only in the sandbox: its hostname, and a small pid of its PID
    // namespace (on the host, pids are in the hundreds at least).
    let check = "[ \"$(hostname)\" = probehost ] && [ $$ -lt 50 ]";
    let mut ok = svc("exec sleep 1000", inside.clone());
    ok["probes"] =
        json!({"liveness": {"exec": ["sh", "-c", check], "periodMs": 300, "failureThreshold": 1}});
    ok["restart"] = fast_restart();
    // A probe that hangs, with a child: both die at timeoutMs, while the
    // service itself runs on (its end would take them along and prove
    // nothing), so none pile up from one probe to the next.
    let mut hang = svc("exec sleep 1000", inside);
    hang["probes"] = json!({"liveness": {"exec": ["sh", "-c", "sleep 4321 & sleep 4322"], "periodMs": 300, "timeoutMs": 500, "failureThreshold": 4}});
    hang["restart"] = json!({"policy": "no"});
    let up = Up::start("execprobe", json!({"ok": ok, "hang": hang}), &[]);
    let s = up.wait_for(
        "hang",
        "three timed-out probes",
        Duration::from_secs(60),
        |s| s["probe"]["liveness"]["failures"].as_u64() >= Some(3),
    );
    assert_eq!(s["state"], "running", "{s}");
    assert_eq!(
        s["probe"]["liveness"]["message"], "timed out after 500 ms",
        "{s}"
    );
    std::thread::sleep(Duration::from_millis(100));
    // At most the probe in flight now: the three before it are gone.
    for p in ["sleep 4321", "sleep 4322"] {
        let left = processes_matching(p);
        assert!(
            left.len() <= 1,
            "timed-out probes left {p} behind: {left:?}"
        );
    }
    let s = up.wait_state("hang", "exited");
    assert_eq!(s["lastExit"]["reason"], "unhealthy", "{s}");
    assert_eq!(
        s["lastExit"]["message"],
        "liveness exec sh -c sleep 4321 & sleep 4322: timed out after 500 ms (4/4)",
        "{s}"
    );
    let s = up.service("ok");
    assert!(s["probe"]["liveness"]["ok"] == true, "{s}");
    assert_eq!(
        (s["restarts"].as_u64(), s["health"].as_str()),
        (Some(0), Some("healthy")),
        "{s}"
    );
    up.down();
    assert_clean();
}

#[test]
fn the_startup_probe_protects_a_slow_starter_from_liveness() {
    require_vm();
    let dir = Scratch::new("health-slow");
    let never = dir.path("never");
    // Listens after 2 s; liveness alone (threshold 1, every 100 ms) would
    // kill it long before.
    let up = Up::start(
        "slowstart",
        json!({"slow": python(&http_server(18081, &never.to_string_lossy(), 2.0), json!({
            "restart": fast_restart(),
            "probes": {
                "startup": {"http": {"port": 18081, "path": "/healthz"}, "periodMs": 100, "failureThreshold": 600},
                "liveness": {"http": {"port": 18081, "path": "/healthz"}, "periodMs": 100, "failureThreshold": 1}
            }
        }))}),
        &[],
    );
    let s = up.wait_for("slow", "healthy", Duration::from_secs(60), |s| {
        s["health"] == "healthy"
    });
    assert_eq!(s["restarts"], 0, "{s}");
    assert!(s["probe"]["startup"]["ok"] == true, "{s}");
    let err = up.down();
    assert!(err.contains("slow: startup probe passed"), "{err}");
    assert_clean();
}

#[test]
fn readiness_gates_healthy_dependents_and_never_restarts() {
    require_vm();
    let dir = Scratch::new("health-ready");
    let go = dir.path("go");
    let listen = format!(
        "import os, socket, time\nwhile not os.path.exists('{}'): time.sleep(0.05)\ns = socket.socket()\ns.bind(('127.0.0.1', 15433))\ns.listen()\ntime.sleep(1000)\n",
        go.display()
    );
    let up = Up::start(
        "readiness",
        json!({
            "db": python(&listen, json!({
                "mounts": [dir.shared()],
                "probes": {"readiness": {"tcp": {"port": 15433}, "periodMs": 100, "failureThreshold": 1}}
            })),
            "web": svc("exec sleep 1000", json!({"dependsOn": {"db": "healthy"}})),
        }),
        &[],
    );
    up.wait_state("db", "running");
    std::thread::sleep(Duration::from_secs(2));
    let db = up.service("db");
    assert_eq!(
        (db["ready"].as_bool(), db["restarts"].as_u64()),
        (Some(false), Some(0)),
        "{db}"
    );
    let web = up.service("web");
    assert_eq!(web["state"], "starting", "{web}");
    assert_eq!(web["waitingFor"], "db to be healthy", "{web}");
    std::fs::write(&go, "").unwrap();
    up.wait_state("web", "running");
    assert_eq!(up.service("db")["health"], "healthy");
    let err = up.down();
    assert!(err.contains("db: ready"), "{err}");
    assert_clean();
}

#[test]
fn completed_dependencies_start_or_block_with_the_reason() {
    require_vm();
    let no = json!({"restart": {"policy": "no"}});
    let up = Up::start(
        "completed",
        json!({
            "migrate": svc("exit 0", no.clone()),
            "web": svc("exec sleep 1000", json!({"dependsOn": {"migrate": "completed"}})),
            "badmigrate": svc("exit 3", no),
            "api": svc("exec sleep 1000", json!({"dependsOn": {"badmigrate": "completed"}})),
        }),
        &[],
    );
    up.wait_state("web", "running");
    assert_eq!(up.service("migrate")["state"], "exited");
    let api = up.wait_state("api", "failed");
    assert_eq!(
        api["waitingFor"], "badmigrate did not complete: exited with code 3",
        "{api}"
    );
    assert_eq!(api["pid"], Value::Null);
    let (code, out, _) = up.cli(&["status"]);
    assert_eq!(code, 0);
    assert!(out.contains("HEALTH"), "{out}");
    let err = up.down();
    assert!(
        err.contains("api: not started: badmigrate did not complete"),
        "{err}"
    );
    assert_clean();
}

/// A root filesystem of its own that runs the host's python: /usr bound
/// read-only, the merged-/usr links, and `ctl` (a scratch dir) at /ctl.
fn python_rootfs(dir: &Scratch, ctl: &std::path::Path) -> Value {
    let root = dir.path("rootfs");
    for d in ["usr", "tmp", "proc", "dev", "ctl"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    for l in ["bin", "lib", "lib64", "sbin"] {
        let _ = std::os::unix::fs::symlink(format!("usr/{l}"), root.join(l));
    }
    json!({
        "root": {"path": root},
        "mounts": [
            {"destination": "/usr", "type": "bind", "source": "/usr", "options": ["rbind", "ro"]},
            {"destination": "/ctl", "type": "bind", "source": ctl, "options": ["rbind"]}
        ]
    })
}

#[test]
fn notify_systemd_ready_status_and_watchdog_from_an_isolated_payload() {
    require_vm();
    let dir = Scratch::new("notify");
    let ctl = dir.path("ctl");
    std::fs::create_dir_all(&ctl).unwrap();
    std::fs::write(ctl.join("ping"), "").unwrap();
    let code = r#"import os, socket, time
addr = os.environ["NOTIFY_SOCKET"]
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.sendto(b"STATUS=warming up\nWATCHDOG=1", addr)
time.sleep(0.3)
s.sendto(("READY=1\nSTATUS=serving pid %d wdpid %s" % (os.getpid(), os.environ.get("WATCHDOG_PID"))).encode(), addr)
while os.path.exists("/ctl/ping"):
    s.sendto(b"WATCHDOG=1", addr)
    time.sleep(0.1)
time.sleep(1000)
"#;
    let mut app = python(
        code,
        json!({
            "notify": "systemd",
            "watchdogMs": 2000,
            "restart": fast_restart(),
            "linux": {"namespaces": [{"type": "pid"}, {"type": "mount"}, {"type": "network"}]},
        }),
    );
    for (k, v) in python_rootfs(&dir, &ctl).as_object().unwrap() {
        app[k] = v.clone();
    }
    // Never says READY itself; the test sends it one from outside.
    let outsider = svc("exec sleep 1000", json!({"notify": "systemd"}));
    let up = Up::start("notify", json!({"app": app, "outsider": outsider}), &[]);
    let s = up.wait_for("app", "ready", Duration::from_secs(60), |s| {
        s["ready"] == true
    });
    assert_eq!(s["notifyStatus"], "serving pid 2 wdpid 2", "{s}");
    assert_eq!(s["health"], "healthy", "{s}");

    // A datagram from outside the sandbox (the host) is not believed.
    let host_sock = format!("{}.notify/outsider/notify.sock", up.socket());
    let out = std::os::unix::net::UnixDatagram::unbound().unwrap();
    out.send_to(b"READY=1", &host_sock)
        .expect("send to the outsider's socket");
    std::thread::sleep(Duration::from_millis(500));
    let o = up.service("outsider");
    assert_eq!(
        (o["state"].as_str(), o["ready"].as_bool()),
        (Some("running"), Some(false)),
        "{o}"
    );

    // Pings stop: the watchdog restarts it.
    std::fs::remove_file(ctl.join("ping")).unwrap();
    let s = up.wait_for("app", "a watchdog restart", Duration::from_secs(60), |s| {
        s["restarts"].as_u64() >= Some(1)
    });
    assert_eq!(s["lastExit"]["reason"], "watchdog", "{s}");
    let err = up.down();
    assert!(err.contains("app: watchdog missed (2000 ms)"), "{err}");
    assert!(
        err.contains("outsider: notify: ignored a message from pid"),
        "{err}"
    );
    assert!(err.contains("app: ready"), "{err}");
    assert_clean();
}

#[test]
fn isola_exec_joins_the_running_sandbox() {
    require_vm();
    let mut s = svc(
        "exec sleep 1717",
        json!({
            "hostname": "exechost",
            "linux": {
                "namespaces": [{"type": "pid"}, {"type": "mount"}, {"type": "uts"}],
                "resources": {"memory": {"limit": 67108864}}
            }
        }),
    );
    s["process"]["env"] = json!(["PATH=/usr/bin:/bin", "FROM_SPEC=yes"]);
    let up = Up::start(
        "exec",
        json!({"box": s, "off": svc("exit 0", json!({"restart": {"policy": "no"}}))}),
        &[],
    );
    up.wait_state("box", "running");
    let script = "hostname; echo pid=$$; ps -eo args; echo env=$FROM_SPEC/$EXTRA; \
                  cat /sys/fs/cgroup$(cut -d: -f3 /proc/self/cgroup)/memory.max; id -u";
    let (code, out, err) = up.cli(&[
        "exec", "--env", "EXTRA=1", "--user", "1000", "box", "--", "sh", "-c", script,
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "exechost", "{out}");
    let pid: u32 = lines[1].trim_start_matches("pid=").parse().unwrap();
    assert!(pid < 50, "not in the sandbox's PID namespace: {out}");
    assert!(out.contains("sleep 1717"), "ps shows the service: {out}");
    // Only the sandbox: its init (isola's, PID 1), the service, the shell
    // and ps, under the header.
    let ps: Vec<&&str> = lines
        .iter()
        .skip_while(|l| !l.starts_with("COMMAND"))
        .take_while(|l| !l.starts_with("env="))
        .collect();
    assert_eq!(ps.len(), 5, "ps shows only the sandbox: {out}");
    assert!(out.contains("env=yes/1"), "{out}");
    assert!(
        out.contains("67108864"),
        "the service's memory limit: {out}"
    );
    assert_eq!(lines.last().copied(), Some("1000"), "{out}");
    // The exit status passes through.
    let (code, _, _) = up.cli(&["exec", "box", "--", "sh", "-c", "exit 7"]);
    assert_eq!(code, 7);
    // A service that does not run: one line, exit 1.
    up.wait_state("off", "exited");
    let (code, out, err) = up.cli(&["exec", "off", "--", "true"]);
    assert_eq!((code, out.as_str()), (1, ""), "{err}");
    assert_eq!(err.trim(), "isola: exec: off: not running (exited)");
    up.down();
    assert_clean();
}

#[test]
fn notify_fd_newline_makes_the_service_ready() {
    require_vm();
    let script = "sleep 1.5; echo >&3; exec sleep 1000";
    let up = Up::start(
        "notifyfd",
        json!({
            "db": svc(script, json!({"notify": {"fd": 3}})),
            "web": svc("exec sleep 1000", json!({"dependsOn": {"db": "healthy"}})),
        }),
        &[],
    );
    up.wait_state("db", "running");
    let s = up.service("db");
    assert_eq!(
        (s["ready"].as_bool(), s["health"].as_str()),
        (Some(false), Some("starting")),
        "{s}"
    );
    assert_eq!(up.service("web")["state"], "starting");
    up.wait_state("web", "running");
    assert_eq!(up.service("db")["health"], "healthy");
    // The payload holds stdio and fd 3 (a pipe), nothing else of isola's.
    let init = up.service("db")["pid"].as_i64().unwrap();
    let children = std::fs::read_to_string(format!("/proc/{init}/task/{init}/children")).unwrap();
    let payload = children.split_whitespace().next().expect("the payload");
    let mut fds: Vec<String> = std::fs::read_dir(format!("/proc/{payload}/fd"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    fds.sort();
    assert_eq!(fds, ["0", "1", "2", "3"]);
    let fd3 = std::fs::read_link(format!("/proc/{payload}/fd/3")).unwrap();
    assert!(fd3.to_string_lossy().starts_with("pipe:"), "{fd3:?}");
    up.down();
    assert_clean();
}
