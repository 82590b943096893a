//! What the OCI runtime-tools validation suite found (docs/oci.md,
//! "Conformance"), each as its own check: a seccomp profile without
//! close_range, `rootfsPropagation` shared and unbindable, namespaces joined
//! by path (the init itself in a joined PID namespace), a `cgroupsPath`
//! right below the root group, cgroup v1-only fields ignored with a warning,
//! and the `isola-runtime` name.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use isola_tests::{isola_bin, require_vm, Scratch};
use serde_json::json;

use super::{become_subreaper, bundle, edit_config, wait_adopted, wait_for, Oci};

/// Busybox applets the checks below use, linked in the bundle's rootfs.
fn applets(b: &Path, names: &[&str]) {
    for a in names {
        let _ = std::os::unix::fs::symlink("busybox", b.join("rootfs/bin").join(a));
    }
}

fn output_of(pid_file: &Path) -> String {
    std::fs::read_to_string(pid_file.with_extension("out")).unwrap_or_default()
}

#[test]
fn a_profile_without_close_range_still_runs_the_payload_and_hides_our_fds() {
    require_vm();
    become_subreaper();
    let s = Scratch::new("oci-conf-seccomp");
    let oci = Oci::new(&s);
    let b = bundle(&s, "b", &["ls", "/proc/self/fd"]);
    applets(&b, &["ls"]);
    // As the runtime-tools default profile: close_range is not allowed.
    edit_config(&b, |c| {
        c["linux"]["seccomp"] = json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["close_range"], "action": "SCMP_ACT_ERRNO"}]
        });
    });
    // An fd the caller leaves open across exec (as a careless client
    // would): isola create and its init inherit it, the payload must not.
    let stray = std::fs::File::open("/dev/null").unwrap();
    nix::fcntl::fcntl(
        &stray,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
    )
    .unwrap();
    let pid_file = s.path("pid");
    let pid = oci.create(&b, "c", &pid_file);
    drop(stray);
    oci.ok(&["start", "c"]);
    assert_eq!(wait_adopted(pid), 0, "the payload ran");
    // ls's own directory fd is 3: nothing of the init's crossed the exec.
    let fds: Vec<String> = output_of(&pid_file)
        .split_whitespace()
        .map(String::from)
        .collect();
    assert_eq!(fds, ["0", "1", "2", "3"], "fds the payload saw");
    oci.ok(&["delete", "c"]);
}

/// The rootfs's mounts, seen from the host: none may leak out.
fn host_mounts_under(p: &Path) -> Vec<String> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let p = p.to_string_lossy();
    text.lines()
        .filter(|l| l.contains(p.as_ref()))
        .map(String::from)
        .collect()
}

#[test]
fn root_propagation_shared_and_unbindable_hold_inside_and_nothing_leaks() {
    require_vm();
    become_subreaper();
    let s = Scratch::new("oci-conf-propagation");
    let oci = Oci::new(&s);
    // Bind / elsewhere, then mount below /: a shared root shows the new
    // mount in the bind as well; an unbindable root refuses the bind.
    let script = "mkdir -p /t /m /src && touch /src/f && \
        if ! mount --rbind / /t 2>/dev/null; then echo unbindable; exit 0; fi; \
        mount --bind /src /m && if [ -e /t/m/f ]; then echo exposed; else echo hidden; fi";
    for (mode, want) in [
        ("shared", "exposed"),
        ("private", "hidden"),
        ("unbindable", "unbindable"),
    ] {
        let b = bundle(&s, mode, &["sh", "-c", script]);
        applets(&b, &["mount", "mkdir", "touch", "["]);
        edit_config(&b, |c| {
            c["root"]["readonly"] = json!(false);
            c["linux"]["rootfsPropagation"] = json!(mode);
            for set in ["bounding", "effective", "permitted"] {
                c["process"]["capabilities"][set]
                    .as_array_mut()
                    .unwrap()
                    .push(json!("CAP_SYS_ADMIN"));
            }
        });
        let pid_file = s.path(&format!("{mode}.pid"));
        let pid = oci.create(&b, mode, &pid_file);
        oci.ok(&["start", mode]);
        assert_eq!(wait_adopted(pid), 0, "{mode}: {}", output_of(&pid_file));
        assert_eq!(
            output_of(&pid_file).trim(),
            want,
            "rootfsPropagation {mode}"
        );
        oci.ok(&["delete", mode]);
        assert_eq!(host_mounts_under(&b), Vec::<String>::new(), "{mode}");
    }
}

