//! `isola run`: one service in a full sandbox. Root, inside the cgroup v2 VM.
//! Every test ends by checking that no cgroup and no payload process is left.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use isola_tests::*;
use serde_json::{json, Value};

const NS: &[&str] = &["pid", "network", "mount", "uts", "ipc"];

/// A spec running `sh -c SCRIPT` in the usual namespaces, as root with
/// `caps` in every set but ambient.
fn sh(script: &str) -> Value {
    json!({
        "process": {
            "args": ["sh", "-c", script, "isola-test-payload"],
            "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "cwd": "/"
        },
        "linux": {"namespaces": NS.iter().map(|t| json!({"type": t})).collect::<Vec<_>>()}
    })
}

fn with_caps(mut spec: Value, caps: &[&str]) -> Value {
    spec["process"]["capabilities"] = json!({"bounding": caps, "effective": caps, "permitted": caps, "inheritable": [], "ambient": []});
    spec
}

fn run_ok(spec: &Value) -> String {
    let (code, out, err) = run_spec(spec, &[]);
    assert_eq!(code, 0, "exit {code}\nstdout: {out}\nstderr: {err}");
    out
}

#[test]
fn payload_sees_only_its_own_pid_namespace() {
    require_vm();
    let out = run_ok(&sh(
        "echo self=$$ parent=$PPID; ls /proc | grep -c '^[0-9]'",
    ));
    let lines: Vec<&str> = out.lines().collect();
    // The init is PID 1; the payload is its first child.
    assert_eq!(lines[0], "self=2 parent=1", "{out}");
    // init, sh, ls, grep: nothing of the host.
    let n: u32 = lines[1].trim().parse().unwrap_or(999);
    assert!(n <= 4, "{n} processes visible: {out}");
    assert_clean();
}

#[test]
fn network_namespace_has_only_loopback_up() {
    require_vm();
    let out = run_ok(&sh(
        "tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '; ip -o link show lo",
    ));
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("lo"), "{out}");
    let link = lines.next().unwrap_or_default();
    assert!(
        link.contains("<LOOPBACK,UP,LOWER_UP>"),
        "lo is not up: {link}"
    );
    assert_eq!(lines.next(), None, "more than lo: {out}");
    // And loopback traffic works inside.
    let out = run_ok(&sh("python3 -c 'import socket; s=socket.socket(); s.bind((\"127.0.0.1\", 0)); s.listen(); c=socket.create_connection(s.getsockname()); print(\"connected\")'"));
    assert_eq!(out.trim(), "connected");
    assert_clean();
}

#[test]
fn mounts_inside_are_invisible_outside() {
    require_vm();
    let scratch = Scratch::new("mnt");
    let dir = scratch.path("m");
    std::fs::create_dir(&dir).unwrap();
    let d = dir.display();
    let mut spec = with_caps(
        sh(&format!(
            "mount -t tmpfs none {d} && touch {d}/inside && ls {d}"
        )),
        &["CAP_SYS_ADMIN"],
    );
    spec["mounts"] = json!([scratch.shared()]);
    assert_eq!(run_ok(&spec).trim(), "inside");
    assert!(
        !dir.join("inside").exists(),
        "file from the sandbox's tmpfs visible on the host"
    );
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(&d.to_string()),
        "sandbox mount leaked to the host"
    );
    assert_clean();
}

#[test]
fn hostname_is_set() {
    require_vm();
    let mut spec = sh("hostname");
    spec["hostname"] = json!("sandbox-7");
    assert_eq!(run_ok(&spec).trim(), "sandbox-7");
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert_ne!(host.trim(), "sandbox-7");
    assert_clean();
}

#[test]
fn user_and_groups_switch() {
    require_vm();
    let mut spec = sh("id -u; id -g; id -G; umask");
    spec["process"]["user"] =
        json!({"uid": 1000, "gid": 1001, "additionalGids": [2000, 2001], "umask": 63});
    let out = run_ok(&spec);
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        ["1000", "1001", "1001 2000 2001", "0077"],
        "{out}"
    );
    assert_clean();
}

