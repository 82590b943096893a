//! Restart policies and the crash-loop backoff.

use std::time::Duration;

use isola_tests::up::*;
use isola_tests::*;
use serde_json::json;

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
