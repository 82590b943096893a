use super::*;

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

fn stack(services: &str) -> Vec<ServiceDef> {
    let text = format!(r#"{{"services": {{{services}}}}}"#);
    crate::spec::stack::parse(&text, std::path::Path::new("/"))
        .unwrap()
        .services
}

fn web(ports: &[u16], extra: &str) -> Vec<ServiceDef> {
    let sockets: Vec<String> = ports
        .iter()
        .enumerate()
        .map(|(k, p)| format!(r#"{{"name": "s{k}", "listen": "tcp://127.0.0.1:{p}"}}"#))
        .collect();
    stack(&format!(
        r#""web": {{"process": {{"args": ["true"]}}, "sockets": [{}]{extra}}}"#,
        sockets.join(", ")
    ))
}

#[test]
fn a_reload_keeps_held_sockets_and_a_failed_one_closes_none() {
    let (a, b) = (free_port(), free_port());
    let mut held = HeldSockets::default()
        .open_all(web(&[a], "").iter())
        .unwrap();
    let fd = held.for_group("web").0[0];
    // A port someone else holds: the reload fails, `a` stays ours.
    let taken = std::net::TcpListener::bind(("127.0.0.1", b)).unwrap();
    let e = held.open_all(web(&[a, b], "").iter()).unwrap_err();
    assert!(
        e.starts_with("services.web.sockets[1]: tcp://127.0.0.1:"),
        "{e}"
    );
    assert_eq!(held.for_group("web").0, vec![fd]);
    assert!(std::net::TcpStream::connect(("127.0.0.1", a)).is_ok());
    drop(taken);
    // Now it fits: `a` is the same socket, `b` new, names in order.
    let mut next = held.open_all(web(&[a, b], "").iter()).unwrap();
    assert_eq!(next.for_group("web").0[0], fd);
    assert_eq!(next.for_group("web").1, "s0:s1");
    // A reload without the sockets closes them once the old set goes.
    drop(held);
    let none = next
        .open_all(stack(r#""web": {"process": {"args": ["true"]}}"#).iter())
        .unwrap();
    assert_eq!(none.len(), 0);
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", a)).is_ok(),
        "kept"
    );
    drop(next);
    assert!(
        std::net::TcpListener::bind(("127.0.0.1", a)).is_ok(),
        "closed"
    );
}

/// Replicas are one group: one set of sockets, the same fds for each
/// (and for an overlap's successor, which has the same group).
#[test]
fn replicas_share_one_socket_set() {
    let p = free_port();
    let defs = web(&[p], r#", "replicas": 3"#);
    assert_eq!(defs.len(), 3);
    let held = HeldSockets::default().open_all(defs.iter()).unwrap();
    assert_eq!(held.len(), 1);
    let fds: Vec<_> = defs
        .iter()
        .map(|d| held.for_group(d.group_name()).0)
        .collect();
    assert!(fds.iter().all(|f| f == &fds[0] && f.len() == 1), "{fds:?}");
    assert_eq!(held.for_group("db"), (Vec::new(), ""));
}

#[test]
fn a_bound_port_is_refused_and_a_unix_file_goes_with_its_socket() {
    let def = |listen: &str| SocketDef {
        name: "x".into(),
        listen: listen.into(),
        address: crate::spec::sockets::parse_address(listen).unwrap(),
        backlog: 8,
        mode: 0o600,
    };
    // A port someone else holds is refused; once free, it is ours.
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = probe.local_addr().unwrap().port();
    let e = open(&def(&format!("tcp://127.0.0.1:{port}"))).unwrap_err();
    assert!(e.contains("bind: Address already in use"), "{e}");
    drop(probe);
    let held = open(&def(&format!("tcp://127.0.0.1:{port}"))).unwrap();
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
    drop(held);

    let dir = std::env::temp_dir().join(format!("isola-sock-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("s.sock");
    let held = open(&def(&format!("unix://{}", path.display()))).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    drop(held);
    assert!(!path.exists());
    let _ = std::fs::remove_dir(&dir);
}

/// Arrivals wake the loop once until armed again; the queues of tcp and
/// unix listeners are read; a set out of the epoll set wakes nothing, and
/// an event of it still in a batch finds no set.
#[test]
fn a_watched_listener_wakes_the_loop_once_per_arming_and_its_queue_is_read() {
    use crate::shell::reactor::{Part, Reactor};
    use nix::sys::epoll::{EpollEvent, EpollTimeout};
    let dir = std::env::temp_dir().join(format!("isola-held-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("w.sock");
    let port = free_port();
    let defs = stack(&format!(
        r#""web": {{"process": {{"args": ["true"]}}, "sockets": [
            {{"name": "a", "listen": "tcp://127.0.0.1:{port}"}},
            {{"name": "b", "listen": "unix://{}"}}]}}"#,
        path.display()
    ));
    let mut held = HeldSockets::default().open_all(defs.iter()).unwrap();
    let reactor = Reactor::new().unwrap();
    let mut evs = vec![EpollEvent::empty(); 8];
    let mut wait = |r: &Reactor| {
        r.wait_at_most(&mut evs, EpollTimeout::from(200u16))
            .unwrap()
    };
    held.watch(&reactor, "web", true);
    assert!(wait(&reactor).is_empty());
    let _c1 = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let got = wait(&reactor);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].0.part, Part::Sockets);
    let key = got[0].0.key;
    assert_eq!(held.on_event(key), Some("web"));
    // One-shot per listener: the unix one wakes it once, then more
    // connections wake nothing until the next readings.
    let _c2 = std::os::unix::net::UnixStream::connect(&path).unwrap();
    assert_eq!(wait(&reactor).len(), 1);
    let _c3 = std::os::unix::net::UnixStream::connect(&path).unwrap();
    let _c4 = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    assert!(wait(&reactor).is_empty());
    assert_eq!(held.queued("web"), 4, "2 tcp + 2 unix waiting");
    held.rearm(&reactor);
    assert_eq!(wait(&reactor).len(), 2, "still waiting: readable at once");
    held.unwatch_all(&reactor);
    held.rearm(&reactor);
    assert!(wait(&reactor).is_empty());
    assert_eq!(held.on_event(key), None, "not watched");
    // A reload's set: the same sockets under a key never used before.
    let next = held.open_all(defs.iter()).unwrap();
    assert_ne!(next.sets["web"].key, key);
    assert_eq!(held.queued("db"), 0);
    drop(next);
    let _ = std::fs::remove_dir_all(&dir);
}