#[test]
fn capabilities_match_the_spec() {
    require_vm();
    // CAP_KILL = 5, CAP_NET_BIND_SERVICE = 10.
    let spec = with_caps(
        sh("grep -E '^Cap(Eff|Prm|Bnd|Inh|Amb)' /proc/self/status"),
        &["CAP_KILL", "CAP_NET_BIND_SERVICE"],
    );
    let out = run_ok(&spec);
    for (k, v) in [
        ("CapEff", "0000000000000420"),
        ("CapPrm", "0000000000000420"),
        ("CapBnd", "0000000000000420"),
        ("CapInh", "0000000000000000"),
        ("CapAmb", "0000000000000000"),
    ] {
        assert!(out.contains(&format!("{k}:\t{v}")), "{k} != {v}:\n{out}");
    }
    // A non-root payload keeps exactly its ambient set.
    let mut spec = sh("grep -E '^Cap(Eff|Amb)' /proc/self/status");
    spec["process"]["user"] = json!({"uid": 1000, "gid": 1000});
    spec["process"]["capabilities"] = json!({"bounding": ["CAP_NET_BIND_SERVICE"], "effective": ["CAP_NET_BIND_SERVICE"], "permitted": ["CAP_NET_BIND_SERVICE"], "inheritable": ["CAP_NET_BIND_SERVICE"], "ambient": ["CAP_NET_BIND_SERVICE"]});
    let out = run_ok(&spec);
    assert!(
        out.contains("CapEff:\t0000000000000400") && out.contains("CapAmb:\t0000000000000400"),
        "{out}"
    );
    assert_clean();
}

#[test]
fn orphaned_grandchildren_are_reaped() {
    require_vm();
    // Three daemonised grandchildren exit while the payload still runs; the
    // init (their new parent) must reap them.
    let script = "for i in 1 2 3; do (sleep 0.2 &); done; sleep 1.5; \
                  cat /proc/[0-9]*/stat 2>/dev/null | awk '{print $3}' | grep -c Z";
    let out = run_ok_allowing(&sh(script), 1);
    assert_eq!(out.trim(), "0", "zombies left in the sandbox");
    assert_clean();
}

/// grep -c exits 1 when it counted 0.
fn run_ok_allowing(spec: &Value, code: i32) -> String {
    let (c, out, err) = run_spec(spec, &[]);
    assert!(
        c == 0 || c == code,
        "exit {c}\nstdout: {out}\nstderr: {err}"
    );
    out
}

#[test]
fn exit_codes_propagate() {
    require_vm();
    for (script, want) in [
        ("exit 0", 0),
        ("exit 3", 3),
        ("kill -KILL $$", 137),
        ("kill -TERM $$", 143),
    ] {
        let (code, out, err) = run_spec(&sh(script), &[]);
        assert_eq!(code, want, "{script}: stdout {out} stderr {err}");
    }
    assert_clean();
}

#[test]
fn sigterm_reaches_the_payload() {
    require_vm();
    let mut run = spawn_named(
        &sh("trap 'echo got-term; exit 7' TERM; echo armed; while :; do sleep 0.1; done"),
        "sigterm-test",
    );
    // "ready" comes before the script runs; the trap is set once "armed" is out.
    assert_eq!(run.read_line(), "armed");
    run.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(run.read_line(), "got-term");
    assert_eq!(run.wait().status.code(), Some(7));
    assert_clean();
}

#[test]
fn oom_kill_is_reported_with_137() {
    require_vm();
    let mut spec = sh("head -c 100M /dev/zero | tail > /dev/null; echo survived");
    spec["linux"]["resources"] = json!({"memory": {"limit": 33554432, "swap": 33554432}});
    let (code, out, err) = run_spec(&spec, &["--name", "oom-test"]);
    assert_eq!(code, 137, "stdout {out} stderr {err}");
    assert!(
        err.contains("isola: oom-test: killed by the OOM killer (memory.max=33554432)"),
        "{err}"
    );
    assert_clean();
}

fn cgroup_file(name: &str, file: &str) -> String {
    std::fs::read_to_string(format!("{CGROUP_ROOT}/{name}/{file}")).unwrap_or_default()
}

fn key(text: &str, k: &str) -> u64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(&format!("{k} "))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// `isola run --name NAME` in the background, killed if a test panics
/// before it ends the run itself.
struct Running(
    Option<std::process::Child>,
    BufReader<std::process::ChildStdout>,
);

