//! `isola up` and its client commands: a supervised stack in the VM.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;

use std::process::Command;
use std::time::{Duration, Instant};

use isola_tests::up::*;
use isola_tests::*;
use serde_json::{json, Value};

#[test]
fn crash_loop_backs_off_by_the_formula_then_fails() {
    require_vm();
    let restart = json!({"restart": {"policy": "on-failure", "delayMs": 100, "maxDelayMs": 800, "steps": 3, "limit": {"burst": 5, "intervalMs": 60000}}});
    let up = Up::start("crashloop", json!({"crash": svc("exit 1", restart)}), &[]);
    let s = up.wait_state("crash", "failed");
    let h = history(&s);
    assert_eq!(h.len(), 5, "burst 5: {s}");
    // delay n = 100 · 8^((n−1)/3): 100, 200, 400, 800 ms.
    for (n, want) in [100.0, 200.0, 400.0, 800.0].iter().enumerate() {
        let gap = (h[n + 1].0 - h[n].1.unwrap()) as f64;
        assert!(
            gap >= want * 0.95 && gap <= want + 500.0,
            "restart {}: waited {gap} ms, formula says {want}: {h:?}",
            n + 1
        );
    }
    assert_eq!(s["restarts"], 4);
    assert_eq!(
        s["lastExit"],
        json!({"reason": "exited", "code": 1, "signal": null})
    );
    // `isola start` revives a failed service.
    let (code, _, err) = up.cli(&["start", "crash"]);
    assert_eq!(code, 0, "{err}");
    let s = up.wait_for("crash", "a new start", Duration::from_secs(30), |s| {
        history(s).len() > 5
    });
    assert_ne!(s["state"], "failed", "{s}");
    up.down();
    assert_clean();
}

#[test]
fn restart_policies_on_failure_always_unless_stopped() {
    require_vm();
    let fast = |p: &str| json!({"restart": {"policy": p, "delayMs": 50, "limit": {"burst": 100, "intervalMs": 60000}}});
    let up = Up::start(
        "policies",
        json!({
            "onfail": svc("exit 0", fast("on-failure")),
            "always": svc("exit 0", fast("always")),
            "unless": svc("exec sleep 1000", fast("unless-stopped")),
        }),
        &[],
    );
    up.wait_state("onfail", "exited");
    up.wait_for("always", "two restarts", Duration::from_secs(60), |s| {
        s["restarts"].as_u64() >= Some(2)
    });
    up.wait_state("unless", "running");
    let (code, out, err) = up.cli(&["stop", "unless"]);
    assert_eq!((code, out.trim()), (0, "unless: stopped"), "{err}");
    std::thread::sleep(Duration::from_secs(1));
    let s = up.service("unless");
    assert_eq!(
        (s["state"].as_str(), s["restarts"].as_u64()),
        (Some("stopped"), Some(0)),
        "{s}"
    );
    let s = up.service("onfail");
    assert_eq!(s["restarts"], 0, "{s}");
    up.down();
    assert_clean();
}

fn oom_service(script: &str, policy: &str) -> Value {
    svc(
        script,
        json!({
            "oom": policy,
            "restart": {"policy": "always", "delayMs": 100, "limit": {"burst": 100, "intervalMs": 60000}},
            "linux": {"resources": {"memory": {"limit": 33554432, "swap": 33554432}}}
        }),
    )
}

