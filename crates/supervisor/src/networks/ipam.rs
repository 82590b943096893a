//! Addresses on the stack's networks: a subnet for each network (given,
//! or the first free /24 of 10.89.0.0/16 that overlaps nothing of the
//! host's), and an address for each service on it — the one the stack
//! fixes, else the next free one, kept by name across restarts. A
//! sandbox that starts while its service's address is still held by the
//! sandbox it replaces (an overlap) gets a second one until then.

use crate::upgrade::snapshot::PoolRecord;
use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, Ipv6Addr};

use crate::shell::context::ServiceIx;
use crate::spec::networks::{NetworkDef, Subnet};

/// Where isola picks subnets, as podman does from 10.89.0.0/16.
const POOL: Subnet = Subnet {
    net: Ipv4Addr::new(10, 89, 0, 0),
    prefix: 16,
};

/// What the host already routes or has: a subnet that overlaps any of
/// these is refused (given) or skipped (picked).
pub(crate) fn host_subnets() -> Vec<Subnet> {
    let mut out = Vec::new();
    // /proc/net/route: Iface Destination Gateway Flags … Mask, in hex,
    // in the kernel's byte order.
    if let Ok(text) = std::fs::read_to_string("/proc/net/route") {
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (Some(dst), Some(mask)) = (f.get(1), f.get(7)) else {
                continue;
            };
            let hex = |s: &str| u32::from_str_radix(s, 16).ok();
            let (Some(d), Some(m)) = (hex(dst), hex(mask)) else {
                continue;
            };
            // The default route overlaps everything; it is no claim.
            if m == 0 {
                continue;
            }
            let prefix = u8::try_from(m.count_ones()).unwrap_or(32);
            out.push(Subnet {
                // Printed as the integer the address's bytes make in memory.
                net: Ipv4Addr::from(d.to_ne_bytes()),
                prefix,
            });
        }
    }
    if let Ok(addrs) = nix::ifaddrs::getifaddrs() {
        for a in addrs {
            let Some(sin) = a.address.as_ref().and_then(|s| s.as_sockaddr_in()) else {
                continue;
            };
            out.push(Subnet {
                net: sin.ip(),
                prefix: 32,
            });
        }
    }
    out
}

/// The subnet of each network, by its position in `nets`: the given one
/// if it overlaps nothing of `taken`, else the first free /24 of the
/// pool. Errors name the field.
pub(crate) fn subnets(nets: &[NetworkDef], taken: &[Subnet]) -> Result<Vec<Subnet>, String> {
    // The given ones first: a picked one must not take what one asks for.
    let mut used: Vec<Subnet> = taken.to_vec();
    used.extend(nets.iter().filter_map(|n| n.subnet));
    // A CNI network's subnet is its IPAM's: no other takes it.
    let cni: Vec<(&str, Subnet)> = (nets.iter())
        .filter_map(|n| Some((n.name.as_str(), n.cni()?.subnet)))
        .collect();
    used.extend(cni.iter().map(|(_, s)| *s));
    let mut out = Vec::with_capacity(nets.len());
    for n in nets {
        // A CNI network's is its IPAM's (the host may have its bridge
        // from an earlier run).
        if let Some(c) = n.cni() {
            out.push(c.subnet);
            continue;
        }
        let s = match n.subnet {
            Some(s) => {
                if let Some(h) = taken.iter().find(|h| h.overlaps(s)) {
                    return Err(format!(
                        "networks.{}.subnet: {s}: overlaps the host's {h}",
                        n.name
                    ));
                }
                if let Some((c, cs)) = cni.iter().find(|(_, c)| c.overlaps(s)) {
                    return Err(format!(
                        "networks.{}.subnet: {s}: overlaps {cs} of network {c}",
                        n.name
                    ));
                }
                s
            }
            None => pick(&used)
                .ok_or_else(|| format!("networks.{}: no free /24 left in {POOL}", n.name))?,
        };
        used.push(s);
        out.push(s);
    }
    Ok(out)
}

fn pick(used: &[Subnet]) -> Option<Subnet> {
    (0..=255u8).find_map(|k| {
        let s = Subnet {
            net: Ipv4Addr::new(10, 89, k, 0),
            prefix: 24,
        };
        (!used.iter().any(|u| u.overlaps(s))).then_some(s)
    })
}

/// A network's IPv6 /64: a unique local prefix — `fd9`, the stack's tag
/// (20 bits), then the IPv4 subnet's whole network address (32 bits) —
/// the same at every `isola up` of the stack, as the IPv4 subnet is, and
/// as distinct as the stack's IPv4 subnets are.
pub(crate) fn prefix6(tag: &str, s: Subnet) -> Ipv6Addr {
    let t = u32::from_str_radix(tag, 16).unwrap_or(0) & 0xf_ffff;
    let [a, b, c, d] = s.network().octets();
    let first = 0xfd90 | u16::try_from(t >> 16).unwrap_or(0);
    let second = u16::try_from(t & 0xffff).unwrap_or(0);
    Ipv6Addr::new(
        first,
        second,
        u16::from_be_bytes([a, b]),
        u16::from_be_bytes([c, d]),
        0,
        0,
        0,
        0,
    )
}

