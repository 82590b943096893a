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

/// `sh -c SCRIPT` as root with `caps`, these `mounts`, in `namespaces`,
/// host root.
fn sandbox(script: &str, caps: &[&str], mounts: Value, linux: Value) -> Value {
    json!({
        "process": {
            "args": ["sh", "-c", script, "isola-test-payload"],
            "env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"],
            "cwd": "/",
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps}
        },
        "mounts": mounts,
        "linux": linux
    })
}

/// Root with CAP_SYS_ADMIN, CAP_MKNOD, CAP_DAC_OVERRIDE and CAP_SYS_RAWIO,
/// in pid and mount namespaces, sharing `dir`, under these device rules.
fn privileged(script: &str, devices: Value, dir: &Scratch) -> Value {
    let caps = [
        "CAP_SYS_ADMIN",
        "CAP_MKNOD",
        "CAP_DAC_OVERRIDE",
        "CAP_SYS_RAWIO",
    ];
    let linux = json!({
        "namespaces": [{"type": "pid"}, {"type": "mount"}],
        "resources": {"devices": devices}
    });
    sandbox(script, &caps, json!([dir.shared()]), linux)
}

#[test]
fn the_device_filter_refuses_a_disk_even_to_cap_sys_admin_and_cap_mknod() {
    require_vm();
    let dir = Scratch::new("devfilter");
    let (major, minor) = disk();
    // A node of the disk made outside, in a directory the sandbox shares:
    // there for the payload to open, whatever its /dev holds.
    let outside = dir.path("vda");
    let dev = nix::sys::stat::makedev(u64::try_from(major).unwrap(), u64::try_from(minor).unwrap());
    nix::sys::stat::mknod(
        &outside,
        nix::sys::stat::SFlag::S_IFBLK,
        nix::sys::stat::Mode::from_bits_truncate(0o600),
        dev,
    )
    .expect("mknod outside");
    let node = dir.path("vda-copy");
    let script = format!(
        "head -c 512 {o} > /dev/null 2>&1 && echo open:ok || echo open:denied; \
         mknod {n} b {major} {minor} 2>/dev/null && echo mknod:ok || echo mknod:denied; \
         head -c 1 /dev/zero > /dev/null && echo zero:ok || echo zero:denied",
        o = outside.display(),
        n = node.display()
    );
    // The spec's usual "deny all", and nothing allowed: the defaults only.
    let (code, out, err) = run_spec(
        &privileged(&script, json!([{"allow": false, "access": "rwm"}]), &dir),
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
    let (code, out, err) = run_spec(&privileged(&script, allow, &dir), &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        out.split_whitespace().collect::<Vec<_>>(),
        ["open:ok", "mknod:ok", "zero:ok"],
        "{err}"
    );
    // Read-only access is what it says: reading works, writing does not.
    let ro = json!([{"allow": true, "type": "b", "major": major, "minor": minor, "access": "r"}]);
    let script = format!(
        "head -c 512 {o} > /dev/null && echo read:ok; \
         (printf x | dd of={o} bs=1 count=1 conv=notrunc 2>/dev/null) && echo write:ok || echo write:denied",
        o = outside.display()
    );
    let (code, out, err) = run_spec(&privileged(&script, ro, &dir), &[]);
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
    let dir = Scratch::new("devrules");
    let (major, minor) = disk();
    let allow =
        json!([{"allow": true, "type": "b", "major": major, "minor": minor, "access": "r"}]);
    let (code, _, err) = run_spec(&privileged("true", allow, &dir), &["--no-cgroup"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("--no-cgroup: conflicts with linux.resources"),
        "{err}"
    );
    let bad = json!([{"allow": true, "type": "b", "major": major, "access": "rx"}]);
    let (code, _, err) = run_spec(&privileged("true", bad, &dir), &[]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("linux.resources.devices[0].access: rx: use r, w and m"),
        "{err}"
    );
    assert_clean();
}

/// Host-root mode (no `root`), uid 0 with no capabilities but
/// CAP_DAC_OVERRIDE (so file modes are no barrier: only the read-only
/// mounts are).
fn host_root(script: &str, mounts: Value) -> Value {
    let ns = json!({"namespaces": [{"type": "pid"}, {"type": "mount"}, {"type": "network"}]});
    sandbox(script, &["CAP_DAC_OVERRIDE"], mounts, ns)
}

#[test]
fn host_root_mode_sees_the_host_read_only_with_its_own_dev_and_tmp() {
    require_vm();
    let shared = Scratch::new("hostroot-rw");
    let ro = Scratch::new("hostroot-ro");
    let hidden = Scratch::new("hostroot-hidden");
    hidden.write("host-file", "x");
    let script = format!(
        "touch /root/isola-escape-marker 2>/dev/null && echo root:written || echo root:readonly; \
         touch /etc/isola-escape-marker 2>/dev/null && echo etc:written || echo etc:readonly; \
         echo dev: $(ls /dev | tr '\\n' ' '); \
         echo pts: $(ls /dev/pts | tr '\\n' ' '); \
         ls {hidden} > /dev/null 2>&1 && echo tmp:host || echo tmp:own; \
         echo t > /tmp/t && echo tmp:writable; \
         echo s > {rw}/from-sandbox && echo bind:written; \
         echo s > {ro}/x 2>/dev/null && echo robind:written || echo robind:readonly; \
         echo x > /dev/null && echo null:ok",
        hidden = hidden.0.display(),
        rw = shared.0.display(),
        ro = ro.0.display(),
    );
    let mut ro_bind = ro.shared();
    ro_bind["options"] = json!(["rbind", "ro"]);
    let (code, out, err) = run_spec(&host_root(&script, json!([shared.shared(), ro_bind])), &[]);
    assert_eq!(code, 0, "{out}{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines,
        [
            "root:readonly",
            "etc:readonly",
            "dev: fd full null ptmx pts random shm stderr stdin stdout tty urandom zero",
            "pts: ptmx",
            "tmp:own",
            "tmp:writable",
            "bind:written",
            "robind:readonly",
            "null:ok",
        ],
        "{err}"
    );
    assert!(!std::path::Path::new("/root/isola-escape-marker").exists());
    assert_eq!(
        std::fs::read_to_string(shared.path("from-sandbox")).unwrap(),
        "s\n"
    );
    assert!(!ro.path("x").exists());
    assert_clean();
}

#[test]
fn a_mount_point_missing_on_the_read_only_host_is_one_clear_error() {
    require_vm();
    let script = "true";
    let mounts = json!([{"destination": "/no-such-dir-isola", "type": "tmpfs", "source": "tmpfs"}]);
    let (code, _, err) = run_spec(&host_root(script, mounts), &[]);
    assert_eq!(code, 125, "{err}");
    assert!(
        err.contains("/no-such-dir-isola: no such mount point, and the host is read-only here"),
        "{err}"
    );
    // Under the sandbox's own /tmp it is made.
    let mounts = json!([{"destination": "/tmp/a/b", "type": "tmpfs", "source": "tmpfs"}]);
    let (code, _, err) = run_spec(&host_root("touch /tmp/a/b/x", mounts), &[]);
    assert_eq!(code, 0, "{err}");
    assert_clean();
}

#[test]
fn hogs_stay_in_their_cgroups_and_the_neighbour_and_the_supervisor_carry_on() {
    require_vm();
    use isola_tests::up::{svc, Up};
    // 16 MiB at a time: the allocation that crosses memory.max cannot be
    // met by reclaiming the interpreter's own pages (1 MiB steps could
    // thrash on them for a minute under emulation before the OOM kill).
    let memory = "import time\nx = []\nwhile True:\n    x.append(bytearray(16 << 20))\n";
    let mut mem_hog = svc(
        "",
        json!({
            "restart": {"policy": "always", "delayMs": 100, "limit": {"burst": 10000, "intervalMs": 1000}},
            "linux": {"resources": {"memory": {"limit": 64 << 20, "swap": 64 << 20}}}
        }),
    );
    mem_hog["process"]["args"] = json!(["python3", "-c", memory]);
    let up = Up::start(
        "hogs",
        json!({
            "victim": svc("exec sleep 1000", json!({})),
            "forkbomb": svc("b() { b | b & }; b; sleep 1000", json!({
                "restart": {"policy": "no"},
                "linux": {"resources": {"pids": {"limit": 64}}}
            })),
            "memhog": mem_hog,
            "flood": svc("yes 'flood flood flood flood flood flood flood' | head -c 50000000; exec sleep 1000", json!({})),
        }),
        &["--quiet"],
    );
    let before = up.wait_state("victim", "running");
    let mut slowest = std::time::Duration::ZERO;
    let t = std::time::Instant::now();
    while t.elapsed() < std::time::Duration::from_secs(6) {
        let t0 = std::time::Instant::now();
        let _ = up.status();
        slowest = slowest.max(t0.elapsed());
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert!(
        slowest < std::time::Duration::from_secs(3),
        "status took {slowest:?} beside the hogs"
    );
    let victim = up.service("victim");
    assert_eq!(
        (&victim["state"], &victim["restarts"], &victim["pid"]),
        (&json!("running"), &json!(0), &before["pid"]),
        "{victim}"
    );
    // The limits did act: the bomb met pids.max, the hog the OOM killer.
    let pids: u64 = std::fs::read_to_string(format!("{CGROUP_ROOT}/hogs/forkbomb/pids.current"))
        .expect("the bomb's cgroup")
        .trim()
        .parse()
        .unwrap();
    assert!(pids <= 64, "{pids} tasks under pids.max 64");
    let events =
        std::fs::read_to_string(format!("{CGROUP_ROOT}/hogs/forkbomb/pids.events")).unwrap();
    assert!(
        !events.contains("max 0"),
        "the bomb never hit pids.max: {events}"
    );
    let hog = up.wait_for(
        "memhog",
        "an OOM kill",
        std::time::Duration::from_secs(60),
        |s| s["oomKills"].as_u64() >= Some(1),
    );
    assert!(hog["oomKills"].as_u64() >= Some(1), "{hog}");
    up.down();
    assert_clean();
}
