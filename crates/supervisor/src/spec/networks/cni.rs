//! `"driver": "cni"`: a network made by the standard CNI plugins from a
//! network configuration list (`{"cni": {"conflist": PATH}}`), for hosts
//! that already run Flannel, Calico or the reference plugins. Read and
//! checked at load: the file, its plugins found where CNI keeps them, and
//! the subnet and gateway its IPAM hands out (isola's nameserver listens
//! on that gateway).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use isola_runtime::SpecError;
use serde_json::Value;

use super::Subnet;

/// Where plugins are looked for (`CNI_PATH`): the upstream default, then
/// Debian's `containernetworking-plugins`.
pub const CNI_PATH: &str = "/opt/cni/bin:/usr/lib/cni";

/// A CNI network's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cni {
    pub conflist: PathBuf,
    /// `name` of the list (the plugins key their state by it).
    pub name: String,
    pub version: String,
    /// The plugins in order, each `{"type": …, …}`.
    pub plugins: Vec<Value>,
    /// What the IPAM hands out; its gateway answers names.
    pub subnet: Subnet,
    pub gateway: Ipv4Addr,
    /// Its plugins take CHECK: version 0.4.0 or later, and the list does
    /// not say `disableCheck`.
    pub check: bool,
}

/// The plugin binary named `kind`, from [`CNI_PATH`].
pub fn plugin_path(kind: &str) -> Option<PathBuf> {
    if kind.is_empty() || kind.contains('/') {
        return None;
    }
    CNI_PATH
        .split(':')
        .map(|d| Path::new(d).join(kind))
        .find(|p| p.is_file())
}

/// `{"conflist": PATH}` (relative to the stack file's directory).
pub fn parse(v: &Value, at: &str, base_dir: &Path) -> Result<Cni, SpecError> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct C {
        conflist: PathBuf,
    }
    let c: C = super::super::field(v, at)?;
    let path = base_dir.join(&c.conflist);
    let f = format!("{at}.conflist");
    let bad = |why: String| SpecError::new(&f, format!("{}: {why}", path.display()));
    let text = std::fs::read_to_string(&path).map_err(|e| bad(e.to_string()))?;
    let list: Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let text_of = |k: &str| list.get(k).and_then(Value::as_str).map(str::to_string);
    let (Some(name), Some(version)) = (text_of("name"), text_of("cniVersion")) else {
        return Err(bad(
            "want a network configuration list with name and cniVersion".into(),
        ));
    };
    let plugins = match list.get("plugins").and_then(Value::as_array) {
        Some(p) if !p.is_empty() => p.clone(),
        _ => return Err(bad("no plugins".into())),
    };
    for p in &plugins {
        let kind = p.get("type").and_then(Value::as_str).unwrap_or("");
        if plugin_path(kind).is_none() {
            return Err(bad(format!("plugin `{kind}` not found in {CNI_PATH}")));
        }
    }
    let (subnet, gateway) = plugins
        .iter()
        .find_map(|p| ipam_range(p.get("ipam")?))
        .ok_or_else(|| {
            bad("no IPAM subnet (isola answers names on its gateway: use host-local or static with a subnet)".into())
        })?;
    let check = allows_check(&version) && list.get("disableCheck") != Some(&Value::Bool(true));
    Ok(Cni {
        conflist: path,
        name,
        version,
        plugins,
        subnet,
        gateway,
        check,
    })
}

/// CHECK came with CNI 0.4.0.
fn allows_check(version: &str) -> bool {
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (major, minor) >= (0, 4)
}

/// host-local's `ranges[0][0]` (or the older `subnet`): the subnet and its
/// gateway, the first address unless it names one.
fn ipam_range(ipam: &Value) -> Option<(Subnet, Ipv4Addr)> {
    let range = ipam
        .get("ranges")
        .and_then(|r| r.get(0)?.get(0))
        .unwrap_or(ipam);
    let subnet = Subnet::parse(range.get("subnet")?.as_str()?)?;
    let gateway = match range.get("gateway").and_then(Value::as_str) {
        Some(g) => g.parse().ok()?,
        None => subnet.gateway(),
    };
    Some((subnet, gateway))
}

#[cfg(test)]
mod tests {
    #[test]
    fn check_came_with_0_4_0() {
        for (v, want) in [
            ("0.3.1", false),
            ("0.4.0", true),
            ("1.0.0", true),
            ("x", false),
        ] {
            assert_eq!(super::allows_check(v), want, "{v}");
        }
    }
}
