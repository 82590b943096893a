//! Autoscaling on the held sockets' accept queue: replicas grow under a
//! ramp of slow requests and shrink after it, none refused; from zero the
//! first connection starts a replica and waits in the backlog; a replica
//! that crashes while another starts is restarted, not counted twice;
//! `isola scale` pins the count until `auto`.

use std::io::Read;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use isola_tests::up::*;
use isola_tests::*;
use serde_json::{json, Value};

/// Serves the held socket one connection at a time, answering after
/// `DELAY` seconds with its replica number. Non-blocking accept: replicas
/// share the listener, and a stop (SIGTERM) is seen within 0.1 s, never
/// in the middle of an answer. `HOLD` (a replica number) never accepts;
/// `DELAY` below 0 accepts and holds connections unanswered.
const SERVER: &str = r#"import os, select, signal, socket, time
stop = False
def term(*a):
    global stop
    stop = True
signal.signal(signal.SIGTERM, term)
me = os.environ["ISOLA_REPLICA"]
s = socket.socket(fileno=3)
s.setblocking(False)
delay = float(os.environ.get("DELAY", "0"))
print("serving", flush=True)
n = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
n.connect(os.environ["NOTIFY_SOCKET"])
n.send(b"READY=1")
held = []
while not stop:
    if not select.select([s], [], [], 0.1)[0]:
        continue
    if os.environ.get("HOLD") == me:
        time.sleep(0.1)
        continue
    try:
        c, _ = s.accept()
    except BlockingIOError:
        continue
    if delay < 0:
        held.append(c)
        continue
    c.setblocking(True)
    time.sleep(delay)
    c.sendall(me.encode() + b"\n")
    c.close()
"#;

fn service(port: u16, env: &[&str], autoscale: Value) -> Value {
    let mut s = svc("", json!({}));
    s["process"]["args"] = json!(["python3", "-c", SERVER, "isola-test-payload"]);
    let mut vars = vec!["PATH=/usr/bin:/bin".to_string()];
    vars.extend(env.iter().map(|e| e.to_string()));
    s["process"]["env"] = json!(vars);
    s["sockets"] = json!([{"name": "http", "listen": format!("tcp://127.0.0.1:{port}")}]);
    s["autoscale"] = autoscale;
    s["stop"] = json!({"timeoutMs": 5000});
    // Ready once it serves: a scale-up is judged from then on.
    s["notify"] = json!("systemd");
    s
}

/// The replicas `status` lists (by name) and the desired count.
fn replicas(up: &Up) -> (Vec<String>, u64) {
    let rows = up.status();
    let names = rows
        .iter()
        .filter(|r| r["state"] != "scaled to zero")
        .filter_map(|r| r["name"].as_str().map(str::to_string))
        .collect();
    let desired = rows
        .first()
        .and_then(|r| r["autoscale"]["desired"].as_u64())
        .unwrap_or(0);
    (names, desired)
}

