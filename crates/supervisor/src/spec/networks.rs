//! Stack networks: `networks` at the top of a stack file (name → its
//! definition) and on a service (the networks it is on, by name or with
//! aliases and a fixed address). Read and checked here, without the host:
//! what depends on the host (a subnet free of its routes, picking one) is
//! `networks::plan`'s.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::Ipv4Addr;
use std::path::Path;

use isola_runtime::SpecError;
use serde_json::Value;

pub mod cni;
pub use cni::Cni;

/// An IPv4 subnet: `10.89.7.0/24`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Subnet {
    pub net: Ipv4Addr,
    pub prefix: u8,
}

impl Subnet {
    pub fn parse(s: &str) -> Option<Subnet> {
        let (a, p) = s.split_once('/')?;
        let addr: Ipv4Addr = a.parse().ok()?;
        let prefix: u8 = p.parse().ok()?;
        // Room for the gateway and at least one service.
        if !(8..=29).contains(&prefix) {
            return None;
        }
        let s = Subnet { net: addr, prefix };
        (s.network() == addr).then_some(s)
    }

    fn mask(self) -> u32 {
        u32::MAX << (32 - u32::from(self.prefix))
    }

    pub fn network(self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.net) & self.mask())
    }

    pub fn contains(self, a: Ipv4Addr) -> bool {
        u32::from(a) & self.mask() == u32::from(self.net)
    }

    pub fn overlaps(self, o: Subnet) -> bool {
        let m = self.mask().min(o.mask());
        u32::from(self.net) & m == u32::from(o.net) & m
    }

    /// The first host address: the bridge's, the services' gateway and
    /// nameserver.
    pub fn gateway(self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.net) + 1)
    }

    /// The `k`-th address a service may have (0: the one after the
    /// gateway), if the subnet has it (the broadcast address is not one).
    pub fn host(self, k: u32) -> Option<Ipv4Addr> {
        let size = 1u32 << (32 - u32::from(self.prefix));
        let off = k.checked_add(2)?;
        (off < size - 1).then(|| Ipv4Addr::from(u32::from(self.net) + off))
    }

    /// Which `k` an address is ([`Subnet::host`]'s inverse).
    pub fn index_of(self, a: Ipv4Addr) -> Option<u32> {
        let off = u32::from(a).checked_sub(u32::from(self.net))?;
        let k = off.checked_sub(2)?;
        (self.contains(a) && self.host(k) == Some(a)).then_some(k)
    }
}

impl fmt::Display for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.net, self.prefix)
    }
}

/// A network of the stack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkDef {
    pub name: String,
    /// `None`: isola picks a free /24 at `isola up`.
    pub subnet: Option<Subnet>,
    /// No traffic leaves it: no route out, no NAT.
    pub internal: bool,
    pub mtu: Option<u32>,
    /// An IPv6 /64 beside the IPv4 subnet (a unique local prefix).
    pub ipv6: bool,
    pub driver: Driver,
}

/// Who makes a network's interfaces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Driver {
    /// isola: a bridge, and veth pairs its sandboxes' inits make.
    Bridge,
    /// The CNI plugins of a configuration list, run by the supervisor.
    Cni(Box<Cni>),
}

impl NetworkDef {
    pub fn cni(&self) -> Option<&Cni> {
        match &self.driver {
            Driver::Cni(c) => Some(c),
            Driver::Bridge => None,
        }
    }
}

/// A service's place on a network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    pub network: String,
    /// More names it answers to there.
    pub aliases: Vec<String>,
    /// A fixed address (else the next free one, kept across restarts).
    pub ipv4: Option<Ipv4Addr>,
}

/// The top-level `networks`, in name order.
pub fn parse_stack(v: &Value, base_dir: &Path) -> Result<Vec<NetworkDef>, SpecError> {
    let Value::Object(m) = v else {
        return Err(SpecError::new(
            "networks",
            format!("{v}: want an object of networks"),
        ));
    };
    let mut out = Vec::new();
    for (name, def) in m {
        let at = format!("networks.{name}");
        check_dns_name(name).map_err(|why| SpecError::new(&at, why))?;
        out.push(parse_network(name, def, &at, base_dir)?);
    }
    let sorted: BTreeMap<_, _> = out.into_iter().map(|n| (n.name.clone(), n)).collect();
    let out: Vec<NetworkDef> = sorted.into_values().collect();
    for (k, a) in out.iter().enumerate() {
        for b in &out[..k] {
            if let (Some(x), Some(y)) = (a.subnet, b.subnet) {
                if x.overlaps(y) {
                    return Err(SpecError::new(
                        format!("networks.{}.subnet", a.name),
                        format!("{x}: overlaps {} of network {}", y, b.name),
                    ));
                }
            }
        }
    }
    Ok(out)
}