#[test]
fn oom_policies() {
    require_vm();
    // The hog's subshell offers itself to the OOM killer first
    // (oom_score_adj 1000 is inherited by head and tail): on a slow VM a
    // second OOM can come before the first victim's memory is reaped, and
    // it must take another part of the hog, never the payload itself.
    let hog = "(echo 1000 > /proc/self/oom_score_adj; head -c 100M /dev/zero | tail > /dev/null); exec sleep 1000";
    let up = Up::start(
        "oom",
        json!({
            "restart": oom_service("exec tail /dev/zero", "restart"),
            "stop": oom_service("exec tail /dev/zero", "stop"),
            "kill": oom_service("sleep 1000 & tail /dev/zero; wait", "kill"),
            "continue": oom_service(hog, "continue"),
        }),
        &[],
    );
    let s = up.wait_for("restart", "an OOM restart", Duration::from_secs(60), |s| {
        s["restarts"].as_u64() >= Some(1)
    });
    assert_eq!(s["lastExit"]["reason"], "oom-kill", "{s}");
    assert!(s["oomKills"].as_u64() >= Some(1), "{s}");

    let s = up.wait_state("stop", "stopped");
    assert_eq!(s["lastExit"]["reason"], "oom-kill", "{s}");
    std::thread::sleep(Duration::from_millis(500));
    let s = up.service("stop");
    assert_eq!(
        (s["state"].as_str(), s["restarts"].as_u64()),
        (Some("stopped"), Some(0)),
        "{s}"
    );

    // memory.oom.group: the sleeper dies with the hog, and the restart
    // policy applies.
    let s = up.wait_for("kill", "an OOM restart", Duration::from_secs(60), |s| {
        s["restarts"].as_u64() >= Some(1)
    });
    assert_eq!(s["lastExit"]["reason"], "oom-kill", "{s}");

    // The hog (a child) is killed; the payload survives and keeps running.
    let s = up.wait_for("continue", "an OOM kill", Duration::from_secs(60), |s| {
        s["oomKills"].as_u64() >= Some(1)
    });
    assert_eq!(s["state"], "running", "{s}");
    assert_eq!(s["restarts"], 0, "{s}");
    assert!(s["lastExit"].is_null(), "{s}");
    let err = up.down();
    assert!(
        err.contains("continue: oom-kill: the kernel killed"),
        "{err}"
    );
    assert_clean();
}

