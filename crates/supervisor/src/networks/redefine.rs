//! A reload that changes the stack's networks. The services on a network
//! whose definition changed restart (their definitions include it, see
//! `spec::stack`); here the host follows: a network that goes loses its
//! bridge, a new or changed one gets a fresh bridge and subnet, one left
//! alone keeps its bridge, subnet and every address on it. The rules are
//! replaced in one transaction and the nameserver listens on the new
//! gateways.

use std::path::Path;

use isola_runtime::net::Rtnl;

use nix::unistd::Pid;

use super::{host, ipam, CniOp, Networks, Prepared, Segments};
use crate::shell::context::Ctx;
use crate::spec::networks::{NetworkDef, Subnet};
use crate::spec::stack::ServiceDef;

/// What a reload does to the networks, decided (and checked against the
/// host) before anything of the running stack moves.
pub(crate) enum NetChange {
    Same,
    /// The stack had none: made as at `isola up`.
    Start(Prepared),
    /// The stack has none any more.
    Stop,
    Redefine(Redefinition),
}

pub(crate) struct Redefinition {
    nets: Vec<NetworkDef>,
    subnets: Vec<Subnet>,
    /// By new position: the old position of a network left alone.
    kept: Vec<Option<usize>>,
}

/// Decide what `nets` (the file read again) changes. A subnet it asks for
/// that the host (or a network that stays) has is its error.
pub(crate) fn plan(
    now: Option<&Networks>,
    stack_root: &Path,
    nets: &[NetworkDef],
) -> Result<NetChange, String> {
    let Some(now) = now else {
        return match super::prepare(stack_root, nets) {
            Ok(None) => Ok(NetChange::Same),
            Ok(Some(p)) => Ok(NetChange::Start(p)),
            Err(Ok(e) | Err(e)) => Err(e),
        };
    };
    if nets.is_empty() {
        return Ok(NetChange::Stop);
    }
    // A network whose bridge an earlier reload could not make is made
    // again, though its definition is the same.
    let unmade = |k: usize| now.bridges[k].is_none() && now.nets[k].cni().is_none();
    if nets == now.nets.as_slice() && !(0..now.nets.len()).any(unmade) {
        return Ok(NetChange::Same);
    }
    let kept: Vec<Option<usize>> = nets
        .iter()
        .map(|n| now.nets.iter().position(|o| o == n).filter(|k| !unmade(*k)))
        .collect();
    // Ours are the host's too: those of networks that go or change are
    // free again, those that stay are taken.
    let ours: Vec<Subnet> = now.pools.iter().map(|p| p.subnet).collect();
    let mut taken: Vec<Subnet> = ipam::host_subnets()
        .into_iter()
        .filter(|h| {
            !ours
                .iter()
                .any(|o| o.prefix <= h.prefix && o.contains(h.net))
        })
        .collect();
    taken.extend(kept.iter().flatten().map(|k| ours[*k]));
    let fresh: Vec<NetworkDef> = nets
        .iter()
        .zip(&kept)
        .filter(|(_, k)| k.is_none())
        .map(|(n, _)| n.clone())
        .collect();
    let mut picked = ipam::subnets(&fresh, &taken)?.into_iter();
    let subnets = kept
        .iter()
        .map(|k| match k {
            Some(k) => Some(ours[*k]),
            None => picked.next(),
        })
        .collect::<Option<Vec<Subnet>>>()
        .ok_or("networks: a subnet was not picked")?;
    Ok(NetChange::Redefine(Redefinition {
        nets: nets.to_vec(),
        subnets,
        kept,
    }))
}

