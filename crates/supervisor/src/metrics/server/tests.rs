//! The metrics endpoint on the host: a real TCP listener on 127.0.0.1 and
//! real clients, through the real epoll set.

use std::io::{Read, Write};
use std::net::TcpStream;

use super::*;
use crate::shell::context::testing::Harness;

struct Fixture {
    h: Harness,
    server: MetricsServer,
    addr: std::net::SocketAddr,
}

impl Fixture {
    fn new() -> Fixture {
        let h = Harness::new();
        let bound = bind(&MetricsAddr::Tcp("127.0.0.1:0".parse().unwrap())).unwrap();
        let addr = match &bound.0 {
            Listener::Tcp(l) => l.local_addr().unwrap(),
            Listener::Unix(..) => unreachable!("tcp"),
        };
        let server = MetricsServer::new(bound, &h.reactor).unwrap();
        Fixture { h, server, addr }
    }

    /// Handle what is ready; answer every scrape with a body naming its
    /// format.
    fn turn(&mut self) -> Vec<Scrape> {
        let mut scrapes = Vec::new();
        for (tok, ready) in self.h.ready(200) {
            assert_eq!(tok.part, Part::Metrics);
            let mut ctx = self.h.ctx();
            scrapes.extend(self.server.on_event(&mut ctx, tok.key, ready));
        }
        for s in &scrapes {
            let body = format!("{:?}\n", s.format);
            self.server.answer(&mut self.h.ctx(), *s, &body);
        }
        scrapes
    }

    /// Send `request`, run the loop until the server hangs up; the answer.
    fn exchange(&mut self, request: &[u8]) -> String {
        let mut c = TcpStream::connect(self.addr).unwrap();
        c.write_all(request).unwrap();
        c.set_nonblocking(true).unwrap();
        let mut got = Vec::new();
        for _ in 0..50 {
            self.turn();
            let mut buf = [0u8; 4096];
            match c.read(&mut buf) {
                Ok(0) => return String::from_utf8(got).unwrap(),
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(_) => {}
            }
        }
        panic!(
            "no answer and no hang-up: {:?}",
            String::from_utf8_lossy(&got)
        );
    }
}

