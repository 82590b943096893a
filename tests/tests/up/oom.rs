//! What each `oom` policy does when the kernel kills in a service.

use std::time::Duration;

use isola_tests::up::*;
use isola_tests::*;
use serde_json::{json, Value};

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
