//! `isola up -d`: back once the stack is up, or naming what is not.

use std::time::Duration;

use isola_tests::up::*;
use isola_tests::*;
use serde_json::{json, Value};

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
