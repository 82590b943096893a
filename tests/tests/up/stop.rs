//! Stopping: the stop timeout, the whole cgroup, dependency order, and a
//! stop that lands while starts are still under way.

use std::time::{Duration, Instant};

use isola_tests::up::*;
use isola_tests::*;
use serde_json::{json, Value};

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
