//! Stack networks: services each in their own network namespace reach
//! each other by name on the networks they share, and only there; an
//! internal network reaches nothing outside, a non-internal one does
//! (NAT); addresses survive restarts; nothing of isola's is left on the
//! host after `down`, nor after a SIGKILL of the supervisor and the next
//! `up`.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use isola_tests::up::*;
use isola_tests::*;
use serde_json::{json, Value};

/// A service on `networks`, in its own network namespace.
fn on(networks: Value, script: &str, extra: Value) -> Value {
    let mut s = svc(script, extra);
    s["networks"] = networks;
    s["linux"]["namespaces"] = json!([{"type": "pid"}, {"type": "mount"}, {"type": "network"}]);
    s
}

/// Python for a TCP server answering each connection with `word`.
fn server_code(port: u16, word: &str) -> String {
    format!(
        "import socket\ns = socket.socket()\ns.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\ns.bind((\"0.0.0.0\", {port}))\ns.listen()\nwhile True:\n    c = s.accept()[0]\n    c.sendall(b\"{word}\\n\")\n    c.close()\n"
    )
}

/// Python for a TCP server on IPv6 and IPv4 answering with `word`.
fn server6_code(port: u16, word: &str) -> String {
    format!(
        "import socket\ns = socket.socket(socket.AF_INET6)\ns.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\ns.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)\ns.bind((\"::\", {port}))\ns.listen()\nwhile True:\n    c = s.accept()[0]\n    c.sendall(b\"{word}\\n\")\n    c.close()\n"
    )
}

/// A payload script running [`server_code`].
fn server(port: u16, word: &str) -> String {
    format!("exec python3 -c '{}'", server_code(port, word))
}

/// Python run inside service `name` (`isola exec`): its stdout, or the
/// error it printed.
fn py(up: &Up, name: &str, code: &str) -> (i32, String) {
    let (rc, out, err) = up.cli(&["exec", name, "--", "python3", "-c", code]);
    (rc, format!("{out}{err}"))
}

/// What `host:port` answers from inside `name`, or the error.
fn ask(up: &Up, name: &str, host: &str, port: u16) -> String {
    let code = format!(
        "import socket\ntry:\n    print(socket.create_connection(('{host}', {port}), timeout=3).recv(64).decode().strip())\nexcept Exception as e:\n    print('error', type(e).__name__)\n"
    );
    py(up, name, &code).1.trim().to_string()
}

/// The addresses `name` resolves to inside `svc`, sorted, or the error.
fn resolve(up: &Up, svc: &str, name: &str) -> String {
    let code = format!(
        "import socket\ntry:\n    print(' '.join(sorted({{a[4][0] for a in socket.getaddrinfo('{name}', 80, socket.AF_INET)}})))\nexcept Exception as e:\n    print('error', type(e).__name__)\n"
    );
    py(up, svc, &code).1.trim().to_string()
}

fn address(up: &Up, svc: &str, net: &str) -> String {
    up.service(svc)["addresses"][net]
        .as_str()
        .unwrap_or_else(|| panic!("{svc} has no address on {net}: {}", up.service(svc)))
        .to_string()
}

/// A network namespace "outside" the host, reached over a veth pair:
/// 198.18.0.2 serves `outside` on port 8000, and [fd00:198::2] `outside6`
/// on port 8006.
struct Outside(Child, Child);

