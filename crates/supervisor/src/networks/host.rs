//! The host's side of the stack's networks: a bridge per network (its
//! gateway address on it), the nftables table that keeps networks apart
//! and gives non-internal ones NAT out, IPv4 forwarding. Every name
//! carries the stack's tag, so what a killed supervisor left is found and
//! removed by the next `isola up` of the stack, and nothing else is.

use std::io::Write;
use std::net::{IpAddr, Ipv6Addr};
use std::path::Path;
use std::process::{Command, Stdio};

use isola_runtime::net::Rtnl;

use super::ipam::{prefix6, v6_of};
use crate::spec::networks::{NetworkDef, Subnet};

/// A network's bridge.
#[derive(Debug, Clone)]
pub(crate) struct Bridge {
    pub(crate) name: String,
    pub(crate) index: u32,
}

/// Five hex digits of the stack's cgroup path: its links are `ib<tag>…`
/// (bridges) and `iv<tag>…` (the host ends of its sandboxes' pairs).
pub(crate) fn tag(stack_root: &Path) -> String {
    // FNV-1a: the same tag from every build of isola (an upgraded binary
    // finds what the old one left).
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in stack_root.as_os_str().as_encoded_bytes() {
        h = (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
    }
    format!("{:05x}", (h ^ (h >> 20) ^ (h >> 40)) & 0xf_ffff)
}

pub(crate) fn bridge_name(tag: &str, k: usize) -> String {
    format!("ib{tag}{k:x}")
}

pub(crate) fn veth_name(tag: &str, seq: u32) -> String {
    format!("iv{tag}{seq:x}")
}

fn table(tag: &str) -> String {
    format!("isola_{tag}")
}

/// Remove what a stack of this tag left: its links (a bridge's going
/// takes nothing else; a pair's host end takes its peer) and its table.
pub(crate) fn clean(tag: &str) -> Result<(), String> {
    let mut nl = Rtnl::open().map_err(|e| format!("netlink: {e}"))?;
    for prefix in [format!("ib{tag}"), format!("iv{tag}")] {
        let links = nl
            .links_with_prefix(&prefix)
            .map_err(|e| format!("netlink: list links: {e}"))?;
        for (index, name) in links {
            match nl.delete_link(index) {
                // Gone meanwhile: a pair of a sandbox that died with the
                // killed supervisor goes with its namespace, which the
                // kernel tears down in its own time.
                Ok(()) | Err(nix::errno::Errno::ENODEV) => {}
                Err(e) => return Err(format!("netlink: delete {name}: {e}")),
            }
        }
    }
    // Absent is fine: nothing was left.
    let _ = nft(&format!("delete table inet {}\n", table(tag)));
    Ok(())
}

/// A bridge for each of isola's networks (none for a CNI network), with
/// its gateway address, up; on a failure, none.
pub(crate) fn make_bridges(
    tag: &str,
    nets: &[NetworkDef],
    subnets: &[Subnet],
) -> Result<Vec<Option<Bridge>>, String> {
    let mut nl = Rtnl::open().map_err(|e| format!("netlink: {e}"))?;
    let mut out: Vec<Option<Bridge>> = Vec::new();
    for (k, (n, s)) in nets.iter().zip(subnets).enumerate() {
        if n.cni().is_some() {
            out.push(None);
            continue;
        }
        let name = bridge_name(tag, k);
        match make_bridge(&mut nl, &name, n, *s, gateway6(tag, n, *s)) {
            Ok(index) => out.push(Some(Bridge { name, index })),
            Err(e) => {
                for b in out.iter().flatten() {
                    let _ = nl.delete_link(b.index);
                }
                return Err(format!("network {}: {e}", n.name));
            }
        }
    }
    Ok(out)
}

pub(crate) fn make_bridge(
    nl: &mut Rtnl,
    name: &str,
    n: &NetworkDef,
    s: Subnet,
    gw6: Option<Ipv6Addr>,
) -> Result<u32, String> {
    let index = nl
        .create_bridge(name, n.mtu)
        .map_err(|e| format!("create bridge {name}: {e}"))?;
    // The gateway's MAC is made from its address, as a sandbox's is: the
    // sandboxes hold it as a permanent neighbour entry.
    let configured = nl
        .set_mac(index, isola_runtime::net::attach::mac_of(s.gateway()))
        .and_then(|()| nl.add_address(index, IpAddr::V4(s.gateway()), s.prefix))
        .and_then(|()| match gw6 {
            Some(gw) => nl.add_address(index, IpAddr::V6(gw), 64),
            None => Ok(()),
        })
        .map_err(|e| format!("address of {name}: {e}"))
        .and_then(|()| {
            nl.set_up(index)
                .map_err(|e| format!("bring up {name}: {e}"))
        });
    if configured.is_err() {
        let _ = nl.delete_link(index);
    }
    configured.map(|()| index)
}

/// The gateway's IPv6 address on an IPv6 network.
pub(crate) fn gateway6(tag: &str, n: &NetworkDef, s: Subnet) -> Option<Ipv6Addr> {
    n.ipv6.then(|| v6_of(prefix6(tag, s), s.gateway()))
}

/// The stack's rules: nothing crosses from one network to another, nor
/// comes in from outside but answers; a sandbox sends from its own subnet
/// only; an internal network sends nothing out of itself (the host answers
/// it names only); the others leave through NAT.
pub(crate) fn ruleset(
    tag: &str,
    nets: &[NetworkDef],
    subnets: &[Subnet],
    bridges: &[Option<Bridge>],
) -> String {
    let mut forward = String::new();
    let mut input = String::new();
    let mut nat = String::new();
    for (k, b) in bridges.iter().enumerate() {
        // A CNI network's rules are its plugins'.
        let Some(b) = b else { continue };
        for (j, o) in bridges.iter().enumerate() {
            let Some(o) = o else { continue };
            if j != k {
                forward += &format!("    iifname \"{}\" oifname \"{}\" drop\n", b.name, o.name);
            }
        }
        let (Some(n), Some(s)) = (nets.get(k), subnets.get(k)) else {
            continue;
        };
        let b = &b.name;
        forward += &format!("    iifname \"{b}\" ip saddr != {s} drop\n");
        input += &format!("    iifname \"{b}\" ip saddr != {s} drop\n");
        let p6 = n.ipv6.then(|| prefix6(tag, *s));
        if let Some(p) = p6 {
            forward += &format!("    iifname \"{b}\" ip6 saddr != {p}/64 drop\n");
            input += &format!("    iifname \"{b}\" ip6 saddr != {{ {p}/64, fe80::/10 }} drop\n");
        } else {
            // No IPv6 here: none forwarded or taken from it (another
            // network's may have turned forwarding on).
            forward += &format!("    iifname \"{b}\" meta nfproto ipv6 drop\n");
            input += &format!("    iifname \"{b}\" meta nfproto ipv6 drop\n");
        }
        if n.internal {
            forward += &format!("    iifname \"{b}\" oifname != \"{b}\" drop\n");
            forward += &format!("    oifname \"{b}\" iifname != \"{b}\" drop\n");
            let gw = s.gateway();
            input += &format!("    iifname \"{b}\" ip daddr {gw} meta l4proto {{ tcp, udp }} th dport 53 accept\n");
            if p6.is_some() {
                // Neighbour discovery, or the gateway is never found.
                input += &format!("    iifname \"{b}\" icmpv6 type {{ nd-neighbor-solicit, nd-neighbor-advert, nd-router-solicit }} accept\n");
            }
            input += &format!("    iifname \"{b}\" drop\n");
        } else {
            // Out, and the answers back in; nothing else comes in
            // (another stack's network, a host routing to this subnet).
            forward += &format!(
                "    oifname \"{b}\" iifname != \"{b}\" ct state established,related accept\n"
            );
            forward += &format!("    oifname \"{b}\" iifname != \"{b}\" drop\n");
            nat += &format!("    ip saddr {s} oifname != \"{b}\" masquerade\n");
            if let Some(p) = p6 {
                nat += &format!("    ip6 saddr {p}/64 oifname != \"{b}\" masquerade\n");
            }
        }
    }
    format!(
        "table inet {t} {{\n  chain forward {{\n    type filter hook forward priority filter; policy accept;\n{forward}  }}\n  chain input {{\n    type filter hook input priority filter; policy accept;\n{input}  }}\n  chain postrouting {{\n    type nat hook postrouting priority srcnat; policy accept;\n{nat}  }}\n}}\n",
        t = table(tag)
    )
}

/// Load rules through `nft -f -` (once per network set, never per start).
pub(crate) fn nft(rules: &str) -> Result<(), String> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("nft (Debian's nftables): {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(rules.as_bytes())
            .map_err(|e| format!("nft: {e}"))?;
    }
    let out = child.wait_with_output().map_err(|e| format!("nft: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    let err = String::from_utf8_lossy(&out.stderr);
    Err(format!("nft: {}", err.lines().next().unwrap_or("failed")))
}

/// The stack's rules replaced by `rules` in one transaction (the table
/// declared first, so that deleting it cannot fail).
pub(crate) fn replace_rules(tag: &str, rules: &str) -> Result<(), String> {
    let t = table(tag);
    nft(&format!("table inet {t}\ndelete table inet {t}\n{rules}"))
}

/// Packets from a non-internal network may leave through the host (and
/// over IPv6 when one of them has it — as Docker does, this turns off
/// router advertisements the host itself would accept).
pub(crate) fn enable_forwarding(nets: &[NetworkDef]) -> Result<(), String> {
    let out = nets.iter().filter(|n| !n.internal && n.cni().is_none());
    let (v4, v6) = out.fold((false, false), |(_, b), n| (true, b || n.ipv6));
    let set = |path: &str| std::fs::write(path, "1").map_err(|e| format!("{path}: {e}"));
    if v4 {
        set("/proc/sys/net/ipv4/ip_forward")?;
    }
    if v6 {
        set("/proc/sys/net/ipv6/conf/all/forwarding")?;
    }
    Ok(())
}

/// Remove the stack's bridges and table (at exit); every step is tried,
/// the first error is said.
pub(crate) fn remove(tag: &str, bridges: &[Option<Bridge>]) -> Result<(), String> {
    let mut failed = None;
    match Rtnl::open() {
        Ok(mut nl) => {
            for b in bridges.iter().flatten() {
                if let Err(e) = nl.delete_link(b.index) {
                    failed.get_or_insert(format!("delete {}: {e}", b.name));
                }
            }
        }
        Err(e) => failed = Some(format!("netlink: {e}")),
    }
    let dropped = nft(&format!("delete table inet {}\n", table(tag)));
    match failed {
        Some(e) => Err(e),
        None => dropped,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_the_kernels_and_carry_the_tag() {
        let t = tag(Path::new("/sys/fs/cgroup/isola/web"));
        assert_eq!(t.len(), 5);
        assert!(isola_runtime::net::valid_ifname(&bridge_name(&t, 4095)));
        assert!(isola_runtime::net::valid_ifname(&veth_name(&t, u32::MAX)));
        assert!(veth_name(&t, 7).starts_with(&format!("iv{t}")));
    }

    #[test]
    fn rules_keep_networks_apart_and_internal_ones_in() {
        let net = |name: &str, internal| NetworkDef {
            name: name.into(),
            subnet: None,
            internal,
            mtu: None,
            ipv6: false,
            driver: crate::spec::networks::Driver::Bridge,
        };
        let nets = [net("back", true), net("front", false)];
        let subnets = [
            Subnet::parse("10.89.1.0/24").unwrap(),
            Subnet::parse("10.89.2.0/24").unwrap(),
        ];
        let bridges = [
            Some(Bridge {
                name: "ibabc0".into(),
                index: 5,
            }),
            Some(Bridge {
                name: "ibabc1".into(),
                index: 6,
            }),
        ];
        let r = ruleset("abc", &nets, &subnets, &bridges);
        for want in [
            "table inet isola_abc {",
            "iifname \"ibabc0\" oifname \"ibabc1\" drop",
            "iifname \"ibabc1\" oifname \"ibabc0\" drop",
            "iifname \"ibabc0\" oifname != \"ibabc0\" drop",
            "iifname \"ibabc0\" ip daddr 10.89.1.1 meta l4proto { tcp, udp } th dport 53 accept",
            "oifname \"ibabc1\" iifname != \"ibabc1\" ct state established,related accept",
            "oifname \"ibabc1\" iifname != \"ibabc1\" drop",
            "iifname \"ibabc1\" ip saddr != 10.89.2.0/24 drop",
            "ip saddr 10.89.2.0/24 oifname != \"ibabc1\" masquerade",
        ] {
            assert!(r.contains(want), "{want} not in\n{r}");
        }
        assert!(
            !r.contains("ip saddr 10.89.1.0/24 oifname"),
            "no NAT for an internal one:\n{r}"
        );
        // nft itself checks the syntax, touching nothing.
        if Command::new("nft").arg("--version").output().is_ok() {
            let out = Command::new("nft")
                .args(["-c", "-f", "-"])
                .stdin(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .and_then(|mut c| {
                    c.stdin.take().unwrap().write_all(r.as_bytes())?;
                    c.wait_with_output()
                })
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}