/// Killed however the test ends: a process left behind keeps the VM up.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = nix::sys::signal::killpg(
            isola_tests::pid_of(&self.0),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = self.0.wait();
    }
}

/// `unshare --pid --mount --uts --fork sleep`: the sleep's pid.
fn namespaces_to_join() -> (KillOnDrop, i32) {
    let child = Command::new("unshare")
        .args(["--pid", "--mount", "--uts", "--fork", "sleep", "1000"])
        .stdin(Stdio::null())
        .process_group(0)
        .spawn()
        .unwrap();
    let children = format!("/proc/{0}/task/{0}/children", child.id());
    let mut sleep = 0;
    wait_for("unshare's child", || {
        sleep = std::fs::read_to_string(&children)
            .unwrap_or_default()
            .trim()
            .parse()
            .unwrap_or(0);
        sleep != 0
    });
    (KillOnDrop(child), sleep)
}

fn ns_link(pid: i32, ns: &str) -> String {
    std::fs::read_link(format!("/proc/{pid}/ns/{ns}"))
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

#[test]
fn namespaces_joined_by_path_hold_the_init_itself_and_its_view() {
    require_vm();
    become_subreaper();
    let s = Scratch::new("oci-conf-join");
    let oci = Oci::new(&s);
    let (_unshare, other) = namespaces_to_join();
    let b = bundle(&s, "b", &["sleep", "1000"]);
    std::fs::write(b.join("rootfs/etc/marker"), "").unwrap();
    edit_config(&b, |c| {
        c["hostname"] = json!("joined");
        let ns = c["linux"]["namespaces"].as_array_mut().unwrap();
        for (t, file) in [("pid", "pid"), ("mount", "mnt"), ("uts", "uts")] {
            ns.retain(|n| n["type"] != t);
            ns.push(json!({"type": t, "path": format!("/proc/{other}/ns/{file}")}));
        }
    });
    let pid = oci.create(&b, "c", &s.path("pid"));
    for ns in ["pid", "mnt", "uts"] {
        assert_eq!(
            ns_link(pid, ns),
            ns_link(other, ns),
            "the init's {ns} namespace"
        );
    }
    // The hostname was set in the joined namespace, the rootfs built there.
    let host = Command::new("nsenter")
        .args(["-t", &other.to_string(), "-u", "hostname"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&host.stdout).trim(), "joined");
    let marker = format!("/proc/{other}/root/etc/marker");
    assert!(
        Path::new(&marker).exists(),
        "the joined namespace's root is the rootfs"
    );
    oci.ok(&["start", "c"]);
    assert_eq!(oci.state("c")["status"], "running");
    oci.ok(&["delete", "--force", "c"]);
    assert_eq!(wait_adopted(pid), 128 + 9);
}

#[test]
fn a_cgroups_path_right_below_the_root_group_is_used_and_removed() {
    require_vm();
    become_subreaper();
    let s = Scratch::new("oci-conf-cgroup");
    let oci = Oci::new(&s);
    let b = bundle(&s, "b", &["sleep", "1000"]);
    let group = Path::new("/sys/fs/cgroup/isola-conformance-top");
    edit_config(&b, |c| {
        c["linux"]["cgroupsPath"] = json!("/isola-conformance-top");
    });
    let pid = oci.create(&b, "c", &s.path("pid"));
    let procs = std::fs::read_to_string(group.join("cgroup.procs")).unwrap();
    assert!(procs.lines().any(|l| l == pid.to_string()), "{procs}");
    oci.ok(&["delete", "--force", "c"]);
    assert_eq!(wait_adopted(pid), 128 + 9);
    assert!(!group.exists(), "the group went with the container");
}

#[test]
fn kernel_memory_and_leaf_weights_are_ignored_with_a_warning() {
    require_vm();
    become_subreaper();
    let s = Scratch::new("oci-conf-v1");
    let oci = Oci::new(&s);
    let b = bundle(&s, "b", &["true"]);
    edit_config(&b, |c| {
        c["linux"]["resources"] = json!({
            "memory": {"limit": 67108864, "kernel": 33554432},
            "blockIO": {"weight": 100, "leafWeight": 100}
        });
    });
    let pid_file = s.path("pid");
    let pid = oci.create(&b, "c", &pid_file);
    let err = std::fs::read_to_string(pid_file.with_extension("err")).unwrap();
    for field in [
        "linux.resources.memory.kernel",
        "linux.resources.blockIO.leafWeight",
    ] {
        assert!(err.contains(field), "a warning names {field}: {err}");
    }
    let max = std::fs::read_to_string("/sys/fs/cgroup/isola-oci/c/memory.max").unwrap();
    assert_eq!(max.trim(), "67108864", "the rest of the resources apply");
    oci.ok(&["start", "c"]);
    assert_eq!(wait_adopted(pid), 0);
    oci.ok(&["delete", "c"]);
}

#[test]
fn called_isola_runtime_every_command_is_the_oci_one() {
    require_vm();
    let s = Scratch::new("oci-conf-name");
    let runtime = s.path("isola-runtime");
    std::os::unix::fs::symlink(isola_bin(), &runtime).unwrap();
    // Argv that, called `isola`, is the supervisor's (the control: it
    // says no supervisor listens) and, called `isola-runtime`, the OCI
    // command's (no such container).
    for argv in [&["start", "nosuch"][..], &["exec", "nosuch", "true"][..]] {
        let control = Command::new(isola_bin()).args(argv).output().unwrap();
        let err = String::from_utf8_lossy(&control.stderr);
        assert!(!err.contains("does not exist"), "isola {argv:?}: {err}");
        let out = Command::new(&runtime).args(argv).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(
            err.contains("container nosuch does not exist"),
            "isola-runtime {argv:?}: {err}"
        );
    }
}

/// Seconds since boot as /proc/uptime says, read where `cmd` runs.
fn uptime(text: &str) -> f64 {
    text.split_whitespace()
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("an uptime in {text:?}"))
}

