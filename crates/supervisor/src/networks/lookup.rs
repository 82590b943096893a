//! What the nameserver and `status` ask of the networks: the names a
//! sandbox resolves (on the networks it shares with the one it names),
//! and the addresses a sandbox has.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::dns::Lookup;
use super::{ipam, Networks};
use crate::shell::context::{Ctx, ServiceIx};

impl Networks {
    /// Sandbox `i`'s addresses, by network name (`status`).
    pub(crate) fn addresses(&self, i: ServiceIx) -> Vec<(String, Ipv4Addr)> {
        self.addrs
            .get(&i)
            .map(|v| {
                v.iter()
                    .filter_map(|(k, a)| Some((self.nets.get(*k)?.name.clone(), *a)))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Sandbox `i`'s IPv6 addresses, on the networks that have IPv6.
    pub(crate) fn addresses6(&self, i: ServiceIx) -> Vec<(String, Ipv6Addr)> {
        let Some(v) = self.addrs.get(&i) else {
            return Vec::new();
        };
        v.iter()
            .filter_map(|(k, a)| {
                let (n, p) = (self.nets.get(*k)?, self.pools.get(*k)?);
                let prefix = n.ipv6.then(|| ipam::prefix6(&self.tag, p.subnet))?;
                Some((n.name.clone(), ipam::v6_of(prefix, *a)))
            })
            .collect()
    }

    /// A query to the nameserver (or the upstream's answer). `holder`: the
    /// running sandbox that holds a service's name now.
    pub(crate) fn on_event(
        &mut self,
        ctx: &mut Ctx<'_>,
        key: u64,
        holder: &dyn Fn(&str) -> Option<ServiceIx>,
    ) {
        let (known, addrs) = (&self.known, &self.addrs);
        let internal: Vec<bool> = self.nets.iter().map(|n| n.internal).collect();
        let v6: Vec<Option<Ipv6Addr>> = (self.nets.iter().zip(&self.pools))
            .map(|(n, p)| n.ipv6.then(|| ipam::prefix6(&self.tag, p.subnet)))
            .collect();
        // The asker's networks (it asks its first network's gateway): a
        // name resolves on each it shares with the one named. One that is
        // none of ours is refused.
        let lookup = |net: usize, from: Ipv4Addr, name: &str| {
            let Some(nets) = addrs
                .values()
                .find(|v| v.contains(&(net, from)))
                .map(|v| v.iter().map(|(k, _)| *k).collect::<Vec<usize>>())
            else {
                return Lookup::Refused;
            };
            let mut ours = false;
            let mut found = Vec::new();
            for &k in &nets {
                let Some(services) = known.get(k).and_then(|m| m.get(name)) else {
                    continue;
                };
                ours = true;
                let on_k = services
                    .iter()
                    .filter_map(|s| holder(s))
                    .filter_map(|i| addrs.get(&i))
                    .flat_map(|v| v.iter().filter(|(j, _)| *j == k).map(|(_, a)| *a));
                for a in on_k {
                    found.push(IpAddr::V4(a));
                    if let Some(p) = v6.get(k).copied().flatten() {
                        found.push(IpAddr::V6(ipam::v6_of(p, a)));
                    }
                }
            }
            if ours {
                Lookup::Ours(found)
            } else if nets.iter().all(|k| internal.get(*k) == Some(&true)) {
                // Nothing leaves an internal network, questions included.
                Lookup::Refused
            } else {
                Lookup::Unknown
            }
        };
        if let Some(names) = self.names.as_mut() {
            names.on_event(ctx, key, &lookup);
        }
    }
}
