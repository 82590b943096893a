//! A supervisor that runs for long stays the same size: overlapping
//! restarts and reloads that swap a service, cycle after cycle, leave its
//! fds and memory where they were (the core reuses a forgotten service's
//! index, and every part's table with it).

use std::time::{Duration, Instant};

use isola_tests::up::*;
use isola_tests::*;
use serde_json::{json, Value};

fn status_line(pid: nix::unistd::Pid, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("supervisor status")
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect(key)
}

fn fds(pid: nix::unistd::Pid) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count)
}

/// Until the stack shows exactly these services, each running once.
fn settle(up: &Up, names: &[&str]) {
    let t = Instant::now();
    loop {
        let st = up.status();
        let mut have: Vec<&str> = st.iter().filter_map(|s| s["name"].as_str()).collect();
        have.sort_unstable();
        if have == names && st.iter().all(|s| s["state"] == "running") {
            return;
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "not settled: {st:?}\n{}",
            up.stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One overlapping restart of `web`, then a reload that swaps the other
/// service for `other` (removed and added).
fn cycle(up: &Up, web: &Value, k: usize) {
    let (code, _, err) = up.cli(&["restart", "web"]);
    assert_eq!(code, 0, "{err}");
    let (gone, other) = if k.is_multiple_of(2) {
        ("db", "db2")
    } else {
        ("db2", "db")
    };
    settle(up, &{
        let mut n = ["web", gone];
        n.sort_unstable();
        n
    });
    up.write_stack(&json!({"web": web, other: svc("exec sleep 1001", json!({}))}));
    nix::sys::signal::kill(up.pid(), nix::sys::signal::Signal::SIGHUP).unwrap();
    let mut want = ["web", other];
    want.sort_unstable();
    settle(up, &want);
}

/// Cycles before the first measure, and in all (each: one overlap, one
/// reload swapping a service).
const WARM_UP: usize = 30;
const CYCLES: usize = 250;

#[test]
fn overlaps_and_reloads_leave_the_supervisor_the_same_size() {
    require_vm();
    let web = svc(
        "exec sleep 1000",
        json!({"restart": {"policy": "always", "mode": "overlap", "readyTimeoutMs": 20000}}),
    );
    let up = Up::start(
        "cycles",
        json!({"web": web.clone(), "db": svc("exec sleep 1001", json!({}))}),
        &[],
    );
    settle(&up, &["db", "web"]);
    // Warm up: every table and buffer at its working size.
    for k in 0..WARM_UP {
        cycle(&up, &web, k);
    }
    std::thread::sleep(Duration::from_millis(200));
    let sup = up.supervisor_pid();
    let (rss0, fds0) = (status_line(sup, "VmRSS:"), fds(sup));
    for k in WARM_UP..CYCLES {
        cycle(&up, &web, k);
    }
    // The last client's hang-up may not have been handled yet.
    let t = Instant::now();
    while fds(sup) != fds0 && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let (rss1, fds1) = (status_line(sup, "VmRSS:"), fds(sup));
    eprintln!("supervisor after {WARM_UP} and {CYCLES} cycles: RSS {rss0} → {rss1} KiB, fds {fds0} → {fds1}");
    assert_eq!(fds1, fds0, "fds after {WARM_UP} and {CYCLES} cycles");
    assert!(
        rss1 <= rss0 + 256,
        "RSS {rss0} KiB after {WARM_UP} cycles, {rss1} KiB after {CYCLES}"
    );
    assert_eq!(up.service("web")["restarts"], CYCLES);
    up.down();
    assert_clean();
}