#[test]
fn stop_kills_at_the_timeout_and_leaves_no_daemon() {
    require_vm();
    let up = Up::start(
        "stopping",
        json!({
            "stubborn": svc("trap '' TERM; echo armed; while :; do sleep 1; done", json!({"stop": {"timeoutMs": 1000}})),
            // No PID namespace: only the cgroup can find the daemon.
            "daemon": {"process": {"args": ["sh", "-c", "setsid sh -c 'exec sleep 1777' & exec sleep 1778", "isola-test-payload"]},
                       "linux": {"namespaces": [{"type": "mount"}]}},
        }),
        &[],
    );
    up.wait_log("stubborn", "armed");
    up.wait_for("daemon", "its daemon", Duration::from_secs(30), |_| {
        !processes_matching("sleep 1777").is_empty()
    });
    let t = Instant::now();
    let (code, _, err) = up.cli(&["stop", "stubborn"]);
    let took = t.elapsed();
    assert_eq!(code, 0, "{err}");
    assert!(
        took >= Duration::from_millis(900),
        "stopped after {took:?}, before the 1 s timeout"
    );
    let s = up.service("stubborn");
    assert_eq!(s["lastExit"]["signal"], 9, "{s}");
    let (code, _, err) = up.cli(&["stop", "daemon"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        processes_matching("sleep 1777").is_empty(),
        "daemonised grandchild survived stop"
    );
    assert!(processes_matching("sleep 1778").is_empty());
    // And after `down`, from a running state.
    let (code, _, err) = up.cli(&["start", "daemon"]);
    assert_eq!(code, 0, "{err}");
    up.wait_for("daemon", "its daemon", Duration::from_secs(30), |_| {
        !processes_matching("sleep 1777").is_empty()
    });
    up.down();
    assert!(
        processes_matching("sleep 1777").is_empty(),
        "daemonised grandchild survived down"
    );
    assert_clean();
}

#[test]
fn dependencies_start_in_order_and_stop_in_reverse() {
    require_vm();
    let dep = |d: &[&str]| json!({"dependsOn": d});
    let up = Up::start(
        "deps",
        json!({
            "web": svc("exec sleep 1000", dep(&["api"])),
            "api": svc("exec sleep 1000", dep(&["db"])),
            "db": svc("exec sleep 1000", json!({})),
        }),
        &[],
    );
    for n in ["db", "api", "web"] {
        up.wait_state(n, "running");
    }
    let start = |n: &str| up.service(n)["startedAtMs"].as_u64().unwrap();
    assert!(start("db") <= start("api") && start("api") <= start("web"));
    let err = up.down();
    let pos = |s: &str| err.find(s).unwrap_or_else(|| panic!("{s} not in {err}"));
    assert!(
        pos("web: stopped") < pos("api: stopping") && pos("api: stopped") < pos("db: stopping"),
        "{err}"
    );
    let first = |s: &str| err.find(s).unwrap();
    assert!(
        first("db: running") < first("api: running")
            && first("api: running") < first("web: running")
    );
    assert_clean();
}

/// Starts overlap (more services than start slots), a dependent is
/// launched only once every dependency's payload runs, and a service
/// stopped while it starts ends stopped, not running.
#[test]
fn concurrent_starts_keep_dependency_order_and_honour_a_stop() {
    require_vm();
    let mut services = serde_json::Map::new();
    let deps: Vec<String> = (0..40).map(|i| format!("s{i}")).collect();
    for d in &deps {
        services.insert(d.clone(), svc("exec sleep 1000", json!({})));
    }
    services.insert(
        "late".into(),
        svc("exec sleep 1000", json!({"dependsOn": deps})),
    );
    let up = Up::start("wide", Value::Object(services), &[]);
    // Right away, while most of the stack is still queued or setting up.
    let (code, out, err) = up.cli(&["stop", "s39"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out.trim(), "s39: stopped");
    let late = up.wait_state("late", "running");
    let launched = late["history"][0]["startMs"].as_u64().unwrap();
    for d in &deps[..39] {
        let s = up.wait_state(d, "running");
        let ran = s["startedAtMs"].as_u64().unwrap();
        assert!(
            ran <= launched,
            "late launched at {launched}, before {d} ran at {ran}"
        );
    }
    assert_eq!(up.service("s39")["state"], "stopped");
    up.down();
    assert_clean();
}

#[test]
fn bad_stacks_exit_2_and_start_nothing() {
    require_vm();
    let ok = svc("exec sleep 1000", json!({}));
    let cases = [
        (
            json!({"a": svc("true", json!({"dependsOn": ["b"]})), "b": svc("true", json!({"dependsOn": ["a"]}))}),
            "services.a.dependsOn: dependency cycle among a, b",
        ),
        (
            json!({"a": svc("true", json!({"dependsOn": ["ghost"]}))}),
            "services.a.dependsOn: ghost: no such service",
        ),
        (
            json!({"a": svc("true", json!({"restart": {"policy": "sometimes"}}))}),
            "services.a.restart.policy",
        ),
        (
            json!({"a": svc("true", json!({"oom": "explode"}))}),
            "services.a.oom",
        ),
        (
            json!({"a": svc("true", json!({"stop": {"signal": "SIGFLY"}}))}),
            "services.a.stop.signal: SIGFLY: unknown signal",
        ),
        (
            json!({"a": ok.clone(), "b": svc("true", json!({"linux": {"resources": {"cpu": {"period": 10}}}}))}),
            "services.b.linux.resources.cpu.period: 10:",
        ),
        (
            json!({"a": ok.clone(), "b": svc("true", json!({"restrat": {}}))}),
            "services.b.restrat: unknown field",
        ),
    ];
    let dir = Scratch::new("badstack");
    for (i, (services, want)) in cases.iter().enumerate() {
        let p = dir.write(
            &format!("bad{i}.json"),
            &json!({"services": services}).to_string(),
        );
        let sock = dir.path("s.sock").display().to_string();
        let out = isola(
            &[
                "up",
                "--socket",
                &sock,
                "--log-dir",
                "/tmp/isola-bad-logs",
                p.to_str().unwrap(),
            ],
            "",
            Duration::from_secs(30),
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{services}: {err}");
        assert!(err.contains(want), "want {want:?} in {err:?}");
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        assert!(processes_matching("isola-test-payload").is_empty());
        assert!(!std::path::Path::new(&sock).exists(), "socket left behind");
    }
    let dup = dir.write("dup.json", r#"{"services": {"a": {"process": {"args": ["true"]}}, "a": {"process": {"args": ["true"]}}}}"#);
    let out = isola(
        &[
            "up",
            "--socket",
            "/tmp/isola-dup.sock",
            dup.to_str().unwrap(),
        ],
        "",
        Duration::from_secs(30),
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("services.a: duplicate service name"));
    assert_clean();
}

#[test]
fn sighup_restarts_only_changed_services() {
    require_vm();
    let a = svc("exec sleep 1000", json!({}));
    let b = svc("exec sleep 1001", json!({}));
    let up = Up::start("reload", json!({"a": a.clone(), "b": b}), &[]);
    let pa = up.wait_state("a", "running")["pid"].clone();
    let pb = up.wait_state("b", "running")["pid"].clone();
    up.write_stack(&json!({"a": a, "b": svc("exec sleep 1002", json!({})), "c": svc("exec sleep 1003", json!({}))}));
    nix::sys::signal::kill(up.pid(), nix::sys::signal::Signal::SIGHUP).unwrap();
    let s = up.wait_for("b", "a restart", Duration::from_secs(30), |s| {
        s["state"] == "running" && s["pid"] != pb
    });
    assert_eq!(s["restarts"], 1);
    up.wait_state("c", "running");
    assert_eq!(
        up.service("a")["pid"],
        pa,
        "unchanged service was restarted"
    );
    assert!(!processes_matching("sleep 1002").is_empty());
    up.write_stack(
        &json!({"a": svc("exec sleep 1000", json!({})), "b": svc("exec sleep 1002", json!({}))}),
    );
    nix::sys::signal::kill(up.pid(), nix::sys::signal::Signal::SIGHUP).unwrap();
    let t = Instant::now();
    while up.status().iter().any(|s| s["name"] == "c") {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "removed service still there"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(processes_matching("sleep 1003").is_empty());
    assert_eq!(up.service("a")["pid"], pa);
    // Its last words still carry its name, after the supervisor let it go.
    let err = up.stderr();
    assert!(err.contains("isola: c: removed"), "{err}");
    up.down();
    assert_clean();
}

#[test]
fn control_socket_is_private_and_refuses_other_users() {
    require_vm();
    let up = Up::start("ctl", json!({"a": svc("exec sleep 1000", json!({}))}), &[]);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(up.socket()).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let as_user = || {
        Command::new(isola_bin())
            .args(["status", "--socket", &up.socket()])
            .uid(1000)
            .gid(1000)
            .output()
            .unwrap()
    };
    // The scratch dir must be reachable for uid 1000 to get as far as the socket.
    std::fs::set_permissions(&up.dir.0, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = as_user();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
        "{out:?}"
    );
    // Even with the file opened up, the peer's uid is checked.
    std::fs::set_permissions(up.socket(), std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = as_user();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("permission denied: uid 1000"), "{err}");
    assert!(
        up.stderr()
            .contains("refused a control connection from uid 1000"),
        "{}",
        up.stderr()
    );
    up.down();
    assert_clean();
}

#[test]
fn clients_report_a_missing_supervisor_in_one_line() {
    require_vm();
    for cmd in [
        vec!["status"],
        vec!["stop", "x"],
        vec!["logs", "x"],
        vec!["down"],
    ] {
        let mut a = cmd.clone();
        a.extend(["--socket", "/tmp/isola-nobody.sock"]);
        let out = isola(&a, "", Duration::from_secs(30));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{cmd:?}: {err}");
        assert_eq!(
            err.trim(),
            "isola: no isola supervisor is listening on /tmp/isola-nobody.sock"
        );
    }
}

#[test]
fn logs_follow_and_rotate() {
    require_vm();
    let up = Up::start(
        "logs",
        json!({
            "ticker": svc("i=0; while :; do echo tick $i; i=$((i+1)); sleep 0.2; done", json!({})),
            "chatty": svc("seq 1 400", json!({"restart": {"policy": "no"}})),
        }),
        &["--log-max-bytes", "2000", "--log-files", "3"],
    );
    let mut f = up.spawn_cli(&["logs", "-f", "-n", "1", "ticker"]);
    let mut r = BufReader::new(f.stdout.take().unwrap());
    let mut ticks = Vec::new();
    let t = Instant::now();
    while ticks.len() < 4 {
        let mut line = String::new();
        assert!(r.read_line(&mut line).unwrap() > 0, "logs -f ended");
        if let Some(n) = line
            .trim()
            .strip_suffix("")
            .and_then(|l| l.split("tick ").nth(1))
        {
            ticks.push(n.parse::<u64>().unwrap());
        }
        assert!(t.elapsed() < Duration::from_secs(30));
    }
    let _ = f.kill();
    let _ = f.wait();
    assert!(
        ticks.windows(2).all(|w| w[1] == w[0] + 1),
        "not following in order: {ticks:?}"
    );

    up.wait_state("chatty", "exited");
    let mut names: Vec<String> = std::fs::read_dir(up.logdir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("chatty"))
        .collect();
    names.sort();
    assert_eq!(names, ["chatty.log", "chatty.log.1", "chatty.log.2"]);
    for n in &names {
        let len = std::fs::metadata(up.logdir().join(n)).unwrap().len();
        assert!(len <= 2000, "{n} is {len} bytes");
    }
    let (code, out, _) = up.cli(&["logs", "-n", "2", "chatty"]);
    assert_eq!(code, 0);
    assert!(out.contains("stdout 400"), "{out}");
    up.down();
    assert_clean();
}

#[test]
fn sigkill_of_the_supervisor_takes_services_down_and_next_up_cleans() {
    require_vm();
    let services =
        json!({"a": svc("exec sleep 1444", json!({})), "b": svc("exec sleep 1445", json!({}))});
    let mut up = Up::start("killed", services.clone(), &[]);
    up.wait_state("a", "running");
    up.wait_state("b", "running");
    nix::sys::signal::kill(up.pid(), nix::sys::signal::Signal::SIGKILL).unwrap();
    let _ = up.child.take().unwrap().wait();
    let stack = up.stack_path().display().to_string();
    let t = Instant::now();
    // Neither the services nor the supervisor's spawner (same command line)
    // outlive it.
    while !processes_matching("sleep 144").is_empty() || !processes_matching(&stack).is_empty() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "survived the supervisor: {:?} {:?}",
            processes_matching("sleep 144"),
            processes_matching(&stack)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let stale = format!("{CGROUP_ROOT}/killed");
    assert!(
        std::path::Path::new(&format!("{stale}/a")).exists(),
        "expected the stale cgroup to test cleanup"
    );
    let up = up.spawn(&[]);
    up.wait_state("a", "running");
    assert!(
        up.stderr()
            .contains("removed stale cgroups of a previous run: a, b")
            || up
                .stderr()
                .contains("removed stale cgroups of a previous run: b, a"),
        "{}",
        up.stderr()
    );
    up.down();
    assert_clean();
}

#[test]
fn sigterm_stops_everything_and_exits_0() {
    require_vm();
    let mut up = Up::start(
        "term",
        json!({"a": svc("exec sleep 1000", json!({})), "b": svc("exec sleep 1000", json!({"dependsOn": ["a"]}))}),
        &[],
    );
    up.wait_state("b", "running");
    nix::sys::signal::kill(up.pid(), nix::sys::signal::Signal::SIGTERM).unwrap();
    let out = wait_output(up.child.take().unwrap(), Duration::from_secs(60));
    assert_eq!(out.status.code(), Some(0), "{}", up.stderr());
    assert!(
        !std::path::Path::new(&up.socket()).exists(),
        "socket left behind"
    );
    assert_clean();
}

#[test]
fn services_get_the_fd_limit_isola_up_started_with() {
    require_vm();
    // The supervisor raises its own RLIMIT_NOFILE for its many fds; its
    // services must not inherit that.
    let (soft, hard) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap();
    let up = Up::start(
        "nofile",
        json!({"probe": svc("ulimit -n; ulimit -Hn", json!({"restart": {"policy": "no"}}))}),
        &[],
    );
    up.wait_state("probe", "exited");
    assert_eq!(
        up.stdout_words("probe"),
        [soft.to_string(), hard.to_string()]
    );
    up.down();
    assert_clean();
}

#[test]
fn the_supervisor_is_the_oom_killers_last_choice_and_services_are_not() {
    require_vm();
    // Killing the supervisor takes every service down: it lowers its own
    // OOM score; services get the score `isola up` started with, or their
    // spec's.
    let started_with = std::fs::read_to_string("/proc/self/oom_score_adj").unwrap();
    let mut own = svc(
        "cat /proc/self/oom_score_adj",
        json!({"restart": {"policy": "no"}}),
    );
    own["process"]["oomScoreAdj"] = json!(300);
    let up = Up::start(
        "oomadj",
        json!({
            "inherits": svc("cat /proc/self/oom_score_adj", json!({"restart": {"policy": "no"}})),
            "own": own,
        }),
        &[],
    );
    let pid = up.child.as_ref().unwrap().id();
    let supervisor = std::fs::read_to_string(format!("/proc/{pid}/oom_score_adj")).unwrap();
    assert_eq!(supervisor.trim(), "-999");
    for (name, want) in [("inherits", started_with.trim()), ("own", "300")] {
        up.wait_state(name, "exited");
        assert_eq!(up.stdout_words(name), [want], "{name}");
    }
    up.down();
    assert_clean();
}

#[test]
fn events_stream_what_the_supervisor_does_to_every_service() {
    require_vm();
    let up = Up::start(
        "events",
        json!({
            "a": svc("sleep 1000", json!({})),
            "b": svc("sleep 1000", json!({})),
        }),
        &[],
    );
    up.wait_state("a", "running");
    up.wait_state("b", "running");
    let mut client = up.spawn_cli(&["events", "--json"]);
    let out = client.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<Value>();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if tx.send(serde_json::from_str(&line).unwrap()).is_err() {
                break;
            }
        }
    });
    // The subscription is in place once a restart shows up in the stream.
    let t = Instant::now();
    let first = loop {
        let (code, _, err) = up.cli(&["restart", "a"]);
        assert_eq!(code, 0, "{err}");
        if let Ok(ev) = rx.recv_timeout(Duration::from_secs(2)) {
            break ev;
        }
        assert!(t.elapsed() < Duration::from_secs(60), "no events");
    };
    assert_eq!(first["service"], "a", "{first}");
    let (code, _, err) = up.cli(&["stop", "b"]);
    assert_eq!(code, 0, "{err}");
    let mut seen = Vec::new();
    let stopped = loop {
        let ev = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("no event for b");
        if ev["service"] == "b" {
            seen.push(ev["event"].as_str().unwrap_or_default().to_string());
            if ev["event"] == "stopped" {
                break ev;
            }
        }
    };
    assert_eq!(
        seen,
        ["stopping (SIGTERM)", "killed by signal 15", "stopped"]
    );
    let time = stopped["time"].as_str().unwrap();
    assert!(time.len() == 24 && time.ends_with('Z'), "{time}");
    let _ = client.kill();
    let _ = client.wait();
    up.down();
    assert_clean();
}

#[test]
fn up_detached_returns_once_the_stack_is_up_and_names_what_is_not() {
    require_vm();
    let dir = Scratch::new("up-detach");
    let stack = dir.write(
        "stack.json",
        &json!({"services": {"a": svc("exec sleep 1000", json!({}))}}).to_string(),
    );
    let sock = dir.path("s.sock").display().to_string();
    let logs = dir.path("logs").display().to_string();
    let out = isola(
        &[
            "up",
            "-d",
            "--socket",
            &sock,
            "--log-dir",
            &logs,
            stack.to_str().unwrap(),
        ],
        "",
        Duration::from_secs(120),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("1 services up"), "{text}");
    // The supervisor runs on in the background, in its own session.
    let st = isola(
        &["status", "--socket", &sock, "--json"],
        "",
        Duration::from_secs(30),
    );
    let rows: Vec<Value> = serde_json::from_slice(&st.stdout).unwrap();
    assert_eq!(rows[0]["state"], "running");
    let down = isola(&["down", "--socket", &sock], "", Duration::from_secs(60));
    assert!(down.status.success());
    assert!(std::fs::read_to_string(dir.path("logs/isola-up.log")).is_ok());
    // A service that never gets ready: exit 1 naming it, the supervisor
    // left running.
    let stack = dir.write(
        "stuck.json",
        &json!({"services": {"b": svc("exec sleep 1000", json!({"notify": "systemd"}))}})
            .to_string(),
    );
    let out = isola(
        &[
            "up",
            "-d",
            "--wait-seconds",
            "3",
            "--socket",
            &sock,
            "--log-dir",
            &logs,
            stack.to_str().unwrap(),
        ],
        "",
        Duration::from_secs(120),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("not up: b (running)"), "{err}");
    let down = isola(&["down", "--socket", &sock], "", Duration::from_secs(60));
    assert!(down.status.success(), "the supervisor was not left running");
    assert_clean();
}

#[test]
fn under_systemd_up_says_ready_status_and_stopping() {
    require_vm();
    let dir = Scratch::new("sd-notify");
    let path = dir.path("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let env = format!("NOTIFY_SOCKET={}", path.display());
    let services =
        json!({"a": svc("exec sleep 1000", json!({})), "b": svc("exec sleep 1000", json!({}))});
    let up = Up::start_under("sdnotify", services, &[], &["env", &env]);
    let mut buf = [0u8; 4096];
    let mut seen = Vec::new();
    while !seen.iter().any(|m: &String| m.contains("READY=1")) {
        let n = sock
            .recv(&mut buf)
            .expect("a notification before the timeout");
        seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    let ready = seen.last().unwrap();
    assert!(ready.contains("STATUS=2/2 services up"), "{seen:?}");
    assert_eq!(
        up.service("a")["state"],
        "running",
        "READY=1 before the stack was up"
    );
    // The shutdown (`isola down`; the datagrams wait in the socket).
    up.down();
    loop {
        let n = sock.recv(&mut buf).expect("STOPPING=1 before the timeout");
        if String::from_utf8_lossy(&buf[..n]).contains("STOPPING=1") {
            break;
        }
    }
    assert_clean();
}

fn tmux(args: &[&str]) -> std::process::Output {
    Command::new("tmux")
        .args(args)
        .output()
        .expect("tmux (Debian package tmux)")
}

/// `cmd` in a detached tmux session of this size: a real terminal.
fn tmux_session(session: &str, width: u16, height: u16, cmd: &str) {
    let (w, h) = (width.to_string(), height.to_string());
    let out = tmux(&["new-session", "-d", "-s", session, "-x", &w, "-y", &h, cmd]);
    assert!(out.status.success(), "{out:?}");
}

/// The pane's text, as a person sees it.
fn pane(session: &str) -> String {
    String::from_utf8_lossy(&tmux(&["capture-pane", "-p", "-t", session]).stdout).into_owned()
}

#[test]
fn top_shows_the_stack_live_in_a_real_terminal_and_q_quits() {
    require_vm();
    let up = Up::start(
        "top",
        json!({"busy": svc("while :; do :; done", json!({})), "idle": svc("exec sleep 1000", json!({}))}),
        &[],
    );
    up.wait_state("busy", "running");
    up.wait_state("idle", "running");
    let session = format!("isola-top-{}", std::process::id());
    let cmd = format!("{} top --socket {}", isola_bin().display(), up.socket());
    tmux_session(&session, 160, 20, &cmd);
    // As a person sees it: the pane's text, until the second redraw gives
    // the busy service a CPU % from a delta.
    let t = Instant::now();
    let busy_cpu = loop {
        let text = pane(&session);
        let cpu = text
            .lines()
            .find(|l| l.starts_with("busy"))
            .and_then(|l| l.split_whitespace().find(|w| w.ends_with('%')))
            .and_then(|w| w.trim_end_matches('%').parse::<f64>().ok());
        if let Some(c) = cpu {
            assert!(text.contains("q quits") && text.contains("idle"), "{text}");
            break c;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "top never showed CPU %: {text}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(busy_cpu > 20.0, "a busy loop at {busy_cpu}% CPU");
    tmux(&["send-keys", "-t", &session, "q"]);
    let t = Instant::now();
    while tmux(&["has-session", "-t", &session]).status.success() {
        assert!(t.elapsed() < Duration::from_secs(10), "q did not quit top");
        std::thread::sleep(Duration::from_millis(100));
    }
    up.down();
    assert_clean();
}

#[test]
fn logs_without_a_name_interleave_every_service_by_time() {
    require_vm();
    let up = Up::start(
        "interleave",
        json!({
            "a": svc("echo a1; sleep 0.4; echo a2; exec sleep 1000", json!({})),
            "b": svc("sleep 0.2; echo b1; sleep 0.4; echo b2; exec sleep 1000", json!({}))
        }),
        &[],
    );
    up.wait_log("b", "b2");
    up.wait_log("a", "a2");
    let (code, out, err) = up.cli(&["logs"]);
    assert_eq!(code, 0, "{err}");
    let order: Vec<&str> = out
        .lines()
        .filter(|l| l.contains("| stdout "))
        .map(|l| l.rsplit(' ').next().unwrap())
        .collect();
    assert_eq!(order, ["a1", "b1", "a2", "b2"], "{out}");
    assert!(out.lines().any(|l| l == "b | stdout b1"), "{out}");
    // --timestamps keeps each line's time; --since drops what came before.
    let (_, out, _) = up.cli(&["logs", "-t", "-n", "1"]);
    // (The VM's clock may start at 1970: the shape, not the year.)
    let (time, rest) = out.trim_end().split_once(' ').unwrap();
    assert!(time.contains('T') && time.ends_with('Z'), "{out}");
    assert_eq!(rest, "b | stdout b2");
    let (code, out, _) = up.cli(&["logs", "--since", "2100-01-01T00:00:00Z"]);
    assert_eq!((code, out.as_str()), (0, ""));
    let (code, _, err) = up.cli(&["logs", "--since", "yesterday"]);
    assert_eq!(code, 2, "{err}");
    up.down();
    assert_clean();
}

#[test]
fn a_big_stack_at_a_terminal_ends_its_progress_line_with_a_summary() {
    require_vm();
    let dir = Scratch::new("progress");
    let mut services = serde_json::Map::new();
    for k in 0..25 {
        services.insert(format!("s{k}"), svc("exec sleep 1000", json!({})));
    }
    let stack = dir.write("stack.json", &json!({"services": services}).to_string());
    let sock = dir.path("s.sock").display().to_string();
    let session = format!("isola-progress-{}", std::process::id());
    let cmd = format!(
        "{} up --quiet --socket {sock} --log-dir {} {}",
        isola_bin().display(),
        dir.path("logs").display(),
        stack.display()
    );
    tmux_session(&session, 120, 10, &cmd);
    let t = Instant::now();
    loop {
        let text = pane(&session);
        if text.contains("isola: 25/25 services up") {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(60), "no summary: {text}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let down = isola(&["down", "--socket", &sock], "", Duration::from_secs(60));
    assert!(down.status.success());
    let _ = tmux(&["kill-session", "-t", &session]);
    assert_clean();
}
