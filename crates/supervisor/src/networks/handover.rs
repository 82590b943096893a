//! The stack's networks across an upgrade: the bridges, pairs and nftables
//! table stay in the kernel (nothing is made or removed), the nameserver's
//! sockets cross the exec (a query sent meanwhile waits in its socket),
//! and the addresses — each service's own and each running sandbox's —
//! go by service name, as indices may differ in the new binary. On CNI
//! networks the running sandboxes' attachments (what each ADD answered)
//! go over too, and the cache of them is the new binary's as it is: no
//! DEL runs for a sandbox that lives on.

use std::collections::HashMap;
use std::path::Path;

use isola_runtime::handover::{Incoming, Outgoing};
use nix::errno::Errno;

use super::dns::NameServer;
use super::host::Bridge;
use super::ipam::Pool;
use super::segments::Segments;
use super::{cni_cache, files_dir, CniRuns, Networks};
use crate::shell::context::{Ctx, ServiceIx};
use crate::spec::networks::{NetworkDef, Subnet};
use crate::spec::stack::ServiceDef;
use crate::upgrade::snapshot::NetworksRecord;

/// A table by sandbox, by service name.
fn by_name<T: Clone>(
    m: &HashMap<ServiceIx, Vec<T>>,
    name_of: &dyn Fn(ServiceIx) -> Option<String>,
) -> Vec<(String, Vec<T>)> {
    m.iter()
        .filter_map(|(i, v)| Some((name_of(*i)?, v.clone())))
        .collect()
}

/// A table by service name, by sandbox index again.
fn by_index<T: Clone>(
    v: &[(String, Vec<T>)],
    index_of: &dyn Fn(&str) -> Option<ServiceIx>,
) -> HashMap<ServiceIx, Vec<T>> {
    v.iter()
        .filter_map(|(n, x)| Some((index_of(n)?, x.clone())))
        .collect()
}

impl Networks {
    /// CNI plugins at work: an upgrade waits for them.
    pub(crate) fn busy(&self) -> bool {
        self.cni.busy()
    }

    /// Everything, sandboxes by service name; the nameserver's sockets
    /// kept across the exec.
    pub(crate) fn export(
        &self,
        out: &mut Outgoing,
        name_of: &dyn Fn(ServiceIx) -> Option<String>,
    ) -> Result<NetworksRecord, Errno> {
        let dns = match &self.names {
            Some(n) => n.export(out)?,
            None => return Err(Errno::EBUSY),
        };
        Ok(NetworksRecord {
            subnets: self.pools.iter().map(|p| p.subnet.to_string()).collect(),
            bridges: (self.bridges.iter())
                .map(|b| b.as_ref().map(|b| (b.name.clone(), b.index)))
                .collect(),
            segments: self.segments.iter().map(Segments::record).collect(),
            pools: self.pools.iter().map(|p| p.record(name_of)).collect(),
            ports: by_name(&self.ports, name_of),
            addrs: by_name(&self.addrs, name_of),
            seq: self.seq,
            bridge_seq: self.bridge_seq,
            dns,
            cni: self.cni.export(name_of),
        })
    }

    /// The networks an older binary ran, for the stack `defs` of `nets`.
    pub(crate) fn adopt(
        ctx: &mut Ctx<'_>,
        (rec, nets): (&NetworksRecord, Vec<NetworkDef>),
        (stack_root, control_socket): (&Path, &Path),
        index_of: &dyn Fn(&str) -> Option<ServiceIx>,
        fds: &mut Incoming,
    ) -> Result<Networks, String> {
        if rec.subnets.len() != nets.len() {
            return Err("networks: the snapshot's do not match the stack's".into());
        }
        let subnets = (rec.subnets.iter())
            .map(|s| Subnet::parse(s).ok_or(format!("networks: subnet {s}")))
            .collect::<Result<Vec<_>, _>>()?;
        let names = NameServer::adopt(ctx, &rec.dns, fds)?;
        Ok(Networks {
            tag: super::host::tag(stack_root),
            bridges: (rec.bridges.iter())
                .map(|b| {
                    b.as_ref().map(|(name, index)| Bridge {
                        name: name.clone(),
                        index: *index,
                    })
                })
                .collect(),
            segments: rec.segments.iter().map(Segments::restored).collect(),
            ports: by_index(&rec.ports, index_of),
            pools: (subnets.iter().zip(&rec.pools))
                .map(|(s, p)| Pool::restored(*s, p, index_of))
                .collect(),
            names: Some(names),
            known: vec![HashMap::new(); nets.len()],
            addrs: by_index(&rec.addrs, index_of),
            seq: rec.seq,
            bridge_seq: rec.bridge_seq,
            files: files_dir(control_socket, ""),
            cni: CniRuns::adopted(cni_cache(control_socket), &rec.cni, index_of),
            nets,
        })
    }

    /// After an adopt: the names the nameserver answers, the files.
    pub(crate) fn adopted<'a>(
        &mut self,
        defs: impl IntoIterator<Item = &'a ServiceDef>,
    ) -> Result<(), String> {
        self.set_members(defs)
    }
}
