//! The stock `crun spec` bundle under `isola run` — the like-for-like start
//! `make bench` times against crun, runc, bwrap and unshare — and what the
//! start path's savings must not give up: the `cgroup` mount is a
//! read-only view of the whole hierarchy that leaves the host's cgroup2
//! options alone (a bind, not a fresh mount), it works in a user namespace
//! without a cgroup namespace, and the fresh `/dev`'s nodes (made, or bound
//! where mknod is refused) are the devices they name. Run in the VM.

use std::path::{Path, PathBuf};
use std::time::Duration;

use isola_tests::{crun_spec, isola, require_vm, Scratch};
use serde_json::{json, Value};

/// `crun spec`, changed as the bench changes it (args, no terminal), with
/// or without a cgroup namespace (crun 1.8 adds one on a cgroup v2 host,
/// podman's `--cgroupns=host` leaves it out), plus `edit`.
fn bundle(s: &Scratch, script: &str, cgroupns: bool, edit: impl FnOnce(&mut Value)) -> PathBuf {
    let dir = s.path("bundle");
    let root = dir.join("rootfs");
    for d in ["bin", "proc", "dev", "sys", "tmp"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).expect("busybox-static");
    let _ = std::os::unix::fs::symlink("busybox", root.join("bin/sh"));
    crun_spec(&dir);
    let p = dir.join("config.json");
    let mut c: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    c["process"]["terminal"] = json!(false);
    c["process"]["args"] = json!(["/bin/busybox", "sh", "-c", script]);
    let ns = c["linux"]["namespaces"].as_array_mut().unwrap();
    ns.retain(|n| n["type"] != "cgroup");
    if cgroupns {
        ns.push(json!({"type": "cgroup"}));
    }
    edit(&mut c);
    std::fs::write(&p, c.to_string()).unwrap();
    p
}

fn run(config: &Path) -> String {
    let out = isola(
        &["run", config.to_str().unwrap()],
        "",
        Duration::from_secs(60),
    );
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The super options of the host's cgroup2 mount at /sys/fs/cgroup.
fn host_cgroup2_options() -> String {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    info.lines()
        .find(|l| l.contains(" /sys/fs/cgroup ") && l.contains(" - cgroup2 "))
        .and_then(|l| l.rsplit(' ').next())
        .expect("a cgroup2 mount at /sys/fs/cgroup")
        .to_string()
}

const CGROUP_VIEW: &str = "grep ' /sys/fs/cgroup ' /proc/self/mountinfo; \
     ls /sys/fs/cgroup; \
     echo +pids > /sys/fs/cgroup/cgroup.subtree_control && echo WROTE; \
     ls -ln /dev/null /dev/zero /dev/full /dev/random /dev/urandom /dev/tty; \
     echo x > /dev/null && head -c 3 /dev/zero | wc -c; \
     echo nodes-bound=$(grep -c ' /dev/null ' /proc/self/mountinfo)";

/// What a cgroup mount shows: the hierarchy's root (the sandboxes' parent
/// group is in it), or the sandbox's own group (a cgroup namespace's root:
/// no `isola` in it, but `cgroup.events`, which the root group lacks).
enum Shows {
    HierarchyRoot,
    OwnGroup,
}

/// How the fresh `/dev`'s nodes came to be: made (mknod, no mount of
/// their own) or the host's, bound (where mknod is refused).
#[derive(Clone, Copy)]
enum Nodes {
    Made,
    Bound,
}

fn assert_views(out: &str, shows: Shows, nodes: Nodes) {
    let bound = match nodes {
        Nodes::Made => "nodes-bound=0",
        Nodes::Bound => "nodes-bound=1",
    };
    assert!(out.lines().any(|l| l == bound), "expected {bound}: {out}");
    let mnt = out.lines().next().unwrap_or_default();
    assert!(mnt.contains(" - cgroup2 "), "not cgroup2: {out}");
    let opts = mnt.split(' ').nth(5).unwrap_or_default();
    assert!(opts.split(',').any(|o| o == "ro"), "not read-only: {out}");
    let has = |name: &str| out.lines().any(|l| l == name);
    let shown = match shows {
        Shows::HierarchyRoot => has("isola") && !has("cgroup.events"),
        Shows::OwnGroup => !has("isola") && has("cgroup.events"),
    };
    assert!(shown, "not the cgroup view expected: {out}");
    assert!(
        !out.contains("WROTE"),
        "the cgroup view was writable: {out}"
    );
    for (name, num) in [
        ("null", "1,   3"),
        ("zero", "1,   5"),
        ("full", "1,   7"),
        ("random", "1,   8"),
        ("urandom", "1,   9"),
        ("tty", "5,   0"),
    ] {
        let line = out
            .lines()
            .find(|l| l.ends_with(&format!("/dev/{name}")))
            .unwrap_or_else(|| panic!("no /dev/{name}: {out}"));
        assert!(
            line.starts_with("crw-rw-rw-") && line.contains(num),
            "/dev/{name}: {line}"
        );
    }
    assert!(
        out.lines().any(|l| l.trim() == "3"),
        "/dev/zero gave no bytes: {out}"
    );
}

#[test]
fn the_cgroup_mount_is_a_read_only_view_that_leaves_the_host_options_alone() {
    require_vm();
    let before = host_cgroup2_options();
    assert!(
        before.split(',').any(|o| o == "nsdelegate"),
        "the VM mounts cgroup2 with nsdelegate (scripts/vm.sh); got {before}"
    );
    let s = Scratch::new("like-cgroup");
    let out = run(&bundle(&s, CGROUP_VIEW, false, |_| {}));
    assert_views(&out, Shows::HierarchyRoot, Nodes::Made);
    // A fresh cgroup2 mount without options in the host's cgroup namespace
    // would have taken nsdelegate away from the whole host.
    assert_eq!(host_cgroup2_options(), before);
}

#[test]
fn with_a_cgroup_namespace_the_mount_is_fresh_and_shows_the_sandbox_group() {
    require_vm();
    let before = host_cgroup2_options();
    let s = Scratch::new("like-cgroupns");
    let out = run(&bundle(&s, CGROUP_VIEW, true, |_| {}));
    assert_views(&out, Shows::OwnGroup, Nodes::Made);
    // Options of a mount in a cgroup namespace of its own are ignored.
    assert_eq!(host_cgroup2_options(), before);
}

#[test]
fn in_a_user_namespace_without_a_cgroup_namespace_the_view_is_the_same() {
    require_vm();
    let s = Scratch::new("like-userns");
    let config = bundle(&s, CGROUP_VIEW, false, |c| {
        let ns = c["linux"]["namespaces"].as_array_mut().unwrap();
        ns.push(json!({"type": "user"}));
        let map = json!([{"containerID": 0, "hostID": 200000, "size": 65536}]);
        c["linux"]["uidMappings"] = map.clone();
        c["linux"]["gidMappings"] = map;
    });
    // A fresh cgroup2 mount is refused here (EPERM: the cgroup namespace
    // belongs to the host's user namespace); the bind is not. mknod is
    // refused too: the nodes are the host's, bound.
    assert_views(&run(&config), Shows::HierarchyRoot, Nodes::Bound);
}