impl Running {
    fn pid(&self) -> nix::unistd::Pid {
        self.0
            .as_ref()
            .map_or(nix::unistd::Pid::from_raw(0), pid_of)
    }
    fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(self.pid(), sig).expect("signal isola run");
    }
    fn read_line(&mut self) -> String {
        let mut line = String::new();
        self.1.read_line(&mut line).expect("read payload output");
        line.trim_end().to_string()
    }
    fn wait(mut self) -> std::process::Output {
        wait_output(self.0.take().expect("child"), Duration::from_secs(30))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Start `sh -c 'echo ready; SCRIPT'` and return once the payload runs (its
/// cgroup is fully configured by then).
fn spawn_named(spec: &Value, name: &str) -> Running {
    let mut spec = spec.clone();
    let script = spec["process"]["args"][2]
        .as_str()
        .expect("sh -c script")
        .to_string();
    spec["process"]["args"][2] = json!(format!("echo ready; {script}"));
    let path = std::env::temp_dir().join(format!("isola-spec-{name}.json"));
    std::fs::write(&path, spec.to_string()).unwrap();
    let mut child = Command::new(isola_bin())
        .args(["run", "--name", name, path.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let mut running = Running(Some(child), stdout);
    assert_eq!(
        running.read_line(),
        "ready",
        "payload of {name} did not start"
    );
    running
}

#[test]
fn cpu_max_caps_usage() {
    require_vm();
    let mut spec = sh("while :; do :; done");
    spec["linux"]["resources"] = json!({"cpu": {"quota": 20000, "period": 100000}});
    let child = spawn_named(&spec, "cpu-test");
    assert_eq!(cgroup_file("cpu-test", "cpu.max").trim(), "20000 100000");
    std::thread::sleep(Duration::from_millis(300));
    let u0 = key(&cgroup_file("cpu-test", "cpu.stat"), "usage_usec");
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(2));
    let u1 = key(&cgroup_file("cpu-test", "cpu.stat"), "usage_usec");
    let share = (u1 - u0) as f64 / t0.elapsed().as_micros() as f64;
    let throttled = key(&cgroup_file("cpu-test", "cpu.stat"), "nr_throttled");
    child.signal(nix::sys::signal::Signal::SIGTERM);
    let out = child.wait();
    assert_eq!(out.status.code(), Some(143));
    assert!(
        share <= 0.30,
        "CPU share {share:.3} above 30% with cpu.max 20%"
    );
    assert!(
        share >= 0.05,
        "CPU share {share:.3}: the busy loop did not run"
    );
    assert!(throttled > 0, "never throttled");
    assert_clean();
}

#[test]
fn pids_max_stops_a_fork_bomb() {
    require_vm();
    let mut spec = sh("bomb() { bomb | bomb & }; bomb; sleep 3");
    spec["linux"]["resources"] = json!({"pids": {"limit": 32}});
    let child = spawn_named(&spec, "pids-test");
    std::thread::sleep(Duration::from_secs(2));
    let current = key(
        &format!("current {}", cgroup_file("pids-test", "pids.current")),
        "current",
    );
    let refused = key(&cgroup_file("pids-test", "pids.events"), "max");
    // The VM stays responsive: we can still start processes.
    let ok = Command::new("true")
        .status()
        .expect("fork in the VM")
        .success();
    child.signal(nix::sys::signal::Signal::SIGKILL);
    let _ = child.wait();
    assert!(ok);
    assert!(current <= 32, "pids.current {current} above pids.max 32");
    assert!(
        refused > 0,
        "pids.events max is 0: the bomb never hit the limit"
    );
    // SIGKILL of `isola run` takes the sandbox with it (PDEATHSIG on the
    // init); the empty cgroup it could not remove is reused by name.
    let start = Instant::now();
    while !processes_matching("bomb").is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "fork bomb survived isola run: {:?}",
            processes_matching("bomb")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let (code, _, err) = run_spec(&sh("true"), &["--name", "pids-test"]);
    assert_eq!(code, 0, "{err}");
    assert_clean();
}

#[test]
fn io_max_throttles_direct_writes() {
    require_vm();
    let dev = std::fs::read_to_string("/sys/block/vda/dev")
        .expect("virtio disk")
        .trim()
        .to_string();
    let (major, minor) = dev.split_once(':').unwrap();
    let rate: u64 = 1 << 20;
    let mut spec = with_caps(
        sh("dd if=/dev/zero of=/dev/vda bs=64k count=64 oflag=direct 2>/dev/null"),
        &["CAP_DAC_OVERRIDE"],
    );
    let (major, minor) = (major.parse::<i64>().unwrap(), minor.parse::<i64>().unwrap());
    // The sandbox's fresh /dev has no disk: bind the node in.
    spec["mounts"] = json!([{"destination": "/dev/vda", "type": "bind", "source": "/dev/vda"}]);
    spec["linux"]["resources"] = json!({
        "blockIO": {"throttleWriteBpsDevice": [{"major": major, "minor": minor, "rate": rate}]},
        // The device filter denies the disk unless the spec allows it.
        "devices": [{"allow": true, "type": "b", "major": major, "minor": minor, "access": "w"}]
    });
    let t0 = Instant::now();
    let (code, out, err) = run_spec(&spec, &[]);
    let secs = t0.elapsed().as_secs_f64();
    assert_eq!(code, 0, "{out} {err}");
    let measured = (4u64 << 20) as f64 / secs;
    let ratio = measured / rate as f64;
    assert!(
        (0.75..=1.25).contains(&ratio),
        "wrote 4 MiB in {secs:.2}s: {measured:.0} B/s vs limit {rate} (ratio {ratio:.2})"
    );
    assert_clean();
}

#[test]
fn starter_profile_runs_shell_coreutils_python_and_a_server() {
    require_vm();
    let out = Command::new(isola_bin()).arg("spec").output().unwrap();
    let mut spec: Value = serde_json::from_slice(&out.stdout).unwrap();
    let script = r#"
set -e
ls / > /dev/null; sort /etc/passwd | head -n 1 > /dev/null; date > /tmp/x; wc -c < /tmp/x
python3 - <<'PY'
import socket, threading
srv = socket.socket(); srv.bind(("127.0.0.1", 8080)); srv.listen()
def serve():
    c, _ = srv.accept(); c.sendall(c.recv(100).upper()); c.close()
t = threading.Thread(target=serve); t.start()
c = socket.create_connection(("127.0.0.1", 8080)); c.sendall(b"ping"); print(c.recv(100).decode()); t.join()
PY
"#;
    spec["process"]["args"] = json!(["sh", "-c", script]);
    let (code, out, err) = run_spec(&spec, &[]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(out.lines().last(), Some("PING"), "{out}");
    assert_clean();
}

#[test]
fn rootfs_with_pivot_root_and_readonly() {
    require_vm();
    let scratch = Scratch::new("rootfs");
    let root = scratch.path("rootfs");
    for d in ["bin", "proc", "dev", "tmp", "etc"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).expect("busybox-static");
    std::fs::write(root.join("etc/marker"), "in-rootfs\n").unwrap();
    let spec = json!({
        "root": {"path": root, "readonly": true},
        "process": {"args": ["/bin/busybox", "sh", "-c", "/bin/busybox cat /etc/marker; /bin/busybox ls /; /bin/busybox touch /x 2>/dev/null && echo writable || echo readonly; /bin/busybox ls /dev; echo ok > /tmp/t && /bin/busybox cat /tmp/t"]},
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "mode=755"]},
            {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs"}
        ],
        "linux": {"namespaces": NS.iter().map(|t| json!({"type": t})).collect::<Vec<_>>()}
    });
    let out = run_ok(&spec);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "in-rootfs", "{out}");
    assert!(out.contains("readonly"), "root.readonly not applied: {out}");
    assert!(!out.contains("boot"), "host / visible: {out}");
    assert!(
        out.contains("null") && out.contains("urandom"),
        "device nodes missing: {out}"
    );
    assert!(out.contains("\nok"), "tmpfs /tmp not writable: {out}");
    // Masked paths: escape.rs proves the mask itself, with the capability
    // that could read the real file.
    assert_clean();
}

#[test]
fn user_namespace_with_mappings() {
    require_vm();
    let mut spec = sh("cat /proc/self/uid_map /proc/self/gid_map | tr -s ' '; id -u");
    spec["linux"]["namespaces"]
        .as_array_mut()
        .unwrap()
        .push(json!({"type": "user"}));
    spec["linux"]["uidMappings"] = json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
    spec["linux"]["gidMappings"] = json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
    let out = run_ok(&spec);
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        [" 0 100000 65536", " 0 100000 65536", "0"],
        "{out}"
    );
    assert_clean();
}