/// The IPv6 address of whoever has `a` on a network with `prefix`: the
/// IPv4 address in the last 32 bits, so it is as stable as that one.
pub(crate) fn v6_of(prefix: Ipv6Addr, a: Ipv4Addr) -> Ipv6Addr {
    let mut o = prefix.octets();
    o[12..].copy_from_slice(&a.octets());
    Ipv6Addr::from(o)
}

/// One name less owns `a`.
fn disown(owned: &mut HashMap<Ipv4Addr, usize>, a: Ipv4Addr) {
    if let Some(n) = owned.get_mut(&a) {
        *n -= 1;
        if *n == 0 {
            owned.remove(&a);
        }
    }
}

/// Addresses on one network.
#[derive(Debug)]
pub(crate) struct Pool {
    pub(crate) subnet: Subnet,
    /// A service's own address, by its name (kept while it is in the
    /// stack).
    by_name: BTreeMap<String, Ipv4Addr>,
    /// `by_name`'s addresses, to be looked up (how many names own each:
    /// a reload may fix one service's on another's for a while).
    owned: HashMap<Ipv4Addr, usize>,
    /// Which sandbox uses an address now, and the other way round.
    in_use: HashMap<Ipv4Addr, ServiceIx>,
    by_sandbox: HashMap<ServiceIx, Vec<Ipv4Addr>>,
    /// Where the search for a free address starts: past the last found,
    /// so that 10,000 services do not each search from the first.
    next: u32,
}

impl Pool {
    pub(crate) fn new(subnet: Subnet) -> Pool {
        Pool {
            subnet,
            by_name: BTreeMap::new(),
            owned: HashMap::new(),
            in_use: HashMap::new(),
            by_sandbox: HashMap::new(),
            next: 0,
        }
    }

    /// What an upgrade hands over (sandboxes by service name).
    pub(crate) fn record(&self, name_of: &dyn Fn(ServiceIx) -> Option<String>) -> PoolRecord {
        PoolRecord {
            by_name: self.by_name.iter().map(|(n, a)| (n.clone(), *a)).collect(),
            in_use: (self.in_use.iter())
                .filter_map(|(a, i)| Some((*a, name_of(*i)?)))
                .collect(),
            next: self.next,
        }
    }

    /// The pool an older binary handed over.
    pub(crate) fn restored(
        subnet: Subnet,
        rec: &PoolRecord,
        index_of: &dyn Fn(&str) -> Option<ServiceIx>,
    ) -> Pool {
        let mut p = Pool::new(subnet);
        for (name, a) in &rec.by_name {
            p.set_own(name, *a);
        }
        for (a, name) in &rec.in_use {
            if let Some(i) = index_of(name) {
                p.in_use.insert(*a, i);
                p.by_sandbox.entry(i).or_default().push(*a);
            }
        }
        p.next = rec.next;
        p
    }

    /// `name`'s own address: `fixed`, or the one it had, or the next free.
    pub(crate) fn own(&mut self, name: &str, fixed: Option<Ipv4Addr>) -> Option<Ipv4Addr> {
        if let Some(a) = fixed {
            self.set_own(name, a);
            return Some(a);
        }
        if let Some(a) = self.by_name.get(name) {
            return Some(*a);
        }
        let a = self.free()?;
        self.set_own(name, a);
        Some(a)
    }

    fn set_own(&mut self, name: &str, a: Ipv4Addr) {
        if let Some(old) = self.by_name.insert(name.to_string(), a) {
            disown(&mut self.owned, old);
        }
        *self.owned.entry(a).or_default() += 1;
    }

    /// An address no service owns and no sandbox uses: the first from
    /// where the last search stopped, then from the start.
    fn free(&mut self) -> Option<Ipv4Addr> {
        let taken = |a: &Ipv4Addr| self.in_use.contains_key(a) || self.owned.contains_key(a);
        let from = |k0: u32| (k0..).map_while(|k| self.subnet.host(k).map(|a| (k, a)));
        let (k, a) = from(self.next)
            .chain(from(0).take_while(|(k, _)| *k < self.next))
            .find(|(_, a)| !taken(a))?;
        self.next = k + 1;
        Some(a)
    }

    /// The address sandbox `i` of service `name` starts with: the
    /// service's own, unless another sandbox still uses it.
    pub(crate) fn take(
        &mut self,
        i: ServiceIx,
        name: &str,
        fixed: Option<Ipv4Addr>,
    ) -> Option<Ipv4Addr> {
        let own = self.own(name, fixed)?;
        let a = match self.in_use.get(&own) {
            Some(j) if *j != i => self.free()?,
            _ => own,
        };
        self.in_use.insert(a, i);
        self.by_sandbox.entry(i).or_default().push(a);
        Some(a)
    }

