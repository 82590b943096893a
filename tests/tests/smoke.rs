//! The guest is what every other integration test relies on. Each check fails
//! with the condition that was false.

use std::process::Command;

#[test]
fn guest_is_root_with_unified_cgroup2() {
    isola_tests::require_vm();
    let controllers = std::fs::read_to_string("/sys/fs/cgroup/cgroup.subtree_control")
        .expect("read root cgroup.subtree_control");
    for c in ["cpu", "memory", "io", "pids"] {
        assert!(
            controllers.split_whitespace().any(|x| x == c),
            "controller {c} not in root subtree_control: {controllers:?}"
        );
    }
}

#[test]
fn guest_can_create_namespaces() {
    isola_tests::require_vm();
    let out = Command::new("unshare")
        .args([
            "--user",
            "--map-root-user",
            "--pid",
            "--fork",
            "--net",
            "--mount",
        ])
        .args(["sh", "-c", "echo $$; id -u"])
        .output()
        .expect("run unshare");
    assert!(out.status.success(), "unshare failed: {out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text.split_whitespace().collect::<Vec<_>>(),
        ["1", "0"],
        "unshare output: {text}"
    );
}

#[test]
fn guest_has_virtio_disk() {
    isola_tests::require_vm();
    let dev = std::fs::read_to_string("/sys/block/vda/dev")
        .expect("no /sys/block/vda: the virtio disk is missing");
    let size: u64 = std::fs::read_to_string("/sys/block/vda/size")
        .expect("read vda size")
        .trim()
        .parse()
        .expect("vda size");
    assert!(
        size * 512 >= 128 << 20,
        "virtio disk too small: {size} sectors"
    );
    assert!(dev.trim().contains(':'), "bad dev number {dev:?}");
    assert!(
        std::path::Path::new("/dev/vda").exists(),
        "/dev/vda node missing"
    );
}
