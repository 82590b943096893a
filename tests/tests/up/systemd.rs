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