fn parse_network(
    name: &str,
    v: &Value,
    at: &str,
    base_dir: &Path,
) -> Result<NetworkDef, SpecError> {
    let Value::Object(m) = v else {
        return Err(SpecError::new(at, format!("{v}: want an object")));
    };
    let mut def = NetworkDef {
        name: name.to_string(),
        subnet: None,
        internal: false,
        mtu: None,
        ipv6: false,
        driver: Driver::Bridge,
    };
    let mut driver = "bridge";
    for (k, v) in m {
        let f = format!("{at}.{k}");
        match (k.as_str(), v) {
            ("subnet", Value::String(s)) => {
                def.subnet = Some(Subnet::parse(s).ok_or_else(|| {
                    SpecError::new(&f, format!("`{s}`: want an IPv4 network like 10.89.7.0/24 (prefix 8 to 29, host bits zero)"))
                })?);
            }
            ("internal", Value::Bool(b)) => def.internal = *b,
            ("ipv6", Value::Bool(b)) => def.ipv6 = *b,
            ("mtu", Value::Number(n)) => {
                let mtu = n.as_u64().filter(|m| (576..=65535).contains(m));
                def.mtu = Some(
                    mtu.and_then(|m| u32::try_from(m).ok())
                        .ok_or_else(|| SpecError::new(&f, format!("{n}: must be 576 to 65535")))?,
                );
            }
            ("driver", Value::String(d)) if d == "bridge" || d == "cni" => driver = d,
            ("driver", v) => {
                return Err(SpecError::new(
                    f,
                    format!("{v}: want \"bridge\" or \"cni\""),
                ))
            }
            ("cni", v) => def.driver = Driver::Cni(Box::new(cni::parse(v, &f, base_dir)?)),
            ("subnet" | "internal" | "ipv6" | "mtu", v) => {
                return Err(SpecError::new(f, format!("{v}: wrong type")))
            }
            _ => {
                return Err(SpecError::new(
                    f,
                    "unknown field (subnet, internal, ipv6, mtu, driver, cni)",
                ))
            }
        }
    }
    check_driver(driver, &def, at)?;
    if def.ipv6 && def.mtu.is_some_and(|m| m < 1280) {
        return Err(SpecError::new(
            format!("{at}.mtu"),
            format!("{}: IPv6 needs 1280 or more", def.mtu.unwrap_or(0)),
        ));
    }
    Ok(def)
}

/// `cni` goes with `"driver": "cni"`, which takes its subnet, MTU and
/// reach from the configuration list.
fn check_driver(driver: &str, def: &NetworkDef, at: &str) -> Result<(), SpecError> {
    match (driver, &def.driver) {
        ("cni", Driver::Bridge) => Err(SpecError::new(
            format!("{at}.cni"),
            "missing: \"driver\": \"cni\" needs {\"conflist\": PATH}",
        )),
        ("bridge", Driver::Cni(_)) => Err(SpecError::new(
            format!("{at}.cni"),
            "only with \"driver\": \"cni\"",
        )),
        ("cni", _) if def.subnet.is_some() || def.internal || def.mtu.is_some() || def.ipv6 => {
            Err(SpecError::new(
                at,
                "subnet, internal, mtu and ipv6 of a cni network are its configuration list's",
            ))
        }
        _ => Ok(()),
    }
}

/// A service's `networks`: names, or `{name, aliases?, ipv4?}`.
pub fn parse_service(v: &Value, at: &str) -> Result<Vec<Attachment>, SpecError> {
    let Value::Array(items) = v else {
        return Err(SpecError::new(at, format!("{v}: want a list of networks")));
    };
    let mut out: Vec<Attachment> = Vec::new();
    for (k, item) in items.iter().enumerate() {
        let f = format!("{at}[{k}]");
        let a = match item {
            Value::String(name) => Attachment {
                network: name.clone(),
                aliases: Vec::new(),
                ipv4: None,
            },
            Value::Object(_) => parse_attachment(item, &f)?,
            _ => {
                return Err(SpecError::new(
                    f,
                    format!("{item}: want a name or an object"),
                ))
            }
        };
        if out.iter().any(|o| o.network == a.network) {
            return Err(SpecError::new(f, format!("{}: listed twice", a.network)));
        }
        out.push(a);
    }
    Ok(out)
}

