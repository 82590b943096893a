//! Under systemd: READY, STATUS and STOPPING through $NOTIFY_SOCKET.

use std::time::Duration;

use isola_tests::up::*;
use isola_tests::*;
use serde_json::json;

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

#[test]
fn under_systemd_an_upgrade_says_reloading_then_ready_from_the_same_pid() {
    require_vm();
    let dir = Scratch::new("sd-upgrade");
    let path = dir.path("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let env = format!("NOTIFY_SOCKET={}", path.display());
    let services = json!({"a": svc("exec sleep 1000", json!({}))});
    let up = Up::start_under("sdupgrade", services, &[], &["env", &env]);
    let mut buf = [0u8; 4096];
    let mut next = || {
        let n = sock
            .recv(&mut buf)
            .expect("a notification before the timeout");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    while !next().contains("READY=1") {}
    let (code, out, err) = up.cli(&["upgrade"]);
    assert_eq!(code, 0, "{out}{err}");
    // The unit's main pid (the process systemd started) is the stack's
    // keeper, which says READY=1 for the supervisor it keeps.
    let (code, info, err) = up.cli(&["info", "--json"]);
    assert_eq!(code, 0, "{err}");
    let info: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert_eq!(info["keeper"].as_i64(), Some(i64::from(up.pid().as_raw())));
    assert_eq!(info["upgrades"], 1);
    assert_eq!(up.service("a")["state"], "running");
    let mut seen = Vec::new();
    while !seen.iter().any(|m: &String| m.contains("READY=1")) {
        seen.push(next());
    }
    let reloading = seen.iter().position(|m| m.contains("RELOADING=1"));
    let ready = seen.iter().position(|m| m.contains("READY=1"));
    assert!(
        reloading.is_some() && reloading < ready,
        "RELOADING=1, then READY=1: {seen:?}"
    );
    assert!(
        seen[reloading.unwrap_or(0)].contains("MONOTONIC_USEC="),
        "{seen:?}"
    );
    up.down();
    assert_clean();
}
