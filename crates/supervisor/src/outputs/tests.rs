//! Outputs on the host: real pipes, real log files in a temporary
//! directory, sinks writing into pipes nobody reads.

use std::fs::File;
use std::io::Read;
use std::path::PathBuf;

use super::*;
use crate::shell::context::testing::Harness;

struct Fixture {
    h: Harness,
    o: Outputs,
    dir: PathBuf,
    /// The other ends of our stdout and stderr.
    readers: [File; 2],
}

/// A pipe: (read end, a non-blocking write end as a file).
fn pipe() -> (File, File) {
    let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).unwrap();
    fcntl(&w, FcntlArg::F_SETFL(OFlag::O_NONBLOCK)).unwrap();
    fcntl(&r, FcntlArg::F_SETFL(OFlag::O_NONBLOCK)).unwrap();
    (File::from(r), File::from(w))
}

impl Fixture {
    fn new(tag: &str, max_bytes: u64, echo: bool) -> Fixture {
        let dir = std::env::temp_dir().join(format!("isola-out-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let logs = LogConfig {
            dir: dir.clone(),
            max_bytes,
            files: 2,
        };
        let (out_r, out_w) = pipe();
        let (err_r, err_w) = pipe();
        let own = OwnSinks {
            stdout: Sink::to_file(out_w),
            stderr: Sink::to_file(err_w),
            echo,
        };
        let journal = dir.with_extension("journal");
        let o = Outputs::new(logs, own, Forwarders::new("stack", journal));
        Fixture {
            h: Harness::new(),
            o,
            dir,
            readers: [out_r, err_r],
        }
    }

    /// Handle what is ready now; the lines read.
    fn turn(&mut self) -> Vec<Lines> {
        let mut all = Vec::new();
        for (tok, _) in self.h.ready(200) {
            assert_eq!(tok.part, Part::Outputs);
            let mut ctx = self.h.ctx();
            all.extend(self.o.on_event(&mut ctx, tok.key));
        }
        all
    }

    fn ours(&mut self, stream: Stream) -> String {
        let mut s = String::new();
        let _ = self.readers[stream.index()].read_to_string(&mut s);
        s
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(name)).unwrap_or_default()
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = std::fs::remove_file(self.dir.with_extension("journal"));
    }
}

fn lines(service: &str, ls: &[&str]) -> Lines {
    Lines {
        service: service.into(),
        lines: ls.iter().map(|s| s.to_string()).collect(),
    }
}

#[test]
fn partial_lines_wait_for_their_end_and_the_last_comes_at_eof() {
    let mut f = Fixture::new("partial", 1 << 20, true);
    f.o.add(0, "web").unwrap();
    let ends = f.o.open_pipes(&mut f.h.ctx(), 0, false).unwrap();
    nix::unistd::write(&ends.stdout, b"abc").unwrap();
    assert!(f.turn().is_empty());
    nix::unistd::write(&ends.stdout, b"def\nghi").unwrap();
    assert_eq!(f.turn(), vec![lines("web", &["abcdef"])]);
    drop(ends);
    // "ghi" is taken into memory first (a pipe holding only part of a
    // line), then its EOF ends it: one wakeup or two.
    let mut last = f.turn();
    if last.is_empty() {
        last = f.turn();
    }
    assert_eq!(last, vec![lines("web", &["ghi"])]);
    // Both pipes are closed at EOF: nothing more is reported.
    assert!(f.h.ready(0).is_empty());
    assert_eq!(f.ours(Stream::Stdout), "web | abcdef\nweb | ghi\n");
    let log = f.log("web.log");
    assert!(
        log.contains(" stdout abcdef\n") && log.contains(" stdout ghi\n"),
        "{log}"
    );
}

#[test]
fn merged_stderr_shares_the_stdout_pipe_and_drain_reads_whats_left() {
    let mut f = Fixture::new("drain", 1 << 20, false);
    f.o.add(0, "db").unwrap();
    let ends = f.o.open_pipes(&mut f.h.ctx(), 0, true).unwrap();
    assert!(ends.stderr.is_none());
    nix::unistd::write(&ends.stdout, b"one\ntwo").unwrap();
    // The sandbox died (a leftover may still hold the write end).
    let drained = f.o.drain(&mut f.h.ctx(), 0);
    assert_eq!(drained, vec![lines("db", &["one", "two"])]);
    assert!(f.h.ready(0).is_empty(), "closed after the drain");
    assert_eq!(f.ours(Stream::Stdout), "", "no echo");
}

