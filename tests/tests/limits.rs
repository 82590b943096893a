//! Limits of the host: a stack that cannot fit is refused before anything
//! starts, and a start that runs into a shortage waits and retries, never
//! failing the service for it. `isola up` runs under `prlimit` and without
//! CAP_SYS_RESOURCE, so it cannot raise its fd limit past the one given.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::process::Command;
use std::time::{Duration, Instant};

use isola_tests::up::*;
use isola_tests::*;
use serde_json::{json, Value};

/// Run through this, `isola up` keeps RLIMIT_NOFILE at `n` (soft and hard).
fn capped(n: &str) -> Vec<String> {
    vec![
        "setpriv".into(),
        "--bounding-set".into(),
        "-sys_resource".into(),
        "--".into(),
        "prlimit".into(),
        format!("--nofile={n}:{n}"),
        "--".into(),
    ]
}

fn sleepers(n: usize) -> Value {
    let mut m = serde_json::Map::new();
    for i in 0..n {
        m.insert(format!("s{i}"), svc("sleep 1000", json!({})));
    }
    Value::Object(m)
}

#[test]
fn a_stack_that_cannot_fit_is_refused_before_anything_starts() {
    require_vm();
    let dir = Scratch::new("nofit");
    let stack = dir.write("nofit.json", &json!({"services": sleepers(40)}).to_string());
    let sock = dir.path("s.sock").display().to_string();
    let logs = dir.path("logs").display().to_string();
    let wrapper = capped("256");
    let out = Command::new(&wrapper[0])
        .args(&wrapper[1..])
        .arg(isola_bin())
        .args(["up", "--socket", &sock, "--log-dir", &logs])
        .arg(&stack)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    for want in [
        "40 services need up to 280 file descriptors (output pipes 80, open logs 40, the supervisor 160)",
        "RLIMIT_NOFILE allows 256",
        "ulimit -n 280",
        "or give the services \"stderr\": \"stdout\" (one pipe each instead of two: 240 in all)",
    ] {
        assert!(err.contains(want), "missing {want:?} in {err}");
    }
    assert!(!dir.path("s.sock").exists(), "socket left behind");
    assert_clean();
}

/// Connections to the supervisor until it has no fd left to accept one
/// (it hangs up on the next at once): they hold its fd table full.
fn exhaust(sock: &str) -> Vec<UnixStream> {
    let mut held = Vec::new();
    for _ in 0..4096 {
        let Ok(mut c) = UnixStream::connect(sock) else {
            break;
        };
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let _ = c.write_all(b"{\"cmd\":\"status\"}\n");
        let mut line = String::new();
        let mut r = BufReader::new(c.try_clone().unwrap());
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return held;
        }
        held.push(c);
    }
    panic!(
        "the supervisor never ran out of fds ({} connections)",
        held.len()
    );
}

