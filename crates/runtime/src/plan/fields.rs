//! The field-by-field checks of [`super::Plan::read`]: namespaces, LSM
//! labels, id maps, rlimits, sysctls, paths and strings — each refusal one
//! line naming the field and the value.

use std::ffi::CString;
use std::path::{Path, PathBuf};

use nix::sys::resource::Resource;
use oci_spec::runtime::{Linux, LinuxNamespaceType, PosixRlimit, Process};

use super::Rlimit;
use crate::error::SpecError;

/// `linux.namespaces`: the CLONE_NEW* flags of the new ones, and the
/// existing ones to join by path.
pub(super) fn namespaces(
    linux: &Linux,
) -> Result<(u64, Vec<(nix::sched::CloneFlags, PathBuf)>), SpecError> {
    let mut clone_flags = 0u64;
    let mut join = Vec::new();
    let mut seen = Vec::new();
    for (i, ns) in linux.namespaces().iter().flatten().enumerate() {
        let field = format!("linux.namespaces[{i}]");
        let flag = match ns.typ() {
            LinuxNamespaceType::Pid => libc::CLONE_NEWPID,
            LinuxNamespaceType::Network => libc::CLONE_NEWNET,
            LinuxNamespaceType::Mount => libc::CLONE_NEWNS,
            LinuxNamespaceType::Uts => libc::CLONE_NEWUTS,
            LinuxNamespaceType::Ipc => libc::CLONE_NEWIPC,
            LinuxNamespaceType::Cgroup => libc::CLONE_NEWCGROUP,
            LinuxNamespaceType::User => libc::CLONE_NEWUSER,
            LinuxNamespaceType::Time => libc::CLONE_NEWTIME,
        };
        if seen.contains(&flag) {
            return Err(SpecError::new(format!("{field}.type"), "listed twice"));
        }
        seen.push(flag);
        match ns.path() {
            None => clone_flags |= u64::from(flag.unsigned_abs()),
            Some(p) => {
                if !p.is_absolute() {
                    return Err(SpecError::new(
                        format!("{field}.path"),
                        format!("{}: must be an absolute path", p.display()),
                    ));
                }
                if !p.exists() {
                    return Err(SpecError::new(
                        format!("{field}.path"),
                        format!("{}: no such namespace file", p.display()),
                    ));
                }
                refuse_our_own(flag, p, &format!("{field}.path"))?;
                // (Retain: nix has no CLONE_NEWTIME.)
                join.push((nix::sched::CloneFlags::from_bits_retain(flag), p.clone()));
            }
        }
    }
    Ok((clone_flags, join))
}

/// A mount or UTS namespace joined by path is set up as the sandbox's own
/// (the rootfs pivoted to, the hostname set): never ours — the host's,
/// when isola runs there — which every process in it would see changed.
fn refuse_our_own(flag: libc::c_int, p: &Path, field: &str) -> Result<(), SpecError> {
    use std::os::unix::fs::MetadataExt;
    let (ours, what) = match flag {
        libc::CLONE_NEWNS => ("/proc/self/ns/mnt", "mount"),
        libc::CLONE_NEWUTS => ("/proc/self/ns/uts", "uts"),
        _ => return Ok(()),
    };
    let id = |p: &Path| std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()));
    if id(p).is_some() && id(p) == id(Path::new(ours)) {
        return Err(SpecError::new(
            field,
            format!("{}: isola's own {what} namespace (the host's): the sandbox would change it for every process in it", p.display()),
        ));
    }
    Ok(())
}

/// AppArmor/SELinux labels: refused where that LSM is enabled (isola
/// cannot apply them), ignored with a warning where it is not, as runc.
pub(super) fn check_labels(process: &Process, warnings: &mut Vec<String>) -> Result<(), SpecError> {
    for (field, set, lsm) in [
        (
            "process.apparmorProfile",
            process.apparmor_profile().is_some(),
            Lsm::AppArmor,
        ),
        (
            "process.selinuxLabel",
            process.selinux_label().is_some(),
            Lsm::SELinux,
        ),
    ] {
        if set {
            if lsm.enabled() {
                return Err(SpecError::new(
                    field,
                    format!(
                        "{}: enabled on this host, and isola cannot apply its labels",
                        lsm.name()
                    ),
                ));
            }
            // As runc: a label for an LSM the host lacks is no label.
            warnings.push(format!(
                "{field}: ignored ({} is not enabled on this host)",
                lsm.name()
            ));
        }
    }
    Ok(())
}

