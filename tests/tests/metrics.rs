//! `isola up --metrics`: a real Prometheus server scrapes it, and
//! promtool lints what it serves.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use isola_tests::up::*;
use isola_tests::*;
use serde_json::{json, Value};

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// `GET path` on 127.0.0.1:`port`, HTTP/1.0: status line and body.
fn get(port: u16, path: &str, accept: &str) -> Option<(String, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let req = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nAccept: {accept}\r\n\r\n");
    s.write_all(req.as_bytes()).ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    Some((head.lines().next()?.to_string(), body.to_string()))
}

/// Prometheus's answer to `query`: the samples, as (labels, value).
fn query(port: u16, q: &str) -> Vec<(Value, f64)> {
    let path = format!(
        "/api/v1/query?query={}",
        q.replace('{', "%7B")
            .replace('}', "%7D")
            .replace('"', "%22")
            .replace('=', "%3D")
    );
    let Some((_, body)) = get(port, &path, "*/*") else {
        return Vec::new();
    };
    let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    v["data"]["result"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|r| {
            let value = r["value"][1].as_str()?.parse().ok()?;
            Some((r["metric"].clone(), value))
        })
        .collect()
}

fn wait_until<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let t = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(t.elapsed() < limit, "waited {limit:?} for {what}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn prometheus_scrapes_every_service_and_sees_a_crash_loop_count_up() {
    require_vm();
    let port = free_port();
    let addr = format!("tcp://127.0.0.1:{port}");
    let limited = json!({"linux": {"resources": {"memory": {"limit": 64 << 20}}}});
    let up = Up::start(
        "metrics",
        json!({
            "web": svc("exec sleep 1000", limited.clone()),
            "db": svc("exec sleep 1001", json!({})),
            "crash": svc("sleep 0.3; exit 3", json!({"restart": {"policy": "always", "delayMs": 200, "maxDelayMs": 200,
                                                               "limit": {"burst": 1000, "intervalMs": 1000}}})),
        }),
        &["--metrics", &addr],
    );
    up.wait_state("web", "running");
    up.wait_state("db", "running");
    // The text format, as promtool lints it.
    let (status, body) = get(port, "/metrics", "text/plain").expect("a scrape");
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(
        body.contains("isola_service_memory_limit_bytes{service=\"web\"} 67108864"),
        "{body}"
    );
    let mut lint = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian's prometheus package)");
    lint.stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = lint.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // `isola metrics` prints the same families through the control socket.
    let (code, text, err) = up.cli(&["metrics"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        text.contains("# TYPE isola_service_restarts_total counter"),
        "{text}"
    );

    let dir = Scratch::new("prometheus");
    let prom_port = free_port();
    let config = dir.write(
        "prometheus.yml",
        &format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: isola\n    static_configs:\n      - targets: ['127.0.0.1:{port}']\n"
        ),
    );
    let mut prom = Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path("prometheus.log")).unwrap())
        .spawn()
        .expect("prometheus (Debian's prometheus package)");
    let memory = wait_until(
        "Prometheus to have each service's memory",
        Duration::from_secs(90),
        || {
            let r = query(prom_port, "isola_service_memory_bytes");
            let named = |n: &str| r.iter().any(|(m, v)| m["service"] == n && *v > 0.0);
            (named("web") && named("db")).then_some(r)
        },
    );
    assert!(
        memory.iter().all(|(m, _)| m["job"] == "isola"),
        "{memory:?}"
    );
    let restarts = |port| {
        query(port, "isola_service_restarts_total{service=\"crash\"}")
            .first()
            .map(|(_, v)| *v)
    };
    let first = wait_until("the crash loop's restarts", Duration::from_secs(30), || {
        restarts(prom_port)
    });
    let later = wait_until("more restarts", Duration::from_secs(30), || {
        restarts(prom_port).filter(|v| *v > first)
    });
    assert!(later > first);
    // Prometheus asked for OpenMetrics: what it got ends with # EOF.
    let (_, om) = get(
        port,
        "/metrics",
        "application/openmetrics-text;version=1.0.0",
    )
    .unwrap();
    assert!(om.ends_with("# EOF\n"), "{om}");
    let _ = prom.kill();
    let _ = prom.wait();
    // The endpoint's address in use: a second stack stops before anything
    // starts, in one line.
    let other = Scratch::new("metrics-taken");
    let stack = other.write(
        "taken.json",
        &json!({"services": {"x": svc("exec sleep 1002", json!({}))}}).to_string(),
    );
    let sock = other.path("s.sock").display().to_string();
    let out = isola(
        &[
            "up",
            "--socket",
            &sock,
            "--metrics",
            &addr,
            stack.to_str().unwrap(),
        ],
        "",
        Duration::from_secs(30),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(&format!("--metrics {addr}: ")), "{err}");
    assert!(processes_matching("sleep 1002").is_empty());
    assert!(!std::path::Path::new(&sock).exists());
    up.down();
    assert_clean();
}

/// The value of `series` (`NAME{LABELS}`) in exposition `text`.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn a_held_socket_tells_its_accept_queue_and_its_drops() {
    require_vm();
    let port = free_port();
    // A payload that never accepts: connections wait in the held socket's
    // queue (4 deep: backlog 3), the rest are dropped by the kernel.
    let up = Up::start(
        "queue",
        json!({
            "slow": svc("exec sleep 1000", json!({
                "sockets": [{"name": "http", "listen": format!("tcp://127.0.0.1:{port}"), "backlog": 3}]
            })),
        }),
        &[],
    );
    up.wait_state("slow", "running");
    let queue = "isola_socket_accept_queue{service=\"slow\",socket=\"http\"}";
    let drops = "isola_socket_listen_drops_total{service=\"slow\",socket=\"http\"}";
    let (_, text, _) = up.cli(&["metrics"]);
    assert_eq!(sample(&text, queue), Some(0.0), "{text}");
    assert_eq!(sample(&text, drops), Some(0.0), "{text}");
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let s = nonblocking_connect(port);
            std::thread::sleep(Duration::from_millis(20));
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let (_, text, _) = up.cli(&["metrics"]);
    assert_eq!(sample(&text, queue), Some(4.0), "{text}");
    assert!(sample(&text, drops).unwrap_or(0.0) >= 4.0, "{text}");
    assert_eq!(
        sample(
            &text,
            "isola_socket_backlog{service=\"slow\",socket=\"http\"}"
        ),
        Some(3.0)
    );
    assert!(
        sample(&text, "isola_supervisor_loop_lag_seconds").is_some_and(|v| v > 0.0 && v < 1.0),
        "{text}"
    );
    drop(clients);
    up.down();
    assert_clean();
}

/// A connect that does not wait for the handshake (the kernel may drop
/// the SYN of a full queue).
fn nonblocking_connect(port: u16) -> std::os::fd::OwnedFd {
    use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, SockaddrIn};
    use std::os::fd::AsRawFd;
    let s = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK,
        None,
    )
    .unwrap();
    let _ = connect(s.as_raw_fd(), &SockaddrIn::new(127, 0, 0, 1, port));
    s
}
