//! The five capability sets of `process.capabilities`, resolved at plan time
//! and applied inside the sandbox by the init.

use std::collections::HashSet;
use std::str::FromStr;

use caps::{CapSet, Capability, CapsHashSet};
use oci_spec::runtime::LinuxCapabilities;

use crate::error::SpecError;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct CapSets {
    pub(crate) bounding: CapsHashSet,
    pub(crate) effective: CapsHashSet,
    pub(crate) permitted: CapsHashSet,
    pub(crate) inheritable: CapsHashSet,
    pub(crate) ambient: CapsHashSet,
    /// What the kernel supports beyond `bounding`: dropped from the
    /// bounding set at start. Known at plan time from cap_last_cap, so a
    /// start makes one prctl per capability dropped, none to probe.
    pub(crate) dropped: Vec<Capability>,
}

/// Docker's default set, used by `isola spec`.
pub(crate) const DOCKER_DEFAULT: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// Without `process.capabilities` every set is empty: a sandbox gets only
/// what its spec names.
/// Ambient capabilities the kernel would refuse (not in both permitted and
/// inheritable) are left out with a line in `warnings`, as runc and crun
/// do: `crun spec` and `runc spec` write such a set.
pub(crate) fn from_oci(
    c: Option<&LinuxCapabilities>,
    warnings: &mut Vec<String>,
) -> Result<CapSets, SpecError> {
    let Some(c) = c else {
        return Ok(with_dropped(CapSets::default()));
    };
    let set = |name: &str,
               v: &Option<oci_spec::runtime::Capabilities>|
     -> Result<CapsHashSet, SpecError> {
        let mut out = HashSet::new();
        for cap in v.iter().flatten() {
            let text = serde_json::to_value(cap)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            let parsed = Capability::from_str(&text).map_err(|_| {
                SpecError::new(
                    format!("process.capabilities.{name}"),
                    format!("{text}: unknown capability"),
                )
            })?;
            out.insert(parsed);
        }
        Ok(out)
    };
    let mut sets = CapSets {
        bounding: set("bounding", c.bounding())?,
        effective: set("effective", c.effective())?,
        permitted: set("permitted", c.permitted())?,
        inheritable: set("inheritable", c.inheritable())?,
        ambient: set("ambient", c.ambient())?,
        dropped: Vec::new(),
    };
    if let Some(extra) = sets.effective.difference(&sets.permitted).next() {
        return Err(SpecError::new(
            "process.capabilities.effective",
            format!("{extra} is not in permitted: the kernel would refuse it"),
        ));
    }
    let mut refused: Vec<String> = sets
        .ambient
        .iter()
        .filter(|a| !sets.permitted.contains(a) || !sets.inheritable.contains(a))
        .map(|a| a.to_string())
        .collect();
    if !refused.is_empty() {
        refused.sort();
        sets.ambient
            .retain(|a| sets.permitted.contains(a) && sets.inheritable.contains(a));
        warnings.push(format!(
            "process.capabilities.ambient: {} left out: not in both permitted and inheritable, the kernel would refuse it",
            refused.join(", ")
        ));
    }
    Ok(with_dropped(sets))
}

/// `sets` with [`CapSets::dropped`] filled in: from cap_last_cap, or by
/// probing each capability where /proc/sys cannot be read.
fn with_dropped(mut sets: CapSets) -> CapSets {
    let mut dropped: Vec<Capability> = supported()
        .iter()
        .copied()
        .filter(|c| !sets.bounding.contains(c))
        .collect();
    dropped.sort_by_key(|c| c.index());
    sets.dropped = dropped;
    sets
}

/// The kernel's capabilities, read once per process: a stack of 10,000
/// services read cap_last_cap 10,000 times otherwise (6 % of an upgrade).
fn supported() -> &'static [Capability] {
    static SUPPORTED: std::sync::OnceLock<Vec<Capability>> = std::sync::OnceLock::new();
    SUPPORTED.get_or_init(|| {
        caps::runtime::procfs_all_supported(None)
            .unwrap_or_else(|_| caps::runtime::thread_all_supported())
            .into_iter()
            .collect()
    })
}

/// Drop from the bounding set everything the spec does not keep. Needs
/// CAP_SETPCAP, so it runs before the user switch.
pub(crate) fn apply_bounding(sets: &CapSets) -> Result<(), String> {
    for cap in &sets.dropped {
        caps::drop(None, CapSet::Bounding, *cap)
            .map_err(|e| format!("drop {cap} from bounding set: {e}"))?;
    }
    // Whatever lies beyond what the plan knew of (a /proc/sys that hid the
    // true cap_last_cap, a capability newer than the `caps` crate) goes
    // too: numbers upwards until the kernel has no such capability — one
    // refused prctl in the usual case.
    let known = sets
        .dropped
        .iter()
        .chain(&sets.bounding)
        .map(Capability::index)
        .max();
    let mut next = known.map_or(0, |i| u32::from(i) + 1);
    loop {
        match crate::sys::capbset_drop(next) {
            Ok(()) => next += 1,
            Err(nix::errno::Errno::EINVAL) => return Ok(()),
            Err(e) => return Err(format!("drop capability {next} from bounding set: {e}")),
        }
    }
}

