//! A sandbox on its stack networks: one veth pair per network, made by
//! the sandbox's own init while it sets up (in parallel with other
//! starts, not in the supervisor's loop). The init opens a netlink socket
//! in the host's namespace before it makes its own, then creates each pair
//! from there with the sandbox end put straight into the new namespace,
//! puts the host end on the network's bridge, and configures the sandbox
//! end from inside: address, link up, the default route.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use nix::errno::Errno;

use super::rtnl::{LinkRef, Veth};
use super::Rtnl;

/// One network a sandbox is on.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NetInterface {
    /// The host end's name (unique on the host while the sandbox runs).
    pub host: String,
    /// The sandbox end's name (`eth0`, `eth1`, … in the listed order).
    pub name: String,
    /// The bridge its pair goes on, by index in the host's namespace.
    pub bridge: u32,
    /// The network's own bridge (the one with the gateway: where the
    /// host's neighbour entry for this address goes).
    pub gateway_bridge: u32,
    pub mtu: Option<u32>,
    pub address: Ipv4Addr,
    pub prefix: u8,
    /// The route out (the first network that has one gives the default).
    pub gateway: Option<Ipv4Addr>,
    /// The network's own bridge's address (its gateway and nameserver,
    /// internal networks included).
    pub bridge_address: Ipv4Addr,
    /// On an IPv6 network: its address (a /64) and the route out.
    pub v6: Option<V6>,
}

/// A sandbox's IPv6 side on one network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct V6 {
    pub address: Ipv6Addr,
    pub gateway: Option<Ipv6Addr>,
}

/// The networks a sandbox is on.
#[derive(Debug, Clone, Copy, Default)]
pub struct Networking<'a> {
    /// Made by the init itself, on bridges of the caller's.
    pub interfaces: &'a [NetInterface],
    /// Once its network namespace exists, the init says so and waits for
    /// go: the caller puts it on networks others make (CNI plugins, which
    /// enter the namespace by the init's pid).
    pub hold: bool,
}

/// The sandbox end's MAC, made from its address (locally administered,
/// `02:1a:` then the address): a restart at the same address has the
/// same MAC, and the neighbours' ARP caches stay right.
pub fn mac_of(a: Ipv4Addr) -> [u8; 6] {
    let [b, c, d, e] = a.octets();
    [0x02, 0x1a, b, c, d, e]
}

/// What failed, for the init's report.
pub type AttachError = (String, Errno);

/// Before the network namespace is made: a socket that stays in ours
/// (`None` when the sandbox is on no network).
pub fn host_socket(ifs: &[NetInterface]) -> Result<Option<Rtnl>, AttachError> {
    if ifs.is_empty() {
        return Ok(None);
    }
    Rtnl::open()
        .map(Some)
        .map_err(|e| ("netlink socket".to_string(), e))
}

/// In the new namespace: every pair made, its host end on its bridge and
/// up, its sandbox end addressed and up, then the default route.
pub fn attach(host: &mut Rtnl, ifs: &[NetInterface]) -> Result<(), AttachError> {
    // The kernel reads a pid in the namespace of the one who asks: our
    // own, seen from inside our PID namespace, is ours.
    let me = nix::unistd::getpid().as_raw();
    for i in ifs {
        make_pair(host, i, me)?;
    }
    let mut inner = Rtnl::open().map_err(|e| ("netlink socket inside".to_string(), e))?;
    for i in ifs {
        configure_inside(&mut inner, i)?;
    }
    if let Some(gw) = ifs.iter().find_map(|i| i.gateway) {
        inner
            .add_default_route(IpAddr::V4(gw))
            .map_err(|e| (format!("default route via {gw}"), e))?;
    }
    if let Some(gw) = ifs.iter().find_map(|i| i.v6?.gateway) {
        inner
            .add_default_route(IpAddr::V6(gw))
            .map_err(|e| (format!("default route via {gw}"), e))?;
    }
    Ok(())
}

/// From the host's side: `i`'s pair, its peer put into process `me`'s
/// namespace, and the host's permanent neighbour entry for its address.
fn make_pair(host: &mut Rtnl, i: &NetInterface, me: i32) -> Result<(), AttachError> {
    let mac = mac_of(i.address);
    let veth = Veth {
        host: &i.host,
        master: i.bridge,
        peer: &i.name,
        peer_pid: me,
        mtu: i.mtu,
        peer_mac: Some(mac),
    };
    host.add_veth(&veth)
        .map_err(|e| (format!("create veth {}", i.host), e))?;
    // Its MAC is a function of its address: whoever has the address next
    // has the same, and the entry never goes stale.
    host.add_neighbour(i.gateway_bridge, IpAddr::V4(i.address), mac)
        .map_err(|e| (format!("neighbour {}", i.address), e))?;
    if let Some(v6) = i.v6 {
        host.add_neighbour(i.gateway_bridge, IpAddr::V6(v6.address), mac)
            .map_err(|e| (format!("neighbour {}", v6.address), e))?;
    }
    Ok(())
}

/// From inside: `i`'s end without an IPv6 link-local address, with its
/// addresses, up, and the gateway as a permanent neighbour.
fn configure_inside(inner: &mut Rtnl, i: &NetInterface) -> Result<(), AttachError> {
    let at = |what: &'static str| move |e| (format!("{what} {}", i.name), e);
    let idx = inner
        .link_index(&i.name)
        .map_err(at("find"))?
        .ok_or_else(|| (format!("find {}", i.name), Errno::ENODEV))?;
    // No link-local address: the end sends no duplicate-address, router or
    // listener messages for the bridge to flood to the whole network (an
    // IPv6 network's address is set, and needs none). Netlink, not
    // /proc/sys: a lookup there is linear in the host's namespaces.
    inner
        .no_link_local(LinkRef::Index(idx))
        .map_err(at("IPv6 mode"))?;
    inner
        .add_address(idx, IpAddr::V4(i.address), i.prefix)
        .map_err(at("address"))?;
    if let Some(v6) = i.v6 {
        inner
            .add_address(idx, IpAddr::V6(v6.address), 64)
            .map_err(at("IPv6 address"))?;
    }
    inner.set_up(idx).map_err(at("bring up"))?;
    // The gateway as a permanent neighbour (its MAC is made from its
    // address too): across 10,000 sandboxes one dynamic entry each would
    // fill the kernel's one neighbour table (`gc_thresh3` counts every
    // namespace's), and some would find no gateway.
    let gw_mac = mac_of(i.bridge_address);
    inner
        .add_neighbour(idx, IpAddr::V4(i.bridge_address), gw_mac)
        .map_err(at("gateway neighbour"))?;
    if let Some(gw6) = i.v6.and_then(|v| v.gateway) {
        inner
            .add_neighbour(idx, IpAddr::V6(gw6), gw_mac)
            .map_err(at("gateway neighbour"))?;
    }
    Ok(())
}