/// A Linux security module a spec may name a label of.
#[derive(Debug, Clone, Copy)]
enum Lsm {
    AppArmor,
    SELinux,
}

impl Lsm {
    fn name(self) -> &'static str {
        match self {
            Lsm::AppArmor => "AppArmor",
            Lsm::SELinux => "SELinux",
        }
    }

    /// Whether the running kernel enforces it (how runc asks).
    fn enabled(self) -> bool {
        match self {
            Lsm::AppArmor => std::fs::read_to_string("/sys/module/apparmor/parameters/enabled")
                .is_ok_and(|v| v.trim() == "Y"),
            Lsm::SELinux => Path::new("/sys/fs/selinux/enforce").exists(),
        }
    }
}

pub(super) fn cstrings(field: &str, v: &[String]) -> Result<Vec<CString>, SpecError> {
    v.iter()
        .enumerate()
        .map(|(i, s)| {
            CString::new(s.as_bytes())
                .map_err(|_| SpecError::new(format!("{field}[{i}]"), "contains a NUL byte"))
        })
        .collect()
}

pub(super) fn abs_paths(field: &str, v: &Option<Vec<String>>) -> Result<Vec<PathBuf>, SpecError> {
    let mut out = Vec::new();
    for (i, p) in v.iter().flatten().enumerate() {
        let pb = PathBuf::from(p);
        if !pb.is_absolute()
            || pb
                .components()
                .any(|c| c == std::path::Component::ParentDir)
        {
            return Err(SpecError::new(
                format!("{field}[{i}]"),
                format!("{p}: must be an absolute path without .."),
            ));
        }
        out.push(pb);
    }
    Ok(out)
}

pub(super) fn id_map(
    field: &str,
    v: &Option<Vec<oci_spec::runtime::LinuxIdMapping>>,
    new_user: bool,
) -> Result<Option<String>, SpecError> {
    let Some(maps) = v.as_ref().filter(|m| !m.is_empty()) else {
        if new_user {
            return Err(SpecError::new(
                field,
                "a new user namespace needs at least one mapping",
            ));
        }
        return Ok(None);
    };
    if !new_user {
        return Err(SpecError::new(
            field,
            "needs a new user namespace (add {\"type\": \"user\"} to linux.namespaces)",
        ));
    }
    let mut text = String::new();
    for (i, m) in maps.iter().enumerate() {
        if m.size() == 0 {
            return Err(SpecError::new(
                format!("{field}[{i}].size"),
                "0: must be at least 1",
            ));
        }
        text.push_str(&format!(
            "{} {} {}\n",
            m.container_id(),
            m.host_id(),
            m.size()
        ));
    }
    Ok(Some(text))
}