/// Set inheritable, effective, permitted and ambient, in an order capset(2)
/// accepts (inheritable while permitted is still full; effective before
/// permitted shrinks below it). Runs after the user switch, which kept the
/// permitted set through PR_SET_KEEPCAPS.
pub(crate) fn apply_process_sets(sets: &CapSets) -> Result<(), String> {
    caps::set(None, CapSet::Inheritable, &sets.inheritable)
        .map_err(|e| format!("set inheritable: {e}"))?;
    caps::set(None, CapSet::Effective, &sets.effective)
        .map_err(|e| format!("set effective: {e}"))?;
    caps::set(None, CapSet::Permitted, &sets.permitted)
        .map_err(|e| format!("set permitted: {e}"))?;
    caps::clear(None, CapSet::Ambient).map_err(|e| format!("clear ambient: {e}"))?;
    for cap in &sets.ambient {
        caps::raise(None, CapSet::Ambient, *cap)
            .map_err(|e| format!("raise ambient {cap}: {e}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_checks_subsets() {
        let c: LinuxCapabilities = serde_json::from_str(
            r#"{"bounding":["CAP_KILL","CAP_CHOWN"],"effective":["CAP_KILL"],"permitted":["CAP_KILL"],"inheritable":[],"ambient":[]}"#,
        )
        .unwrap();
        let mut warnings = Vec::new();
        let s = from_oci(Some(&c), &mut warnings).unwrap();
        assert_eq!(s.bounding.len(), 2);
        assert!(warnings.is_empty());
        assert!(s.effective.contains(&Capability::CAP_KILL));

        let c: LinuxCapabilities =
            serde_json::from_str(r#"{"effective":["CAP_KILL"],"permitted":[]}"#).unwrap();
        let e = from_oci(Some(&c), &mut warnings).unwrap_err();
        assert_eq!(e.field, "process.capabilities.effective");
    }

    #[test]
    fn ambient_the_kernel_would_refuse_is_left_out_with_a_warning() {
        // What `crun spec` writes: ambient NET_BIND_SERVICE, inheritable empty.
        let c: LinuxCapabilities = serde_json::from_str(
            r#"{"bounding":["CAP_KILL","CAP_NET_BIND_SERVICE"],"effective":["CAP_KILL","CAP_NET_BIND_SERVICE"],"permitted":["CAP_KILL","CAP_NET_BIND_SERVICE"],"inheritable":["CAP_KILL"],"ambient":["CAP_KILL","CAP_NET_BIND_SERVICE"]}"#,
        )
        .unwrap();
        let mut warnings = Vec::new();
        let s = from_oci(Some(&c), &mut warnings).unwrap();
        assert!(s.ambient.contains(&Capability::CAP_KILL));
        assert!(!s.ambient.contains(&Capability::CAP_NET_BIND_SERVICE));
        assert_eq!(warnings.len(), 1);
        assert!(warnings[0].contains("CAP_NET_BIND_SERVICE"), "{warnings:?}");
    }

    #[test]
    fn docker_defaults_are_known() {
        for c in DOCKER_DEFAULT {
            assert!(Capability::from_str(c).is_ok(), "{c}");
        }
    }

    #[test]
    fn absent_means_none() {
        let sets = from_oci(None, &mut Vec::new()).unwrap();
        assert!(sets.bounding.is_empty() && sets.permitted.is_empty() && sets.ambient.is_empty());
        // …so every capability the kernel has leaves the bounding set.
        let all = caps::runtime::thread_all_supported();
        assert_eq!(sets.dropped.len(), all.len());
        assert!(sets.dropped.contains(&Capability::CAP_SYS_ADMIN));
    }

    #[test]
    fn only_what_bounding_keeps_stays() {
        let c: LinuxCapabilities =
            serde_json::from_str(r#"{"bounding":["CAP_KILL"],"permitted":["CAP_KILL"]}"#).unwrap();
        let sets = from_oci(Some(&c), &mut Vec::new()).unwrap();
        assert!(!sets.dropped.contains(&Capability::CAP_KILL));
        assert_eq!(
            sets.dropped.len(),
            caps::runtime::thread_all_supported().len() - 1
        );
        let mut sorted = sets.dropped.clone();
        sorted.sort_by_key(|c| c.index());
        assert_eq!(sets.dropped, sorted);
    }
}