    /// Only these services are on the network now: the addresses of the
    /// others go back to the pool (a sandbox still using one keeps it
    /// until it is gone).
    pub(crate) fn keep_only(&mut self, names: &std::collections::HashSet<&str>) {
        let owned = &mut self.owned;
        self.by_name.retain(|n, a| {
            let keep = names.contains(n.as_str());
            if !keep {
                disown(owned, *a);
            }
            keep
        });
    }

    /// Sandbox `i` is gone: what it used is free again.
    pub(crate) fn release(&mut self, i: ServiceIx) {
        for a in self.by_sandbox.remove(&i).unwrap_or_default() {
            if self.in_use.get(&a) == Some(&i) {
                self.in_use.remove(&a);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picked_subnets_skip_the_hosts_and_each_others() {
        let net = |name: &str, subnet: Option<&str>| NetworkDef {
            name: name.into(),
            subnet: subnet.and_then(Subnet::parse),
            internal: false,
            mtu: None,
            ipv6: false,
            driver: crate::spec::networks::Driver::Bridge,
        };
        let host = [Subnet::parse("10.89.0.0/24").unwrap()];
        let got = subnets(
            &[
                net("a", None),
                net("b", Some("10.89.1.0/24")),
                net("c", None),
            ],
            &host,
        )
        .unwrap();
        let shown: Vec<String> = got.iter().map(ToString::to_string).collect();
        assert_eq!(shown, ["10.89.2.0/24", "10.89.1.0/24", "10.89.3.0/24"]);
        let e = subnets(&[net("b", Some("10.88.0.0/14"))], &host).unwrap_err();
        assert_eq!(
            e,
            "networks.b.subnet: 10.88.0.0/14: overlaps the host's 10.89.0.0/24"
        );
    }

    #[test]
    fn addresses_are_kept_by_name_and_an_overlap_gets_a_second() {
        let mut p = Pool::new(Subnet::parse("10.9.0.0/24").unwrap());
        let db = p.take(0, "db", None).unwrap();
        let web = p.take(1, "web", Some(Ipv4Addr::new(10, 9, 0, 9))).unwrap();
        assert_eq!(
            (db, web),
            (Ipv4Addr::new(10, 9, 0, 2), Ipv4Addr::new(10, 9, 0, 9))
        );
        // A restart: the same sandbox index or a later one, the same address.
        p.release(0);
        assert_eq!(p.take(0, "db", None), Some(db));
        // An overlap's successor while the old one runs: another address.
        let next = p.take(5, "db", None).unwrap();
        assert_eq!(next, Ipv4Addr::new(10, 9, 0, 3));
        p.release(0);
        p.release(5);
        assert_eq!(p.take(6, "db", None), Some(db), "its own again");
        // Next fit: the address just given back is not handed out at once
        // (neighbours' caches may still have it), the one after is.
        assert_eq!(p.take(7, "cache", None), Some(Ipv4Addr::new(10, 9, 0, 4)));
        // web left the stack (its sandbox too): its address is free.
        p.keep_only(&["db", "cache"].into_iter().collect());
        p.release(1);
        assert_eq!(p.take(8, "queue", None), Some(Ipv4Addr::new(10, 9, 0, 5)));
        p.keep_only(&["db", "queue"].into_iter().collect());
        p.release(7);
        // To the end of the subnet (web's .9 free again on the way), then
        // from its start: .3 (free) and cache's .4 come back.
        for k in 6..=254u8 {
            let got = p.take(100 + usize::from(k), &format!("s{k}"), None);
            assert_eq!(got, Some(Ipv4Addr::new(10, 9, 0, k)));
        }
        assert_eq!(p.take(400, "a", None), Some(Ipv4Addr::new(10, 9, 0, 3)));
        assert_eq!(p.take(401, "b", None), Some(Ipv4Addr::new(10, 9, 0, 4)));
        assert_eq!(p.take(402, "c", None), None, "full");
    }

    #[test]
    fn ipv6_prefixes_are_as_distinct_as_the_subnets() {
        let p = |s: &str| prefix6("7c53d", Subnet::parse(s).unwrap());
        assert_eq!(p("10.89.7.0/24").to_string(), "fd97:c53d:a59:700::");
        assert_ne!(p("10.1.2.0/25"), p("10.1.2.128/25"));
        assert_ne!(p("10.1.2.0/24"), p("11.1.2.0/24"));
        let a = v6_of(p("10.89.7.0/24"), Ipv4Addr::new(10, 89, 7, 2));
        assert_eq!(a.to_string(), "fd97:c53d:a59:700::a59:702");
    }

    #[test]
    fn host_subnets_have_loopback() {
        let h = host_subnets();
        assert!(h.iter().any(|s| s.contains(Ipv4Addr::LOCALHOST)), "{h:?}");
    }
}