pub(super) fn rlimit(i: usize, r: &PosixRlimit) -> Result<Rlimit, SpecError> {
    let field = format!("process.rlimits[{i}]");
    let name = serde_json::to_value(r.typ())
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    let res = match name.as_str() {
        "RLIMIT_AS" => Resource::RLIMIT_AS,
        "RLIMIT_CORE" => Resource::RLIMIT_CORE,
        "RLIMIT_CPU" => Resource::RLIMIT_CPU,
        "RLIMIT_DATA" => Resource::RLIMIT_DATA,
        "RLIMIT_FSIZE" => Resource::RLIMIT_FSIZE,
        "RLIMIT_LOCKS" => Resource::RLIMIT_LOCKS,
        "RLIMIT_MEMLOCK" => Resource::RLIMIT_MEMLOCK,
        "RLIMIT_MSGQUEUE" => Resource::RLIMIT_MSGQUEUE,
        "RLIMIT_NICE" => Resource::RLIMIT_NICE,
        "RLIMIT_NOFILE" => Resource::RLIMIT_NOFILE,
        "RLIMIT_NPROC" => Resource::RLIMIT_NPROC,
        "RLIMIT_RSS" => Resource::RLIMIT_RSS,
        "RLIMIT_RTPRIO" => Resource::RLIMIT_RTPRIO,
        "RLIMIT_RTTIME" => Resource::RLIMIT_RTTIME,
        "RLIMIT_SIGPENDING" => Resource::RLIMIT_SIGPENDING,
        "RLIMIT_STACK" => Resource::RLIMIT_STACK,
        other => {
            return Err(SpecError::new(
                format!("{field}.type"),
                format!("{other}: unknown rlimit"),
            ))
        }
    };
    if r.soft() > r.hard() {
        return Err(SpecError::new(
            format!("{field}.soft"),
            format!("{}: above hard limit {}", r.soft(), r.hard()),
        ));
    }
    Ok(Rlimit {
        resource: res,
        soft: r.soft(),
        hard: r.hard(),
    })
}

/// Only sysctls that belong to a namespace the sandbox owns may be set;
/// anything else would change the host.
pub(super) fn check_sysctl(key: &str, clone_flags: u64) -> Result<(), SpecError> {
    let owns = |f: i32| clone_flags & u64::from(f.unsigned_abs()) != 0;
    let ipc = [
        "kernel.msgmax",
        "kernel.msgmnb",
        "kernel.msgmni",
        "kernel.sem",
        "kernel.shmall",
        "kernel.shmmax",
        "kernel.shmmni",
        "kernel.shm_rmid_forced",
    ];
    let ok = if key.starts_with("net.") {
        owns(libc::CLONE_NEWNET)
    } else if ipc.contains(&key) || key.starts_with("fs.mqueue.") {
        owns(libc::CLONE_NEWIPC)
    } else if key == "kernel.hostname" || key == "kernel.domainname" {
        owns(libc::CLONE_NEWUTS)
    } else {
        false
    };
    let well_formed = !key.is_empty()
        && key
            .split('.')
            .all(|p| !p.is_empty() && p != ".." && !p.contains('/'));
    if ok && well_formed {
        Ok(())
    } else {
        Err(SpecError::new(
            format!("linux.sysctl.{key}"),
            "not a sysctl of a namespace this sandbox creates",
        ))
    }
}

/// A new time namespace (`{"type": "time"}` without a path) and
/// `linux.timeOffsets`: monotonic and boottime only (the clocks a time
/// namespace offsets), which need the namespace.
pub(super) fn time_ns(linux: &Linux, clone_flags: u64) -> Result<Option<super::TimeNs>, SpecError> {
    let field = "linux.timeOffsets";
    let new = clone_flags & libc::CLONE_NEWTIME as u64 != 0;
    let offsets = linux.time_offsets().clone().unwrap_or_default();
    if !new {
        if offsets.is_empty() {
            return Ok(None);
        }
        return Err(SpecError::new(
            field,
            "needs a new time namespace (add {\"type\": \"time\"} to linux.namespaces)",
        ));
    }
    let mut lines: Vec<String> = Vec::new();
    for (clock, o) in &offsets {
        if clock != "monotonic" && clock != "boottime" {
            return Err(SpecError::new(
                format!("{field}.{clock}"),
                "only monotonic and boottime have offsets",
            ));
        }
        let nanos = o.nanosecs().unwrap_or(0);
        if nanos >= 1_000_000_000 {
            return Err(SpecError::new(
                format!("{field}.{clock}.nanosecs"),
                format!("{nanos}: must be below 1000000000"),
            ));
        }
        lines.push(format!("{clock} {} {nanos}\n", o.secs().unwrap_or(0)));
    }
    lines.sort();
    Ok(Some(super::TimeNs {
        offsets: lines.concat(),
    }))
}