#[test]
fn get_metrics_is_answered_in_the_format_asked_for_and_closed() {
    let mut f = Fixture::new();
    let text = f.exchange(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(text.contains("Content-Type: text/plain; version=0.0.4; charset=utf-8\r\n"));
    assert!(
        text.contains("Content-Length: 5\r\nConnection: close\r\n\r\nText\n"),
        "{text}"
    );
    let om = f.exchange(
        b"GET /metrics?x=1 HTTP/1.1\r\naccept: application/openmetrics-text;version=1.0.0,text/plain;q=0.5\r\n\r\n",
    );
    assert!(
        om.contains("Content-Type: application/openmetrics-text; version=1.0.0"),
        "{om}"
    );
    assert!(om.ends_with("\r\n\r\nOpenMetrics\n"), "{om}");
    let head = f.exchange(b"HEAD /metrics HTTP/1.0\r\n\r\n");
    assert!(
        head.ends_with("Content-Length: 5\r\nConnection: close\r\n\r\n"),
        "{head}"
    );
    assert_eq!(f.server.connections(), 0);
}

#[test]
fn other_requests_are_refused_here_and_a_huge_head_is_cut_off() {
    let mut f = Fixture::new();
    for (req, status) in [
        (&b"GET / HTTP/1.1\r\n\r\n"[..], "404 Not Found"),
        (b"POST /metrics HTTP/1.1\r\n\r\n", "405 Method Not Allowed"),
        (b"garbage\r\n\r\n", "400 Bad Request"),
        (b"GET /metrics SPDY/3\r\n\r\n", "400 Bad Request"),
    ] {
        let text = f.exchange(req);
        assert!(
            text.starts_with(&format!("HTTP/1.1 {status}\r\n")),
            "{text}"
        );
    }
    let mut big = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
    big.extend(std::iter::repeat_n(b'a', MAX_HEAD + 100));
    let text = f.exchange(&big);
    assert!(text.starts_with("HTTP/1.1 431 "), "{text}");
    assert_eq!(f.server.connections(), 0);
}

#[test]
fn a_partial_head_waits_and_a_silent_client_costs_only_its_connection() {
    let mut f = Fixture::new();
    let mut slow = TcpStream::connect(f.addr).unwrap();
    slow.write_all(b"GET /metrics HTTP/1.1\r\n").unwrap();
    assert!(f.turn().is_empty());
    assert_eq!(f.server.connections(), 1);
    // Another scraper is served meanwhile.
    let text = f.exchange(b"GET /metrics HTTP/1.1\r\n\r\n");
    assert!(text.starts_with("HTTP/1.1 200 OK"));
    slow.write_all(b"\r\n").unwrap();
    assert_eq!(f.turn().len(), 1);
}

/// A full table of clients that never finish a request does not lock a
/// scraper out: the one idle longest makes room.
#[test]
fn idle_clients_never_lock_scrapers_out() {
    let mut f = Fixture::new();
    let idle: Vec<TcpStream> = (0..MAX_CONNS)
        .map(|_| {
            let c = TcpStream::connect(f.addr).unwrap();
            f.turn();
            c
        })
        .collect();
    assert_eq!(f.server.connections(), MAX_CONNS);
    let text = f.exchange(b"GET /metrics HTTP/1.1\r\n\r\n");
    assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
    assert_eq!(
        f.server.connections(),
        MAX_CONNS - 1,
        "one idle client went"
    );
    drop(idle);
}

/// A scraper that hangs up while its answer is being read is let go: its
/// scrape is no longer worth reading.
#[test]
fn a_scraper_that_hangs_up_while_waiting_is_let_go() {
    let mut f = Fixture::new();
    let mut c = TcpStream::connect(f.addr).unwrap();
    c.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").unwrap();
    let mut scrapes = Vec::new();
    for _ in 0..5 {
        for (tok, ready) in f.h.ready(200) {
            scrapes.extend(f.server.on_event(&mut f.h.ctx(), tok.key, ready));
        }
        if !scrapes.is_empty() {
            break;
        }
    }
    let s = scrapes.pop().expect("a scrape");
    assert!(f.server.is_open(s.conn));
    // More bytes while its answer is being read wake nothing and cost
    // nothing: only a hang-up is watched for now.
    c.write_all(b"GET /again HTTP/1.1\r\n\r\n").unwrap();
    assert!(f.h.ready(100).is_empty(), "woken by bytes nobody reads");
    assert!(f.server.is_open(s.conn));
    drop(c);
    for _ in 0..5 {
        for (tok, ready) in f.h.ready(200) {
            assert!(f.server.on_event(&mut f.h.ctx(), tok.key, ready).is_empty());
        }
        if !f.server.is_open(s.conn) {
            break;
        }
    }
    assert!(!f.server.is_open(s.conn));
    // Waiting, nothing but the hang-up was reported (no busy loop on a
    // readable socket).
    assert!(f.h.ready(100).is_empty());
}

/// A unix endpoint a live supervisor serves is not taken over by a second
/// one (its socket file stays); a stale file is replaced.
#[test]
fn a_live_unix_endpoint_is_not_taken_over() {
    let path = std::env::temp_dir().join(format!("isola-metrics-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let addr = MetricsAddr::Unix(path.clone());
    let first = bind(&addr).unwrap();
    let e = bind(&addr).err().expect("refused");
    assert!(e.ends_with("another process listens there"), "{e}");
    assert!(
        std::os::unix::net::UnixStream::connect(&path).is_ok(),
        "still served"
    );
    drop(first);
    // A stale socket file (its listener gone without removing it).
    let stale = std::os::unix::net::UnixListener::bind(&path).unwrap();
    drop(stale);
    assert!(path.exists());
    let again = bind(&addr).unwrap();
    drop(again);
    assert!(!path.exists(), "removed with its listener");
}
