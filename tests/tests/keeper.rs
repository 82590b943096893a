//! `kill -9` of the supervisor: its keeper (the pid `isola up` started
//! as) starts a new one from the last snapshot, and the services never
//! notice — each test kills the supervisor of a running stack and checks
//! what a client, a service's log and the kernel saw: no failed request,
//! the same pids, no line lost or doubled, and what happened while no
//! supervisor ran told once, with its real status.

use std::time::{Duration, Instant};

use isola_tests::load::*;
use isola_tests::up::*;
use isola_tests::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};

/// Kill the supervisor; once a new one answers, its pid.
fn kill_supervisor(up: &Up, old: Pid) -> Pid {
    kill(old, Signal::SIGKILL).unwrap();
    let t = Instant::now();
    loop {
        let (code, out, _) = up.cli(&["info", "--json"]);
        if code == 0 {
            let now: Value = serde_json::from_str(&out).unwrap();
            let pid = now["pid"].as_i64().unwrap_or(0);
            if pid != i64::from(old.as_raw()) {
                eprintln!("a new supervisor answers after {:?}", t.elapsed());
                return Pid::from_raw(i32::try_from(pid).unwrap());
            }
        }
        assert!(t.elapsed() < Duration::from_secs(30), "{}", up.stderr());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Numbered lines, each in one write, as fast as the pipe takes them.
const COUNTER: &str = r#"import os, time
i = 0
while True:
    i += 1
    os.write(1, b"n=%d end\n" % i)
    if i % 50 == 0:
        time.sleep(0.001)
"#;

#[test]
fn three_kills_of_the_supervisor_under_load_fail_no_request_and_lose_no_line() {
    require_vm();
    let port = 18400;
    let web = python(&server(port), json!({"sockets": held(port)}));
    let up = Up::start(
        "killed",
        json!({"web": web, "counter": python(COUNTER, json!({}))}),
        &["--log-max-bytes", "200000000"],
    );
    up.wait_state("web", "running");
    up.wait_state("counter", "running");
    wait_serving(port);
    let before = up.pids();
    let first = up.info();
    assert_eq!(first["keeper"].as_i64(), Some(i64::from(up.pid().as_raw())));
    assert_ne!(first["pid"], first["keeper"], "{first}");
    let load = Load::start(port);
    let mut sup = up.supervisor_pid();
    for _ in 0..3 {
        // At rest for a moment: the keeper has a snapshot.
        std::thread::sleep(Duration::from_millis(800));
        sup = kill_supervisor(&up, sup);
        load.wait_answers(3);
    }
    let t = load.finish();
    eprintln!("{t:?}");
    assert_eq!((t.refused, t.other), (0, 0), "{t:?}");
    assert!(t.ok >= 30, "{t:?}");
    assert_eq!(up.pids(), before, "a service was restarted");
    // Each init is still the keeper's child (not a new sandbox).
    let keeper = up.pid().as_raw().to_string();
    for (name, pid) in &before {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let ppid = stat
            .rsplit_once(") ")
            .map(|(_, r)| r.split(' ').nth(1).unwrap_or(""));
        assert_eq!(ppid, Some(keeper.as_str()), "{name}'s init");
    }
    for s in up.status() {
        assert_eq!(
            (s["state"].as_str(), s["restarts"].as_u64()),
            (Some("running"), Some(0)),
            "{s}"
        );
    }
    let after = up.info();
    assert_eq!(after["recoveries"], 3, "{after}");
    assert_eq!(after["startedMs"], first["startedMs"], "{after}");
    assert_eq!(after["keeper"], first["keeper"], "the keeper keeps its pid");
    let said = up.stderr();
    assert_eq!(
        said.matches("was killed by signal 9; a new one").count(),
        3,
        "{said}"
    );
    let (code, _, err) = up.cli(&["stop", "counter"]);
    assert_eq!(code, 0, "{err}");
    let lines = check_counter_log(&up, 3);
    eprintln!("{lines} numbered lines, in order");
    assert!(lines > 1000, "{lines}");
    up.down();
    assert_clean();
}

/// Whether `pid` is a zombie (exited, not reaped).
fn is_zombie(pid: i64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| rest.starts_with('Z')))
        .unwrap_or(false)
}

