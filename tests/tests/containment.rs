//! What a sandbox keeps out, each check run twice where a capability could
//! be the reason: once as the barrier under test sees it, once with the
//! barrier opened (a rule added), same capabilities — so a refusal is the
//! barrier's doing, not a missing capability's.

use isola_tests::*;
use serde_json::{json, Value};

/// The VM's virtio disk, `major:minor`.
fn disk() -> (i64, i64) {
    let dev = std::fs::read_to_string("/sys/block/vda/dev").expect("no /sys/block/vda");
    let (a, b) = dev.trim().split_once(':').expect("major:minor");
    (a.parse().unwrap(), b.parse().unwrap())
}

/// Root with CAP_SYS_ADMIN, CAP_MKNOD and CAP_DAC_OVERRIDE, in pid and
/// mount namespaces, host root: the host's /dev/vda node is right there.
fn privileged(script: &str, devices: Value) -> Value {
    let caps = [
        "CAP_SYS_ADMIN",
        "CAP_MKNOD",
        "CAP_DAC_OVERRIDE",
        "CAP_SYS_RAWIO",
    ];
    json!({
        "process": {
            "args": ["sh", "-c", script, "isola-test-payload"],
            "env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"],
            "cwd": "/",
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps}
        },
        "linux": {
            "namespaces": [{"type": "pid"}, {"type": "mount"}],
            "resources": {"devices": devices}
        }
    })
}

#[test]
fn the_device_filter_refuses_a_disk_even_to_cap_sys_admin_and_cap_mknod() {
    require_vm();
    let dir = Scratch::new("devfilter");
    let (major, minor) = disk();
    let node = dir.path("vda-copy");
    let script = format!(
        "head -c 512 /dev/vda > /dev/null 2>&1 && echo open:ok || echo open:denied; \
         mknod {n} b {major} {minor} 2>/dev/null && echo mknod:ok || echo mknod:denied; \
         head -c 1 /dev/zero > /dev/null && echo zero:ok || echo zero:denied",
        n = node.display()
    );
    // The spec's usual "deny all", and nothing allowed: the defaults only.
    let (code, out, err) = run_spec(
        &privileged(&script, json!([{"allow": false, "access": "rwm"}])),
        &[],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        out.split_whitespace().collect::<Vec<_>>(),
        ["open:denied", "mknod:denied", "zero:ok"],
        "{err}"
    );
    assert!(!node.exists(), "mknod made a node");
    // The same capabilities with the disk allowed: both work, so the
    // refusals above were the filter's.
    let allow = json!([
        {"allow": false, "access": "rwm"},
        {"allow": true, "type": "b", "major": major, "minor": minor, "access": "rwm"}
    ]);
    let (code, out, err) = run_spec(&privileged(&script, allow), &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        out.split_whitespace().collect::<Vec<_>>(),
        ["open:ok", "mknod:ok", "zero:ok"],
        "{err}"
    );
    // Read-only access is what it says: reading works, writing does not.
    let ro = json!([{"allow": true, "type": "b", "major": major, "minor": minor, "access": "r"}]);
    let script = "head -c 512 /dev/vda > /dev/null && echo read:ok; \
                  (printf x | dd of=/dev/vda bs=1 count=1 conv=notrunc 2>/dev/null) && echo write:ok || echo write:denied";
    let (code, out, err) = run_spec(&privileged(script, ro), &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        out.split_whitespace().collect::<Vec<_>>(),
        ["read:ok", "write:denied"],
        "{err}"
    );
    assert_clean();
}

#[test]
fn device_rules_that_allow_need_a_cgroup() {
    require_vm();
    let (major, minor) = disk();
    let allow =
        json!([{"allow": true, "type": "b", "major": major, "minor": minor, "access": "r"}]);
    let (code, _, err) = run_spec(&privileged("true", allow), &["--no-cgroup"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("--no-cgroup: conflicts with linux.resources"),
        "{err}"
    );
    let bad = json!([{"allow": true, "type": "b", "major": major, "access": "rx"}]);
    let (code, _, err) = run_spec(&privileged("true", bad), &[]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("linux.resources.devices[0].access: rx: use r, w and m"),
        "{err}"
    );
    assert_clean();
}