#[test]
fn starts_that_run_out_of_fds_wait_and_start_once_they_are_free() {
    require_vm();
    let wrapper = capped("256");
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    // A policy that would give up at once on a real failure.
    let fragile = || {
        svc(
            "sleep 1000",
            json!({"restart": {"policy": "no", "limit": {"burst": 1, "intervalMs": 60000}}}),
        )
    };
    let up = Up::start_under(
        "shortage",
        json!({"a": fragile(), "c": fragile(), "b": svc("sleep 1000", json!({}))}),
        &[],
        &wrapper,
    );
    for name in ["a", "b", "c"] {
        up.wait_state(name, "running");
    }
    for name in ["a", "c"] {
        let (code, _, err) = up.cli(&["stop", name]);
        assert_eq!(code, 0, "{err}");
    }

    let mut held = exhaust(&up.socket());
    assert!(held.len() > 100, "only {} connections fit", held.len());
    // Ask for the starts over connections the supervisor already holds:
    // each answers once its service settles — in backoff, waiting for fds.
    let mut askers = Vec::new();
    for name in ["a", "c"] {
        let mut asker = held.pop().unwrap();
        let req = format!("{{\"cmd\":\"start\",\"name\":\"{name}\"}}\n");
        asker.write_all(req.as_bytes()).unwrap();
        let mut line = String::new();
        BufReader::new(asker.try_clone().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(
            line.trim(),
            r#"{"ok":true,"state":"backoff"}"#,
            "{name}: {}",
            up.stderr()
        );
        askers.push(asker);
    }
    let err = up.stderr();
    for name in ["a", "c"] {
        let want = format!("isola: {name}: start postponed: cannot create pipes: EMFILE");
        assert!(err.contains(&want), "{err}");
    }
    assert!(err.contains("2 service(s) waiting for resources"), "{err}");
    assert!(
        err.contains("out of file descriptors: refusing control connections"),
        "{err}"
    );

    // Free the fds: the retries in backoff start both, with nobody asking,
    // and no service is left failed.
    drop(held);
    drop(askers);
    let t = Instant::now();
    for name in ["a", "c"] {
        let s = up.wait_for(name, "running again", Duration::from_secs(60), |s| {
            s["state"] == "running"
        });
        assert!(s.get("waitingFor").is_none(), "{s}");
    }
    assert!(t.elapsed() < Duration::from_secs(60));
    assert!(
        up.stderr()
            .contains("every service that waited for resources has started"),
        "{}",
        up.stderr()
    );
    assert!(
        up.status().iter().all(|s| s["state"] == "running"),
        "{:?}",
        up.status()
    );
    up.down();
    assert_clean();
}

/// `isola ARGS` with `stdin`, successful; its stdout lines.
fn run_lines(args: &[&str], stdin: &str) -> Vec<String> {
    let out = isola(args, stdin, Duration::from_secs(60));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// The group's own file, read from inside (host-root mode: the host's
/// /sys, read-only; no cgroup namespace in the starter).
const READ_LIMITS: &str = "g=$(cut -d: -f3 /proc/self/cgroup); cd /sys/fs/cgroup$g && cat memory.max memory.swap.max cpu.max pids.max cpu.weight";

#[test]
fn run_flags_cap_a_host_command_and_override_a_spec() {
    require_vm();
    // No spec: the starter sandbox around a host command.
    let lines = run_lines(
        &[
            "run",
            "--memory",
            "64M",
            "--memory-swap",
            "0",
            "--cpus",
            "0.5",
            "--pids",
            "30",
            "--cpu-weight",
            "50",
            "--",
            "sh",
            "-c",
            READ_LIMITS,
        ],
        "",
    );
    assert_eq!(lines, ["67108864", "0", "50000 100000", "30", "50"]);
    // A spec's own limits, overridden by the flag for that resource only.
    let starter = Command::new(isola_bin())
        .arg("spec")
        .output()
        .unwrap()
        .stdout;
    let mut spec: Value = serde_json::from_slice(&starter).unwrap();
    spec["process"]["args"] = json!(["sh", "-c", READ_LIMITS]);
    spec["linux"]["resources"]["memory"] = json!({"limit": 33554432});
    spec["linux"]["resources"]["pids"] = json!({"limit": 40});
    let lines = run_lines(&["run", "--memory", "96M", "-"], &spec.to_string());
    assert_eq!(lines[0], "100663296", "{lines:?}");
    assert_eq!(lines[3], "40", "{lines:?}");
    assert_clean();
}

/// The cgroup directory of a process, from its /proc/PID/cgroup.
fn cgroup_of(pid: i64) -> std::path::PathBuf {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let rel = text
        .trim()
        .rsplit(':')
        .next()
        .unwrap()
        .trim_start_matches('/')
        .to_string();
    std::path::Path::new("/sys/fs/cgroup").join(rel)
}

#[test]
fn update_changes_a_running_services_limits_live_until_the_next_reload() {
    require_vm();
    let web = svc(
        "exec sleep 1000",
        json!({"limits": {"memory": "64M", "pids": 40}, "restart": {"policy": "always", "delayMs": 0}}),
    );
    let up = Up::start("update", json!({"web": web}), &[]);
    let s = up.wait_state("web", "running");
    let pid = s["pid"].as_i64().unwrap();
    let cg = cgroup_of(pid);
    let read = |f: &str| {
        std::fs::read_to_string(cgroup_of(up.service("web")["pid"].as_i64().unwrap()).join(f))
            .unwrap()
            .trim()
            .to_string()
    };
    assert_eq!(read("memory.max"), "67108864");
    let (code, out, err) = up.cli(&[
        "update", "web", "--memory", "96M", "--pids", "50", "--cpus", "0.5",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    // Live: same sandbox, new values.
    assert_eq!(
        up.service("web")["pid"].as_i64(),
        Some(pid),
        "update restarted the service"
    );
    assert_eq!(
        std::fs::read_to_string(cg.join("memory.max"))
            .unwrap()
            .trim(),
        "100663296"
    );
    assert_eq!(
        std::fs::read_to_string(cg.join("pids.max")).unwrap().trim(),
        "50"
    );
    assert_eq!(
        std::fs::read_to_string(cg.join("cpu.max")).unwrap().trim(),
        "50000 100000"
    );
    let limits = &up.service("web")["limits"];
    assert_eq!(limits["memory.max"], "100663296", "{limits}");
    // A value the kernel refuses (io.max of a device that is not there):
    // one line naming it, and nothing changed (pids.max came first).
    let (code, _, err) = up.cli(&[
        "update",
        "web",
        "--pids",
        "60",
        "--io-max",
        "250:99:rbps=1M",
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("io.max"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert_eq!(
        std::fs::read_to_string(cg.join("pids.max")).unwrap().trim(),
        "50"
    );
    // Bad input never reaches the supervisor.
    let (code, _, err) = up.cli(&["update", "web", "--memory", "lots"]);
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = up.cli(&["update", "nope", "--pids", "5"]);
    assert_ne!(code, 0);
    assert!(err.contains("nope"), "{err}");
    // A restart keeps the updated limits.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap()),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    up.wait_for("web", "a new sandbox", Duration::from_secs(30), |s| {
        s["state"] == "running" && s["pid"].as_i64().is_some_and(|p| p != pid)
    });
    assert_eq!(read("memory.max"), "100663296");
    // A reload: the stack file wins again.
    let before = up.service("web")["pid"].as_i64();
    nix::sys::signal::kill(up.pid(), nix::sys::signal::Signal::SIGHUP).unwrap();
    up.wait_for("web", "the file's limits", Duration::from_secs(30), |s| {
        s["state"] == "running"
            && s["pid"].as_i64() != before
            && s["limits"]["memory.max"] == "67108864"
    });
    assert_eq!(read("memory.max"), "67108864");
    up.down();
    assert_clean();
}

/// The supervisor's open fds, as their link targets, but for cgroup stat
/// files (a cache in the fds a stack leaves spare, filled by `status`).
fn supervisor_fds(up: &Up) -> Vec<String> {
    let dir = format!("/proc/{}/fd", up.supervisor_pid());
    std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .map(|p| p.display().to_string())
        .filter(|p| !p.starts_with("/sys/fs/cgroup"))
        .collect()
}

/// The size of process `pid`'s `[heap]` mapping (0 when it has none).
/// Bytes a process maps in the mappings whose line in /proc/PID/maps ends
/// with `suffix`.
fn mapped_bytes(pid: &str, suffix: &str) -> u64 {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    maps.lines()
        .filter(|l| l.ends_with(suffix))
        .filter_map(|l| {
            let (a, b) = l.split_whitespace().next()?.split_once('-')?;
            Some(u64::from_str_radix(b, 16).ok()? - u64::from_str_radix(a, 16).ok()?)
        })
        .sum()
}

/// Anonymous private mappings (no name) of `pid` of at least `size` bytes.
fn anonymous_mappings_of(pid: &str, size: u64) -> usize {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    maps.lines()
        .filter(|l| l.split_whitespace().count() == 5)
        .filter_map(|l| {
            let (a, b) = l.split_whitespace().next()?.split_once('-')?;
            Some(u64::from_str_radix(b, 16).ok()? - u64::from_str_radix(a, 16).ok()?)
        })
        .filter(|len| *len >= size)
        .count()
}

/// KiB resident in `pid`'s mapping named `name` (/proc/PID/smaps).
fn resident_kb(pid: &str, name: &str) -> u64 {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap();
    let mut inside = false;
    for line in smaps.lines() {
        if line.contains('-') && line.split_whitespace().count() >= 5 {
            inside = line.ends_with(name);
        } else if inside && line.starts_with("Rss:") {
            return line
                .split_whitespace()
                .nth(1)
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
        }
    }
    0
}

fn heap_bytes(pid: &str) -> u64 {
    mapped_bytes(pid, "[heap]")
}

/// Shared anonymous memory (MAP_SHARED | MAP_ANONYMOUS shows as
/// `/dev/zero (deleted)`).
fn shared_anon_bytes(pid: &str) -> u64 {
    mapped_bytes(pid, "/dev/zero (deleted)")
}

#[test]
fn a_running_service_holds_two_fds_one_with_stderr_to_stdout_and_a_stopped_one_none() {
    require_vm();
    let script = "echo out; echo err >&2; exec sleep 1000";
    let mut services = serde_json::Map::new();
    let names: Vec<String> = (0..10)
        .flat_map(|i| [format!("s{i}"), format!("m{i}")])
        .collect();
    for n in &names {
        let extra = if n.starts_with('m') {
            json!({"stderr": "stdout"})
        } else {
            json!({})
        };
        services.insert(n.clone(), svc(script, extra));
    }
    let up = Up::start("budget", Value::Object(services), &[]);
    for n in &names {
        up.wait_state(n, "running");
    }
    up.wait_log("s9", "err");
    up.wait_log("m9", "err");
    // An init lets go of the heap it inherited from the supervisor's
    // spawner once its payload runs: only the first pages (its TLS) stay.
    let init = up.service("s0")["pid"].as_i64().unwrap();
    let (ours, theirs) = (
        heap_bytes(&up.supervisor_pid().to_string()),
        heap_bytes(&init.to_string()),
    );
    assert!(
        ours >= 128 << 10,
        "the supervisor's heap is only {ours} bytes"
    );
    assert!(
        theirs <= 32 << 10,
        "the init still maps {theirs} bytes of heap"
    );
    // …and what setting up dirtied: its arena (1 MiB mappings of its own)
    // and the stack below its waiting frame.
    let init = init.to_string();
    assert_eq!(
        anonymous_mappings_of(&init, 1 << 20),
        0,
        "the init still maps its set-up arena"
    );
    // (This debug build: 224 KiB resident without the release, ~72 with.)
    let stack = resident_kb(&init, "[stack]");
    assert!(stack <= 128, "the init keeps {stack} KiB of stack resident");
    // The spawner keeps the stack file and the plans it built from it in
    // shared memory (which its clones do not copy); an init lets go of
    // that too, and the supervisor never keeps any.
    // The inits and the spawner are the keeper's children, beside the
    // supervisor.
    let keeper = up.pid().to_string();
    let sup = up.supervisor_pid().to_string();
    let children =
        std::fs::read_to_string(format!("/proc/{keeper}/task/{keeper}/children")).unwrap();
    let services: Vec<String> = names
        .iter()
        .map(|n| up.service(n)["pid"].as_i64().unwrap().to_string())
        .collect();
    let spawner: Vec<&str> = children
        .split_whitespace()
        .filter(|p| !services.iter().any(|s| s == p) && *p != sup)
        .collect();
    assert_eq!(
        spawner.len(),
        1,
        "children {children}, services {services:?}"
    );
    assert!(
        shared_anon_bytes(spawner[0]) > 0,
        "the spawner holds no shared memory"
    );
    assert_eq!(shared_anon_bytes(&init.to_string()), 0, "the init's");
    assert_eq!(shared_anon_bytes(&sup), 0, "the supervisor's");
    let running = supervisor_fds(&up);
    for n in &names {
        let (code, _, err) = up.cli(&["stop", n]);
        assert_eq!(code, 0, "{err}");
    }
    let stopped = supervisor_fds(&up);
    let pipes = |fds: &[String]| fds.iter().filter(|f| f.starts_with("pipe:")).count();
    // 10 services × 2 pipes + 10 × 1; nothing else per service (no pidfd,
    // no sync socket), and nothing for a stopped one.
    assert_eq!(
        running.len() - stopped.len(),
        30,
        "running {running:?}\nstopped {stopped:?}"
    );
    assert_eq!(pipes(&running) - pipes(&stopped), 30, "{running:?}");
    assert!(!running.iter().any(|f| f.contains("pidfd")), "{running:?}");
    // Merged, stderr's line is stdout's; separate, it says stderr.
    let log = |n: &str| std::fs::read_to_string(up.logdir().join(format!("{n}.log"))).unwrap();
    assert!(log("m0").contains(" stdout err"), "{}", log("m0"));
    assert!(log("s0").contains(" stderr err"), "{}", log("s0"));
    up.down();
    assert_clean();
}
