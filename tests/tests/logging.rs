//! `logging`: JSON log files, copies of each line to a real
//! systemd-journald (run standalone in the VM) and to syslog receivers
//! over UDP, TCP and a unix socket; a flood with both on never holds the
//! supervisor up, and what the sinks could not take is counted.

use std::io::{BufRead, BufReader, Read};
use std::net::{TcpListener, UdpSocket};
use std::os::unix::net::UnixDatagram;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use isola_tests::up::*;
use isola_tests::*;
use serde_json::{json, Value};

const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";

/// systemd-journald, standalone, for the length of a test.
struct Journald(Child);

impl Journald {
    fn start() -> Journald {
        assert!(
            !std::path::Path::new(JOURNAL_SOCKET).exists(),
            "a journald already listens in this VM"
        );
        std::fs::create_dir_all("/run/systemd/journal").unwrap();
        let child = Command::new("/lib/systemd/systemd-journald")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("systemd-journald (Debian's systemd package)");
        let t = Instant::now();
        while UnixDatagram::unbound()
            .and_then(|s| s.send_to(b"MESSAGE=probe\n", JOURNAL_SOCKET))
            .is_err()
        {
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "journald did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Journald(child)
    }

    /// The last `n` entries of stack `stack`, as journalctl reads them
    /// back.
    fn entries(&self, stack: &str, n: usize) -> Vec<Value> {
        let out = Command::new("journalctl")
            .args(["-D", "/run/log/journal", "-o", "json", "--no-pager", "-n"])
            .arg(n.to_string())
            .arg(format!("ISOLA_STACK={stack}"))
            .output()
            .expect("journalctl");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

impl Drop for Journald {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        let _ = std::fs::remove_dir_all("/run/systemd/journal");
        let _ = std::fs::remove_dir_all("/run/log/journal");
    }
}

/// `isola up` of a stack file with a top-level `logging`.
fn up_with(name: &str, logging: Value, services: Value, args: &[&str]) -> Up {
    let up = Up {
        name: name.to_string(),
        dir: Scratch::new(&format!("up-{name}")),
        child: None,
    };
    let file = json!({"logging": logging, "services": services});
    std::fs::write(up.stack_path(), file.to_string()).unwrap();
    up.spawn(args)
}

fn wait_until<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let t = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(t.elapsed() < Duration::from_secs(60), "no {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn journald_and_syslog_receivers_get_each_line_with_its_fields() {
    require_vm();
    let journald = Journald::start();
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    udp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
    let scratch = Scratch::new("syslog-unix");
    let devlog = scratch.path("dev-log");
    let unix = UnixDatagram::bind(&devlog).unwrap();
    unix.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let say = "sleep 1; echo out-line; echo err-line >&2; exec sleep 1000";
    let up = up_with(
        "fwd",
        json!({"format": "json", "journald": true, "syslog": format!("udp://{}", udp.local_addr().unwrap())}),
        json!({
            "web": svc(say, json!({"replicas": 2})),
            "tcp": svc(say, json!({"logging": {"journald": false, "syslog": format!("tcp://{}", tcp.local_addr().unwrap())}})),
            "unix": svc(say, json!({"logging": {"format": "text", "syslog": format!("unix://{}", devlog.display())}})),
        }),
        &[],
    );
    // The log files: JSON for those that inherit the stack's format,
    // text where a service says so; `isola logs` reads both as text.
    up.wait_log("web.1", "err-line");
    let file = std::fs::read_to_string(up.logdir().join("web.1.log")).unwrap();
    let line = file.lines().find(|l| l.contains("err-line")).unwrap();
    let v: Value = serde_json::from_str(line).expect("a JSON line");
    assert_eq!(
        (&v["service"], &v["stream"], &v["replica"], &v["msg"]),
        (
            &json!("web.1"),
            &json!("stderr"),
            &json!(1),
            &json!("err-line")
        )
    );
    up.wait_log("unix", "err-line");
    let file = std::fs::read_to_string(up.logdir().join("unix.log")).unwrap();
    assert!(file.contains(" stderr err-line"), "{file}");
    let (_, logs, _) = up.cli(&["logs", "web.1"]);
    assert!(logs.lines().any(|l| l == "stderr err-line"), "{logs}");

    // journald: the fields of each line, read back by journalctl.
    let entries = wait_until("journal entries of web.1 and web.2 and unix", || {
        let e = journald.entries("fwd", 100);
        let n = e.iter().filter(|e| e["MESSAGE"] == "err-line").count();
        (n >= 3).then_some(e)
    });
    let pid = up.service("web.2")["pid"].as_u64().unwrap().to_string();
    let err = entries
        .iter()
        .find(|e| e["ISOLA_SERVICE"] == "web.2" && e["MESSAGE"] == "err-line")
        .expect("web.2's stderr line");
    assert_eq!(err["PRIORITY"], "3");
    assert_eq!(err["SYSLOG_IDENTIFIER"], "web.2");
    assert_eq!(err["ISOLA_STREAM"], "stderr");
    assert_eq!(err["ISOLA_REPLICA"], "2");
    assert_eq!(err["OBJECT_PID"], pid.as_str(), "{err}");
    let out = entries
        .iter()
        .find(|e| e["ISOLA_SERVICE"] == "web.2" && e["MESSAGE"] == "out-line")
        .expect("web.2's stdout line");
    assert_eq!(out["PRIORITY"], "6");
    assert!(
        !entries.iter().any(|e| e["ISOLA_SERVICE"] == "tcp"),
        "journald: false on the service wins over the stack's"
    );

    // syslog over UDP (web.1, web.2 and tcp's stack default is overridden).
    let mut buf = [0u8; 4096];
    let mut got = Vec::new();
    while got.len() < 4 {
        let n = udp.recv(&mut buf).expect("a syslog datagram");
        got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    let web1 = got
        .iter()
        .find(|m| m.contains(" web.1 ") && m.ends_with(" err-line"))
        .unwrap_or_else(|| panic!("{got:?}"));
    assert!(web1.starts_with("<27>1 "), "{web1}");
    assert!(
        web1.contains(" stderr [origin software=\"isola\""),
        "{web1}"
    );

    // over TCP, octet-counted.
    let (conn, _) = tcp.accept().unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut r = BufReader::new(conn);
    let mut frames = Vec::new();
    while frames.len() < 2 {
        let mut len = Vec::new();
        r.read_until(b' ', &mut len).unwrap();
        let n: usize = String::from_utf8_lossy(&len)
            .trim()
            .parse()
            .expect("a length");
        let mut msg = vec![0u8; n];
        r.read_exact(&mut msg).unwrap();
        frames.push(String::from_utf8(msg).unwrap());
    }
    assert!(
        frames[0].starts_with("<30>1 ") && frames[0].ends_with(" out-line"),
        "{frames:?}"
    );
    assert!(
        frames[1].starts_with("<27>1 ") && frames[1].contains(" tcp "),
        "{frames:?}"
    );

    // over a unix datagram socket.
    let n = unix.recv(&mut buf).unwrap();
    let m = String::from_utf8_lossy(&buf[..n]);
    assert!(m.contains(" unix ") && m.ends_with(" out-line"), "{m}");
    let (_, metrics, _) = up.cli(&["metrics"]);
    for sink in ["journald", "syslog"] {
        let want = format!("isola_log_lines_dropped_total{{sink=\"{sink}\"}} 0\n");
        assert!(metrics.contains(&want), "{want} in {metrics}");
    }
    up.down();
    assert_clean();
}

#[test]
fn a_flood_to_a_slow_journal_and_a_stalled_syslog_drops_and_counts_never_waits() {
    require_vm();
    let journald = Journald::start();
    // A receiver that accepts and never reads: the worst a TCP sink does.
    let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
    let flood = "sleep 1; head -c 50000000 /dev/zero | tr '\\0' x | fold -w 200; echo flood-done; exec sleep 1000";
    let up = up_with(
        "flood",
        json!({"journald": true, "syslog": format!("tcp://{}", tcp.local_addr().unwrap())}),
        json!({
            "flood": svc(flood, json!({})),
            "other": svc("exec sleep 1000", json!({})),
        }),
        &["--quiet"],
    );
    let (_stalled, _) = tcp.accept().unwrap();
    let t = Instant::now();
    let mut slowest = Duration::ZERO;
    while !std::fs::read_to_string(up.logdir().join("flood.log"))
        .unwrap_or_default()
        .contains("flood-done")
    {
        slowest = slowest.max(status_latency(&up.socket()));
        assert!(
            t.elapsed() < Duration::from_secs(300),
            "the flood never ended"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        slowest < Duration::from_secs(2),
        "a status took {slowest:?}"
    );
    let (_, metrics, _) = up.cli(&["metrics"]);
    let dropped = |sink: &str| -> u64 {
        let key = format!("isola_log_lines_dropped_total{{sink=\"{sink}\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(key.as_str()))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {key} in {metrics}"))
    };
    // 250,000 lines: the stalled receiver took at most its buffers' worth.
    assert!(dropped("syslog") > 100_000, "{metrics}");
    let err = up.stderr();
    let said = err.matches("logging: syslog tcp://").count();
    assert_eq!(said, 1, "said once:\n{err}");
    // The journal got lines of the flood too (as many as it took).
    let got = journald.entries("flood", 5);
    assert!(got.iter().any(|e| e["ISOLA_SERVICE"] == "flood"), "{got:?}");
    assert_eq!(up.service("other")["state"], "running");
    up.down();
    assert_clean();
}
