//! A network larger than one bridge. The kernel gives a bridge at most
//! 1,024 ports (`BR_MAX_PORTS`), so a network's sandboxes fill its own
//! bridge and then further ones, each joined to the first by a veth pair:
//! one layer-2 segment with the gateway on the first bridge, so routing,
//! the rules and the nameserver see one network whatever bridge a sandbox
//! is on.

use crate::upgrade::snapshot::SegmentsRecord;
use isola_runtime::net::Rtnl;

use super::host::Bridge;

/// Sandboxes a bridge takes: the kernel's 1,024 less room for the pairs
/// that join further bridges and for pairs of gone sandboxes the kernel
/// has not removed yet. `ISOLA_BRIDGE_PORTS` lowers it (tests fill
/// bridges with a few services).
fn ports_per_bridge() -> usize {
    std::env::var("ISOLA_BRIDGE_PORTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| (1..=1000).contains(n))
        .unwrap_or(1000)
}

/// One network's bridges beyond its own.
#[derive(Debug)]
pub(crate) struct Segments {
    /// Sandboxes on each bridge, the network's own first.
    ports: Vec<usize>,
    /// Each further bridge and the host's end of the pair joining it.
    extra: Vec<(Bridge, u32)>,
    limit: usize,
}

/// Where a sandbox's pair goes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Port {
    /// Which of the network's bridges (0: its own).
    pub(crate) segment: usize,
    pub(crate) bridge: u32,
}

impl Segments {
    pub(crate) fn new() -> Segments {
        Segments {
            ports: vec![0],
            extra: Vec::new(),
            limit: ports_per_bridge(),
        }
    }

    /// What an upgrade hands over.
    pub(crate) fn record(&self) -> SegmentsRecord {
        SegmentsRecord {
            ports: self.ports.clone(),
            extra: (self.extra.iter())
                .map(|(b, end)| (b.name.clone(), b.index, *end))
                .collect(),
        }
    }

    /// The segments an older binary handed over (the bridges are there).
    pub(crate) fn restored(rec: &SegmentsRecord) -> Segments {
        Segments {
            ports: rec.ports.clone(),
            extra: (rec.extra.iter())
                .map(|(name, index, end)| {
                    let b = Bridge {
                        name: name.clone(),
                        index: *index,
                    };
                    (b, *end)
                })
                .collect(),
            limit: ports_per_bridge(),
        }
    }

    /// A port for one more sandbox: on the first bridge with room, or on
    /// a new one joined to `own` when all are full.
    pub(crate) fn take(&mut self, own: &Bridge, mtu: Option<u32>) -> Result<Port, String> {
        if let Some(j) = self.ports.iter().position(|p| *p < self.limit) {
            self.ports[j] += 1;
            let bridge = if j == 0 {
                own.index
            } else {
                self.extra[j - 1].0.index
            };
            return Ok(Port { segment: j, bridge });
        }
        let j = self.ports.len();
        let (b, pair) = join_bridge(own, j, mtu)?;
        let bridge = b.index;
        self.extra.push((b, pair));
        self.ports.push(1);
        // The joining pair takes one of the first bridge's ports.
        self.ports[0] += 1;
        Ok(Port { segment: j, bridge })
    }

    /// A sandbox on `segment` is gone.
    pub(crate) fn release(&mut self, segment: usize) {
        if let Some(p) = self.ports.get_mut(segment) {
            *p = p.saturating_sub(1);
        }
    }

    /// The bridges beyond the first go (their joining pairs with them).
    pub(crate) fn remove(&mut self, nl: &mut Rtnl) {
        for (b, pair) in self.extra.drain(..) {
            let _ = nl.delete_link(pair);
            let _ = nl.delete_link(b.index);
        }
        self.ports.truncate(1);
    }
}

/// Bridge `j` of the network whose own bridge is `own`, joined to it by a
/// pair; names carry `own`'s, so what a killed supervisor left is cleared
/// with the stack's other links.
fn join_bridge(own: &Bridge, j: usize, mtu: Option<u32>) -> Result<(Bridge, u32), String> {
    let mut nl = Rtnl::open().map_err(|e| format!("netlink: {e}"))?;
    let name = format!("{}s{j:x}", own.name);
    let (near, far) = (format!("{}l{j:x}", own.name), format!("{}m{j:x}", own.name));
    let at = |what: &str| {
        let what = what.to_string();
        move |e| format!("{what}: {e}")
    };
    let index = nl.create_bridge(&name, mtu).map_err(at(&name))?;
    // A switch only: the host answers ARP for its addresses on any link
    // that is up, and a sandbox answered from this one would send its
    // packets for the gateway here, where the nameserver (bound to the
    // network's own bridge) and the rules do not see them.
    let arp = format!("/proc/sys/net/ipv4/conf/{name}/arp_ignore");
    if let Err(e) = std::fs::write(&arp, "8") {
        let _ = nl.delete_link(index);
        return Err(format!("{arp}: {e}"));
    }
    let me = nix::unistd::getpid().as_raw();
    let pair = match nl.create_veth(&near, &far, me, mtu, None) {
        Ok(a) => a,
        Err(e) => {
            let _ = nl.delete_link(index);
            return Err(format!("{near}: {e}"));
        }
    };
    let joined = (|| -> Result<(), String> {
        let a = pair;
        let b = nl
            .link_index(&far)
            .map_err(at(&far))?
            .ok_or_else(|| format!("{far}: not made"))?;
        nl.set_master(a, own.index).map_err(at(&near))?;
        nl.set_master(b, index).map_err(at(&far))?;
        for i in [a, b, index] {
            nl.set_up(i).map_err(at(&name))?;
        }
        Ok(())
    })();
    if let Err(e) = joined {
        let _ = nl.delete_link(pair);
        let _ = nl.delete_link(index);
        return Err(e);
    }
    Ok((Bridge { name, index }, pair))
}
