//! A load client for services on a held port, and the test server it
//! talks to: what zero-downtime restarts and upgrades are measured with.

use std::io::Read;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::up::svc;

/// A TCP server: each connection gets one line (the replica's number, or
/// "1") and is closed. With `LISTEN_FDS` it serves fd 3 and checks the
/// protocol's variables; without, it binds `port` itself (the control).
/// SIGTERM only sets a flag: a connection it took is always answered.
pub fn server(port: u16) -> String {
    server_then(port, "")
}

/// [`server`] running `ready` (python) once it listens.
pub fn server_then(port: u16, ready: &str) -> String {
    format!(
        r#"import os, select, signal, socket, sys
stop = False
def term(*a):
    global stop
    stop = True
signal.signal(signal.SIGTERM, term)
me = os.environ.get("ISOLA_REPLICA", "1").encode()
if "LISTEN_FDS" in os.environ:
    assert os.environ["LISTEN_PID"] == str(os.getpid()), (os.environ["LISTEN_PID"], os.getpid())
    s = socket.socket(fileno=3)
else:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", {port}))
    s.listen(128)
print("serving", os.environ.get("LISTEN_FDNAMES"), flush=True)
{ready}
while not stop:
    if not select.select([s], [], [], 0.1)[0]:
        continue
    c, _ = s.accept()
    c.sendall(me + b"\n")
    c.close()
"#
    )
}

pub fn python(code: &str, extra: Value) -> Value {
    let mut s = svc("", extra);
    s["process"]["args"] = json!(["python3", "-c", code]);
    s
}

pub fn held(port: u16) -> Value {
    json!([{"name": "http", "listen": format!("tcp://127.0.0.1:{port}")}])
}

/// What a load client saw.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    pub ok: u64,
    pub refused: u64,
    /// Reset, timed out or answered nothing.
    pub other: u64,
    /// Distinct answers (replica numbers).
    pub seen: std::collections::BTreeSet<String>,
}

/// Connect to `port` again and again until stopped (at most `MAX_CONNS`
/// connections), counting answers and failures.
pub struct Load {
    stop: Arc<AtomicBool>,
    /// Answers so far.
    ok: Arc<AtomicU64>,
    handle: JoinHandle<Tally>,
}

pub const MAX_CONNS: u64 = 200_000;

impl Load {
    pub fn start(port: u16) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let ok = Arc::new(AtomicU64::new(0));
        let answers = ok.clone();
        let handle = std::thread::spawn(move || {
            let mut t = Tally::default();
            while !flag.load(Ordering::Relaxed) && t.ok + t.refused + t.other < MAX_CONNS {
                match TcpStream::connect(("127.0.0.1", port)) {
                    Ok(mut c) => {
                        let _ = c.set_read_timeout(Some(Duration::from_secs(30)));
                        let mut buf = String::new();
                        match c.read_to_string(&mut buf) {
                            Ok(_) if buf.ends_with('\n') => {
                                t.ok += 1;
                                answers.store(t.ok, Ordering::Relaxed);
                                t.seen.insert(buf.trim().to_string());
                            }
                            _ => t.other += 1,
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                        t.refused += 1;
                        // The control's gap: do not spin on it.
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    Err(_) => t.other += 1,
                }
            }
            t
        });
        Load { stop, ok, handle }
    }

    /// Wait until `n` more answers came (the new instance serves).
    pub fn wait_answers(&self, n: u64) {
        let want = self.ok.load(Ordering::Relaxed) + n;
        let until = Instant::now() + Duration::from_secs(60);
        while self.ok.load(Ordering::Relaxed) < want {
            assert!(Instant::now() < until, "no answers for 60 s");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn finish(self) -> Tally {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().expect("load thread")
    }
}

/// Serve until the first answer comes (the port is up).
pub fn wait_serving(port: u16) {
    let until = Instant::now() + Duration::from_secs(60);
    while Instant::now() < until {
        if let Ok(mut c) = TcpStream::connect(("127.0.0.1", port)) {
            let mut s = String::new();
            if c.read_to_string(&mut s).is_ok() && s.ends_with('\n') {
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("port {port} never served");
}

/// A counter service's lines in its log (`n=1 end`, `n=2 end`, …): none
/// missing or broken, in order; only the last may be cut by the stop that
/// ended the test. `relogged`: how many batches may be logged twice (a
/// supervisor killed between a batch's log write and its taking from the
/// pipe logs it again; an upgrade never does). The count of lines.
pub fn check_counter_log(up: &crate::up::Up, relogged: usize) -> u64 {
    assert!(
        !up.logdir().join("counter.log.1").exists(),
        "rotated: the test's bound is too small"
    );
    let text = std::fs::read_to_string(up.logdir().join("counter.log")).unwrap();
    let lines: Vec<&str> = text
        .lines()
        .filter_map(|l| Some(l.split_once(" stdout ")?.1))
        .collect();
    let (mut next, mut prev, mut again) = (1u64, 0u64, 0usize);
    for (k, line) in lines.iter().enumerate() {
        let whole = line.strip_prefix("n=").and_then(|t| t.strip_suffix(" end"));
        let cut = k + 1 == lines.len() && whole.is_none();
        let n: u64 = match cut {
            true => line.strip_prefix("n=").map(|t| t.trim_end()),
            false => whole,
        }
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("a broken line: {line:?}"));
        if n <= prev {
            again += 1;
        } else {
            assert!(n == prev + 1, "after line {prev}: line {n} (lost lines)");
        }
        next = next.max(n + 1);
        prev = n;
    }
    assert!(
        again <= relogged,
        "{again} batches logged twice ({relogged} allowed)"
    );
    next - 1
}
