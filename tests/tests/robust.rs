//! The supervisor never stalls and never grows without bound: a client that
//! stops reading, a teardown that cannot finish, and a second supervisor
//! reaching for the same cgroup must not touch any other service.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::process::Command;
use std::time::{Duration, Instant};

use isola_tests::up::*;
use isola_tests::*;
use serde_json::{json, Value};

/// Resident memory of a process, in KiB.
fn rss_kib(pid: nix::unistd::Pid) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// The memory the process holds itself (RssAnon + RssShmem): what an
/// unbounded buffer would grow. Its binary's pages (RssFile) are shared,
/// droppable, and grow with the code linked in, not with what it does.
fn own_kib(pid: nix::unistd::Pid) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    ["RssAnon:", "RssShmem:"]
        .iter()
        .map(|k| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(k))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                .expect("RssAnon/RssShmem")
        })
        .sum()
}

/// A service with no namespaces of its own (its cgroup only).
fn bare(script: &str, extra: Value) -> Value {
    let mut s = svc(script, extra);
    s["linux"]["namespaces"] = json!([]);
    s
}

/// A service in a PID namespace only: it sees the VM's own files.
fn plain(script: &str, extra: Value) -> Value {
    let mut s = svc(script, extra);
    s["linux"]["namespaces"] = json!([{"type": "pid"}]);
    s
}

