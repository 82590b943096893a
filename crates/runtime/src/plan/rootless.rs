//! A plan for an unprivileged caller: the sandbox gets a user namespace of
//! its own, where the caller's uid and gid are root (as `unshare -r` and
//! podman rootless do), widened to the caller's `/etc/subuid` and
//! `/etc/subgid` ranges when the setuid helpers that may write such maps
//! (`newuidmap`, `newgidmap`) are installed. Inside, the sandbox has every
//! capability of its namespace and none over the host: whatever it does
//! stays within the caller's own rights.

use oci_spec::runtime::Linux;

use super::fields::id_map;
use crate::error::SpecError;
use crate::plan::{Dialect, Plan};

static FOR_NAMESPACE_ROOT: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// Plans read from now on are a supervisor's that is root of a user
/// namespace of its own (a user's stack with networks, read by `isola
/// exec` from outside it): they get no user namespace of their own.
pub fn plans_for_namespace_root() {
    FOR_NAMESPACE_ROOT.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// Whether this process lacks the host's privileges: it is not root, or
/// it is root of a user namespace other than the host's (podman rootless
/// runs its OCI runtime so; crun and runc tell it the same way). Read once.
pub fn unprivileged() -> bool {
    static UNPRIVILEGED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *UNPRIVILEGED.get_or_init(|| {
        !nix::unistd::geteuid().is_root()
            || std::fs::read_to_string("/proc/self/uid_map")
                .map(|m| !is_initial_map(&m))
                .unwrap_or(false)
    })
}

/// The initial user namespace's map: every id to itself.
fn is_initial_map(map: &str) -> bool {
    let f: Vec<&str> = map.split_whitespace().collect();
    f == ["0", "0", "4294967295"]
}

/// One `/etc/subuid` (or subgid) range: `count` host ids from `start`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubRange {
    pub start: u32,
    pub count: u32,
}

/// The ids an unprivileged caller owns: its own, and its subordinate
/// ranges when the helpers can map them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedIds {
    pub uid: u32,
    pub gid: u32,
    pub sub_uids: Vec<SubRange>,
    pub sub_gids: Vec<SubRange>,
}

impl OwnedIds {
    /// The caller's, or `None` for root (nothing to adapt); read once.
    pub fn of_caller() -> Option<&'static OwnedIds> {
        static CALLER: std::sync::OnceLock<Option<OwnedIds>> = std::sync::OnceLock::new();
        if FOR_NAMESPACE_ROOT.load(std::sync::atomic::Ordering::Relaxed) {
            return None;
        }
        CALLER.get_or_init(OwnedIds::read).as_ref()
    }

    /// The caller's, read now (not kept: a process about to become root
    /// of a user namespace of its own must not adapt plans for it later).
    pub fn read() -> Option<OwnedIds> {
        let uid = nix::unistd::geteuid();
        if uid.is_root() {
            return None;
        }
        let gid = nix::unistd::getegid().as_raw();
        let name = nix::unistd::User::from_uid(uid)
            .ok()
            .flatten()
            .map(|u| u.name);
        let uid = uid.as_raw();
        let helpers = crate::sandbox::id_maps::helpers_present();
        let ranges = |file: &str, id: u32| {
            if !helpers {
                return Vec::new();
            }
            std::fs::read_to_string(file)
                .map(|t| sub_ranges(&t, name.as_deref(), id))
                .unwrap_or_default()
        };
        Some(OwnedIds {
            uid,
            gid,
            sub_uids: ranges("/etc/subuid", uid),
            sub_gids: ranges("/etc/subgid", uid),
        })
    }

    /// The ids a sandbox may use, as a user reads them.
    fn describe(&self, kind: &str, own: u32, subs: &[SubRange]) -> String {
        let mut s = format!("0 (your {kind} {own})");
        let mut next = 1u64;
        for r in subs {
            let last = next + u64::from(r.count) - 1;
            let host_last = u64::from(r.start) + u64::from(r.count) - 1;
            s.push_str(&format!(
                ", {next}-{last} (/etc/sub{kind} {}-{host_last})",
                r.start
            ));
            next = last + 1;
        }
        if subs.is_empty() {
            s.push_str(&format!(
                "; more with ranges in /etc/sub{kind} and newuidmap/newgidmap (Debian uidmap)"
            ));
        }
        s
    }
}

