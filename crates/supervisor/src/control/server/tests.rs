//! The control server on the host: a real listener and real client
//! sockets, driven through the real epoll set.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;

use super::*;
use crate::shell::context::testing::Harness;
use crate::shell::context::Said;

struct Fixture {
    h: Harness,
    server: ControlServer,
    path: PathBuf,
}

impl Fixture {
    fn new(tag: &str) -> Fixture {
        let path =
            std::env::temp_dir().join(format!("isola-ctl-{tag}-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).unwrap();
        listener.set_nonblocking(true).unwrap();
        let h = Harness::new();
        let server = ControlServer::new(listener, &h.reactor).unwrap();
        Fixture { h, server, path }
    }

    fn connect(&mut self) -> UnixStream {
        let c = UnixStream::connect(&self.path).unwrap();
        c.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        self.turn();
        c
    }

    /// Handle what is ready now; the lines that came in (answered as the
    /// shell answers a bad one), then the turn ends.
    fn turn(&mut self) -> Vec<Line> {
        self.turn_within(200)
    }

    fn turn_within(&mut self, ms: u16) -> Vec<Line> {
        let mut lines = Vec::new();
        for (tok, ready) in self.h.ready(ms) {
            assert_eq!(tok.part, Part::Control);
            let mut ctx = self.h.ctx();
            lines.extend(self.server.on_event(&mut ctx, tok.key, ready));
        }
        self.server.end_turn(&mut self.h.ctx());
        lines
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn reply(c: &UnixStream) -> serde_json::Value {
    let mut line = String::new();
    // One byte at a time: nothing past the line is taken from the socket.
    let mut byte = [0u8; 1];
    while !line.ends_with('\n') {
        assert_eq!((&*c).read(&mut byte).expect("a reply in time"), 1);
        line.push(char::from(byte[0]));
    }
    serde_json::from_str(&line).unwrap()
}

/// Everything waiting for the client now.
fn pending(c: &UnixStream) -> String {
    c.set_nonblocking(true).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = (&*c).read(&mut buf) {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    c.set_nonblocking(false).unwrap();
    String::from_utf8(out).unwrap()
}

#[test]
fn lines_come_out_in_order_and_a_partial_one_waits_for_its_end() {
    let mut f = Fixture::new("lines");
    let mut c = f.connect();
    c.write_all(b"{\"cmd\": \"status\"}\nnot json\n{\"cmd\": \"stop\", \"name\": \"web\"}\n")
        .unwrap();
    let lines = f.turn();
    match lines.as_slice() {
        [(1, Ok(Request::Status)), (1, Err(bad)), (1, Ok(Request::Stop { name }))] => {
            assert!(bad.starts_with("bad request: "), "{bad}");
            assert_eq!(name, "web");
        }
        other => panic!("{other:?}"),
    }
    // A partial line waits for its end.
    c.write_all(b"{\"cmd\": \"do").unwrap();
    assert!(f.turn().is_empty());
    c.write_all(b"wn\"}\n").unwrap();
    assert!(matches!(f.turn().as_slice(), [(1, Ok(Request::Down))]));
}

/// A client that sends its request and shuts its side (`nc -N`) gets its
/// answer: the connection closes only once the turn's lines are answered.
#[test]
fn a_request_followed_by_eof_is_answered_before_the_connection_closes() {
    let mut f = Fixture::new("eof");
    let mut c = f.connect();
    c.write_all(b"{\"cmd\": \"status\"}\n").unwrap();
    c.shutdown(std::net::Shutdown::Write).unwrap();
    let mut lines = Vec::new();
    for (tok, ready) in f.h.ready(1000) {
        lines.extend(f.server.on_event(&mut f.h.ctx(), tok.key, ready));
    }
    assert!(
        matches!(lines.as_slice(), [(1, Ok(Request::Status))]),
        "{lines:?}"
    );
    f.server.send(&mut f.h.ctx(), 1, &Response::ok());
    f.server.end_turn(&mut f.h.ctx());
    assert_eq!(f.server.connections(), 0);
    assert!(matches!(f.h.inputs().as_slice(), [Input::ConnClosed(1)]));
    assert_eq!(reply(&c)["ok"], true);
}

#[test]
fn a_request_line_over_64_kib_drops_the_connection() {
    let mut f = Fixture::new("cap");
    let mut c = f.connect();
    let big = vec![b'x'; MAX_REQUEST + 10];
    c.write_all(&big).unwrap();
    for _ in 0..50 {
        if f.server.connections() == 0 {
            break;
        }
        assert!(f.turn().is_empty());
    }
    assert_eq!(f.server.connections(), 0, "dropped");
    assert_eq!(
        f.h.said(),
        vec![Said::Note(
            "dropped control connection 1: a request line longer than 64 KiB".into()
        )]
    );
    assert!(matches!(f.h.inputs().as_slice(), [Input::ConnClosed(1)]));
    let mut rest = Vec::new();
    assert_eq!(c.read_to_end(&mut rest).unwrap_or(0), 0);
}

#[test]
fn broadcasts_reach_only_their_audience() {
    let mut f = Fixture::new("bcast");
    let web = f.connect();
    let all = f.connect();
    let events = f.connect();
    let _idle = f.connect();
    f.server.follow(1, Follow::Service("web".into()));
    f.server.follow(2, Follow::All);
    f.server.subscribe(3);
    assert!(f.server.has(Audience::FollowersOf("web")));
    assert!(!f.server.has(Audience::FollowersOf("db")));
    fn line(s: &str) -> Message<'_> {
        Message::Line { line: s.into() }
    }
    let mut ctx = f.h.ctx();
    f.server
        .broadcast(&mut ctx, Audience::FollowersOf("db"), &line("db only"));
    f.server
        .broadcast(&mut ctx, Audience::FollowersOf("web"), &line("for web"));
    f.server
        .broadcast(&mut ctx, Audience::FollowersOfAll, &line("web | for all"));
    let ev = Message::Event {
        time: "t".into(),
        service: "web".into(),
        event: "running".into(),
    };
    f.server.broadcast(&mut ctx, Audience::Subscribers, &ev);
    assert_eq!(pending(&web), "{\"line\":\"for web\"}\n");
    assert_eq!(pending(&all), "{\"line\":\"web | for all\"}\n");
    let ev = pending(&events);
    assert!(
        ev.contains("\"event\":\"running\"") && ev.lines().count() == 1,
        "{ev}"
    );
    assert_eq!(pending(&_idle), "");
}

#[test]
fn a_follower_that_stops_reading_is_dropped_past_the_unread_limit() {
    let mut f = Fixture::new("unread");
    let _slow = f.connect();
    let reader = f.connect();
    reader.set_nonblocking(true).unwrap();
    f.server.follow(1, Follow::Service("web".into()));
    f.server.follow(2, Follow::Service("web".into()));
    let text = "x".repeat(1000);
    let (mut sent, mut read) = (0usize, 0usize);
    let mut buf = vec![0u8; 1 << 16];
    // The reader reads as it goes; the slow client never does.
    while f.server.connections() == 2 {
        let msg = Message::Line {
            line: text.as_str().into(),
        };
        f.server
            .broadcast(&mut f.h.ctx(), Audience::FollowersOf("web"), &msg);
        sent += 1;
        assert!(sent < 20_000, "never dropped");
        while let Ok(n) = (&reader).read(&mut buf) {
            if n == 0 {
                break;
            }
            read += n;
        }
        f.turn_within(0);
    }
    // Dropped past MAX_UNREAD (plus what the socket buffers took).
    assert!(sent * 1000 > MAX_UNREAD, "{sent}");
    assert!(read > MAX_UNREAD, "the reader got it all: {read}");
    let said = f.h.said();
    assert!(
        matches!(said.as_slice(), [Said::Note(n)] if n.starts_with("dropped control connection 1 (following the log of web): ")),
        "{said:?}"
    );
    assert!(
        f.server.has(Audience::FollowersOf("web")),
        "the reader stays"
    );
}

/// `metrics` of ten thousand services is larger than the bound: the
/// answer is kept whole for a client that reads it; a client that asks
/// again with more than the bound still unread is dropped.
#[test]
fn one_answer_may_be_larger_than_the_bound_but_only_one() {
    let mut f = Fixture::new("large");
    let c = f.connect();
    let big = Response {
        metrics: Some("m".repeat(MAX_UNREAD * 2)),
        ..Response::ok()
    };
    f.server.send(&mut f.h.ctx(), 1, &big);
    assert_eq!(f.server.connections(), 1, "kept: {:?}", f.h.said());
    // The client reads it all, the loop writing as it makes room.
    let mut got = 0usize;
    let mut buf = vec![0u8; 1 << 16];
    c.set_nonblocking(true).unwrap();
    while got < MAX_UNREAD * 2 {
        while let Ok(n) = (&c).read(&mut buf) {
            if n == 0 {
                break;
            }
            got += n;
        }
        f.turn_within(10);
    }
    assert_eq!(f.server.connections(), 1);
    // Now one that does not read, and asks twice.
    let _lazy = f.connect();
    f.server.send(&mut f.h.ctx(), 2, &big);
    assert_eq!(f.server.connections(), 2);
    f.server.send(&mut f.h.ctx(), 2, &big);
    assert_eq!(f.server.connections(), 1, "dropped at the second");
    let said = f.h.said();
    assert!(
        matches!(said.as_slice(), [Said::Note(n)] if n.starts_with("dropped control connection 2 (a client): ")),
        "{said:?}"
    );
}
