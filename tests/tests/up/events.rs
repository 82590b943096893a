//! `isola events`: the stream of what the supervisor does.

use std::time::{Duration, Instant};

use isola_tests::up::*;
use isola_tests::*;
use serde_json::json;

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
    let (mut client, rx) = up.events();
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