#[test]
fn a_client_that_stops_reading_is_dropped_and_the_supervisor_stays_small() {
    require_vm();
    let gate = Scratch::new("flood-gate");
    let go = gate.path("go").display().to_string();
    // 50 MB in lines of 8000 bytes, once the test has its clients in place.
    let flood = format!(
        "while [ ! -e {go} ]; do sleep 0.05; done; \
         head -c 50000000 /dev/zero | tr '\\0' x | fold -w 8000; echo flood-done"
    );
    let up = Up::start(
        "flood",
        json!({
            "flood": plain(&flood, json!({"restart": {"policy": "no"}})),
            "other": svc("sleep 1000", json!({})),
        }),
        &["--quiet"],
    );
    up.wait_state("flood", "running");
    up.wait_state("other", "running");
    let sock = up.socket();
    // Two subscribers that never read a byte after their request.
    let mut follower = UnixStream::connect(&sock).unwrap();
    follower
        .write_all(b"{\"cmd\":\"logs\",\"name\":\"flood\",\"lines\":0,\"follow\":true}\n")
        .unwrap();
    let mut subscriber = UnixStream::connect(&sock).unwrap();
    subscriber.write_all(b"{\"cmd\":\"events\"}\n").unwrap();
    status_latency(&sock);
    let sup = up.supervisor_pid();
    let baseline = rss_kib(sup);

    std::fs::write(&go, "").unwrap();
    let t = Instant::now();
    let mut slowest = Duration::ZERO;
    let mut peak = baseline;
    loop {
        slowest = slowest.max(status_latency(&sock));
        peak = peak.max(rss_kib(sup));
        let s = up.service("flood");
        if s["state"] == "exited" {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(300),
            "flood never ended: {s}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // (Three lines: `isola logs` of a hundred 8 KB lines would fill the
    // test's pipe before the helper reads it.)
    let (_, tail, _) = up.cli(&["logs", "-n", "3", "flood"]);
    assert!(
        tail.contains("flood-done"),
        "the whole flood was read: {tail}"
    );
    let err = up.stderr();
    assert!(
        err.contains("(following the log of flood)") && err.contains("bytes unread"),
        "the follower was not dropped:\n{err}"
    );
    // Before the bound, a follower that never read held all 50 MB.
    let grown = peak.saturating_sub(baseline);
    assert!(
        grown < 12 * 1024,
        "supervisor RSS grew {grown} KiB (baseline {baseline}, peak {peak})"
    );
    assert!(
        slowest < Duration::from_secs(2),
        "a status took {slowest:?}"
    );
    assert_eq!(up.service("other")["state"], "running");
    drop((follower, subscriber));
    up.down();
    assert_clean();
}

/// A device-mapper device whose I/O waits while it is suspended: a read
/// from it sleeps uninterruptibly (state D), where SIGKILL cannot reach —
/// a real stuck teardown, under the test's control. Resumed and removed
/// on drop.
struct StuckDevice(&'static str);

impl StuckDevice {
    fn new() -> StuckDevice {
        let name = "isola-stuck";
        let run = |args: &[&str]| {
            let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
            assert!(
                out.status.success(),
                "{args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        run(&["modprobe", "dm_mod"]);
        let _ = Command::new("dmsetup").args(["remove", name]).output();
        run(&[
            "dmsetup",
            "create",
            name,
            "--noudevsync",
            "--table",
            "0 8 zero",
        ]);
        run(&["dmsetup", "mknodes", name]);
        run(&["dmsetup", "suspend", "--noudevsync", name]);
        StuckDevice(name)
    }

    fn path(&self) -> String {
        format!("/dev/mapper/{}", self.0)
    }

    /// A `linux.resources.devices` rule letting a sandbox read it.
    fn allow_read(&self) -> Value {
        use std::os::unix::fs::MetadataExt;
        let rdev = std::fs::metadata(self.path()).expect("dm node").rdev();
        json!({"allow": true, "type": "b", "major": nix::sys::stat::major(rdev),
               "minor": nix::sys::stat::minor(rdev), "access": "r"})
    }

    fn resume(&self) {
        let _ = Command::new("dmsetup")
            .args(["resume", "--noudevsync", self.0])
            .output();
    }
}

/// Resumes the device when dropped.
struct Unstick<'a>(&'a StuckDevice);

impl Drop for Unstick<'_> {
    fn drop(&mut self) {
        self.0.resume();
    }
}

impl Drop for StuckDevice {
    fn drop(&mut self) {
        self.resume();
        let _ = Command::new("dmsetup")
            .args(["remove", "--noudevsync", self.0])
            .output();
    }
}

#[test]
fn a_stuck_teardown_does_not_hold_up_other_services_or_status() {
    require_vm();
    let dev = StuckDevice::new();
    // The payload leaves a reader of the suspended device behind and exits.
    // Without a PID namespace the init does not wait for it (with one, the
    // init itself would wait, and the supervisor would never be involved);
    // without a mount namespace the device node is visible.
    let stuck = format!(
        "dd if={} of=/dev/null bs=4096 count=1 iflag=direct 2>/dev/null & sleep 0.5; exit 0",
        dev.path()
    );
    let up = Up::start(
        "stuck",
        json!({
            "stuck": bare(&stuck, json!({
                "restart": {"policy": "no"},
                // The device filter lets it read the device, nothing else.
                "linux": {"resources": {"devices": [dev.allow_read()]}}
            })),
            "flapper": svc("sleep 0.3; exit 1", json!({"restart": {
                "policy": "always", "delayMs": 50, "maxDelayMs": 50,
                "limit": {"burst": 1000, "intervalMs": 1000}
            }})),
        }),
        &[],
    );
    // Dropped before `up`: a failing assertion must not leave the
    // supervisor's shutdown waiting on a suspended device.
    let _unstick = Unstick(&dev);
    // The init is gone but its cgroup keeps a process in state D: cgroup.kill
    // cannot end it, and the service shows as stopping meanwhile.
    up.wait_state("stuck", "stopping");
    let events = format!("{CGROUP_ROOT}/stuck/stuck/cgroup.events");
    let populated = std::fs::read_to_string(&events).unwrap();
    assert!(populated.contains("populated 1"), "{populated}");

    let restarts = |up: &Up| up.service("flapper")["restarts"].as_u64().unwrap();
    let before = restarts(&up);
    let mut latencies = Vec::new();
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(4) {
        latencies.push(status_latency(&up.socket()));
        std::thread::sleep(Duration::from_millis(50));
    }
    latencies.sort();
    let median = latencies[latencies.len() / 2];
    let max = latencies[latencies.len() - 1];
    assert!(
        median < Duration::from_millis(50),
        "status median {median:?}"
    );
    assert!(max < Duration::from_secs(1), "status blocked for {max:?}");
    let after = restarts(&up);
    assert!(
        after >= before + 3,
        "the other service did not go on restarting ({before} -> {after})"
    );
    assert_eq!(up.service("stuck")["state"], "stopping");

    // The read completes once the device resumes: the group empties and
    // the exit is reported.
    dev.resume();
    let s = up.wait_state("stuck", "exited");
    assert_eq!(s["lastExit"]["code"], 0, "{s}");
    assert!(
        !std::path::Path::new(&events).exists(),
        "cgroup left behind"
    );
    up.down();
    assert_clean();
}

#[test]
fn a_second_supervisor_of_a_same_named_stack_refuses_and_kills_nothing() {
    require_vm();
    let first = Up::start(
        "samename",
        json!({"web": svc("sleep 1000", json!({}))}),
        &[],
    );
    let pid = first.wait_state("web", "running")["pid"].clone();

    // Another directory, another stack file of the same name, another socket.
    let other = Scratch::new("samename-other");
    let stack = other.write(
        "samename.json",
        &json!({"services": {"web": svc("sleep 1000", json!({}))}}).to_string(),
    );
    let sock = other.path("other.sock").display().to_string();
    let logs = other.path("logs").display().to_string();
    let out = isola(
        &[
            "up",
            "--socket",
            &sock,
            "--log-dir",
            &logs,
            &stack.display().to_string(),
        ],
        "",
        Duration::from_secs(60),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("belongs to another running isola supervisor"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(!other.path("other.sock").exists(), "socket left behind");

    let s = first.service("web");
    assert_eq!((&s["state"], &s["pid"]), (&json!("running"), &pid), "{s}");
    first.down();
    assert_clean();
}

#[test]
fn a_stdout_nobody_reads_does_not_stall_the_supervisor() {
    require_vm();
    let dir = Scratch::new("stallout");
    // 20 MB of output echoed to our stdout, a pipe this test holds and does
    // not read until the flood is over.
    let chatty = "head -c 20000000 /dev/zero | tr '\\0' y | fold -w 100; echo chatty-done";
    let stack = dir.write(
        "stallout.json",
        &json!({"services": {
            "chatty": plain(chatty, json!({"restart": {"policy": "no"}})),
            "other": svc("sleep 1000", json!({})),
        }})
        .to_string(),
    );
    let sock = dir.path("s.sock").display().to_string();
    let logs = dir.path("logs").display().to_string();
    let mut child = std::process::Command::new(isola_bin())
        .args(["up", "--socket", &sock, "--log-dir", &logs])
        .arg(&stack)
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(dir.path("err")).unwrap())
        .spawn()
        .unwrap();
    let unread = child.stdout.take().unwrap();
    let t = Instant::now();
    while UnixStream::connect(&sock).is_err() {
        assert!(t.elapsed() < Duration::from_secs(60), "no socket");
        std::thread::sleep(Duration::from_millis(20));
    }
    let state = |name: &str| -> String {
        let mut s = UnixStream::connect(&sock).unwrap();
        s.write_all(b"{\"cmd\":\"status\"}\n").unwrap();
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).unwrap();
        let v: Value = serde_json::from_str(&line).unwrap();
        let row = v["services"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == name);
        row.map(|r| r["state"].as_str().unwrap_or("").to_string())
            .unwrap_or_default()
    };
    let mut slowest = Duration::ZERO;
    let mut peak = 0;
    let t = Instant::now();
    while state("chatty") != "exited" {
        slowest = slowest.max(status_latency(&sock));
        peak = peak.max(own_kib(pid_of(&child)));
        assert!(t.elapsed() < Duration::from_secs(300), "chatty never ended");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(state("other"), "running");
    assert!(
        slowest < Duration::from_secs(2),
        "a status took {slowest:?}"
    );
    assert!(
        peak < 8 * 1024,
        "supervisor's own memory reached {peak} KiB"
    );
    // The log has every line; the echo says what it could not keep.
    let log = std::fs::read_to_string(dir.path("logs/chatty.log")).unwrap_or_default();
    let logged = std::fs::read_dir(dir.path("logs"))
        .unwrap()
        .filter_map(|e| e.ok())
        .any(|e| e.file_name().to_string_lossy().starts_with("chatty.log"));
    assert!(logged && log.contains("chatty-done"), "log: {}", log.len());
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut { unread }, &mut text);
        text
    });
    let mut down = UnixStream::connect(&sock).unwrap();
    down.write_all(b"{\"cmd\":\"down\"}\n").unwrap();
    let out = wait_output(child, Duration::from_secs(60));
    assert_eq!(out.status.code(), Some(0));
    let echoed = reader.join().unwrap();
    assert!(
        echoed.contains("line(s) of output dropped: this output was not read fast enough"),
        "{} bytes echoed, no drop count",
        echoed.len()
    );
    assert_clean();
}

#[test]
fn garbage_from_a_thousand_connections_leaves_every_valid_client_answered() {
    require_vm();
    // Room for our thousand connections (root may raise its own limit).
    nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, 4096, 4096)
        .expect("raise RLIMIT_NOFILE");
    let up = Up::start(
        "garbage",
        json!({"svc": svc("sleep 1000", json!({}))}),
        &["--quiet"],
    );
    up.wait_state("svc", "running");
    let sock = up.socket();
    let sup = up.supervisor_pid();
    let base_rss = rss_kib(sup);
    let mut conns = Vec::with_capacity(1000);
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    for k in 0..1000 {
        let mut c = UnixStream::connect(&sock).expect("connect");
        // Ten lines each, 10,000 in all: noise, broken JSON, wrong types,
        // unknown commands, non-UTF-8.
        let mut junk = Vec::new();
        for j in 0..10 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            match (k + j) % 5 {
                0 => junk
                    .extend((0..64).map(|i| u8::try_from((seed >> (i % 56)) & 0xfe).unwrap_or(0))),
                1 => junk.extend_from_slice(b"{\"cmd\": \"status\""),
                2 => junk.extend_from_slice(b"{\"cmd\": \"stop\", \"name\": 7}"),
                3 => junk.extend_from_slice(b"{\"cmd\": \"explode\"}"),
                _ => junk.extend_from_slice(b"\xff\xfe{\"cmd\":\xc3}"),
            }
            junk.push(b'\n');
        }
        c.write_all(&junk).expect("send garbage");
        conns.push(c);
        if k % 100 == 99 {
            // A valid client is answered while the garbage comes in.
            let t = status_latency(&sock);
            assert!(
                t < Duration::from_secs(5),
                "status took {t:?} under garbage"
            );
        }
    }
    // Every garbage connection gets its "bad request" lines (read a few).
    for c in conns.iter().take(20) {
        let mut line = String::new();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        BufReader::new(c)
            .read_line(&mut line)
            .expect("a reply to garbage");
        assert!(
            line.starts_with("{\"ok\":false,\"error\":\"bad request: "),
            "{line}"
        );
    }
    let t = status_latency(&sock);
    assert!(t < Duration::from_secs(5), "{t:?}");
    let grown = rss_kib(sup).saturating_sub(base_rss);
    assert!(
        grown < 32 * 1024,
        "supervisor RSS grew {grown} KiB for 1000 connections"
    );
    drop(conns);
    assert_eq!(up.service("svc")["state"], "running");
    up.down();
    assert_clean();
}
