//! The control socket: private to root, and a clear word when no
//! supervisor listens.

use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::Duration;

use isola_tests::up::*;
use isola_tests::*;
use serde_json::json;

#[test]
fn control_socket_is_private_and_refuses_other_users() {
    require_vm();
    let up = Up::start("ctl", json!({"a": svc("exec sleep 1000", json!({}))}), &[]);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(up.socket()).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let as_user = || {
        Command::new(isola_bin())
            .args(["status", "--socket", &up.socket()])
            .uid(1000)
            .gid(1000)
            .output()
            .unwrap()
    };
    // The scratch dir must be reachable for uid 1000 to get as far as the socket.
    std::fs::set_permissions(&up.dir.0, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = as_user();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
        "{out:?}"
    );
    // Even with the file opened up, the peer's uid is checked.
    std::fs::set_permissions(up.socket(), std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = as_user();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("permission denied: uid 1000"), "{err}");
    // Said on the supervisor's stderr, maybe a moment after the client
    // saw its connection closed.
    let t = std::time::Instant::now();
    while !up
        .stderr()
        .contains("refused a control connection from uid 1000")
    {
        assert!(
            t.elapsed() < std::time::Duration::from_secs(10),
            "{}",
            up.stderr()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    up.down();
    assert_clean();
}

#[test]
fn clients_report_a_missing_supervisor_in_one_line() {
    require_vm();
    for cmd in [
        vec!["status"],
        vec!["stop", "x"],
        vec!["logs", "x"],
        vec!["down"],
    ] {
        let mut a = cmd.clone();
        a.extend(["--socket", "/tmp/isola-nobody.sock"]);
        let out = isola(&a, "", Duration::from_secs(30));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{cmd:?}: {err}");
        assert_eq!(
            err.trim(),
            "isola: no isola supervisor is listening on /tmp/isola-nobody.sock"
        );
    }
}
