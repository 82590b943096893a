//! Networks: the stack's private networks and what it takes for services
//! to find each other on them. Owns the bridges and the nftables table
//! (`host`), the subnets and addresses (`ipam`), the nameserver (`dns`)
//! and each service's `resolv.conf` and `hosts`. A start asks for its
//! interfaces ([`Networks::interfaces`]); the sandbox's own init makes
//! them. Nothing here exists for a stack without `networks`.

use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use isola_runtime::mounts::MountSpec;
use isola_runtime::net::{NetInterface, V6};

use crate::shell::context::{Ctx, ServiceIx};
use crate::spec::networks::{NetworkDef, Subnet};
use crate::spec::stack::ServiceDef;

mod cni;
mod dns;
mod handover;
mod host;
mod ipam;
mod lookup;
mod redefine;
mod segments;

pub(crate) use redefine::{apply as apply_change, plan as plan_change, NetChange};

use cni::CniRuns;
pub(crate) use cni::{Exited as CniExited, OpId as CniOp};
use dns::{Gateway, NameServer};
use host::Bridge;
use ipam::Pool;
use segments::Segments;

/// What `isola up` decided before its loop: the stack's tag and each
/// network's subnet (the host's leftovers of the stack removed first).
pub(crate) struct Prepared {
    tag: String,
    nets: Vec<NetworkDef>,
    subnets: Vec<Subnet>,
}

/// Clean what a killed supervisor of this stack left, then give each
/// network its subnet (`None`: the stack has none). A subnet that
/// overlaps the host's is the stack file's error (`Err(Ok)`); anything
/// else is the host's (`Err(Err)`).
pub(crate) fn prepare(
    stack_root: &Path,
    nets: &[NetworkDef],
) -> Result<Option<Prepared>, Result<String, String>> {
    if nets.is_empty() {
        return Ok(None);
    }
    let tag = host::tag(stack_root);
    host::clean(&tag).map_err(Err)?;
    let subnets = ipam::subnets(nets, &ipam::host_subnets()).map_err(Ok)?;
    Ok(Some(Prepared {
        tag,
        nets: nets.to_vec(),
        subnets,
    }))
}

/// Where the `resolv.conf` and `hosts` of the services whose first
/// network is `first` are kept: one pair per network (what they say is
/// that network's gateway), not one per service.
fn files_dir(control_socket: &Path, first: &str) -> PathBuf {
    let mut d = control_socket.as_os_str().to_owned();
    d.push(".net");
    PathBuf::from(d).join(first)
}

/// A service on networks gets our `resolv.conf` and `hosts` (bound over
/// the rootfs's, or the host's in host-root mode).
pub(crate) fn complete_plan(def: &mut ServiceDef, control_socket: &Path) {
    let Some(first) = def.policy.networks.first() else {
        return;
    };
    let dir = files_dir(control_socket, &first.network);
    for file in ["resolv.conf", "hosts"] {
        def.plan.mounts.push(MountSpec {
            destination: PathBuf::from("/etc").join(file),
            fstype: "bind".into(),
            source: Some(dir.join(file)),
            bind: true,
            recursive: false,
            flags: nix::mount::MsFlags::MS_NOSUID
                | nix::mount::MsFlags::MS_NODEV
                | nix::mount::MsFlags::MS_NOEXEC
                | nix::mount::MsFlags::MS_RDONLY,
            propagation: Vec::new(),
            data: String::new(),
        });
    }
}

pub(crate) struct Networks {
    tag: String,
    nets: Vec<NetworkDef>,
    /// isola's, by network (`None`: a CNI network, its plugins' bridge).
    bridges: Vec<Option<Bridge>>,
    /// By network: the bridges beyond its own, and who is on each.
    segments: Vec<Segments>,
    /// Which bridge of each network a running sandbox's pair is on.
    ports: HashMap<ServiceIx, Vec<(usize, usize)>>,
    pools: Vec<Pool>,
    /// `None` only while a reload rebinds it.
    names: Option<NameServer>,
    /// Per network: a name asked for → the services it stands for (a
    /// group's name: each replica).
    known: Vec<HashMap<String, Vec<String>>>,
    /// The addresses each running sandbox has, by network.
    addrs: HashMap<ServiceIx, Vec<(usize, Ipv4Addr)>>,
    /// Numbers the host ends of pairs.
    seq: u32,
    /// Numbers the bridges a reload adds.
    bridge_seq: usize,
    files: PathBuf,
    /// The plugins of CNI networks at work.
    cni: CniRuns,
}