/// `/etc/subuid` lines `NAME-or-ID:START:COUNT` that belong to the caller.
fn sub_ranges(text: &str, name: Option<&str>, id: u32) -> Vec<SubRange> {
    let id = id.to_string();
    text.lines()
        .filter_map(|l| {
            let mut f = l.trim().splitn(3, ':');
            let (who, start, count) = (f.next()?, f.next()?, f.next()?);
            if who != id && Some(who) != name {
                return None;
            }
            let start = start.trim().parse().ok()?;
            let count: u32 = count.trim().parse().ok()?;
            (count > 0).then_some(SubRange { start, count })
        })
        .collect()
}

/// The map text: our own id at 0, the ranges from 1 on.
pub fn map_text(own: u32, subs: &[SubRange]) -> String {
    let mut m = format!("0 {own} 1\n");
    let mut next = 1u64;
    for r in subs {
        m.push_str(&format!("{next} {} {}\n", r.start, r.count));
        next += u64::from(r.count);
    }
    m
}

/// How many ids inside the namespace are mapped: 0..len.
fn mapped_len(subs: &[SubRange]) -> u64 {
    1 + subs.iter().map(|r| u64::from(r.count)).sum::<u64>()
}

/// Give `plan` a user namespace of its own mapping `ids`, unless the spec
/// made and mapped one itself (its maps are then the caller's to get
/// right: the kernel or the helpers refuse what the caller does not
/// own); a map the spec leaves out is ours. The payload's ids must be
/// among the mapped ones.
pub(crate) fn adapt(plan: &mut Plan, ids: &OwnedIds) -> Result<(), SpecError> {
    if !plan.join.is_empty() {
        // Joined first, a user namespace of the user's own (rootlesskit's,
        // pasta's) owns the others: fine. Otherwise the joined ones are
        // owned by a namespace we hold no capability in.
        let joins_user = plan
            .join
            .iter()
            .any(|(f, _)| f.contains(nix::sched::CloneFlags::CLONE_NEWUSER));
        if joins_user {
            return Ok(());
        }
        let (flags, path) = &plan.join[0];
        return Err(SpecError::new(
            "linux.namespaces",
            format!(
                "{flags:?} by path ({}): an unprivileged caller joins namespaces only with the user namespace that owns them (add it by path)",
                path.display()
            ),
        ));
    }
    if plan.new_user_ns() && plan.uid_map.is_some() && plan.gid_map.is_some() {
        return Ok(());
    }
    plan.clone_flags |= libc::CLONE_NEWUSER as u64;
    if plan.uid_map.is_none() {
        plan.uid_map = Some(map_text(ids.uid, &ids.sub_uids));
    }
    if plan.gid_map.is_none() {
        plan.gid_map = Some(map_text(ids.gid, &ids.sub_gids));
    }
    ids.check(plan.uid, plan.gid, &plan.additional_gids)
        .map_err(|(field, message)| SpecError::new(field, message))?;
    drop_unmapped_devpts_gid(plan, mapped_len(&ids.sub_gids));
    Ok(())
}

impl OwnedIds {
    /// Whether a payload's `uid`, `gid` and `additional` gids are among
    /// the ids these map; else the field (under `process.user`) and why.
    pub fn check(&self, uid: u32, gid: u32, additional: &[u32]) -> Result<(), (String, String)> {
        if u64::from(uid) >= mapped_len(&self.sub_uids) {
            let own = self.describe("uid", self.uid, &self.sub_uids);
            return Err((
                "process.user.uid".into(),
                format!("{uid} is outside the uids you own: {own}"),
            ));
        }
        let gids = mapped_len(&self.sub_gids);
        let own = || self.describe("gid", self.gid, &self.sub_gids);
        if u64::from(gid) >= gids {
            return Err((
                "process.user.gid".into(),
                format!("{gid} is outside the gids you own: {}", own()),
            ));
        }
        if let Some((i, g)) = additional
            .iter()
            .enumerate()
            .find(|(_, g)| u64::from(**g) >= gids)
        {
            return Err((
                format!("process.user.additionalGids[{i}]"),
                format!("{g} is outside the gids you own: {}", own()),
            ));
        }
        if !additional.is_empty() && self.sub_gids.is_empty() {
            // Without newgidmap the gid map is written with setgroups denied.
            return Err((
                "process.user.additionalGids".into(),
                "needs ranges in /etc/subgid and newgidmap (Debian uidmap): without them setgroups is denied in your user namespace".into(),
            ));
        }
        Ok(())
    }
}