#[test]
fn a_time_namespace_with_offsets_for_the_payload_and_exec() {
    require_vm();
    become_subreaper();
    let s = Scratch::new("oci-conf-time");
    let oci = Oci::new(&s);
    let b = bundle(&s, "b", &["sh", "-c", "cat /proc/uptime; sleep 1000"]);
    const DAY: f64 = 86_400.0;
    edit_config(&b, |c| {
        c["linux"]["namespaces"]
            .as_array_mut()
            .unwrap()
            .push(json!({"type": "time"}));
        c["linux"]["timeOffsets"] = json!({
            "boottime": {"secs": 86_400, "nanosecs": 0},
            "monotonic": {"secs": 86_400}
        });
    });
    let pid_file = s.path("pid");
    let pid = oci.create(&b, "c", &pid_file);
    assert_ne!(
        ns_link(pid, "time"),
        ns_link(nix::unistd::getpid().as_raw(), "time")
    );
    oci.ok(&["start", "c"]);
    wait_for("the payload's uptime", || {
        output_of(&pid_file).contains('\n')
    });
    let host = uptime(&std::fs::read_to_string("/proc/uptime").unwrap());
    let inside = uptime(&output_of(&pid_file));
    // (Read here after it, but /proc/uptime has two decimals: a margin.)
    assert!(
        inside > DAY && inside - DAY <= host + 0.5,
        "uptime {inside} inside, {host} here"
    );
    // A process exec'd into the container lives in its time too.
    let out = oci.ok(&["exec", "c", "cat", "/proc/uptime"]);
    assert!(uptime(&out) > DAY, "exec'd: {out}");
    oci.ok(&["delete", "--force", "c"]);
    assert_eq!(wait_adopted(pid), 128 + 9);
}