#[test]
fn inherited_fds_do_not_reach_the_payload() {
    require_vm();
    let scratch = Scratch::new("fds");
    let spec = scratch.write(
        "spec.json",
        &sh("ls /proc/self/fd | sort -n | tr '\\n' ' '").to_string(),
    );
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "exec 7</etc/hostname 9</etc/passwd; exec {} run {}",
            isola_bin().display(),
            spec.display()
        ))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    // 0-2 and the directory fd ls itself opened.
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "0 1 2 3");
    assert_clean();
}

#[test]
fn stdin_and_sigpipe_behave() {
    require_vm();
    let scratch = Scratch::new("stdin");
    let spec = scratch.write("spec.json", &sh("tr a-z A-Z; yes | head -n 2").to_string());
    let out = isola(
        &["run", spec.to_str().unwrap()],
        "hello\n",
        Duration::from_secs(60),
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    // `yes` must die of SIGPIPE, not loop on EPIPE: the payload gets default signal dispositions.
    assert_eq!(String::from_utf8_lossy(&out.stdout), "HELLO\ny\ny\n");
    assert_clean();
}

#[test]
fn exec_failures_have_their_own_codes() {
    require_vm();
    let scratch = Scratch::new("exec");
    let noexec = scratch.write("not-executable", "#!/bin/sh\necho hi\n");
    let mut spec = sh("");
    spec["mounts"] = json!([scratch.shared()]);
    spec["process"]["args"] = json!([noexec]);
    let (code, _, err) = run_spec(&spec, &[]);
    assert_eq!(code, 126, "{err}");
    assert!(err.contains("cannot execute"), "{err}");
    spec["process"]["args"] = json!(["no-such-command-isola"]);
    let (code, _, err) = run_spec(&spec, &[]);
    assert_eq!(code, 127, "{err}");
    assert!(
        err.contains("no-such-command-isola: command not found"),
        "{err}"
    );
    assert_clean();
}

#[test]
fn setup_failure_reports_the_step_with_125() {
    require_vm();
    let mut spec = sh("true");
    spec["mounts"] = json!([{"destination": "/mnt", "type": "tmpfs", "source": "tmpfs", "options": ["size=bogus"]}]);
    let (code, _, err) = run_spec(&spec, &[]);
    assert_eq!(code, 125, "{err}");
    assert!(
        err.contains("sandbox setup failed: mount: tmpfs on /mnt"),
        "{err}"
    );
    assert_clean();
}

#[test]
fn bad_input_exits_2_and_creates_nothing() {
    require_vm();
    let base = sh("true");
    let mut cases: Vec<(String, &str)> =
        vec![("{\"process\": ".into(), "malformed JSON at line 1 column")];
    let mut add = |f: &dyn Fn(&mut Value), want: &'static str| {
        let mut s = base.clone();
        f(&mut s);
        cases.push((s.to_string(), want));
    };
    add(
        &|s| s["process"]["argz"] = json!(1),
        "process.argz: unknown field",
    );
    add(
        &|s| s["linux"]["resources"] = json!({"cpu": {"period": 500}}),
        "linux.resources.cpu.period: 500:",
    );
    add(
        &|s| s["linux"]["resources"] = json!({"cpu": {"quota": 500}}),
        "linux.resources.cpu.quota: 500:",
    );
    add(
        &|s| s["linux"]["resources"] = json!({"memory": {"limit": 1000}}),
        "linux.resources.memory.limit: 1000:",
    );
    add(
        &|s| s["root"] = json!({"path": "/nonexistent-rootfs"}),
        "root.path: /nonexistent-rootfs: no such directory",
    );
    add(
        &|s| s["process"]["cwd"] = json!("relative"),
        "process.cwd: relative: must be an absolute path",
    );
    add(
        &|s| s["linux"]["namespaces"] = json!([{"type": "pidd"}]),
        "linux.namespaces[0].type: unknown value",
    );
    add(
        &|s| s["process"]["capabilities"] = json!({"bounding": ["CAP_FLY"]}),
        "process.capabilities.bounding[0]: unknown value `CAP_FLY`",
    );
    add(
        &|s| s["process"]["rlimits"] = json!([{"type": "RLIMIT_FLY", "soft": 1, "hard": 1}]),
        "process.rlimits[0].type:",
    );
    add(
        &|s| s["stop"] = json!({"signal": "SIGFLY"}),
        "stop.signal: SIGFLY: unknown signal",
    );
    add(
        &|s| s["linux"]["seccomp"] = json!({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read", "fly"], "action": "SCMP_ACT_ALLOW"}]}),
        "unknown syscall names for x86_64: fly",
    );
    for (text, want) in cases {
        let out = isola(&["run", "-"], &text, Duration::from_secs(30));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{text}\n{err}");
        assert!(err.contains(want), "{text}\nwant {want:?} in {err:?}");
        assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err}");
        assert!(leftover_cgroups().is_empty(), "{text} left a cgroup");
    }
    // Conflicting options.
    let mut s = base.clone();
    s["linux"]["resources"] = json!({"pids": {"limit": 10}});
    let out = isola(
        &["run", "--no-cgroup", "-"],
        &s.to_string(),
        Duration::from_secs(30),
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("--no-cgroup: conflicts with linux.resources"));
    assert_clean();
}
