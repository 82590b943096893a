//! `isola upgrade` and `isola info`: the supervisor re-executes itself in
//! place (same pid: its inits stay its children, and PDEATHSIG, which an
//! exec does not trigger, stays armed), handing its state to the new
//! binary in a sealed memfd and every fd it holds for its services across
//! the exec.
//!
//! An upgrade goes: the new binary is asked to read a copy of the
//! snapshot first (`check`: a child, reaped like any other — a binary
//! that is not isola, fails, or cannot read this format is refused and
//! nothing changes), then the upgrade waits for the stack to be at rest
//! (no sandbox starting or stopping), then the real snapshot is taken and
//! the exec made (`shell::upgrading`). An exec that fails leaves the old
//! supervisor as it was. The new binary takes over in `resume`.

use std::ffi::OsString;
use std::fs::File;
use std::io::{Read, Seek};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use isola_runtime::handover::Sealed;
use nix::unistd::Pid;

use crate::control::Info;
use crate::lifecycle::ConnId;
use snapshot::{InheritedRecord, Snapshot};

mod check;
pub(crate) mod snapshot;

pub use crate::shell::resume::check_resume;

/// How long the new binary may take to read the snapshot.
const CHECK_PATIENCE: Duration = Duration::from_secs(10);
/// How long an upgrade waits for the stack to be at rest.
const REST_PATIENCE: Duration = Duration::from_secs(30);

/// This binary's version, as `info` and `upgrade` tell it.
pub(crate) const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Where an upgrade asked for is.
enum Stage {
    /// The new binary reads a copy of the snapshot.
    Checking { pid: Pid, output: File },
    /// It can take over: waiting for the stack to be at rest.
    AtRest { version: String },
}

struct Pending {
    conn: ConnId,
    binary: PathBuf,
    /// The binary's file when it was checked: the one exec'd must be it.
    identity: Identity,
    /// The stack text the new binary checked: a reload meanwhile changes
    /// what would be handed over.
    checked_text: String,
    stage: Stage,
    deadline: Instant,
}

/// A file, as `stat` tells it apart from another put at its path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Identity {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
    /// `cp -p` over the same inode keeps size and mtime, not ctime.
    ctime_ns: i128,
}

impl Identity {
    fn of(path: &Path) -> Result<Identity, String> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(Identity {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
            ctime_ns: i128::from(m.ctime()) * 1_000_000_000 + i128::from(m.ctime_nsec()),
        })
    }
}

/// What an upgrade refused or gave up says, and to whom.
pub(crate) struct Refusal {
    pub(crate) conn: ConnId,
    pub(crate) why: String,
}

impl Refusal {
    pub(crate) fn new(conn: ConnId, why: &str) -> Refusal {
        Refusal {
            conn,
            why: format!("upgrade refused, the running supervisor goes on: {why}"),
        }
    }
}

/// The upgrades of this supervisor: its line's history and the one under
/// way.
pub(crate) struct Upgrades {
    started_ms: u64,
    count: u32,
    /// Supervisors of this line a keeper started after one died.
    recoveries: u32,
    /// The path we were started from: what an upgrade without `--binary`
    /// execs (an install replaces the file there by a rename).
    binary: PathBuf,
    /// Our command line, given to the new binary as it is.
    args: Vec<OsString>,
    inherited: InheritedRecord,
    /// The stack file's text as last loaded.
    stack_text: String,
    /// Taken over from an older binary (the services run already).
    resumed: bool,
    pending: Option<Pending>,
}

impl Upgrades {
    pub(crate) fn new(inherited: InheritedRecord, stack_text: String) -> Upgrades {
        Upgrades {
            started_ms: crate::supervisor::now_ms(),
            count: 0,
            recoveries: 0,
            binary: std::env::current_exe().unwrap_or_else(|_| "/proc/self/exe".into()),
            args: std::env::args_os().collect(),
            inherited,
            stack_text,
            resumed: false,
            pending: None,
        }
    }

    /// The line goes on in a new binary.
    pub(crate) fn resumed(snap: &Snapshot) -> Upgrades {
        Upgrades {
            started_ms: snap.started_ms,
            count: snap.upgrades,
            recoveries: snap.recoveries,
            resumed: true,
            ..Upgrades::new(snap.inherited, snap.stack_text.clone())
        }
    }

    /// We took over from a supervisor that died (not from an upgrade),
    /// whose snapshot is `snap`: its binary is ours.
    pub(crate) fn recovered(&mut self, snap: &Snapshot) {
        self.recoveries += 1;
        if let Some(b) = &snap.binary {
            self.binary.clone_from(b);
        }
    }

    pub(crate) fn recoveries(&self) -> u32 {
        self.recoveries
    }

    pub(crate) fn is_resumed(&self) -> bool {
        self.resumed
    }

    /// A reload loaded this text.
    pub(crate) fn loaded(&mut self, text: String) {
        self.stack_text = text;
    }

    pub(crate) fn info(&self, stack: &Path, services: usize, keeper: Option<Pid>) -> Info {
        Info {
            pid: i32::try_from(std::process::id()).unwrap_or(i32::MAX),
            version: VERSION.to_string(),
            started_ms: self.started_ms,
            upgrades: self.count,
            keeper: keeper.map(Pid::as_raw),
            recoveries: self.recoveries,
            stack: stack.to_path_buf(),
            services,
            binary: self.binary.clone(),
        }
    }

