//! The byte layouts against hand-computed bytes, and every request against
//! the real kernel — inside network namespaces made for the test, never
//! the host's: each kernel test runs its requests on a thread that entered
//! a fresh named namespace and checked it is there before opening a
//! socket, and reads the result back with `ip -n NAME -j`. The kernel
//! tests need root and iproute2 and fail (not skip) without them.

use std::fs::{self, File};
use std::net::IpAddr;
use std::os::unix::fs::MetadataExt;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sched::{setns, CloneFlags};
use serde_json::Value;

use super::message::{attrs, link_of, status, Replies, Request};
use super::{Rtnl, Veth};
use crate::net::valid_ifname;

#[test]
fn interface_names() {
    for ok in ["eth0", "a", "isola-br-12345", "x.y", "br_0"] {
        assert!(valid_ifname(ok), "{ok}");
    }
    for bad in [
        "",
        ".",
        "..",
        "sixteen-bytes-xx",
        "a/b",
        "a b",
        "a\tb",
        "a:1",
        "br%d",
        "a\0b",
    ] {
        assert!(!valid_ifname(bad), "{bad:?}");
    }
    assert!(valid_ifname("fifteen-bytes-x"));
}

/// A request with a nested attribute, byte by byte: lengths exclude the
/// attribute's own padding, a nest's length includes its children's.
#[test]
fn request_layout() {
    let mut req = Request::new(16, 0x0604, &[1, 2, 3]);
    req.attr_str(3, "br0");
    let nest = req.begin(18);
    req.attr_str(1, "bridge");
    req.end(nest);
    req.attr_u32(4, 1400);
    let msg = req.finish(7).expect("small request");
    let mut want = Vec::new();
    want.extend(52u32.to_ne_bytes());
    want.extend(16u16.to_ne_bytes());
    want.extend(0x0605u16.to_ne_bytes()); // NLM_F_REQUEST added
    want.extend(7u32.to_ne_bytes());
    want.extend(0u32.to_ne_bytes());
    want.extend([1, 2, 3, 0]);
    want.extend(8u16.to_ne_bytes());
    want.extend(3u16.to_ne_bytes());
    want.extend(*b"br0\0");
    want.extend(16u16.to_ne_bytes());
    want.extend(18u16.to_ne_bytes());
    want.extend(11u16.to_ne_bytes());
    want.extend(1u16.to_ne_bytes());
    want.extend(*b"bridge\0\0");
    want.extend(8u16.to_ne_bytes());
    want.extend(4u16.to_ne_bytes());
    want.extend(1400u32.to_ne_bytes());
    assert_eq!(msg, want);
}

#[test]
fn oversized_attribute_is_refused() {
    let mut req = Request::new(16, 0, &[]);
    req.attr(1, &vec![0; 70_000]);
    assert_eq!(req.finish(1), Err(Errno::EMSGSIZE));
}

/// Two messages in one datagram (an RTM_NEWLINK, then the ACK of another
/// request); a length past the datagram is EBADMSG, not a panic.
#[test]
fn replies_and_status() {
    let mut link = Vec::new();
    link.extend([0, 0, 0, 0]);
    link.extend(42i32.to_ne_bytes());
    link.extend([0; 8]);
    link.extend(9u16.to_ne_bytes());
    link.extend(3u16.to_ne_bytes());
    link.extend(*b"veth\0\0\0\0");
    let mut dgram = message(16, 2, 5, &link);
    dgram.extend(message(2, 0, 6, &(-17i32).to_ne_bytes()));
    let replies: Vec<_> = Replies(&dgram).map(|r| r.expect("well formed")).collect();
    assert_eq!(replies.len(), 2);
    assert_eq!(
        (replies[0].kind, replies[0].flags, replies[0].seq),
        (16, 2, 5)
    );
    assert_eq!(link_of(replies[0].payload), Some((42, "veth".to_owned())));
    assert_eq!(attrs(&replies[0].payload[16..]).count(), 1);
    assert_eq!(status(replies[1].payload), Err(Errno::EEXIST));
    assert_eq!(status(&0i32.to_ne_bytes()), Ok(()));

    let mut cut = message(16, 0, 1, &link);
    cut.truncate(cut.len() - 4);
    let got: Vec<_> = Replies(&cut).collect();
    assert!(matches!(got[..], [Err(Errno::EBADMSG)]));
}

fn message(kind: u16, flags: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(16 + payload.len()).expect("small");
    let mut m = Vec::new();
    m.extend(len.to_ne_bytes());
    m.extend(kind.to_ne_bytes());
    m.extend(flags.to_ne_bytes());
    m.extend(seq.to_ne_bytes());
    m.extend(0u32.to_ne_bytes());
    m.extend(payload);
    m
}

