//! Readiness on the host: real datagram sockets with SO_PASSCRED, real
//! pipes, the real epoll set; the sandboxes' answer about senders faked.

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixDatagram;

use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags, UnixAddr};

use super::*;
use crate::shell::context::testing::Harness;
use crate::shell::context::Said;

/// The sandboxes, as readiness sees them: who is in which.
struct Members {
    successor: Option<ServiceIx>,
    /// (service, pid) pairs that belong.
    members: Vec<(ServiceIx, i32)>,
}

impl Senders for Members {
    fn successor(&self, _: ServiceIx) -> Option<ServiceIx> {
        self.successor
    }
    fn is_member(&self, i: ServiceIx, pid: i32) -> bool {
        self.members.contains(&(i, pid))
    }
}

fn me() -> i32 {
    i32::try_from(std::process::id()).unwrap()
}

struct Fixture {
    h: Harness,
    r: Readiness,
    dir: PathBuf,
}

impl Fixture {
    fn new(tag: &str) -> Fixture {
        let dir = std::env::temp_dir().join(format!("isola-ready-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Fixture {
            h: Harness::new(),
            r: Readiness::new(dir.join("isola.sock")),
            dir,
        }
    }

    fn systemd(&mut self, i: ServiceIx, name: &str, fd_store_max: u32) {
        let spec = ReadySpec {
            name,
            notify: Some(Notify::Systemd),
            fd_store_max,
            predecessor: None,
        };
        self.r.prepare(&mut self.h.ctx(), i, &spec);
    }

    fn socket_path(&self, name: &str) -> PathBuf {
        notify_socket::host_dir(&self.dir.join("isola.sock"), name).join("notify.sock")
    }

    /// Handle what the epoll set reports now (something must be ready).
    fn dispatch(&mut self, senders: &Members) {
        let ready = self.h.ready(1000);
        assert!(!ready.is_empty(), "nothing reported");
        for (tok, _) in ready {
            assert_eq!(tok.part, Part::Readiness);
            let mut ctx = Ctx {
                reactor: &self.h.reactor,
                now: self.h.now,
                out: &mut self.h.out,
            };
            self.r.on_event(&mut ctx, tok.key, senders);
        }
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.r.finish();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn send(path: &std::path::Path, text: &str) {
    let s = UnixDatagram::unbound().unwrap();
    s.send_to(text.as_bytes(), path).unwrap();
}

#[test]
fn a_members_datagram_is_a_notice_and_a_strangers_is_said_once() {
    let mut f = Fixture::new("creds");
    f.systemd(0, "web", 0);
    let path = f.socket_path("web");
    let in_it = Members {
        successor: None,
        members: vec![(0, me())],
    };
    send(&path, "READY=1\nSTATUS=serving");
    f.dispatch(&in_it);
    match f.h.inputs().as_slice() {
        [Input::Notified(0, n)] => {
            assert!(n.ready);
            assert_eq!(n.status.as_deref(), Some("serving"));
        }
        other => panic!("{other:?}"),
    }
    // The same sender, now not in the sandbox: ignored, said once.
    let outside = Members {
        successor: None,
        members: Vec::new(),
    };
    send(&path, "READY=1");
    send(&path, "READY=1");
    f.dispatch(&outside);
    assert!(f.h.inputs().is_empty());
    let said = f.h.said();
    let want = format!(
        "notify: ignored a message from pid {}, which is not in the sandbox",
        me()
    );
    assert_eq!(said, vec![Said::Event(0, want)]);
}

#[test]
fn an_overlaps_successor_is_heard_on_the_shared_socket_and_takes_it_over() {
    let mut f = Fixture::new("overlap");
    f.systemd(0, "web", 4);
    // The successor shares the socket (its prepare binds nothing).
    let spec = ReadySpec {
        name: "web",
        notify: Some(Notify::Systemd),
        fd_store_max: 4,
        predecessor: Some(0),
    };
    f.r.prepare(&mut f.h.ctx(), 1, &spec);
    let path = f.socket_path("web");
    let successor_sends = Members {
        successor: Some(1),
        members: vec![(1, me())],
    };
    send(&path, "READY=1");
    f.dispatch(&successor_sends);
    assert!(matches!(f.h.inputs().as_slice(), [Input::Notified(1, n)] if n.ready));
    // Hand-over: the socket now reports as the successor's own.
    f.r.handed_over(&mut f.h.ctx(), 0, 1);
    let alone = Members {
        successor: None,
        members: vec![(1, me())],
    };
    send(&path, "WATCHDOG=1");
    f.dispatch(&alone);
    assert!(matches!(f.h.inputs().as_slice(), [Input::Notified(1, n)] if n.watchdog));
}

fn send_fd(path: &std::path::Path, text: &str) {
    let s = UnixDatagram::unbound().unwrap();
    let null = std::fs::File::open("/dev/null").unwrap();
    let fds = [null.as_raw_fd()];
    let addr = UnixAddr::new(path).unwrap();
    let iov = [std::io::IoSlice::new(text.as_bytes())];
    sendmsg(
        s.as_raw_fd(),
        &iov,
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        Some(&addr),
    )
    .unwrap();
}

#[test]
fn the_fd_store_keeps_up_to_fd_store_max_and_hands_out_names() {
    let mut f = Fixture::new("store");
    f.systemd(0, "db", 1);
    let path = f.socket_path("db");
    let members = Members {
        successor: None,
        members: vec![(0, me())],
    };
    send_fd(&path, "FDSTORE=1\nFDNAME=conn");
    send_fd(&path, "FDSTORE=1\nFDNAME=more");
    f.dispatch(&members);
    assert_eq!(f.r.stored(0), 1);
    assert_eq!(
        f.h.said(),
        vec![Said::Event(
            0,
            "notify: fd store full (fdStoreMax 1): more not kept".into()
        )]
    );
    let (mut fds, mut names) = (Vec::new(), String::new());
    f.r.stored_fds(0, &mut fds, &mut names);
    assert_eq!((fds.len(), names.as_str()), (1, "conn"));
    // Stopped on purpose: let go.
    f.r.drop_store(0);
    assert_eq!(f.r.stored(0), 0);
}

#[test]
fn a_newline_on_the_notify_pipe_is_ready_once() {
    let mut f = Fixture::new("pipe");
    let w = f.r.open_pipe(&mut f.h.ctx(), 3).unwrap();
    nix::unistd::write(&w, b"ready\n").unwrap();
    let nobody = Members {
        successor: None,
        members: Vec::new(),
    };
    f.dispatch(&nobody);
    assert!(matches!(f.h.inputs().as_slice(), [Input::Notified(3, n)] if n.ready));
    // Closed after it: a second line is never read.
    assert!(f.r.services.get(3).is_some_and(|r| r.pipe.is_none()));
}