fn parse_attachment(v: &Value, at: &str) -> Result<Attachment, SpecError> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct A {
        name: String,
        #[serde(default)]
        aliases: Vec<String>,
        ipv4: Option<String>,
    }
    let a: A = super::field(v, at)?;
    for (k, alias) in a.aliases.iter().enumerate() {
        check_dns_name(alias).map_err(|why| SpecError::new(format!("{at}.aliases[{k}]"), why))?;
    }
    let ipv4 = match &a.ipv4 {
        Some(s) => Some(s.parse::<Ipv4Addr>().map_err(|_| {
            SpecError::new(format!("{at}.ipv4"), format!("`{s}`: not an IPv4 address"))
        })?),
        None => None,
    };
    Ok(Attachment {
        network: a.name,
        aliases: a.aliases,
        ipv4,
    })
}

/// A name the nameserver answers for: labels of letters, digits, `-` and
/// `_`, 1 to 63 bytes each, 253 in all.
pub fn check_dns_name(name: &str) -> Result<(), String> {
    let ok_label = |l: &str| {
        (1..=63).contains(&l.len())
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if name.len() <= 253 && name.split('.').all(ok_label) {
        Ok(())
    } else {
        Err(format!(
            "`{name}`: not a name DNS can carry (labels of letters, digits, - and _, up to 63 each)"
        ))
    }
}

/// A service as the network checks see it.
pub struct Member<'a> {
    pub name: &'a str,
    /// A replica's group (the name it shares with its siblings).
    pub group: Option<&'a str>,
    pub attachments: &'a [Attachment],
    /// It makes its own network namespace (not joined by path).
    pub own_netns: bool,
    /// It has a user namespace (its init could not reach the host's
    /// bridges).
    pub user_ns: bool,
}

/// What the stack's services say about its networks, checked together:
/// every network named exists, members have their own network namespace,
/// no two services claim one alias or address on a network.
pub fn check_members(nets: &[NetworkDef], members: &[Member<'_>]) -> Result<(), SpecError> {
    let mut names: HashMap<(&str, String), &str> = HashMap::new();
    let mut fixed: HashMap<(&str, Ipv4Addr), &str> = HashMap::new();
    for m in members {
        let svc = m.group.unwrap_or(m.name);
        let at = |k: usize| format!("services.{svc}.networks[{k}]");
        if !m.attachments.is_empty() && !m.own_netns {
            return Err(SpecError::new(
                format!("services.{svc}.networks"),
                "needs its own network namespace (linux.namespaces: {\"type\": \"network\"}, no path)",
            ));
        }
        if !m.attachments.is_empty() && m.user_ns {
            return Err(SpecError::new(
                format!("services.{svc}.networks"),
                "not with a user namespace yet (its init makes the interfaces, from the host's side)",
            ));
        }
        for (k, a) in m.attachments.iter().enumerate() {
            let Some(net) = nets.iter().find(|n| n.name == a.network) else {
                return Err(SpecError::new(
                    at(k),
                    format!("{}: no such network", a.network),
                ));
            };
            check_fixed(net, a, m, &at(k), &mut fixed)?;
            let own = [svc].into_iter().chain(m.group.map(|_| m.name));
            // Names are looked up without case, as DNS does.
            for n in own.chain(a.aliases.iter().map(String::as_str)) {
                match names.insert((net.name.as_str(), n.to_ascii_lowercase()), svc) {
                    Some(other) if other != svc => {
                        return Err(SpecError::new(
                            at(k),
                            format!("{n}: already a name of {other} on network {}", net.name),
                        ))
                    }
                    _ => {}
                }
            }
        }
    }
    Ok(())
}

fn check_fixed<'a>(
    net: &'a NetworkDef,
    a: &Attachment,
    m: &Member<'a>,
    at: &str,
    fixed: &mut HashMap<(&'a str, Ipv4Addr), &'a str>,
) -> Result<(), SpecError> {
    let Some(ip) = a.ipv4 else { return Ok(()) };
    let at = format!("{at}.ipv4");
    if m.group.is_some() {
        return Err(SpecError::new(
            at,
            format!("{ip}: a replicated service cannot have one fixed address"),
        ));
    }
    if net.cni().is_some() {
        return Err(SpecError::new(
            at,
            format!("{ip}: addresses on a cni network are its IPAM's"),
        ));
    }
    let Some(sub) = net.subnet else {
        return Err(SpecError::new(
            at,
            format!(
                "{ip}: give network {} a subnet to fix addresses on it",
                net.name
            ),
        ));
    };
    {
        if sub.index_of(ip).is_none() {
            return Err(SpecError::new(
                at,
                format!("{ip}: not a service address of {sub} (the first is the gateway's)"),
            ));
        }
    }
    if let Some(other) = fixed.insert((net.name.as_str(), ip), m.name) {
        return Err(SpecError::new(at, format!("{ip}: taken by {other}")));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