/// A bridge, a veth whose peer is made in another namespace (that of a
/// process there) and enslaved to the bridge, addresses on both ends and
/// default routes on the peer's side; deleting the veth takes the peer.
#[test]
fn bridge_veth_addresses_and_routes() {
    let host = Netns::new("host");
    let guest = Netns::new("guest");
    let sleeper = Sleeper::inside(&guest);
    let (bridge, veth) = host.run(|rtnl| bridge_and_veth(rtnl, sleeper.pid()));
    check_host_side(&host, bridge, veth);
    let peer = guest.link("eth0");
    assert_eq!(peer["mtu"], 1400);
    assert_eq!(peer["linkinfo"]["info_kind"], "veth");

    guest.run(|rtnl| {
        let eth0 = rtnl.link_index("eth0").expect("lookup").expect("eth0");
        rtnl.set_up(eth0).expect("up");
        rtnl.add_address(eth0, ip("10.89.0.2"), 24).expect("v4");
        rtnl.add_address(eth0, ip("fd00:89::2"), 64).expect("v6");
        rtnl.add_default_route(ip("10.89.0.1")).expect("v4 route");
        rtnl.add_default_route(ip("fd00:89::1")).expect("v6 route");
        let again = rtnl.add_default_route(ip("10.89.0.1"));
        assert_eq!(again, Err(Errno::EEXIST));
    });
    check_guest_routes(&guest);

    host.run(|rtnl| {
        rtnl.delete_link(veth).expect("delete veth");
        assert_eq!(rtnl.link_index("isv0"), Ok(None));
        rtnl.delete_link(bridge).expect("delete bridge");
        assert_eq!(rtnl.links_with_prefix("is"), Ok(Vec::new()));
    });
    let links = guest.json(&["link", "show"]);
    assert!(!has(&links, |l| l["ifname"] == "eth0"), "{links}");
}

/// One request makes a sandbox's pair: the host end on its bridge and up,
/// the peer in the other namespace with its MAC.
#[test]
fn a_veth_in_one_request_is_on_its_bridge_and_up_at_both_ends() {
    let host = Netns::new("host1");
    let guest = Netns::new("guest1");
    let sleeper = Sleeper::inside(&guest);
    let bridge = host.run(|rtnl| {
        let bridge = rtnl.create_bridge("isbr1", None).expect("bridge");
        let v = Veth {
            host: "isv1",
            master: bridge,
            peer: "eth0",
            peer_pid: sleeper.pid(),
            mtu: Some(1400),
            peer_mac: Some([2, 0x1a, 10, 0, 0, 2]),
        };
        rtnl.add_veth(&v).expect("veth");
        assert_eq!(rtnl.add_veth(&v), Err(Errno::EEXIST));
        bridge
    });
    let v = host.link("isv1");
    assert_eq!(v["master"], "isbr1", "{v}");
    assert!(up(&v), "{v}");
    // No IPv6 link-local address: a bridge port that had one would send
    // messages the bridge floods to every port.
    let addrs = host.json(&["addr", "show", "dev", "isv1"]);
    assert!(
        !has(&addrs[0]["addr_info"], |a| a["family"] == "inet6"),
        "{addrs}"
    );
    assert_eq!(host.link("isbr1")["ifindex"], bridge);
    let peer = guest.link("eth0");
    assert_eq!(peer["mtu"], 1400);
    assert_eq!(peer["address"], "02:1a:0a:00:00:02");
}

/// The host side of [`bridge_veth_addresses_and_routes`]: bridge `isbr0`
/// (MTU 1400, up, 10.89.0.1/24 and fd00:89::1/64) with `isv0` in it, whose
/// peer `eth0` goes to `peer_pid`'s namespace. Returns their indexes.
fn bridge_and_veth(rtnl: &mut Rtnl, peer_pid: i32) -> (u32, u32) {
    let bridge = rtnl.create_bridge("isbr0", Some(1400)).expect("bridge");
    assert_eq!(rtnl.link_index("isbr0"), Ok(Some(bridge)));
    let veth = rtnl
        .create_veth(
            "isv0",
            "eth0",
            peer_pid,
            Some(1400),
            Some([2, 0x1a, 10, 0, 0, 2]),
        )
        .expect("veth");
    rtnl.set_master(veth, bridge).expect("master");
    rtnl.set_up(bridge).expect("bridge up");
    rtnl.set_up(veth).expect("veth up");
    rtnl.add_address(bridge, ip("10.89.0.1"), 24).expect("v4");
    rtnl.add_address(bridge, ip("fd00:89::1"), 64).expect("v6");
    let mut found = rtnl.links_with_prefix("is").expect("dump");
    found.sort();
    assert_eq!(
        found,
        [(bridge, "isbr0".to_owned()), (veth, "isv0".to_owned())]
    );
    assert_eq!(rtnl.link_index("eth0"), Ok(None), "the peer is elsewhere");
    (bridge, veth)
}

