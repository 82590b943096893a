//! The sinks on the host, against real sockets: a datagram socket where
//! journald's would be, syslog receivers over UDP, TCP and a unix socket.

use std::io::Read;
use std::net::{TcpListener, UdpSocket};
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;

use super::*;
use crate::shell::context::testing::Harness;
use crate::spec::logging::LogFormat;

fn temp(tag: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("isola-fwd-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_file(&p);
    p
}

fn origin(stream: Stream) -> Origin<'static> {
    Origin {
        service: "web",
        replica: None,
        pid: Some(77),
        stream,
    }
}

fn route(journald: bool, syslog: Option<SyslogTarget>) -> LogRoute {
    LogRoute {
        format: LogFormat::Text,
        journald,
        syslog,
    }
}

fn lines(n: usize, text: &str) -> Vec<String> {
    (0..n).map(|k| format!("{text} {k}")).collect()
}

/// Forwarders whose journal is a socket of ours at `path` (bound by the
/// test when it wants one there), removed at the end.
struct ToJournal {
    h: Harness,
    f: Forwarders,
    path: PathBuf,
}

impl ToJournal {
    fn new(tag: &str) -> ToJournal {
        let path = temp(tag);
        ToJournal {
            h: Harness::new(),
            f: Forwarders::new("st", path.clone()),
            path,
        }
    }

    fn send(&mut self, stream: Stream, lines: &[String]) {
        let r = route(true, None);
        let mut ctx = self.h.ctx();
        self.f.send(&mut ctx, &r, None, &origin(stream), lines);
    }
}

impl Drop for ToJournal {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[test]
fn an_absent_journal_drops_counts_and_says_so_once_then_that_it_is_back() {
    let mut j = ToJournal::new("journal");
    j.send(Stream::Stdout, &lines(3, "x"));
    let notes = j.f.take_notes();
    assert_eq!(notes.len(), 1, "{notes:?}");
    assert!(notes[0].starts_with("logging: journald: "), "{notes:?}");
    assert!(notes[0].contains("not listening"), "{notes:?}");
    assert_eq!(j.f.dropped()[0], ("journald", 3));
    let journal = UnixDatagram::bind(&j.path).unwrap();
    j.send(Stream::Stdout, &lines(1, "y"));
    assert_eq!(
        j.f.take_notes(),
        vec!["logging: journald: taking lines again (3 dropped)".to_string()]
    );
    let mut buf = [0u8; 1024];
    let n = journal.recv(&mut buf).unwrap();
    assert!(buf[..n].starts_with(b"MESSAGE=y 0\nPRIORITY=6\n"));
}

#[test]
fn a_full_journal_never_blocks_the_sender() {
    let mut j = ToJournal::new("full");
    let journal = UnixDatagram::bind(&j.path).unwrap();
    let t = std::time::Instant::now();
    let many = lines(20_000, &"z".repeat(200));
    j.send(Stream::Stderr, &many);
    assert!(t.elapsed() < std::time::Duration::from_secs(5));
    let (_, dropped) = j.f.dropped()[0];
    assert!(dropped > 0 && dropped < 20_000, "{dropped}");
    assert_eq!(j.f.take_notes().len(), 1);
    drop(journal);
}

/// Forwarders with one syslog receiver, and how to send to it.
struct ToSyslog {
    h: Harness,
    f: Forwarders,
    k: usize,
    r: LogRoute,
}

impl ToSyslog {
    fn new(target: SyslogTarget) -> ToSyslog {
        let mut f = Forwarders::new("st", temp("unused"));
        let k = f.syslog(&target);
        assert_eq!(f.syslog(&target), k, "one sink per receiver");
        ToSyslog {
            h: Harness::new(),
            f,
            k,
            r: route(false, Some(target)),
        }
    }

