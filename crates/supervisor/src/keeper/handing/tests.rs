//! A snapshot handed over a real socket whose buffer takes only a few
//! messages, with real pipes and eventfds as what it names.

use std::os::fd::{AsFd, OwnedFd};

use nix::sys::socket::{setsockopt, socketpair, sockopt, AddressFamily, SockFlag, SockType};

use super::*;

/// The keeper's end and the supervisor's, whose send buffer holds a few
/// messages of copies.
fn pair() -> (OwnedFd, Channel) {
    let (keeper, ours) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
    )
    .expect("socketpair");
    setsockopt(&ours, sockopt::SndBuf, &4096).expect("SO_SNDBUF");
    (keeper, Channel::new(ours))
}

fn named(fd: &OwnedFd) -> Named {
    let st = nix::sys::stat::fstat(fd).expect("fstat");
    Named {
        fd: fd.as_raw_fd(),
        dev: st.st_dev,
        ino: st.st_ino,
        unique: st.st_mode & libc::S_IFMT != 0,
    }
}

fn pipes(n: usize) -> Vec<OwnedFd> {
    (0..n)
        .map(|_| nix::unistd::pipe().expect("pipe").0)
        .collect()
}

fn memfd() -> File {
    let fd = nix::sys::memfd::memfd_create(c"snapshot", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)
        .expect("memfd");
    File::from(fd)
}

/// What the keeper got: the numbers of the copies (`H`), and whether the
/// memfd came (`S`).
#[derive(Default)]
struct Got {
    numbers: Vec<RawFd>,
    snapshot: bool,
}

fn drain(keeper: &OwnedFd, got: &mut Got) {
    while let Ok(d) = isola_runtime::fdpass::receive_with(
        keeper.as_fd(),
        isola_runtime::fdpass::SPAWNER_DATAGRAM,
        nix::sys::socket::MsgFlags::MSG_DONTWAIT,
    ) {
        match d.bytes.split_first() {
            Some((b'H', body)) => {
                assert_eq!(d.fds.len() * 4, body.len(), "a number for each copy");
                got.numbers.extend(super::super::numbers(body));
            }
            Some((b'S', _)) => {
                assert_eq!(d.fds.len(), 1);
                got.snapshot = true;
            }
            other => panic!("unexpected message {other:?}"),
        }
    }
}

/// Pump and drain until the handing ends; how it ended.
fn run(h: &mut Handing, channel: &Channel, keeper: &OwnedFd, got: &mut Got) -> Progress {
    loop {
        match h.pump(channel).expect("pump") {
            Progress::Waiting => drain(keeper, got),
            done => return done,
        }
    }
}

#[test]
fn a_snapshot_larger_than_the_socket_goes_whole_over_several_turns() {
    let (keeper, channel) = pair();
    let fds = pipes(300);
    let names: Vec<Named> = fds.iter().map(named).collect();
    // The first 100 the keeper holds already: they do not go again.
    let held: HashMap<RawFd, Named> = names[..100].iter().map(|n| (n.fd, *n)).collect();
    let mut h = Handing::new(memfd(), &names, &held);
    assert!(
        matches!(h.pump(&channel), Ok(Progress::Waiting)),
        "the socket takes it all at once: the test proves nothing"
    );
    let mut got = Got::default();
    drain(&keeper, &mut got);
    let Progress::Done(now_held) = run(&mut h, &channel, &keeper, &mut got) else {
        panic!("given up");
    };
    drain(&keeper, &mut got);
    let mut want: Vec<RawFd> = names[100..].iter().map(|n| n.fd).collect();
    got.numbers.sort_unstable();
    want.sort_unstable();
    assert_eq!(got.numbers, want);
    assert!(got.snapshot, "the memfd went last");
    assert_eq!(now_held.len(), 300);
}

#[test]
fn a_file_closed_before_its_copy_went_gives_the_snapshot_up() {
    let (keeper, channel) = pair();
    let mut fds = pipes(200);
    let names: Vec<Named> = fds.iter().map(named).collect();
    let mut h = Handing::new(memfd(), &names, &HashMap::new());
    assert!(matches!(h.pump(&channel), Ok(Progress::Waiting)));
    // Closed after the snapshot's turn, before its copy went.
    drop(fds.pop());
    let mut got = Got::default();
    drain(&keeper, &mut got);
    assert!(matches!(
        run(&mut h, &channel, &keeper, &mut got),
        Progress::GivenUp(_)
    ));
    drain(&keeper, &mut got);
    assert!(!got.snapshot, "no memfd for a snapshot given up");
}

#[test]
fn anonymous_inodes_go_first_or_the_snapshot_is_given_up() {
    let (keeper, channel) = pair();
    let anon: Vec<OwnedFd> = (0..200)
        .map(|_| nix::sys::eventfd::EventFd::new().expect("eventfd").into())
        .collect();
    let files = pipes(4);
    let names: Vec<Named> = files.iter().chain(&anon).map(named).collect();
    assert!(names.iter().filter(|n| !n.unique).count() == 200);
    let mut h = Handing::new(memfd(), &names, &HashMap::new());
    // More anonymous copies than the socket takes: none can be checked
    // in a later turn.
    assert!(matches!(h.pump(&channel), Ok(Progress::GivenUp(_))));
    let mut got = Got::default();
    drain(&keeper, &mut got);
    let anon_numbers: Vec<RawFd> = anon.iter().map(AsRawFd::as_raw_fd).collect();
    assert!(!got.numbers.is_empty());
    assert!(got.numbers.iter().all(|n| anon_numbers.contains(n)));
    assert!(!got.snapshot);
}