/// What `ip` sees of [`bridge_and_veth`]'s work.
fn check_host_side(host: &Netns, bridge: u32, veth: u32) {
    let br = host.link("isbr0");
    assert_eq!(br["ifindex"], bridge);
    assert_eq!(br["mtu"], 1400);
    assert_eq!(br["linkinfo"]["info_kind"], "bridge");
    assert!(up(&br), "{br}");
    let v = host.link("isv0");
    assert_eq!(v["ifindex"], veth);
    assert_eq!(v["master"], "isbr0");
    assert_eq!(v["mtu"], 1400);
    assert_eq!(v["linkinfo"]["info_kind"], "veth");
    assert!(up(&v), "{v}");
    let addrs = host.json(&["addr", "show", "dev", "isbr0"]);
    let addrs = &addrs[0]["addr_info"];
    assert!(has(addrs, |a| a["local"] == "10.89.0.1"
        && a["prefixlen"] == 24
        && a["broadcast"] == "10.89.0.255"));
    assert!(has(addrs, |a| a["local"] == "fd00:89::1"
        && a["prefixlen"] == 64));
}

/// The guest's default routes, v4 and v6: via the bridge's addresses, on
/// eth0, in the main table, protocol boot, scope universe ("global").
fn check_guest_routes(guest: &Netns) {
    let eth0 = guest.link("eth0");
    assert!(up(&eth0));
    assert_eq!(eth0["address"], "02:1a:0a:00:00:02", "the MAC asked for");
    for (family, gateway) in [("-4", "10.89.0.1"), ("-6", "fd00:89::1")] {
        let routes = guest.json(&[family, "-d", "route", "show", "table", "main", "default"]);
        let route = &routes[0];
        assert_eq!(route["gateway"], gateway, "{routes}");
        assert_eq!(route["dev"], "eth0", "{routes}");
        assert_eq!(route["protocol"], "boot", "{routes}");
        assert_eq!(route["scope"], "global", "{routes}");
        assert_eq!(route["type"], "unicast", "{routes}");
    }
}

/// The kernel's refusals come back as its errno, and bad arguments are
/// refused before anything is sent.
#[test]
fn errors_are_errnos() {
    let ns = Netns::new("errors");
    ns.run(|rtnl| {
        let bridge = rtnl.create_bridge("isbr1", None).expect("bridge");
        assert_eq!(rtnl.create_bridge("isbr1", None), Err(Errno::EEXIST));
        assert_eq!(rtnl.link_index("nosuchlink"), Ok(None));
        assert_eq!(rtnl.set_master(999_999, bridge), Err(Errno::ENODEV));
        assert_eq!(rtnl.set_up(999_999), Err(Errno::ENODEV));
        assert_eq!(rtnl.delete_link(999_999), Err(Errno::ENODEV));
        assert_eq!(rtnl.delete_link(0), Err(Errno::ENODEV));
        assert_eq!(
            rtnl.add_address(bridge, ip("10.0.0.1"), 33),
            Err(Errno::EINVAL)
        );
        rtnl.add_address(bridge, ip("10.0.0.1"), 32).expect("/32");
        assert_eq!(
            rtnl.add_address(bridge, ip("10.0.0.1"), 32),
            Err(Errno::EEXIST)
        );
        // No route to the gateway: the bridge is down.
        assert_eq!(
            rtnl.add_default_route(ip("192.0.2.1")),
            Err(Errno::ENETUNREACH)
        );
        assert_eq!(rtnl.create_bridge("a/b", None), Err(Errno::EINVAL));
        assert_eq!(
            rtnl.create_veth("isv1", "eth0", 0, None, None),
            Err(Errno::EINVAL)
        );
        assert_eq!(
            rtnl.create_veth("isv1", "eth0", i32::MAX, None, None),
            Err(Errno::ESRCH)
        );
        assert_eq!(rtnl.link_index("isv1"), Ok(None));
        // The socket is still in step after all those errors.
        assert_eq!(rtnl.link_index("isbr1"), Ok(Some(bridge)));
    });
    let addrs = ns.json(&["addr", "show", "dev", "isbr1"]);
    let addrs = &addrs[0]["addr_info"];
    assert!(has(addrs, |a| a["local"] == "10.0.0.1"
        && a["prefixlen"] == 32
        && a.get("broadcast").is_none()));
}