    /// The fixed part of a snapshot (the parts add theirs).
    pub(crate) fn snapshot_head(&self) -> Snapshot {
        Snapshot {
            format: snapshot::FORMAT,
            version: VERSION.to_string(),
            started_ms: self.started_ms,
            upgrades: self.count + 1,
            recoveries: self.recoveries,
            binary: Some(self.binary.clone()),
            taken_ms: Some(crate::supervisor::now_ms()),
            inherited: self.inherited,
            stack_text: self.stack_text.clone(),
            control: -1,
            metrics: None,
            group: None,
            conns: Vec::new(),
            held: Vec::new(),
            pins: Vec::new(),
            roots: Vec::new(),
            roots_gone: Vec::new(),
            roots_cleared: false,
            networks: None,
            services: Vec::new(),
        }
    }

    pub(crate) fn under_way(&self) -> bool {
        self.pending.is_some()
    }

    /// The binary an upgrade asked by `conn` would exec: checked to be an
    /// executable file.
    pub(crate) fn binary_for(&self, asked: Option<PathBuf>) -> Result<PathBuf, String> {
        let binary = asked.unwrap_or_else(|| self.binary.clone());
        let meta = std::fs::metadata(&binary).map_err(|e| format!("{}: {e}", binary.display()))?;
        nix::unistd::access(&binary, nix::unistd::AccessFlags::X_OK)
            .ok()
            .filter(|()| meta.is_file())
            .ok_or_else(|| format!("{}: not an executable file", binary.display()))?;
        Ok(binary)
    }

    /// Ask `binary` to read `copy` (a dry snapshot): its pid, for the
    /// reaper.
    pub(crate) fn begin(
        &mut self,
        conn: ConnId,
        binary: PathBuf,
        copy: &Sealed,
        now: Instant,
    ) -> Result<Pid, String> {
        let identity = Identity::of(&binary)?;
        let (pid, output) = check::spawn(&binary, &self.args, copy.memfd().as_fd())?;
        self.pending = Some(Pending {
            conn,
            binary,
            identity,
            checked_text: self.stack_text.clone(),
            stage: Stage::Checking { pid, output },
            deadline: now + CHECK_PATIENCE,
        });
        Ok(pid)
    }

    /// The checking child `pid` exited with `code`: on to waiting for
    /// rest, or refused.
    pub(crate) fn checked(&mut self, pid: Pid, code: i32, now: Instant) -> Result<(), Refusal> {
        let Some(p) = self.pending.as_mut() else {
            return Ok(());
        };
        let Stage::Checking {
            pid: checking,
            output,
        } = &mut p.stage
        else {
            return Ok(());
        };
        if *checking != pid {
            return Ok(());
        }
        let said = read_all(output);
        let binary = p.binary.display().to_string();
        match check::verdict(code, &said) {
            Ok(version) => {
                p.stage = Stage::AtRest { version };
                p.deadline = now + REST_PATIENCE;
                Ok(())
            }
            Err(why) => Err(self.give_up(format!("{binary}: {why}"))),
        }
    }

    /// The new binary's version, once it can take over.
    pub(crate) fn ready(&self) -> Option<(&Path, &str, ConnId)> {
        match &self.pending {
            Some(Pending {
                binary,
                conn,
                stage: Stage::AtRest { version },
                ..
            }) => Some((binary, version, *conn)),
            _ => None,
        }
    }

    /// What the check approved is still what would be exec'd and handed
    /// over (the binary's file, the stack text), or why not.
    pub(crate) fn still_as_checked(&self) -> Result<(), String> {
        let Some(p) = &self.pending else {
            return Ok(());
        };
        if Identity::of(&p.binary)? != p.identity {
            return Err(format!(
                "{} changed while the upgrade waited; ask again",
                p.binary.display()
            ));
        }
        if p.checked_text != self.stack_text {
            return Err("the stack was reloaded while the upgrade waited; ask again".into());
        }
        Ok(())
    }

    pub(crate) fn args(&self) -> &[OsString] {
        &self.args
    }

    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.pending.as_ref().map(|p| p.deadline)
    }

    /// Past its deadline: given up, the checking child killed. `busy`
    /// says what kept the stack from rest.
    pub(crate) fn expired(&mut self, now: Instant, busy: Option<String>) -> Option<Refusal> {
        let p = self.pending.as_ref()?;
        if now < p.deadline {
            return None;
        }
        let why = match (&p.stage, busy) {
            (Stage::Checking { pid, .. }, _) => {
                let _ = nix::sys::signal::kill(*pid, nix::sys::signal::Signal::SIGKILL);
                format!(
                    "{}: did not read the state within {} s",
                    p.binary.display(),
                    CHECK_PATIENCE.as_secs()
                )
            }
            (Stage::AtRest { .. }, Some(b)) => format!(
                "the stack was not at rest within {} s ({b}); try again",
                REST_PATIENCE.as_secs()
            ),
            (Stage::AtRest { .. }, None) => "the stack was not at rest".to_string(),
        };
        Some(self.give_up(why))
    }

    /// The upgrade is over without an exec (refused, or the exec failed).
    pub(crate) fn give_up(&mut self, why: String) -> Refusal {
        let conn = self.pending.take().map_or(0, |p| p.conn);
        Refusal::new(conn, &why)
    }
}

fn read_all(f: &mut File) -> String {
    let mut s = String::new();
    let _ = f.rewind();
    let _ = f.take(64 << 10).read_to_string(&mut s);
    s
}
