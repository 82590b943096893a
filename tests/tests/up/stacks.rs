//! The stack file: bad stacks refused whole, and a SIGHUP reload that
//! restarts only what changed.

use std::time::{Duration, Instant};

use isola_tests::up::*;
use isola_tests::*;
use serde_json::json;

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