/// A dump longer than one datagram (the kernel sends at most 32 KiB at a
/// time; a bridge's RTM_NEWLINK is about 2 KiB) is read to its end.
#[test]
fn dump_spans_datagrams() {
    let ns = Netns::new("dump");
    ns.run(|rtnl| {
        let mut made: Vec<_> = (0..60)
            .map(|i| {
                let name = format!("isdump{i}");
                (rtnl.create_bridge(&name, None).expect("bridge"), name)
            })
            .collect();
        made.sort();
        let mut found = rtnl.links_with_prefix("isdump").expect("dump");
        found.sort();
        assert_eq!(found, made);
        assert_eq!(rtnl.links_with_prefix("nothing"), Ok(Vec::new()));
        assert_eq!(rtnl.links_with_prefix("lo"), Ok(vec![(1, "lo".to_owned())]));
    });
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("address")
}

fn up(link: &Value) -> bool {
    has(&link["flags"], |f| f == "UP")
}

fn has(list: &Value, pred: impl Fn(&Value) -> bool) -> bool {
    list.as_array().is_some_and(|l| l.iter().any(pred))
}

/// A named network namespace of this test (`ip netns add`), deleted on
/// drop.
struct Netns {
    name: String,
}

impl Netns {
    fn new(tag: &str) -> Self {
        let name = format!("isola-rtnl-{}-{tag}", std::process::id());
        let out = Command::new("ip")
            .args(["netns", "add", &name])
            .output()
            .expect("running `ip` (iproute2 is needed)");
        assert!(
            out.status.success(),
            "ip netns add {name} failed; these tests need root: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self { name }
    }

    fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// `f` with an [`Rtnl`] of this namespace, on a thread that entered
    /// it (setns of a network namespace moves only the calling thread).
    fn run<T: Send>(&self, f: impl FnOnce(&mut Rtnl) -> T + Send) -> T {
        std::thread::scope(|s| {
            let thread = s.spawn(|| {
                let ns = File::open(self.path()).expect("open the namespace");
                setns(&ns, CloneFlags::CLONE_NEWNET).expect("setns");
                // Never work on the host's links: make sure this thread is
                // where it should be before the socket is made.
                let here = fs::metadata("/proc/thread-self/ns/net").expect("own namespace");
                let there = ns.metadata().expect("namespace file");
                assert_eq!((here.dev(), here.ino()), (there.dev(), there.ino()));
                f(&mut Rtnl::open().expect("open rtnetlink"))
            });
            thread
                .join()
                .unwrap_or_else(|e| std::panic::resume_unwind(e))
        })
    }

    /// `ip -n NAME -j ARGS`, parsed.
    fn json(&self, args: &[&str]) -> Value {
        let out = Command::new("ip")
            .args(["-n", &self.name, "-j"])
            .args(args)
            .output()
            .expect("running ip");
        assert!(out.status.success(), "ip {args:?}: {out:?}");
        serde_json::from_slice(&out.stdout).expect("ip's JSON")
    }

    /// The link `name`, with details (its kind, master).
    fn link(&self, name: &str) -> Value {
        let mut links = self.json(&["-d", "link", "show", "dev", name]);
        links[0].take()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// A `sleep` in a namespace: the process a veth peer is sent to by pid.
struct Sleeper(Child);

impl Sleeper {
    /// Waits until the process is in `ns`: `ip netns exec` enters it only
    /// after it started, and a peer sent there before would land in the
    /// host's namespace.
    fn inside(ns: &Netns) -> Self {
        let child = Command::new("ip")
            .args(["netns", "exec", &ns.name, "sleep", "120"])
            .spawn()
            .expect("ip netns exec");
        let sleeper = Self(child);
        let want = fs::metadata(ns.path()).expect("namespace file");
        let proc_ns = format!("/proc/{}/ns/net", sleeper.pid());
        let deadline = Instant::now() + Duration::from_secs(10);
        while fs::metadata(&proc_ns).map(|m| (m.dev(), m.ino())).ok()
            != Some((want.dev(), want.ino()))
        {
            assert!(Instant::now() < deadline, "sleep never entered {}", ns.name);
            std::thread::sleep(Duration::from_millis(10));
        }
        sleeper
    }

    fn pid(&self) -> i32 {
        i32::try_from(self.0.id()).expect("pid")
    }
}

impl Drop for Sleeper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
