//! Probes on the host, against real 127.0.0.1 listeners, through the real
//! epoll set; time is the harness's clock, moved by hand.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::Duration;

use super::*;
use crate::shell::context::testing::Harness;

fn probe(check: Check, timeout_ms: u64) -> Probe {
    Probe {
        check,
        initial_delay: Duration::ZERO,
        period: Duration::from_secs(10),
        timeout: Duration::from_millis(timeout_ms),
        failure_threshold: 3,
        success_threshold: 1,
    }
}

fn tcp(port: u16) -> Check {
    Check::Tcp {
        host: "127.0.0.1".parse().unwrap(),
        port,
    }
}

fn http(port: u16) -> Check {
    Check::Http {
        host: "127.0.0.1".parse().unwrap(),
        port,
        path: "/healthz".into(),
        headers: Vec::new(),
    }
}

const HERE: Target<'static> = Target::Socket { netns: None };

/// Run probes until the core hears of one; its verdict.
fn verdict(h: &mut Harness, p: &mut Probes) -> Verdict {
    for _ in 0..50 {
        for (tok, _) in h.ready(100) {
            assert_eq!(tok.part, Part::Probes);
            p.on_event(&mut h.ctx(), tok.key);
        }
        match h.inputs().pop() {
            Some(Input::ProbeDone {
                service: 7,
                kind: ProbeKind::Liveness,
                verdict,
            }) => return verdict,
            Some(other) => panic!("{other:?}"),
            None => {}
        }
    }
    panic!("no verdict");
}

/// A server answering one HTTP request with `status_line`.
fn http_server(status_line: &'static str) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let mut buf = [0u8; 1024];
        let mut req = Vec::new();
        while !req.ends_with(b"\r\n\r\n") {
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0);
            req.extend_from_slice(&buf[..n]);
        }
        assert!(req.starts_with(b"GET /healthz HTTP/1.1\r\n"));
        s.write_all(status_line.as_bytes()).unwrap();
    });
    port
}

#[test]
fn tcp_probes_pass_on_a_listener_and_fail_on_a_closed_port() {
    let mut h = Harness::new();
    let mut p = Probes::default();
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let spec = probe(tcp(port), 1000);
    assert!(p
        .start(&mut h.ctx(), 7, ProbeKind::Liveness, &spec, &HERE)
        .is_none());
    assert_eq!(verdict(&mut h, &mut p), Verdict::pass("connected"));
    drop(l);
    p.start(&mut h.ctx(), 7, ProbeKind::Liveness, &spec, &HERE);
    assert_eq!(verdict(&mut h, &mut p), Verdict::fail("connection refused"));
    assert_eq!(p.in_flight(), 0);
}

#[test]
fn http_probes_judge_the_status_class() {
    for (line, want) in [
        ("HTTP/1.1 200 OK\r\n\r\n", Verdict::pass("200")),
        (
            "HTTP/1.1 302 Found\r\nLocation: /\r\n\r\n",
            Verdict::pass("302"),
        ),
        ("HTTP/1.1 503 Busy\r\n\r\n", Verdict::fail("503")),
        ("HTTP/1.1 404 Not Found\r\n\r\n", Verdict::fail("404")),
        (
            "SSH-2.0-OpenSSH\r\n",
            Verdict::fail("not an HTTP answer: \"SSH-2.0-OpenSSH\""),
        ),
        (
            "HTTP/1.1 20",
            Verdict::fail("connection closed before a status line"),
        ),
    ] {
        let mut h = Harness::new();
        let mut p = Probes::default();
        let spec = probe(http(http_server(line)), 5000);
        p.start(&mut h.ctx(), 7, ProbeKind::Liveness, &spec, &HERE);
        assert_eq!(verdict(&mut h, &mut p), want, "{line:?}");
    }
}

#[test]
fn a_probe_past_its_timeout_fails_once_and_a_cancelled_one_says_nothing() {
    let mut h = Harness::new();
    let mut p = Probes::default();
    // Connections complete in the backlog; nobody ever answers.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let spec = probe(http(l.local_addr().unwrap().port()), 1500);
    let started = h.now;
    p.start(&mut h.ctx(), 7, ProbeKind::Liveness, &spec, &HERE);
    assert_eq!(
        p.next_deadline(),
        Some(started + Duration::from_millis(1500))
    );
    // The request goes out; no answer comes.
    for _ in 0..3 {
        for (tok, _) in h.ready(50) {
            p.on_event(&mut h.ctx(), tok.key);
        }
    }
    assert!(h.inputs().is_empty());
    h.now = started + Duration::from_millis(1499);
    p.tick(&mut h.ctx());
    assert!(h.inputs().is_empty(), "not yet");
    h.now = started + Duration::from_millis(1500);
    p.tick(&mut h.ctx());
    match h.inputs().as_slice() {
        [Input::ProbeDone { verdict, .. }] => {
            assert_eq!(*verdict, Verdict::fail("timed out after 1500 ms"))
        }
        other => panic!("{other:?}"),
    }
    p.tick(&mut h.ctx());
    assert!(h.inputs().is_empty(), "once");
    assert_eq!((p.in_flight(), p.next_deadline()), (0, None));
    // A cancelled probe (its sandbox ended) is never reported.
    p.start(&mut h.ctx(), 7, ProbeKind::Liveness, &spec, &HERE);
    p.cancel(&mut h.ctx(), 7);
    h.now += Duration::from_secs(10);
    p.tick(&mut h.ctx());
    assert!(h.inputs().is_empty());
    assert_eq!(p.in_flight(), 0);
}