#[test]
fn a_stalled_stderr_drops_lines_and_says_how_many_where_they_are_missing() {
    let mut f = Fixture::new("drop", 1 << 20, false);
    let line = "x".repeat(1000);
    let mut ctx = f.h.ctx();
    // 64 KiB in the pipe, 1 MiB in the sink, the rest dropped.
    for _ in 0..2000 {
        f.o.note(&mut ctx, &line);
    }
    let mut got = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        // Our stderr waits for EPOLLOUT: the reader makes room, the loop
        // writes more.
        while let Ok(n) = f.readers[1].read(&mut buf) {
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        let ready = f.h.ready(100);
        if ready.is_empty() {
            break;
        }
        for (tok, _) in ready {
            let mut ctx = f.h.ctx();
            f.o.on_event(&mut ctx, tok.key);
        }
    }
    f.o.note(&mut f.h.ctx(), "after");
    let text = String::from_utf8(got).unwrap() + &f.ours(Stream::Stderr);
    let kept = text.lines().filter(|l| l.ends_with('x')).count();
    assert!(kept < 2000 && kept > 1000, "{kept}");
    // Where the lines are missing: after the last kept one.
    let dropped = 2000 - kept;
    let tail: Vec<&str> = text.lines().skip(kept).collect();
    assert_eq!(
        tail,
        vec![
            format!(
                "isola: {dropped} line(s) of output dropped: this output was not read fast enough"
            )
            .as_str(),
            "isola: after"
        ]
    );
}

#[test]
fn logs_rotate_by_size() {
    let mut f = Fixture::new("rotate", 200, false);
    f.o.add(0, "web").unwrap();
    let ends = f.o.open_pipes(&mut f.h.ctx(), 0, false).unwrap();
    for k in 0..10 {
        nix::unistd::write(
            ends.stderr.as_ref().unwrap(),
            format!("line {k}\n").as_bytes(),
        )
        .unwrap();
        f.turn();
    }
    let live = f.log("web.log");
    let old = f.log("web.log.1");
    assert!(live.contains("stderr line 9"), "{live}");
    assert!(!old.is_empty() && !old.contains("line 9"), "{old}");
    assert!(!f.dir.join("web.log.2").exists(), "files: 2");
}

#[test]
fn only_the_most_recently_opened_logs_stay_open() {
    let mut f = Fixture::new("lru", 1 << 20, false);
    let n = LOGS_OPEN + 5;
    for i in 0..n {
        f.o.add(i, &format!("s{i}")).unwrap();
        assert!(f.o.event(&mut f.h.ctx(), i, "running").is_some());
    }
    assert_eq!(f.o.open_log_count(), LOGS_OPEN);
    // The oldest were closed; writing reopens (and closes the next oldest).
    assert!(f.log("s0.log").contains(" isola running"));
    f.o.event(&mut f.h.ctx(), 0, "again");
    assert_eq!(f.o.open_log_count(), LOGS_OPEN);
    assert!(f.log("s0.log").contains(" isola again"));
    // A forgotten service leaves the cache.
    f.o.forget(&mut f.h.ctx(), n - 1);
    assert_eq!(f.o.open_log_count(), LOGS_OPEN - 1);
    assert_eq!(f.o.event(&mut f.h.ctx(), n - 1, "gone"), None);
}

#[test]
fn json_lines_in_the_file_read_back_as_text_and_journald_gets_a_copy() {
    use crate::spec::logging::{LogFormat, LogRoute};
    use std::os::unix::net::UnixDatagram;
    let mut f = Fixture::new("json", 1 << 20, false);
    let journal = UnixDatagram::bind(f.dir.with_extension("journal")).unwrap();
    journal.set_nonblocking(true).unwrap();
    f.o.add(0, "web.2").unwrap();
    let route = LogRoute {
        format: LogFormat::Json,
        journald: true,
        syslog: None,
    };
    f.o.set_route(0, route, Some(2));
    f.o.started(0, 4321);
    let ends = f.o.open_pipes(&mut f.h.ctx(), 0, false).unwrap();
    nix::unistd::write(ends.stderr.as_ref().unwrap(), b"say \"hi\"\n").unwrap();
    f.turn();
    let log = f.log("web.2.log");
    let v: serde_json::Value = serde_json::from_str(log.trim_end()).unwrap();
    assert_eq!(v["service"], "web.2");
    assert_eq!(v["stream"], "stderr");
    assert_eq!(v["replica"], 2);
    assert_eq!(v["msg"], "say \"hi\"");
    let text = crate::logs::tail(&f.dir, "web.2", 10, 2);
    assert_eq!(text.len(), 1);
    assert!(text[0].ends_with(" stderr say \"hi\""), "{text:?}");
    let mut buf = [0u8; 4096];
    let n = journal.recv(&mut buf).unwrap();
    let entry = String::from_utf8_lossy(&buf[..n]);
    for field in [
        "MESSAGE=say \"hi\"\n",
        "PRIORITY=3\n",
        "SYSLOG_IDENTIFIER=web.2\n",
        "ISOLA_STACK=stack\n",
        "ISOLA_SERVICE=web.2\n",
        "ISOLA_STREAM=stderr\n",
        "ISOLA_REPLICA=2\n",
    ] {
        assert!(entry.contains(field), "{field:?} not in {entry:?}");
    }
    let [_, _, (sink, dropped), _] = f.o.lines_dropped();
    assert_eq!((sink, dropped), ("journald", 0));
}