    fn send(&mut self, stream: Stream, lines: &[String]) {
        let mut ctx = self.h.ctx();
        self.f
            .send(&mut ctx, &self.r, Some(self.k), &origin(stream), lines);
    }
}

#[test]
fn syslog_over_udp_is_rfc5424() {
    let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut t = ToSyslog::new(SyslogTarget::Udp(rx.local_addr().unwrap()));
    t.send(Stream::Stderr, &["boom".into()]);
    let mut buf = [0u8; 2048];
    let n = rx.recv(&mut buf).unwrap();
    let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
    // <daemon.err>1 TIME HOST APP PROCID MSGID SD MSG
    let parts: Vec<&str> = msg.splitn(7, ' ').collect();
    assert_eq!(parts[0], "<27>1");
    assert!(parts[1].ends_with('Z') && parts[1].contains('T'), "{msg}");
    assert_eq!(&parts[3..6], ["web", "77", "stderr"]);
    assert!(
        parts[6].starts_with("[origin software=\"isola\" swVersion=\""),
        "{msg}"
    );
    assert!(parts[6].ends_with("\"] boom"), "{msg}");
    assert_eq!(t.f.dropped()[1], ("syslog", 0));
}

#[test]
fn syslog_over_unix_datagrams() {
    let path = temp("devlog");
    let rx = UnixDatagram::bind(&path).unwrap();
    let mut t = ToSyslog::new(SyslogTarget::Unix(path.clone()));
    t.send(Stream::Stdout, &["hello".into()]);
    let mut buf = [0u8; 2048];
    let n = rx.recv(&mut buf).unwrap();
    let msg = String::from_utf8_lossy(&buf[..n]);
    assert!(
        msg.starts_with("<30>1 ") && msg.ends_with("] hello"),
        "{msg}"
    );
    let _ = std::fs::remove_file(&path);
}

impl ToSyslog {
    /// Turn the harness until nothing is ready.
    fn settle(&mut self) {
        loop {
            let ready = self.h.ready(100);
            if ready.is_empty() {
                return;
            }
            for (tok, _) in ready {
                if let Some(super::super::Key::Forward(k)) = super::super::Key::decode(tok.key) {
                    self.f.on_event(&mut self.h.ctx(), k);
                }
            }
        }
    }
}

#[test]
fn syslog_over_tcp_is_octet_counted_and_a_slow_receiver_costs_drops_not_waits() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut t = ToSyslog::new(SyslogTarget::Tcp(listener.local_addr().unwrap()));
    t.send(Stream::Stdout, &["a b".into()]);
    t.settle();
    let (mut conn, _) = listener.accept().unwrap();
    conn.set_read_timeout(Some(std::time::Duration::from_secs(2)))
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = conn.read(&mut buf).unwrap();
    let frame = String::from_utf8_lossy(&buf[..n]).into_owned();
    let (len, msg) = frame.split_once(' ').unwrap();
    assert_eq!(len.parse::<usize>().unwrap(), msg.len(), "{frame}");
    assert!(
        msg.starts_with("<30>1 ") && msg.ends_with("] a b"),
        "{frame}"
    );
    // The receiver stops reading: the kernel's buffers fill, then our
    // queue, then lines are dropped — and no send waits.
    let start = std::time::Instant::now();
    let many = lines(40_000, &"q".repeat(500));
    for chunk in many.chunks(1000) {
        t.send(Stream::Stdout, chunk);
    }
    assert!(start.elapsed() < std::time::Duration::from_secs(10));
    let (_, dropped) = t.f.dropped()[1];
    assert!(dropped > 0 && dropped < 40_000, "{dropped}");
    let notes = t.f.take_notes();
    assert_eq!(notes.len(), 1, "{notes:?}");
    assert!(notes[0].contains(": slow: "), "{notes:?}");
}

#[test]
fn a_tcp_receiver_that_is_not_there_is_tried_again_a_second_later() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let mut t = ToSyslog::new(SyslogTarget::Tcp(addr));
    t.send(Stream::Stdout, &["one".into()]);
    t.settle();
    // Refused: the queued line is lost and counted; the next ones, sent
    // within the second, are dropped without a connect.
    t.send(Stream::Stdout, &lines(5, "x"));
    assert_eq!(t.f.dropped()[1], ("syslog", 6));
    assert!(t.h.ready(0).is_empty(), "nothing registered while down");
    let notes = t.f.take_notes();
    assert_eq!(notes.len(), 1, "{notes:?}");
    assert!(
        notes[0].starts_with(&format!("logging: syslog tcp://{addr}: ")),
        "{notes:?}"
    );
}

/// A journal that keeps filling and draining is named once per ten
/// seconds, not at each turn.
#[test]
fn a_sink_that_flaps_is_named_once_per_period() {
    let mut j = ToJournal::new("flaps");
    let journal = UnixDatagram::bind(&j.path).unwrap();
    journal.set_nonblocking(true).unwrap();
    let mut buf = vec![0u8; 1 << 16];
    for _ in 0..5 {
        // Fill it, then drain it.
        j.send(Stream::Stdout, &lines(2000, "z"));
        while journal.recv(&mut buf).is_ok() {}
        j.send(Stream::Stdout, &lines(1, "y"));
    }
    let notes = j.f.take_notes();
    assert_eq!(notes.len(), 2, "{notes:?}");
    assert!(notes[1].contains("taking lines again"), "{notes:?}");
    assert!(j.f.dropped()[0].1 > 0);
}
