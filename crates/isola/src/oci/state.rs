//! A container's state directory, `<root>/<id>/`: `state.json` (what
//! `create` learned: the init's pid and start time, the bundle, the cgroup,
//! the hooks still to run) and `exec.fifo`, the start gate
//! ([`isola_runtime::gate`]) — present from `create` until `start`.
//!
//! The status is read off the system each time, as runc does: the init
//! gone (or a zombie, or its pid reused: the start time tells) → stopped;
//! its cgroup frozen → paused; the gate still there → created; else running.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::Failed;

pub(crate) const STATE_FILE: &str = "state.json";
pub(crate) const GATE_FILE: &str = "exec.fifo";
/// The OCI runtime-spec version our state and features speak.
pub(crate) const OCI_VERSION: &str = "1.0.2";
/// The longest container id (runc takes any length; directories take 255).
const ID_MAX: usize = 255;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Saved {
    pub(crate) id: String,
    pub(crate) pid: i32,
    /// The init's start time (clock ticks after boot, /proc/PID/stat field
    /// 22): a reused pid has another.
    pub(crate) start_time: u64,
    pub(crate) bundle: PathBuf,
    pub(crate) rootfs: PathBuf,
    pub(crate) created: String,
    pub(crate) owner: String,
    pub(crate) cgroup: Option<PathBuf>,
    #[serde(default)]
    pub(crate) annotations: serde_json::Map<String, serde_json::Value>,
    /// `hooks` of config.json (poststart and poststop run later).
    #[serde(default)]
    pub(crate) hooks: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Status {
    Created,
    Running,
    Paused,
    Stopped,
}

impl Status {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Status::Created => "created",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Stopped => "stopped",
        }
    }
}

/// Ids are directory names: letters, digits, `-`, `_`, `.`, `+`, not `.`
/// or `..` (runc's rule).
pub(crate) fn valid_id(id: &str) -> Result<(), Failed> {
    let ok = !id.is_empty()
        && id.len() <= ID_MAX
        && id != "."
        && id != ".."
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.+".contains(c));
    if ok {
        Ok(())
    } else {
        Err(Failed::usage(format!(
            "container id {id:?}: use 1-{ID_MAX} characters of A-Z a-z 0-9 - _ . +"
        )))
    }
}

pub(crate) fn dir(root: &Path, id: &str) -> PathBuf {
    root.join(id)
}

impl Saved {
    /// The container's state; an error naming the id when there is none.
    pub(crate) fn load(root: &Path, id: &str) -> Result<Saved, Failed> {
        valid_id(id)?;
        let path = dir(root, id).join(STATE_FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Failed::failure(format!(
                "container {id} does not exist (in {})",
                root.display()
            )),
            _ => Failed::failure(format!("{}: {e}", path.display())),
        })?;
        serde_json::from_str(&text).map_err(|e| Failed::failure(format!("{}: {e}", path.display())))
    }

    /// Write atomically (a reader sees the old file or the new one).
    pub(crate) fn save(&self, root: &Path) -> Result<(), Failed> {
        let d = dir(root, &self.id);
        let tmp = d.join(".state.json.tmp");
        let text = serde_json::to_string(self)
            .map_err(|e| Failed::failure(format!("serialise state: {e}")))?;
        std::fs::write(&tmp, text)
            .and_then(|()| std::fs::rename(&tmp, d.join(STATE_FILE)))
            .map_err(|e| Failed::failure(format!("{}: {e}", d.display())))
    }

    pub(crate) fn gate(&self, root: &Path) -> PathBuf {
        dir(root, &self.id).join(GATE_FILE)
    }

    /// Whether the init still runs (not a zombie, not a reused pid).
    pub(crate) fn init_alive(&self) -> bool {
        proc_start(self.pid)
            .is_some_and(|(t, state)| t == self.start_time && state != 'Z' && state != 'X')
    }

    pub(crate) fn status(&self, root: &Path) -> Status {
        if !self.init_alive() {
            return Status::Stopped;
        }
        let frozen = self.cgroup.as_ref().is_some_and(|c| {
            std::fs::read_to_string(c.join("cgroup.freeze")).is_ok_and(|v| v.trim() == "1")
        });
        if frozen {
            Status::Paused
        } else if self.gate(root).exists() {
            Status::Created
        } else {
            Status::Running
        }
    }

    /// The state as `runc state` prints it.
    pub(crate) fn to_oci(&self, root: &Path) -> serde_json::Value {
        let status = self.status(root);
        let pid = if status == Status::Stopped {
            0
        } else {
            self.pid
        };
        serde_json::json!({
            "ociVersion": OCI_VERSION,
            "id": self.id,
            "pid": pid,
            "status": status.as_str(),
            "bundle": self.bundle,
            "rootfs": self.rootfs,
            "created": self.created,
            "owner": self.owner,
            "annotations": self.annotations,
        })
    }
}

/// A process's start time and state letter, from /proc/PID/stat.
pub(crate) fn proc_start(pid: i32) -> Option<(u64, char)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command (field 2) may hold spaces and parentheses: fields after
    // the last ')' are plain.
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    // rest starts at field 3 (state); start time is field 22.
    let start = fields.nth(22 - 4)?.parse().ok()?;
    Some((start, state))
}

/// The owner field: the user name of our uid, as runc prints it.
pub(crate) fn owner() -> String {
    let uid = nix::unistd::getuid();
    nix::unistd::User::from_uid(uid)
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| uid.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        assert!(valid_id("9a8b7c-d_e.f+1").is_ok());
        for bad in ["", ".", "..", "a/b", "a b"] {
            assert!(valid_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn our_own_start_time_is_stable_and_we_are_alive() {
        let me = i32::try_from(std::process::id()).unwrap();
        let (a, state) = proc_start(me).unwrap();
        let (b, _) = proc_start(me).unwrap();
        assert_eq!(a, b);
        assert_ne!(state, 'Z');
        assert!(proc_start(i32::MAX).is_none());
    }
}