/// The interfaces a start gets on its networks.
pub(crate) struct Attach {
    /// Made by its init, on isola's bridges.
    pub(crate) interfaces: Vec<NetInterface>,
    /// On a CNI network too: its init holds until the plugins ran.
    pub(crate) cni: bool,
}

impl Networks {
    /// [`Networks::start`] for a stack that has networks.
    pub(crate) fn start_if(
        ctx: &mut Ctx<'_>,
        p: Option<Prepared>,
        defs: &[ServiceDef],
        control_socket: &Path,
    ) -> Result<Option<Networks>, String> {
        p.map(|p| Networks::start(ctx, p, defs, control_socket))
            .transpose()
    }

    /// Bridges, rules, the nameserver, and the files of `defs`.
    pub(crate) fn start(
        ctx: &mut Ctx<'_>,
        p: Prepared,
        defs: &[ServiceDef],
        control_socket: &Path,
    ) -> Result<Networks, String> {
        let bridges = host::make_bridges(&p.tag, &p.nets, &p.subnets)?;
        let made = Made {
            tag: &p.tag,
            bridges: &bridges,
        };
        host::nft(&host::ruleset(&p.tag, &p.nets, &p.subnets, &bridges))
            .map_err(|e| made.undo(e))?;
        host::enable_forwarding(&p.nets).map_err(|e| made.undo(e))?;
        let mut n = Networks {
            pools: p.subnets.iter().map(|s| Pool::new(*s)).collect(),
            known: vec![HashMap::new(); p.nets.len()],
            segments: p.nets.iter().map(|_| Segments::new()).collect(),
            ports: HashMap::new(),
            tag: p.tag,
            bridge_seq: p.nets.len(),
            nets: p.nets,
            bridges,
            names: None,
            addrs: HashMap::new(),
            seq: 0,
            files: files_dir(control_socket, ""),
            cni: CniRuns::new(cni_cache(control_socket)),
        };
        if let Err(e) = n.bind_names(ctx).and_then(|()| n.set_members(defs)) {
            let _ = host::remove(&n.tag, &n.bridges);
            return Err(e);
        }
        Ok(n)
    }

    /// The nameserver on every network's gateway.
    fn bind_names(&mut self, ctx: &mut Ctx<'_>) -> Result<(), String> {
        // Not on a bridge a reload could not make.
        let at: Vec<Option<Gateway<'_>>> = self
            .nets
            .iter()
            .zip(&self.pools)
            .zip(&self.bridges)
            .map(|((n, p), b)| match (n.cni(), b) {
                (Some(c), _) => Some(Gateway {
                    addr: c.gateway,
                    device: None,
                }),
                (None, Some(b)) => Some(Gateway {
                    addr: p.subnet.gateway(),
                    device: Some(b.name.as_str()),
                }),
                (None, None) => None,
            })
            .collect();
        self.names = Some(NameServer::bind(ctx, &at)?);
        Ok(())
    }