impl Outside {
    fn start() -> Outside {
        let ip = |args: &[&str]| {
            let st = Command::new("ip")
                .args(args)
                .status()
                .expect("ip (iproute2)");
            assert!(st.success(), "ip {args:?}");
        };
        let _ = Command::new("ip")
            .args(["netns", "del", "isola-outside"])
            .stderr(Stdio::null())
            .status();
        ip(&["netns", "add", "isola-outside"]);
        ip(&[
            "link",
            "add",
            "isola-out0",
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            "isola-outside",
        ]);
        ip(&["addr", "add", "198.18.0.1/24", "dev", "isola-out0"]);
        ip(&["link", "set", "isola-out0", "up"]);
        ip(&[
            "-n",
            "isola-outside",
            "addr",
            "add",
            "198.18.0.2/24",
            "dev",
            "eth0",
        ]);
        ip(&["-n", "isola-outside", "link", "set", "eth0", "up"]);
        ip(&["-n", "isola-outside", "link", "set", "lo", "up"]);
        ip(&[
            "addr",
            "add",
            "fd00:198::1/64",
            "dev",
            "isola-out0",
            "nodad",
        ]);
        ip(&[
            "-n",
            "isola-outside",
            "addr",
            "add",
            "fd00:198::2/64",
            "dev",
            "eth0",
            "nodad",
        ]);
        let v6 = Command::new("ip")
            .args(["netns", "exec", "isola-outside", "python3", "-c"])
            .arg(server6_code(8006, "outside6"))
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", "isola-outside", "python3", "-c"])
            .arg(server_code(8000, "outside"))
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        Outside(child, v6)
    }
}