/// Make the change. An error is said; what it could not make leaves that
/// network's services failing to start (and backing off) until the next
/// reload or `isola up`.
pub(crate) fn apply(
    ctx: &mut Ctx<'_>,
    networks: &mut Option<Networks>,
    change: NetChange,
    defs: &[ServiceDef],
    control_socket: &Path,
) -> Result<Vec<(Pid, CniOp)>, String> {
    match change {
        NetChange::Same => Ok(Vec::new()),
        NetChange::Start(p) => {
            *networks = Some(Networks::start(ctx, p, defs, control_socket)?);
            Ok(Vec::new())
        }
        NetChange::Stop => {
            let Some(mut n) = networks.take() else {
                return Ok(Vec::new());
            };
            let (plugins, failed) = n.stop();
            failed.map_or(Ok(plugins), Err)
        }
        NetChange::Redefine(r) => match networks.as_mut() {
            Some(n) => n.redefine(ctx, r).map(|()| Vec::new()),
            None => Ok(Vec::new()),
        },
    }
}

impl Networks {
    fn redefine(&mut self, ctx: &mut Ctx<'_>, r: Redefinition) -> Result<(), String> {
        let mut nl = Rtnl::open().map_err(|e| format!("netlink: {e}"))?;
        for (k, b) in self.bridges.iter().enumerate() {
            let Some(b) = b else { continue };
            if !r.kept.contains(&Some(k)) {
                self.segments[k].remove(&mut nl);
                let _ = nl.delete_link(b.index);
            }
        }
        let (parts, failed) = self.new_parts(&mut nl, &r);
        for v in self.addrs.values_mut() {
            renumber(v, &r.kept);
        }
        for v in self.ports.values_mut() {
            renumber(v, &r.kept);
        }
        self.known = vec![Default::default(); r.nets.len()];
        self.nets = r.nets;
        (self.bridges, self.pools, self.segments) = parts;
        let rules = host::ruleset(&self.tag, &self.nets, &r.subnets, &self.bridges);
        // Its sockets hold the gateways, some of which went: bound again
        // (on every gateway there is now).
        self.names = None;
        let steps = [
            host::replace_rules(&self.tag, &rules),
            host::enable_forwarding(&self.nets),
            self.bind_names(ctx),
        ];
        match failed.or(steps.into_iter().find_map(Result::err)) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Each network's bridge, pool and segments as the redefinition has
    /// them: kept ones moved over, new ones made. A bridge that cannot be
    /// made is none (its network's starts fail saying so, and the next
    /// reload tries again); the first such failure is said.
    fn new_parts(&mut self, nl: &mut Rtnl, r: &Redefinition) -> (Parts, Option<String>) {
        let (mut bridges, mut pools, mut segments) = (Vec::new(), Vec::new(), Vec::new());
        let mut failed = None;
        for ((n, s), kept) in r.nets.iter().zip(&r.subnets).zip(&r.kept) {
            let (bridge, pool, segment) = match kept {
                Some(k) => (
                    self.bridges[*k].clone(),
                    std::mem::replace(&mut self.pools[*k], ipam::Pool::new(*s)),
                    std::mem::replace(&mut self.segments[*k], Segments::new()),
                ),
                None if n.cni().is_some() => (None, ipam::Pool::new(*s), Segments::new()),
                None => {
                    self.bridge_seq += 1;
                    let name = host::bridge_name(&self.tag, self.bridge_seq);
                    let gw6 = host::gateway6(&self.tag, n, *s);
                    let made = match host::make_bridge(nl, &name, n, *s, gw6) {
                        Ok(index) => Some(host::Bridge { name, index }),
                        Err(e) => {
                            failed.get_or_insert(format!("network {}: {e}", n.name));
                            None
                        }
                    };
                    (made, ipam::Pool::new(*s), Segments::new())
                }
            };
            bridges.push(bridge);
            pools.push(pool);
            segments.push(segment);
        }
        ((bridges, pools, segments), failed)
    }
}

/// Per network: its bridge, its addresses, its further bridges.
type Parts = (Vec<Option<host::Bridge>>, Vec<ipam::Pool>, Vec<Segments>);

/// Entries by network position, moved to the new positions of networks
/// kept; those of networks that went or changed dropped.
fn renumber<T>(v: &mut Vec<(usize, T)>, kept: &[Option<usize>]) {
    v.retain_mut(|(k, _)| match kept.iter().position(|o| *o == Some(*k)) {
        Some(j) => {
            *k = j;
            true
        }
        None => false,
    });
}
