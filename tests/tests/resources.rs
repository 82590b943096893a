//! `resourceRules`: a service that holds too much memory, or spins a CPU,
//! for longer than its rule allows is restarted with the reason
//! `resource`; an `event` rule only tells.

use std::time::Duration;

use isola_tests::up::*;
use isola_tests::*;
use serde_json::json;

/// A payload that takes about 40 MB and keeps it.
const HOG: &str = "a=$(head -c 40000000 /dev/zero | tr '\\0' x); exec sleep 1000";

#[test]
fn memory_and_cpu_rules_restart_and_an_event_rule_only_tells() {
    require_vm();
    let restart = |metric: &str, above: &str, ms: u64| {
        json!({"resourceRules": [{"metric": metric, "above": above, "forMs": ms, "action": "restart"}],
               "restart": {"policy": "always", "delayMs": 100, "maxDelayMs": 100}})
    };
    let up = Up::start(
        "rules",
        json!({
            "hog": svc(HOG, restart("memory", "20M", 1000)),
            "spin": svc("while :; do :; done", restart("cpu", "50%", 2000)),
            "told": svc(HOG, json!({"resourceRules": [{"metric": "memory", "above": "20M", "forMs": 1000, "action": "event"}]})),
            "calm": svc("exec sleep 1000", restart("memory", "20M", 1000)),
        }),
        &[],
    );
    for name in ["hog", "spin"] {
        let s = up.wait_for(
            name,
            "a restart by its rule",
            Duration::from_secs(60),
            |s| s["restarts"].as_u64().unwrap_or(0) >= 1 && s["lastExit"]["reason"] == "resource",
        );
        let msg = s["lastExit"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(
            msg.contains("above") && msg.contains("(resourceRules[0])"),
            "{name}: {msg}"
        );
    }
    up.wait_log("told", "(resourceRules[0])");
    let events = std::fs::read_to_string(up.logdir().join("told.log")).unwrap();
    assert!(events.contains(" isola resource: memory "), "{events}");
    assert_eq!(
        up.service("told")["restarts"],
        0,
        "an event rule restarts nothing"
    );
    // The metric counts each time a rule acted: once for the event rule
    // (it stays above: one crossing), never for a calm service.
    let (code, metrics, err) = up.cli(&["metrics"]);
    assert_eq!(code, 0, "{err}");
    let actions = |svc: &str| {
        format!("isola_service_resource_rule_actions_total{{service=\"{svc}\",rule=\"0\",metric=\"memory\"}}")
    };
    assert!(
        metrics.contains(&format!("{} 1\n", actions("told"))),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!("{} 0\n", actions("calm"))),
        "{metrics}"
    );
    assert_eq!(up.service("calm")["restarts"], 0, "below its rule");
    assert!(
        up.stderr().contains("hog: resource: memory "),
        "{}",
        up.stderr()
    );
    up.down();
    assert_clean();
}

/// A pressure rule is told by the kernel (a PSI trigger), not read: four
/// spinners on the VM's two CPUs keep some task of the service waiting
/// for a CPU all the time.
#[test]
fn a_pressure_rule_acts_on_the_kernels_trigger() {
    require_vm();
    let spin4 = "for k in 1 2 3 4; do (while :; do :; done) & done; wait";
    let rule = json!({
        "resourceRules": [{"metric": "cpuPressure", "above": "40%", "forMs": 2000, "action": "restart"}],
        "restart": {"policy": "always", "delayMs": 100, "maxDelayMs": 100}
    });
    let up = Up::start(
        "pressure",
        json!({
            "crowd": svc(spin4, rule.clone()),
            "calm": svc("exec sleep 1000", rule),
        }),
        &[],
    );
    let s = up.wait_for(
        "crowd",
        "a restart by its pressure rule",
        Duration::from_secs(90),
        |s| s["restarts"].as_u64().unwrap_or(0) >= 1 && s["lastExit"]["reason"] == "resource",
    );
    let msg = s["lastExit"]["message"].as_str().unwrap_or_default();
    assert!(
        msg.starts_with("resource: cpuPressure above 40% of each 1 s for 2000 ms"),
        "not the trigger's: {msg}\n{}",
        up.stderr()
    );
    assert_eq!(up.service("calm")["restarts"], 0);
    up.down();
    assert_clean();
}