/// A devpts mount's `gid=5` (tty) needs gid 5 mapped, or the mount fails
/// with EINVAL: without it the ptys belong to the sandbox's root group,
/// as runc does rootless.
fn drop_unmapped_devpts_gid(plan: &mut Plan, gids: u64) {
    for m in plan.mounts.iter_mut().filter(|m| m.fstype == "devpts") {
        let unmapped = |o: &&str| {
            o.strip_prefix("gid=")
                .and_then(|g| g.parse::<u64>().ok())
                .is_some_and(|g| g >= gids)
        };
        m.data = m
            .data
            .split(',')
            .filter(|o| !unmapped(o))
            .collect::<Vec<_>>()
            .join(",");
    }
}

/// `linux.uidMappings` and `linux.gidMappings`: with a new user namespace
/// (which needs them) and only then.
pub(super) fn id_maps(
    linux: &Linux,
    clone_flags: u64,
    dialect: Dialect,
) -> Result<(Option<String>, Option<String>), SpecError> {
    let new_user = clone_flags & libc::CLONE_NEWUSER as u64 != 0;
    // An unprivileged caller's own ids fill a user namespace an isola
    // spec leaves unmapped (`crun spec --rootless` writes one so): see
    // `rootless::adapt`. An OCI bundle's maps are its client's to give.
    let fill = new_user && dialect == Dialect::Isola && OwnedIds::of_caller().is_some();
    let map = |field, v: &Option<Vec<_>>| match v.as_ref().is_none_or(|m| m.is_empty()) && fill {
        true => Ok(None),
        false => id_map(field, v, new_user),
    };
    let uid_map = map("linux.uidMappings", linux.uid_mappings())?;
    let gid_map = map("linux.gidMappings", linux.gid_mappings())?;
    Ok((uid_map, gid_map))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(subs: bool) -> OwnedIds {
        let r = vec![SubRange {
            start: 100_000,
            count: 65_536,
        }];
        OwnedIds {
            uid: 1000,
            gid: 1000,
            sub_uids: if subs { r.clone() } else { Vec::new() },
            sub_gids: if subs { r } else { Vec::new() },
        }
    }

    #[test]
    fn ranges_are_the_callers_by_name_or_id() {
        let t = "alice:100000:65536\n1000:300000:10\nbob:200000:65536\nbad line\n";
        let got = sub_ranges(t, Some("alice"), 1000);
        assert_eq!(
            got,
            vec![
                SubRange {
                    start: 100_000,
                    count: 65_536
                },
                SubRange {
                    start: 300_000,
                    count: 10
                }
            ]
        );
        assert!(sub_ranges(t, Some("carol"), 1001).is_empty());
    }

    #[test]
    fn only_the_full_identity_map_is_the_hosts() {
        assert!(is_initial_map("         0          0 4294967295\n"));
        assert!(!is_initial_map("0 1000 1\n1 100000 65536\n"));
        assert!(!is_initial_map("0 0 1\n"));
    }

    #[test]
    fn maps_own_id_at_root_and_ranges_after() {
        assert_eq!(map_text(1000, &[]), "0 1000 1\n");
        assert_eq!(
            map_text(1000, &ids(true).sub_uids),
            "0 1000 1\n1 100000 65536\n"
        );
    }

    fn plan(uid: u32) -> Plan {
        let spec = crate::spec::parse_str(
            &format!(r#"{{"process":{{"args":["true"],"cwd":"/","user":{{"uid":{uid},"gid":0}}}},"linux":{{"namespaces":[{{"type":"pid"}},{{"type":"mount"}}]}}}}"#),
            std::path::Path::new("/"),
        )
        .unwrap();
        Plan::read(&spec, crate::plan::Dialect::Isola).unwrap()
    }

    #[test]
    fn a_user_namespace_is_added_and_ids_checked() {
        let mut p = plan(0);
        adapt(&mut p, &ids(false)).unwrap();
        assert!(p.new_user_ns());
        assert_eq!(p.uid_map.as_deref(), Some("0 1000 1\n"));

        let mut p = plan(33);
        let e = adapt(&mut p, &ids(false)).unwrap_err();
        assert_eq!(e.field, "process.user.uid");
        assert!(e.message.contains("0 (your uid 1000)"), "{}", e.message);

        let mut p = plan(33);
        adapt(&mut p, &ids(true)).unwrap();
        let mut p = plan(70_000);
        let e = adapt(&mut p, &ids(true)).unwrap_err();
        assert!(
            e.message.contains("1-65536 (/etc/subuid 100000-165535)"),
            "{}",
            e.message
        );
    }
}
