//! At a real terminal (tmux): `isola top`, and the progress line of a big
//! stack.

use std::process::Command;
use std::time::{Duration, Instant};

use isola_tests::up::*;
use isola_tests::*;
use serde_json::json;

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