    /// The services on the networks now (at start, and at each reload):
    /// their names and aliases, their files.
    pub(crate) fn set_members<'a>(
        &mut self,
        defs: impl IntoIterator<Item = &'a ServiceDef>,
    ) -> Result<(), String> {
        for k in &mut self.known {
            k.clear();
        }
        let mut on: Vec<HashSet<&str>> = vec![HashSet::new(); self.nets.len()];
        let mut firsts: HashSet<&str> = HashSet::new();
        for d in defs {
            let group = d.group_name();
            for a in &d.policy.networks {
                let Some(k) = self.nets.iter().position(|n| n.name == a.network) else {
                    continue;
                };
                on[k].insert(&d.name);
                let own = [group, d.name.as_str()];
                let mut names: Vec<String> = (own.into_iter())
                    .chain(a.aliases.iter().map(String::as_str))
                    .map(str::to_ascii_lowercase)
                    .collect();
                // Each once (a service's name is its group's; an alias may
                // repeat it): no search of a group's 10,000 entries.
                names.sort_unstable();
                names.dedup();
                for name in names {
                    self.known[k].entry(name).or_default().push(d.name.clone());
                }
            }
            if let Some(first) = d.policy.networks.first() {
                firsts.insert(&first.network);
            }
        }
        for first in firsts {
            self.write_files(first)?;
        }
        for (pool, names) in self.pools.iter_mut().zip(&on) {
            pool.keep_only(names);
        }
        Ok(())
    }

    fn write_files(&self, first: &str) -> Result<(), String> {
        let Some(k) = self.nets.iter().position(|n| n.name == first) else {
            return Ok(());
        };
        let dir = self.files.join(first);
        let gw = (self.nets[k].cni()).map_or(self.pools[k].subnet.gateway(), |c| c.gateway);
        let files = [
            (
                "resolv.conf",
                format!(
                    "# isola: the names of stack {}\nnameserver {gw}\n",
                    self.tag
                ),
            ),
            (
                "hosts",
                "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n".to_string(),
            ),
        ];
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        for (name, text) in files {
            let p = dir.join(name);
            // Written for an earlier replica, run or reload: left as it is
            // when it says the same.
            if std::fs::read_to_string(&p).is_ok_and(|t| t == text) {
                continue;
            }
            std::fs::write(&p, text).map_err(|e| format!("{}: {e}", p.display()))?;
        }
        Ok(())
    }

    /// The interfaces sandbox `i` of `def` starts with (none when it is on
    /// no network): an address on each of isola's, the host ends freshly
    /// named.
    pub(crate) fn interfaces(&mut self, i: ServiceIx, def: &ServiceDef) -> Result<Attach, String> {
        let mut out = Vec::new();
        let mut taken = Vec::new();
        let mut cni = false;
        for (eth, a) in def.policy.networks.iter().enumerate() {
            let Some(k) = self.nets.iter().position(|n| n.name == a.network) else {
                continue;
            };
            let Some(bridge) = self.bridges[k].as_ref() else {
                if self.nets[k].cni().is_none() {
                    return Err(format!(
                        "network {}: its bridge could not be made (see the reload's note; reload to try again)",
                        a.network
                    ));
                }
                cni = true;
                continue;
            };
            let pool = &mut self.pools[k];
            let Some(address) = pool.take(i, &def.name, a.ipv4) else {
                return Err(format!(
                    "network {}: no address left in {}",
                    a.network, pool.subnet
                ));
            };
            taken.push((k, address));
            let net = &self.nets[k];
            let port = self.segments[k].take(bridge, net.mtu)?;
            self.ports.entry(i).or_default().push((k, port.segment));
            self.seq = self.seq.wrapping_add(1);
            out.push(NetInterface {
                host: host::veth_name(&self.tag, self.seq),
                name: format!("eth{eth}"),
                bridge: port.bridge,
                gateway_bridge: bridge.index,
                mtu: net.mtu,
                address,
                prefix: pool.subnet.prefix,
                gateway: (!net.internal).then(|| pool.subnet.gateway()),
                bridge_address: pool.subnet.gateway(),
                v6: net.ipv6.then(|| {
                    let p = ipam::prefix6(&self.tag, pool.subnet);
                    V6 {
                        address: ipam::v6_of(p, address),
                        gateway: (!net.internal).then(|| ipam::v6_of(p, pool.subnet.gateway())),
                    }
                }),
            });
        }
        self.addrs.insert(i, taken);
        Ok(Attach {
            interfaces: out,
            cni,
        })
    }

    /// Sandbox `i` (init `init`) of `def` holds in its network namespace:
    /// the plugins of its CNI networks start (the reaper watches them).
    pub(crate) fn cni_add(
        &mut self,
        i: ServiceIx,
        init: nix::unistd::Pid,
        def: &ServiceDef,
    ) -> CniExited {
        let nets: Vec<_> = def
            .policy
            .networks
            .iter()
            .enumerate()
            .filter_map(|(eth, a)| {
                let n = self.nets.iter().find(|n| n.name == a.network)?;
                Some((n.name.as_str(), n.cni()?, format!("eth{eth}")))
            })
            .collect();
        let out = self.cni.add(i, init, &nets);
        self.record_cni(&out);
        out
    }

    /// A CNI plugin exited; when a sandbox's are all done, its addresses
    /// on them are known.
    pub(crate) fn cni_exited(&mut self, op: CniOp, status: isola_runtime::ExitStatus) -> CniExited {
        let out = self.cni.exited(op, status);
        self.record_cni(&out);
        out
    }

    /// The addresses a sandbox's ADDs gave it, by the networks' positions
    /// now.
    fn record_cni(&mut self, out: &CniExited) {
        let Some((i, Ok(addrs))) = &out.done else {
            return;
        };
        let nets = &self.nets;
        let on = addrs
            .iter()
            .filter_map(|(name, a)| Some((nets.iter().position(|n| &n.name == name)?, *a)));
        self.addrs.entry(*i).or_default().extend(on);
    }

    /// A reload: every running sandbox's CNI networks checked (CHECK).
    pub(crate) fn cni_check(&mut self) -> Vec<(nix::unistd::Pid, CniOp)> {
        self.cni.check_all()
    }

    /// The nearest deadline of a CNI plugin.
    pub(crate) fn deadline(&self) -> Option<std::time::Instant> {
        self.cni.deadline()
    }

    /// Plugins past their deadline are killed.
    pub(crate) fn on_time(&mut self, now: std::time::Instant) {
        self.cni.expire(now);
    }

    /// Sandbox `i` is gone: its addresses are free (its pairs went with
    /// its namespace); on CNI networks, the plugins' DEL starts (the
    /// reaper watches them).
    pub(crate) fn run_ended(&mut self, i: ServiceIx) -> Vec<(nix::unistd::Pid, CniOp)> {
        self.addrs.remove(&i);
        for p in &mut self.pools {
            p.release(i);
        }
        for (k, segment) in self.ports.remove(&i).unwrap_or_default() {
            if let Some(s) = self.segments.get_mut(k) {
                s.release(segment);
            }
        }
        self.cni.remove(i)
    }

    /// At exit: the bridges and rules go (the pairs went with their
    /// sandboxes).
    /// A reload dropped every network: the CNI DELs start (the reaper
    /// collects them), then the rest goes as at exit.
    pub(crate) fn stop(&mut self) -> (Vec<(nix::unistd::Pid, CniOp)>, Option<String>) {
        let plugins = self.cni.remove_all();
        let _ = std::fs::remove_dir_all(&self.files);
        if let Ok(mut nl) = isola_runtime::net::Rtnl::open() {
            for s in &mut self.segments {
                s.remove(&mut nl);
            }
        }
        (plugins, host::remove(&self.tag, &self.bridges).err())
    }

    pub(crate) fn finish(&mut self) -> Option<String> {
        self.cni.finish();
        if let Ok(mut nl) = isola_runtime::net::Rtnl::open() {
            for s in &mut self.segments {
                s.remove(&mut nl);
            }
        }
        let _ = std::fs::remove_dir_all(&self.files);
        host::remove(&self.tag, &self.bridges).err()
    }
}

/// Where the results of CNI ADDs are kept for their DEL.
fn cni_cache(control_socket: &Path) -> PathBuf {
    let mut d = control_socket.as_os_str().to_owned();
    d.push(".cni");
    PathBuf::from(d)
}

/// What `start` made so far, removed again when a later step fails.
struct Made<'a> {
    tag: &'a str,
    bridges: &'a [Option<Bridge>],
}

impl Made<'_> {
    fn undo(&self, why: String) -> String {
        let _ = host::remove(self.tag, self.bridges);
        why
    }
}