#[test]
fn an_exit_an_oom_kill_and_ready_while_no_supervisor_runs_are_told_once() {
    require_vm();
    let dir = Scratch::new("keeper-once");
    let go = dir.path("go");
    let wait = format!("while [ ! -e {} ]; do sleep 0.05; done", go.display());
    let never = json!({"policy": "no"});
    let notify = format!(
        r#"import os, socket, time
while not os.path.exists("{}"):
    time.sleep(0.05)
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.sendto(b"READY=1", os.environ["NOTIFY_SOCKET"])
time.sleep(1000)
"#,
        go.display()
    );
    let up = Up::start(
        "gap",
        json!({
            "quitter": svc(&format!("{wait}; exit 7"), json!({"restart": never, "mounts": [dir.shared()]})),
            "hog": svc(&format!("{wait}; exec tail /dev/zero"), json!({
                "restart": never,
                "mounts": [dir.shared()],
                "linux": {"resources": {"memory": {"limit": 33554432, "swap": 33554432}}}
            })),
            "ready": python(&notify, json!({"notify": "systemd", "restart": never, "mounts": [dir.shared()]})),
            "bystander": svc("exec sleep 1000", json!({})),
        }),
        &[],
    );
    for name in ["quitter", "hog", "ready", "bystander"] {
        up.wait_state(name, "running");
    }
    let quitter = up.service("quitter")["pid"].as_i64().unwrap();
    let hog = up.service("hog")["pid"].as_i64().unwrap();
    let bystander = up.service("bystander")["pid"].as_i64().unwrap();
    std::thread::sleep(Duration::from_millis(800));
    // No supervisor at all while it happens: the keeper is stopped, its
    // supervisor killed; then both exit and OOM kill are waited for.
    let sup = up.supervisor_pid();
    kill(up.pid(), Signal::SIGSTOP).unwrap();
    kill(sup, Signal::SIGKILL).unwrap();
    std::fs::write(&go, "").unwrap();
    let t = Instant::now();
    while !(is_zombie(quitter) && is_zombie(hog)) {
        assert!(t.elapsed() < Duration::from_secs(60), "no exit");
        std::thread::sleep(Duration::from_millis(50));
    }
    // READY=1 waits in the notify socket.
    std::thread::sleep(Duration::from_millis(500));
    kill(up.pid(), Signal::SIGCONT).unwrap();
    up.wait_for("quitter", "its exit", Duration::from_secs(30), |s| {
        s["state"] == "exited"
    });
    up.wait_for("hog", "its OOM kill", Duration::from_secs(30), |s| {
        s["state"] == "exited"
    });
    up.wait_for("ready", "ready", Duration::from_secs(30), |s| {
        s["ready"] == true
    });
    std::thread::sleep(Duration::from_secs(1));
    let said = up.stderr();
    let count = |what: &str| said.matches(what).count();
    assert_eq!(count("quitter: exited with code 7"), 1, "{said}");
    assert_eq!(count("hog: killed by the OOM killer"), 1, "{said}");
    assert_eq!(count("ready: ready"), 1, "{said}");
    // Each told with its own status, none as a loss.
    assert_eq!(count("its status is lost"), 0, "{said}");
    assert_eq!(up.service("quitter")["lastExit"]["code"], 7);
    assert_eq!(up.service("hog")["lastExit"]["reason"], "oom-kill");
    let b = up.service("bystander");
    assert_eq!(
        (b["pid"].as_i64(), b["restarts"].as_u64()),
        (Some(bystander), Some(0)),
        "{b}"
    );
    assert_eq!(up.info()["recoveries"], 1);
    up.down();
    assert_clean();
}
