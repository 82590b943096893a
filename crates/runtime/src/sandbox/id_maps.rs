//! Writing a new user namespace's id maps, from the host side, while the
//! init waits for `Go`.
//!
//! Root writes `/proc/PID/uid_map` and `gid_map` itself. An unprivileged
//! caller may write one line only, mapping its own id, and `gid_map` only
//! after `setgroups` was set to `deny` (else a process could drop a group
//! that denies it access: CVE-2014-8989) — as `unshare -r` does. Any wider
//! map (the user's `/etc/subuid` and `/etc/subgid` ranges) goes through
//! the setuid helpers `newuidmap` and `newgidmap` (Debian `uidmap`), which
//! check the ranges against those files, as podman and rootlesskit do.

use std::path::Path;
use std::process::Command;

use nix::unistd::Pid;

use crate::error::Error;

/// Which of the two maps.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Kind {
    Uid,
    Gid,
}

impl Kind {
    fn file(self) -> &'static str {
        match self {
            Kind::Uid => "uid_map",
            Kind::Gid => "gid_map",
        }
    }
    fn helper(self) -> &'static str {
        match self {
            Kind::Uid => "newuidmap",
            Kind::Gid => "newgidmap",
        }
    }
    fn own_id(self) -> u32 {
        match self {
            Kind::Uid => nix::unistd::geteuid().as_raw(),
            Kind::Gid => nix::unistd::getegid().as_raw(),
        }
    }
}

/// How a map gets written.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Writer {
    /// We hold CAP_SETUID/CAP_SETGID over the namespace: any map.
    Direct,
    /// Unprivileged, one line mapping our own id: allowed to us (gid_map
    /// after `setgroups` deny).
    OwnIdOnly,
    /// Unprivileged, ranges beyond our own id: the setuid helper.
    Helper,
}

/// How `map` of `kind` can be written by this process.
pub(crate) fn writer(kind: Kind, map: &str) -> Writer {
    if nix::unistd::geteuid().is_root() {
        return Writer::Direct;
    }
    let mut lines = map.lines().filter(|l| !l.trim().is_empty());
    let own = kind.own_id().to_string();
    match (lines.next(), lines.next()) {
        (Some(l), None) => {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() == 3 && f[1] == own && f[2] == "1" {
                Writer::OwnIdOnly
            } else {
                Writer::Helper
            }
        }
        _ => Writer::Helper,
    }
}

/// Write both maps of the namespace of `pid` (each when given).
pub(crate) fn write(pid: Pid, uid_map: Option<&str>, gid_map: Option<&str>) -> Result<(), Error> {
    for (kind, map) in [(Kind::Uid, uid_map), (Kind::Gid, gid_map)] {
        if let Some(m) = map {
            write_one(pid, kind, m)?;
        }
    }
    Ok(())
}

fn write_one(pid: Pid, kind: Kind, map: &str) -> Result<(), Error> {
    let proc = format!("/proc/{}", pid.as_raw());
    let failed = |message: String| Error::Setup {
        step: "user namespace".into(),
        message,
    };
    match writer(kind, map) {
        Writer::Direct => std::fs::write(format!("{proc}/{}", kind.file()), map)
            .map_err(|e| failed(format!("write {proc}/{}: {e}", kind.file()))),
        Writer::OwnIdOnly => {
            if kind == Kind::Gid {
                std::fs::write(format!("{proc}/setgroups"), "deny")
                    .map_err(|e| failed(format!("write {proc}/setgroups: {e}")))?;
            }
            std::fs::write(format!("{proc}/{}", kind.file()), map)
                .map_err(|e| failed(format!("write {proc}/{}: {e}", kind.file())))
        }
        Writer::Helper => run_helper(pid, kind, map).map_err(failed),
    }
}

/// `newuidmap PID INSIDE OUTSIDE COUNT…`: the map's lines as arguments.
fn run_helper(pid: Pid, kind: Kind, map: &str) -> Result<(), String> {
    let helper = kind.helper();
    let mut cmd = Command::new(helper);
    cmd.arg(pid.as_raw().to_string());
    cmd.args(map.split_whitespace());
    cmd.stdin(std::process::Stdio::null());
    let out = cmd.output().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            format!(
                "{helper}: not found (install Debian's uidmap) — needed to map /etc/sub{}id ranges",
                &kind.file()[..1]
            )
        } else {
            format!("{helper}: {e}")
        }
    })?;
    if out.status.success() {
        return Ok(());
    }
    let why = String::from_utf8_lossy(&out.stderr);
    Err(format!(
        "{helper} {}: {} ({})",
        map.split_whitespace().collect::<Vec<_>>().join(" "),
        why.trim(),
        out.status
    ))
}

/// Whether `newuidmap` and `newgidmap` are on the search path.
pub(crate) fn helpers_present() -> bool {
    [Kind::Uid, Kind::Gid].iter().all(|k| on_path(k.helper()))
}

fn on_path(name: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| Path::new(&d).join(name).is_file()))
        .unwrap_or(false)
}