/// Until `status` shows the service with no replica: its row.
fn wait_zero(up: &Up) -> Value {
    let t = Instant::now();
    loop {
        let rows = up.status();
        if let Some(r) = rows.iter().find(|r| r["state"] == "scaled to zero") {
            assert_eq!(rows.len(), 1, "{rows:?}");
            return r.clone();
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "{rows:?}\n{}",
            up.stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Poll until `f` holds (tests may poll; the supervisor never does),
/// failing with the supervisor's stderr after `secs`.
fn until(up: &Up, what: &str, secs: u64, f: impl Fn() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(
            t.elapsed() < Duration::from_secs(secs),
            "waited for {what}\n{}",
            up.stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One request: its answer, or why there was none.
fn ask(port: u16) -> Result<String, String> {
    let mut c = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    c.set_read_timeout(Some(Duration::from_secs(60)))
        .map_err(|e| e.to_string())?;
    let mut out = String::new();
    c.read_to_string(&mut out).map_err(|e| e.to_string())?;
    if out.trim().is_empty() {
        return Err("empty answer".into());
    }
    Ok(out.trim().to_string())
}

/// Clients sending requests back to back, `active` of them at a time.
struct Load {
    active: Arc<AtomicUsize>,
    done: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    failed: Arc<Mutex<Vec<String>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(port: u16, most: usize) -> Load {
        let active = Arc::new(AtomicUsize::new(0));
        let done = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(Mutex::new(Vec::new()));
        let threads = (0..most)
            .map(|k| {
                let (active, done) = (active.clone(), done.clone());
                let (ok, failed) = (ok.clone(), failed.clone());
                std::thread::spawn(move || {
                    while !done.load(Ordering::Relaxed) {
                        if k >= active.load(Ordering::Relaxed) {
                            std::thread::sleep(Duration::from_millis(20));
                            continue;
                        }
                        match ask(port) {
                            Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                            Err(e) => {
                                failed.lock().unwrap().push(e);
                                0
                            }
                        };
                    }
                })
            })
            .collect();
        Load {
            active,
            done,
            ok,
            failed,
            threads,
        }
    }

    fn set(&self, n: usize) {
        self.active.store(n, Ordering::Relaxed);
    }

    fn stop(self) -> (usize, Vec<String>) {
        self.done.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().unwrap();
        }
        let failed = self.failed.lock().unwrap().clone();
        (self.ok.load(Ordering::Relaxed), failed)
    }
}

/// Poll `status` for `d`: the most replicas seen, and when the count
/// first went above one (from `t0`).
fn watch(up: &Up, d: Duration, t0: Instant, most: &mut usize, grew_at: &mut Option<Duration>) {
    let end = Instant::now() + d;
    while Instant::now() < end {
        let (names, _) = replicas(up);
        *most = (*most).max(names.len());
        if names.len() > 1 && grew_at.is_none() {
            *grew_at = Some(t0.elapsed());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_ramp_grows_the_replicas_and_they_shrink_after_it_none_refused() {
    require_vm();
    let port = 18380;
    let scale = json!({"min": 1, "max": 8, "backlog": 4, "upAfterMs": 500, "downAfterMs": 1500});
    let up = Up::start(
        "autoscale-ramp",
        json!({"web": service(port, &["DELAY=0.1"], scale)}),
        &[],
    );
    up.wait_state("web.1", "running");
    up.wait_log("web.1", "serving");
    let load = Load::start(port, 32);
    let (mut most, mut grew_at) = (0, None);
    let t0 = Instant::now();
    for n in [1, 4, 8, 16, 32] {
        load.set(n);
        watch(
            &up,
            Duration::from_millis(2500),
            t0,
            &mut most,
            &mut grew_at,
        );
    }
    for n in [16, 8, 4, 1] {
        load.set(n);
        watch(
            &up,
            Duration::from_millis(1000),
            t0,
            &mut most,
            &mut grew_at,
        );
    }
    let (ok, failed) = load.stop();
    assert!(
        failed.is_empty(),
        "{} failed of {ok}: {failed:?}",
        failed.len()
    );
    assert!(
        most >= 3,
        "the replicas grew to {most} only\n{}",
        up.stderr()
    );
    // Nothing before 4 clients wait (at 1 a replica keeps up); the first
    // scale-up then comes within upAfterMs and a start.
    let grew_at = grew_at.expect("grew");
    assert!(
        grew_at > Duration::from_millis(2500),
        "{grew_at:?}: before the load"
    );
    // Back to min once the queue stays low, one replica per downAfterMs.
    up.wait_for("web.1", "one replica left", Duration::from_secs(60), |_| {
        replicas(&up).0.len() == 1
    });
    let log = up.stderr();
    assert!(log.contains("web: scale 1 → 2: accept queue"), "{log}");
    assert!(log.contains(" → 1: accept queue"), "{log}");
    up.down();
    assert_clean();
}

#[test]
fn from_zero_the_first_connection_waits_for_a_replica_and_idle_goes_back_to_zero() {
    require_vm();
    let port = 18381;
    let scale = json!({"min": 0, "max": 2, "idleMs": 1500});
    let up = Up::start(
        "autoscale-zero",
        json!({"web": service(port, &[], scale)}),
        &[],
    );
    let zero = wait_zero(&up);
    assert_eq!(zero["autoscale"]["desired"], 0, "{zero}");
    assert!(processes_matching("isola-test-payload").is_empty());
    let (_, table, _) = up.cli(&["status"]);
    assert!(table.contains("scaled to zero"), "{table}");
    let (code, out, _) = up.cli(&["stop", "web"]);
    assert_eq!((code, out.trim()), (0, "web: scaled to zero"));
    // The first request: accepted by the kernel into the held socket's
    // backlog, answered once replica 1 runs.
    let t = Instant::now();
    let answer = ask(port).unwrap_or_else(|e| panic!("{e}\n{}", up.stderr()));
    let first = t.elapsed();
    assert_eq!(answer, "1");
    let log = up.stderr();
    assert!(
        log.contains("web: scale 0 → 1: a connection while scaled to zero"),
        "{log}"
    );
    eprintln!("first response from zero: {first:?}");
    // No connection for idleMs: back to zero, the replica gone.
    wait_zero(&up);
    assert!(up.stderr().contains("scale 1 → 0: no connection for"));
    assert!(processes_matching("isola-test-payload").is_empty());
    // And again: a second cold start works as the first.
    assert_eq!(ask(port).as_deref(), Ok("1"));
    up.down();
    assert_clean();
}

#[test]
fn a_replica_that_crashes_while_another_starts_is_restarted_not_counted_twice() {
    require_vm();
    let port = 18382;
    // Replica 1 never accepts: connections pile up in the queue until
    // replica 2 takes them (and holds them).
    let scale = json!({"min": 1, "max": 4, "backlog": 2, "upAfterMs": 300, "downAfterMs": 600000});
    let s = service(port, &["HOLD=1", "DELAY=-1"], scale);
    let up = Up::start("autoscale-crash", json!({"web": s}), &[]);
    up.wait_log("web.1", "serving");
    let clients: Vec<TcpStream> = (0..3)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    // The scale-up is decided: kill replica 1 while replica 2 starts.
    until(&up, "the scale-up", 30, || {
        up.stderr().contains("web: scale 1 → 2")
    });
    let pid = up.service("web.1")["pid"].as_i64().expect("web.1 runs");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap()),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    up.wait_log("web.2", "serving");
    // Replica 1 restarted by its policy; nothing more was decided: the
    // queue emptied into replica 2.
    up.wait_for("web.1", "restarted", Duration::from_secs(30), |s| {
        s["restarts"] == 1 && s["state"] == "running"
    });
    std::thread::sleep(Duration::from_secs(2));
    let (names, desired) = replicas(&up);
    assert_eq!(names, ["web.1", "web.2"], "{}", up.stderr());
    assert_eq!(desired, 2);
    assert_eq!(
        up.stderr().matches("web: scale ").count(),
        1,
        "{}",
        up.stderr()
    );
    drop(clients);
    up.down();
    assert_clean();
}

#[test]
fn isola_scale_pins_the_count_until_auto() {
    require_vm();
    let port = 18383;
    let scale = json!({"min": 1, "max": 4, "downAfterMs": 500});
    let up = Up::start(
        "autoscale-pin",
        json!({"web": service(port, &[], scale)}),
        &[],
    );
    up.wait_state("web.1", "running");
    let (code, out, err) = up.cli(&["scale", "web", "3"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "web: 3 replicas");
    up.wait_state("web.3", "running");
    // Idle, but pinned: they stay past several downAfterMs.
    std::thread::sleep(Duration::from_secs(3));
    let rows = up.status();
    assert_eq!(rows.len(), 3, "{rows:?}");
    assert_eq!(rows[0]["autoscale"]["pinned"], 3, "{}", rows[0]);
    let (code, out, _) = up.cli(&["scale", "web", "auto"]);
    assert_eq!((code, out.trim()), (0, "web: autoscaled"));
    up.wait_for("web.1", "back to min", Duration::from_secs(30), |_| {
        replicas(&up).0.len() == 1
    });
    assert!(up.status()[0]["autoscale"].get("pinned").is_none());
    // Zero is a count too for an autoscaled service.
    let (code, _, err) = up.cli(&["scale", "web", "0"]);
    assert_eq!(code, 0, "{err}");
    wait_zero(&up);
    up.down();
    assert_clean();
}

#[test]
fn a_bad_autoscale_starts_nothing() {
    require_vm();
    let mut s = service(18384, &[], json!({"min": 3, "max": 2}));
    s["sockets"] = json!([{"name": "http", "listen": "tcp://127.0.0.1:18384"}]);
    let dir = Scratch::new("autoscale-bad");
    let path = dir.write("stack.json", &json!({"services": {"web": s}}).to_string());
    let sock = dir.path("s.sock");
    let out = isola(
        &[
            "up",
            "--socket",
            sock.to_str().unwrap(),
            path.to_str().unwrap(),
        ],
        "",
        Duration::from_secs(30),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("services.web.autoscale.min: 3: above max 2"),
        "{err}"
    );
    assert!(
        TcpStream::connect(("127.0.0.1", 18384)).is_err(),
        "nothing bound"
    );
    assert_clean();
}

#[test]
fn replicas_busy_above_the_cpu_target_add_one() {
    require_vm();
    let port = 18385;
    let mut s = svc("while :; do :; done", json!({}));
    s["sockets"] = json!([{"name": "http", "listen": format!("tcp://127.0.0.1:{port}")}]);
    s["autoscale"] =
        json!({"min": 1, "max": 2, "cpu": "30%", "upAfterMs": 500, "downAfterMs": 600000});
    let up = Up::start("autoscale-cpu", json!({"web": s}), &[]);
    until(&up, "web.2 running", 60, || {
        up.status()
            .iter()
            .any(|r| r["name"] == "web.2" && r["state"] == "running")
    });
    let log = up.stderr();
    assert!(log.contains("web: scale 1 → 2: cpu "), "{log}");
    assert_eq!(replicas(&up).0.len(), 2, "at max");
    up.down();
    assert_clean();
}

#[test]
fn a_trickle_of_requests_keeps_a_replica_from_zero() {
    require_vm();
    let port = 18386;
    // idleMs spans six requests: an arrival the replica accepts before the
    // supervisor's epoll wakes is not seen (best-effort while replicas
    // run), and under TCG three in a row were once missed. Without
    // arrivals watched at all the trickle still scales to zero within the
    // loop (6 s > 3 s).
    let scale = json!({"min": 0, "max": 2, "idleMs": 3000});
    let up = Up::start(
        "autoscale-trickle",
        json!({"web": service(port, &[], scale)}),
        &[],
    );
    wait_zero(&up);
    // A request every 500 ms for 6 s: each is taken at once by the
    // replica (its wakeup may come before ours); never idle for 3 s.
    for _ in 0..12 {
        assert_eq!(ask(port).as_deref(), Ok("1"), "{}", up.stderr());
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(!up.stderr().contains("→ 0"), "{}", up.stderr());
    wait_zero(&up);
    up.down();
    assert_clean();
}

#[test]
fn a_reload_keeps_a_pin_and_moves_the_watch_to_new_sockets() {
    require_vm();
    let (a, b) = (18387, 18388);
    let scale = json!({"min": 1, "max": 2, "idleMs": 1000});
    let up = Up::start(
        "autoscale-reload",
        json!({"web": service(a, &[], scale.clone())}),
        &[],
    );
    up.wait_state("web.1", "running");
    // Pinned at 0 though min is 1: a reload of the same file keeps it.
    let (code, _, err) = up.cli(&["scale", "web", "0"]);
    assert_eq!(code, 0, "{err}");
    wait_zero(&up);
    nix::sys::signal::kill(up.pid(), nix::sys::signal::Signal::SIGHUP).unwrap();
    until(&up, "the reload", 30, || {
        up.stderr().contains("reloading the stack file")
    });
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(wait_zero(&up)["autoscale"]["pinned"], 0);
    // Not started and stopped again: the pin is what the reload kept.
    let log = up.stderr();
    let after = &log[log.rfind("reloading the stack file").unwrap_or(0)..];
    assert!(!after.contains("web.1: running"), "{log}");
    // Back to auto, min 0, on another port: the new socket wakes it, the
    // old one is closed.
    let (code, _, _) = up.cli(&["scale", "web", "auto"]);
    assert_eq!(code, 0);
    let zero = json!({"min": 0, "max": 2, "idleMs": 1000});
    up.write_stack(&json!({"web": service(b, &[], zero)}));
    nix::sys::signal::kill(up.pid(), nix::sys::signal::Signal::SIGHUP).unwrap();
    until(&up, "the old port closed", 30, || {
        TcpStream::connect(("127.0.0.1", a)).is_err()
    });
    wait_zero(&up);
    assert_eq!(ask(b).as_deref(), Ok("1"), "{}", up.stderr());
    up.down();
    assert_clean();
}

#[test]
fn isola_scale_after_a_reload_that_changed_a_fixed_count_service_starts_ready_replicas() {
    require_vm();
    let port = 18389;
    let fixed = |env: &[&str]| {
        let mut s = service(port, env, json!(null));
        s.as_object_mut().unwrap().remove("autoscale");
        s["replicas"] = json!(2);
        s
    };
    let up = Up::start("scale-after-reload", json!({"web": fixed(&[])}), &[]);
    up.wait_for("web.2", "ready", Duration::from_secs(60), |s| {
        s["ready"] == true
    });
    // A changed definition: both restart with it, cloned here (not by the
    // spawner, which holds the file as it was).
    up.write_stack(&json!({"web": fixed(&["X=1"])}));
    nix::sys::signal::kill(up.pid(), nix::sys::signal::Signal::SIGHUP).unwrap();
    up.wait_for("web.1", "restarted", Duration::from_secs(60), |s| {
        s["restarts"] == 1 && s["ready"] == true
    });
    let (code, _, err) = up.cli(&["scale", "web", "3"]);
    assert_eq!(code, 0, "{err}");
    // Its own notify socket: it gets ready (with web.1's it never did).
    up.wait_for("web.3", "ready", Duration::from_secs(60), |s| {
        s["ready"] == true
    });
    up.down();
    assert_clean();
}