impl Drop for Outside {
    fn drop(&mut self) {
        for c in [&mut self.0, &mut self.1] {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = Command::new("ip")
            .args(["link", "del", "isola-out0"])
            .status();
        let _ = Command::new("ip")
            .args(["netns", "del", "isola-outside"])
            .status();
    }
}

/// isola's links (`ib…` bridges, `iv…` pair ends) and nftables tables on
/// the host.
fn leftovers() -> Vec<String> {
    let links = Command::new("ip").args(["-o", "link"]).output().unwrap();
    let mut out: Vec<String> = String::from_utf8_lossy(&links.stdout)
        .lines()
        .filter_map(|l| {
            l.split(": ")
                .nth(1)
                .map(|n| n.split('@').next().unwrap_or(n).to_string())
        })
        .filter(|n| n.starts_with("ib") || n.starts_with("iv"))
        .collect();
    let tables = Command::new("nft")
        .args(["list", "tables"])
        .output()
        .expect("nft");
    out.extend(
        String::from_utf8_lossy(&tables.stdout)
            .lines()
            .filter(|l| l.contains("isola_"))
            .map(str::to_string),
    );
    out
}

fn stack() -> Value {
    json!({
        "networks": {"back": {"internal": true}, "front": {}, "side": {}},
        "services": {
            "lone": on(json!(["side"]), &server(7000, "lone"), json!({})),
            "db": on(json!(["back"]), &server(5432, "db"), json!({})),
            "web": on(json!(["front", {"name": "back", "aliases": ["api"]}]), &server(8080, "web"), json!({})),
            "edge": on(json!(["front"]), "exec sleep 1000", json!({})),
            "rep": on(json!(["front"]), "exec sleep 1000", json!({"replicas": 2})),
        }
    })
}

fn up_file(name: &str, file: &Value) -> Up {
    let up = Up {
        name: name.to_string(),
        dir: Scratch::new(&format!("up-{name}")),
        child: None,
    };
    std::fs::write(up.stack_path(), file.to_string()).unwrap();
    up.spawn(&[])
}

#[test]
fn services_reach_each_other_by_name_only_on_the_networks_they_share() {
    require_vm();
    let outside = Outside::start();
    let up = up_file("nets", &stack());
    for s in ["db", "web", "edge", "lone", "rep.1", "rep.2"] {
        up.wait_state(s, "running");
    }
    // By name and by alias, on the network they share.
    assert_eq!(ask(&up, "web", "db", 5432), "db");
    assert_eq!(resolve(&up, "db", "api"), address(&up, "web", "back"));
    assert_eq!(ask(&up, "edge", "web", 8080), "web");
    // edge shares no network with db: not found, and not reachable.
    assert_eq!(resolve(&up, "edge", "db"), "error gaierror");
    let db_addr = address(&up, "db", "back");
    let (_, table, _) = up.cli(&["status"]);
    assert!(
        table.contains("ADDRESS") && table.contains(&db_addr),
        "{table}"
    );
    assert!(
        ask(&up, "edge", &db_addr, 5432).starts_with("error"),
        "edge reached db"
    );
    // Nor by asking the nameserver of a network it is not on.
    let gw = format!("{}.1", db_addr.rsplit_once('.').unwrap().0);
    let sneak = format!(
        "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\ns.settimeout(2)\ns.sendto(b'\\x12\\x34\\x01\\x00\\x00\\x01\\x00\\x00\\x00\\x00\\x00\\x00\\x02db\\x00\\x00\\x01\\x00\\x01', ('{gw}', 53))\ntry:\n    print('answers', s.recv(512)[7])\nexcept Exception:\n    print('none')\n"
    );
    let got = py(&up, "edge", &sneak).1;
    assert!(got.trim() == "none" || got.trim() == "answers 0", "{got}");
    // Nor between two networks that both reach out.
    let lone = address(&up, "lone", "side");
    assert_eq!(ask(&up, "lone", &lone, 7000), "lone");
    assert!(
        ask(&up, "edge", &lone, 7000).starts_with("error"),
        "edge reached side"
    );
    // A replicated service's name is every replica; a replica's, one.
    let reps = [
        address(&up, "rep.1", "front"),
        address(&up, "rep.2", "front"),
    ];
    let mut want = reps.to_vec();
    want.sort();
    assert_eq!(resolve(&up, "edge", "rep"), want.join(" "));
    assert_eq!(resolve(&up, "edge", "rep.2"), reps[1]);
    // The same over TCP (what a resolver asks when a UDP answer was cut).
    let tcp = "import socket, struct\nns = open('/etc/resolv.conf').read().split('nameserver ')[1].split()[0]\nq = b'\\x00\\x07\\x01\\x00\\x00\\x01\\x00\\x00\\x00\\x00\\x00\\x00\\x03rep\\x00\\x00\\x01\\x00\\x01'\ns = socket.create_connection((ns, 53), timeout=3)\ns.sendall(struct.pack('>H', len(q)) + q)\nn = struct.unpack('>H', s.recv(2))[0]\nr = b''\nwhile len(r) < n:\n    r += s.recv(n - len(r))\nprint(struct.unpack('>H', r[6:8])[0])\n";
    assert_eq!(py(&up, "edge", tcp).1.trim(), "2", "two records over TCP");
    // Out: through NAT from front; nothing from the internal network.
    assert_eq!(ask(&up, "edge", "198.18.0.2", 8000), "outside");
    assert!(
        ask(&up, "db", "198.18.0.2", 8000).starts_with("error"),
        "internal got out"
    );
    // db keeps its address across a restart, and web finds it again.
    let (rc, _, err) = up.cli(&["restart", "db"]);
    assert_eq!(rc, 0, "{err}");
    up.wait_state("db", "running");
    assert_eq!(address(&up, "db", "back"), db_addr);
    let t = Instant::now();
    while ask(&up, "web", "db", 5432) != "db" {
        assert!(t.elapsed() < Duration::from_secs(20), "web lost db");
        std::thread::sleep(Duration::from_millis(200));
    }
    up.down();
    assert_eq!(leftovers(), Vec::<String>::new(), "left on the host");
    drop(outside);
    assert_clean();
}

#[test]
fn a_killed_supervisor_leaves_nothing_the_next_up_does_not_clear() {
    require_vm();
    let file = stack();
    let mut up = up_file("netkill", &file);
    up.wait_state("web", "running");
    assert!(!leftovers().is_empty(), "no bridge made");
    up.kill_keeper();
    // The inits die with it (PDEATHSIG); the bridges and rules stay.
    let t = Instant::now();
    while !processes_matching("isola-test-payload").is_empty() {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "services outlived the supervisor"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!leftovers().is_empty());
    let up = up.spawn(&[]);
    up.wait_state("web", "running");
    assert_eq!(ask(&up, "web", "db", 5432), "db");
    up.down();
    assert_eq!(leftovers(), Vec::<String>::new(), "left on the host");
    assert_clean();
}

#[test]
fn bad_networks_are_refused_naming_the_field_and_nothing_is_made() {
    require_vm();
    let dir = Scratch::new("bad-nets");
    let cases = [
        (
            json!({"networks": {"a": {}}, "services": {"x": on(json!(["b"]), "true", json!({}))}}),
            "services.x.networks[0]: b: no such network",
        ),
        (
            json!({"networks": {"a": {}}, "services": {"x": svc("true", json!({"networks": ["a"]}))}}),
            "services.x.networks: needs its own network namespace",
        ),
        (
            json!({"networks": {"a": {"subnet": "10.89.0.0/33"}}, "services": {"x": on(json!(["a"]), "true", json!({}))}}),
            "networks.a.subnet: `10.89.0.0/33`",
        ),
        (
            json!({"networks": {"a": {"subnet": "127.0.0.0/8"}}, "services": {"x": on(json!(["a"]), "true", json!({}))}}),
            "networks.a.subnet: 127.0.0.0/8: overlaps the host's",
        ),
        (
            json!({"networks": {"a": {"ipv6": true, "mtu": 1000}}, "services": {"x": on(json!(["a"]), "true", json!({}))}}),
            "networks.a.mtu: 1000: IPv6 needs 1280 or more",
        ),
    ];
    for (k, (file, want)) in cases.iter().enumerate() {
        refused(&dir, k, file, want);
    }
    assert_clean();
}

/// `isola up` of stack `file` exits 2 saying `want`, and leaves nothing.
fn refused(dir: &Scratch, k: usize, file: &Value, want: &str) {
    let path = dir.write(&format!("bad{k}.json"), &file.to_string());
    let sock = dir.path(&format!("s{k}.sock")).display().to_string();
    let out = isola(
        &["up", "--socket", &sock, path.to_str().unwrap()],
        "",
        Duration::from_secs(30),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{file}: {err}");
    assert!(err.contains(want), "{want} not in {err}");
    assert_eq!(leftovers(), Vec::<String>::new(), "{file}");
}

/// The bridges (`ib…`) of isola on the host.
fn bridges() -> usize {
    leftovers().iter().filter(|l| l.starts_with("ib")).count()
}

#[test]
fn a_reload_remakes_changed_networks_and_restarts_only_their_members() {
    require_vm();
    let x = on(json!(["a"]), &server(9000, "x"), json!({}));
    let y = on(json!(["a"]), "exec sleep 1000", json!({}));
    let z = on(json!(["b"]), "exec sleep 1001", json!({}));
    let first = json!({
        "networks": {"a": {"subnet": "10.89.50.0/24"}, "b": {}},
        "services": {"x": x, "y": y, "z": z},
    });
    let up = up_file("netreload", &first);
    let pid = |s: &str| up.wait_state(s, "running")["pid"].clone();
    let (px, pz) = (pid("x"), pid("z"));
    pid("y");
    let z_addr = address(&up, "z", "b");
    assert!(address(&up, "x", "a").starts_with("10.89.50."));
    assert_eq!(bridges(), 2);
    // a's subnet changes and c comes, with w on it; b stays as it is.
    let mut second = first.clone();
    second["networks"]["a"]["subnet"] = json!("10.89.51.0/24");
    second["networks"]["c"] = json!({"internal": true});
    second["services"]["w"] = on(json!(["c"]), &server(9001, "w"), json!({}));
    std::fs::write(up.stack_path(), second.to_string()).unwrap();
    nix::sys::signal::kill(up.pid(), nix::sys::signal::Signal::SIGHUP).unwrap();
    let moved = |s: &Value| {
        s["state"] == "running"
            && s["addresses"]["a"]
                .as_str()
                .is_some_and(|a| a.starts_with("10.89.51."))
    };
    let sx = up.wait_for("x", "x on the new subnet", Duration::from_secs(30), moved);
    assert_ne!(sx["pid"], px, "x kept its sandbox");
    up.wait_for("y", "y on the new subnet", Duration::from_secs(30), moved);
    up.wait_state("w", "running");
    assert_eq!(up.service("z")["pid"], pz, "z was restarted");
    assert_eq!(address(&up, "z", "b"), z_addr);
    assert_eq!(bridges(), 3);
    let t = Instant::now();
    while ask(&up, "y", "x", 9000) != "x" {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "y cannot reach x: {} {} {}\n{}",
            ask(&up, "y", "x", 9000),
            resolve(&up, "y", "x"),
            address(&up, "x", "a"),
            up.stderr()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(ask(&up, "w", "w", 9001), "w");
    assert_eq!(resolve(&up, "w", "x"), "error gaierror");
    // c goes with w.
    std::fs::write(up.stack_path(), {
        let mut third = second.clone();
        third["networks"].as_object_mut().unwrap().remove("c");
        third["services"].as_object_mut().unwrap().remove("w");
        third.to_string()
    })
    .unwrap();
    nix::sys::signal::kill(up.pid(), nix::sys::signal::Signal::SIGHUP).unwrap();
    let t = Instant::now();
    while bridges() != 2 {
        assert!(t.elapsed() < Duration::from_secs(20), "c's bridge stayed");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(up.service("z")["pid"], pz, "z was restarted");
    up.down();
    assert_eq!(leftovers(), Vec::<String>::new(), "left on the host");
    assert_clean();
}

#[path = "networks/cni.rs"]
mod cni;
#[path = "networks/upgrade.rs"]
mod upgrade;

/// isola's bridges on the host (not the pairs that join them).
fn bridge_names() -> Vec<String> {
    let out = Command::new("ip")
        .args(["-o", "link", "show", "type", "bridge"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(": ").nth(1).map(str::to_string))
        .filter(|n| n.starts_with("ib"))
        .collect()
}

#[test]
fn a_network_larger_than_a_bridge_spans_joined_bridges() {
    require_vm();
    // Two sandboxes a bridge (1,000 without the variable): five services
    // fill three, and still reach each other by name.
    let services: serde_json::Map<String, Value> = (1..=5)
        .map(|k| {
            (
                format!("s{k}"),
                on(json!(["big"]), &server(9200, &format!("s{k}")), json!({})),
            )
        })
        .collect();
    let file = json!({"networks": {"big": {}}, "services": services});
    let up = Up {
        name: "netbig".into(),
        dir: Scratch::new("up-netbig"),
        child: None,
    };
    std::fs::write(up.stack_path(), file.to_string()).unwrap();
    let up = up.spawn_under(&[], &["env", "ISOLA_BRIDGE_PORTS=2"]);
    for k in 1..=5 {
        up.wait_state(&format!("s{k}"), "running");
    }
    assert_eq!(bridge_names().len(), 3, "{:?}", bridge_names());
    for (from, to) in [("s1", "s5"), ("s5", "s1"), ("s3", "s4")] {
        assert_eq!(ask(&up, from, to, 9200), to, "{from} → {to}");
    }
    up.down();
    assert_eq!(leftovers(), Vec::<String>::new(), "left on the host");
    assert_clean();
}

/// What `[host]:port` (a name or an IPv6 address) answers over IPv6 from
/// inside `name`, or the error.
fn ask6(up: &Up, name: &str, host: &str, port: u16) -> String {
    let code = format!(
        "import socket\ntry:\n    a = socket.getaddrinfo('{host}', {port}, socket.AF_INET6, socket.SOCK_STREAM)[0][4]\n    s = socket.socket(socket.AF_INET6)\n    s.settimeout(3)\n    s.connect(a)\n    print(s.recv(64).decode().strip())\nexcept Exception as e:\n    print('error', type(e).__name__)\n"
    );
    py(up, name, &code).1.trim().to_string()
}

#[test]
fn an_ipv6_network_names_and_carries_ipv6_and_an_internal_one_keeps_it_in() {
    require_vm();
    let outside = Outside::start();
    let file = json!({
        "networks": {"six": {"ipv6": true}, "sixin": {"ipv6": true, "internal": true}, "four": {}},
        "services": {
            "db": on(json!(["six", "sixin"]), &format!("exec python3 -c '{}'", server6_code(5433, "db")), json!({})),
            "web": on(json!(["six"]), "exec sleep 1000", json!({})),
            "inner": on(json!(["sixin"]), "exec sleep 1000", json!({})),
            "old": on(json!(["four"]), "exec sleep 1000", json!({})),
        }
    });
    let up = up_file("net6", &file);
    for s in ["db", "web", "inner", "old"] {
        up.wait_state(s, "running");
    }
    // By name over IPv6, on either network they share; the address
    // carries the IPv4 one in its last 32 bits.
    let code = "import socket\nprint(socket.getaddrinfo('db', 1, socket.AF_INET6)[0][4][0])\n";
    let db6 = py(&up, "web", code).1.trim().to_string();
    assert!(db6.starts_with("fd9"), "{db6}");
    let v4: std::net::Ipv4Addr = address(&up, "db", "six").parse().unwrap();
    let want: std::net::Ipv6Addr = db6.parse().unwrap();
    assert_eq!(&want.octets()[12..], &v4.octets(), "{db6} for {v4}");
    assert_eq!(up.service("db")["addresses6"]["six"], db6.as_str());
    assert_eq!(ask6(&up, "web", "db", 5433), "db");
    assert_eq!(ask6(&up, "inner", "db", 5433), "db");
    // Out over IPv6 (NAT66) from the network that may; not from the
    // internal one.
    assert_eq!(ask6(&up, "web", "fd00:198::2", 8006), "outside6");
    assert!(
        ask6(&up, "inner", "fd00:198::2", 8006).starts_with("error"),
        "internal got out"
    );
    // A network without IPv6 has none: no AAAA, and IPv4 still.
    assert_eq!(ask6(&up, "old", "old", 1), "error gaierror");
    assert_eq!(ask(&up, "web", "db", 5433), "db");
    up.down();
    assert_eq!(leftovers(), Vec::<String>::new(), "left on the host");
    drop(outside);
    assert_clean();
}

/// The kernel's neighbour table (one for every namespace) made small for
/// a test, and put back as it was after.
struct NeighbourLimit(Vec<(String, String)>);

impl NeighbourLimit {
    fn set(values: &[(&str, &str)]) -> NeighbourLimit {
        let path = |k: &str| format!("/proc/sys/net/ipv4/neigh/default/{k}");
        let old = values
            .iter()
            .map(|(k, _)| (path(k), std::fs::read_to_string(path(k)).unwrap()))
            .collect();
        for (k, v) in values {
            std::fs::write(path(k), v).unwrap();
        }
        NeighbourLimit(old)
    }
}

impl Drop for NeighbourLimit {
    fn drop(&mut self) {
        for (p, v) in &self.0 {
            let _ = std::fs::write(p, v.trim());
        }
    }
}

#[test]
fn more_sandboxes_than_the_neighbour_table_holds_all_find_their_gateway() {
    require_vm();
    // Room for 4 entries the garbage collector owns, for 10 sandboxes
    // asking the gateway's nameserver 5 times a second: each would need
    // one on its side and one on the host's.
    let _limit = NeighbourLimit::set(&[
        ("gc_thresh1", "1"),
        ("gc_thresh2", "2"),
        ("gc_thresh3", "4"),
    ]);
    let code = "import socket, time\nwhile True:\n    try:\n        socket.getaddrinfo(\"q0\", 80, socket.AF_INET)\n        print(\"ok\", flush=True)\n    except Exception:\n        print(\"fail\", flush=True)\n    time.sleep(0.2)\n";
    let services: serde_json::Map<String, Value> = (0..10)
        .map(|k| {
            (
                format!("q{k}"),
                on(
                    json!(["n"]),
                    &format!("exec python3 -c '{code}'"),
                    json!({}),
                ),
            )
        })
        .collect();
    let up = up_file(
        "netneigh",
        &json!({"networks": {"n": {"internal": true}}, "services": services}),
    );
    for k in 0..10 {
        let name = format!("q{k}");
        up.wait_state(&name, "running");
        let t = Instant::now();
        let words = loop {
            let w = up.stdout_words(&name);
            if w.len() >= 10 {
                break w;
            }
            assert!(t.elapsed() < Duration::from_secs(60), "{name}: {w:?}");
            std::thread::sleep(Duration::from_millis(200));
        };
        assert!(words.iter().all(|w| w == "ok"), "{name}: {words:?}");
    }
    up.down();
    assert_eq!(leftovers(), Vec::<String>::new(), "left on the host");
    assert_clean();
}
