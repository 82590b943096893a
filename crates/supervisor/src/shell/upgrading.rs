//! `isola upgrade` in the loop: the new binary's check (a child), then the wait for the
//! stack to be at rest, then the snapshot of every part and the exec. The
//! parts each hand over their own fds and state (`export`); this is where
//! they meet.

use std::ffi::{CString, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use isola_runtime::handover::Outgoing;
use nix::errno::Errno;
use nix::unistd::Pid;

use crate::control::Response;
use crate::keeper::KEEPER_ENV;
use crate::lifecycle::ConnId;
use crate::lifecycle::State;
use crate::reaper::Child;
use crate::supervisor::{ctx, Supervisor};
use crate::upgrade::snapshot::{PhaseRecord, ServiceRecord, Snapshot, HANDOVER_ENV};
use crate::upgrade::Refusal;

impl Supervisor {
    /// `info`: who we are.
    pub(crate) fn info_reply(&self) -> Response<'static> {
        Response {
            info: Some(self.upgrades.info(
                &self.cfg.stack_path,
                self.core.services().count(),
                self.keeper.as_ref().map(|_| nix::unistd::getppid()),
            )),
            ..Response::ok()
        }
    }

    /// `upgrade`: refused now, or under way (answered by the new binary,
    /// or with the reason it was given up).
    pub(crate) fn begin_upgrade(&mut self, conn: ConnId, binary: Option<PathBuf>) {
        if let Err(why) = self.try_begin_upgrade(conn, binary) {
            self.refuse_upgrade(Refusal::new(conn, &why));
        }
    }

    fn try_begin_upgrade(&mut self, conn: ConnId, binary: Option<PathBuf>) -> Result<(), String> {
        if self.upgrades.under_way() {
            return Err("an upgrade is under way already".into());
        }
        let binary = self.upgrades.binary_for(binary)?;
        let mut dry = Outgoing::dry();
        let snap = self.snapshot(&mut dry, Purpose::Upgrade(conn))?;
        let copy = dry
            .seal(&snap.encode()?)
            .map_err(|(e, _)| format!("snapshot: {e}"))?;
        let pid = self.upgrades.begin(conn, binary, &copy, self.now)?;
        self.reaper.watch(pid, Child::UpgradeCheck);
        self.outbox.note(format!(
            "upgrade: asking the new binary to read the state (pid {pid})"
        ));
        Ok(())
    }

    fn refuse_upgrade(&mut self, r: Refusal) {
        self.outbox.note(r.why.clone());
        self.control.send(ctx!(self), r.conn, &Response::err(r.why));
    }

    /// The checking child exited.
    pub(crate) fn upgrade_checked(&mut self, pid: Pid, code: i32) {
        if let Err(r) = self.upgrades.checked(pid, code, self.now) {
            self.refuse_upgrade(r);
        }
    }

    /// What keeps the stack from rest, named; `None` when at rest.
    pub(crate) fn busy(&self) -> Option<String> {
        self.core
            .busy()
            .or_else(|| self.sandboxes.busy())
            .or_else(|| (!self.probes.idle()).then(|| "a probe is in flight".into()))
            .or_else(|| {
                let cni = self.networks.as_ref().is_some_and(|n| n.busy());
                cni.then(|| "CNI plugins are at work".into())
            })
            .or_else(|| self.metrics.busy().then(|| "a scrape is being read".into()))
    }

    /// At the end of a turn of the loop: an upgrade that may go, goes.
    pub(crate) fn upgrade_turn(&mut self) {
        if !self.upgrades.under_way() {
            return;
        }
        let busy = self.busy();
        if let Some(r) = self.upgrades.expired(Instant::now(), busy.clone()) {
            return self.refuse_upgrade(r);
        }
        let Some((binary, version, conn)) = self.upgrades.ready() else {
            return;
        };
        if busy.is_some() {
            return;
        }
        if let Err(why) = self.upgrades.still_as_checked() {
            let r = self.upgrades.give_up(why);
            return self.refuse_upgrade(r);
        }
        let (binary, version) = (binary.to_path_buf(), version.to_string());
        let why = self.exec_upgrade(&binary, &version, conn);
        let r = self.upgrades.give_up(why);
        self.refuse_upgrade(r);
    }

    /// Snapshot, keep every fd, exec. Returns only if the exec failed
    /// (every fd close-on-exec again): why.
    fn exec_upgrade(&mut self, binary: &Path, version: &str, conn: ConnId) -> String {
        // Said before the snapshot: nothing may change after it.
        self.outbox.note(format!(
            "upgrade: isola {} → {version}: exec {}",
            crate::upgrade::VERSION,
            binary.display()
        ));
        self.settle();
        self.outputs.flush_own();
        let mut out = Outgoing::new();
        let keeper = match self.keeper.as_ref().map(|k| out.keep_unlisted(k.fd())) {
            Some(Err(e)) => return format!("keep the keeper's socket: {e}"),
            Some(Ok(fd)) => Some(fd),
            None => None,
        };
        let payload = self
            .snapshot(&mut out, Purpose::Upgrade(conn))
            .and_then(|s| s.encode());
        let sealed = match payload {
            Ok(p) => out.seal(&p).map_err(|(e, out)| {
                out.abandon();
                format!("snapshot: {e}")
            }),
            Err(e) => {
                out.abandon();
                Err(e)
            }
        };
        let sealed = match sealed {
            Ok(s) => s,
            Err(e) => return e,
        };
        self.reports
            .upgrading(&format!("upgrading to isola {version}"));
        let err = match sealed.cross_exec() {
            Ok(fd) => exec(binary, self.upgrades.args(), fd, keeper),
            Err(e) => e,
        };
        sealed.abandon();
        self.reports.upgrade_failed();
        format!("exec {}: {err}", binary.display())
    }

    /// Every part's state; their fds kept in `out`.
    pub(crate) fn snapshot(
        &self,
        out: &mut Outgoing,
        purpose: Purpose,
    ) -> Result<Snapshot, String> {
        self.snapshot_parts(out, purpose)
            .map_err(|e| format!("snapshot: keep an fd: {e}"))
    }

    fn snapshot_parts(&self, out: &mut Outgoing, purpose: Purpose) -> Result<Snapshot, Errno> {
        let now = Instant::now();
        let mut snap = self.upgrades.snapshot_head();
        match purpose {
            Purpose::Upgrade(asked) => {
                (snap.control, snap.conns) = self.control.export(out, asked)?
            }
            Purpose::Keeper => {
                snap.control = self.control.export_listener(out)?;
                snap.upgrades -= 1;
            }
        }
        snap.metrics = self
            .metrics
            .server_ref()
            .map(|m| out.keep(m.listener_fd()))
            .transpose()?;
        snap.group = self.sandboxes.keep_group(out)?;
        snap.held = self.held.export(out)?;
        snap.pins = self.core.pins();
        let name_of = |i| self.core.service(i).map(|s| s.def.name.clone());
        (snap.roots, snap.roots_gone, snap.roots_cleared) =
            self.sandboxes.export_roots(out, &name_of)?;
        snap.networks = (self.networks.as_ref())
            .map(|n| n.export(out, &name_of))
            .transpose()?;
        for (i, s) in self.core.services() {
            let (Some(core), Some(sandbox)) = (self.core.export(i, now), self.sandboxes.export(i))
            else {
                return Err(Errno::EBUSY);
            };
            // In motion: only a copy for the check may say so.
            let keeper = matches!(purpose, Purpose::Keeper);
            if matches!(core.phase, PhaseRecord::Busy) && (keeper || !out.is_dry()) {
                return Err(Errno::EBUSY);
            }
            let output = self.outputs.export(i, out)?;
            snap.services.push(ServiceRecord {
                name: s.def.name.clone(),
                core,
                sandbox,
                output: if keeper {
                    output.without_pending()
                } else {
                    output
                },
                ready: self.readiness.export(i, out)?,
            });
        }
        Ok(snap)
    }

    /// The client that asked is answered by the new binary, once it serves.
    pub(crate) fn answer_upgrade(&mut self, conn: ConnId, from: String, taken_ms: Option<u64>) {
        let reply = Response {
            upgraded_from: Some(from),
            unwatched_ms: taken_ms.map(|t| crate::supervisor::now_ms().saturating_sub(t)),
            state: Some(State::Running),
            ..self.info_reply()
        };
        self.control.send(ctx!(self), conn, &reply);
    }
}

/// What a snapshot is for.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Purpose {
    /// An upgrade, asked for on this connection (answered by the new
    /// binary).
    Upgrade(ConnId),
    /// The keeper, should this supervisor die: no connection crosses.
    Keeper,
}

/// execve `binary` with `args`, our environment and the handover's fd.
fn exec(binary: &Path, args: &[OsString], handover: i32, keeper: Option<i32>) -> Errno {
    let c = |s: &[u8]| CString::new(s).map_err(|_| Errno::EINVAL);
    let build = || -> Result<(CString, Vec<CString>, Vec<CString>), Errno> {
        let path = c(binary.as_os_str().as_bytes())?;
        let argv = args
            .iter()
            .map(|a| c(a.as_bytes()))
            .collect::<Result<Vec<_>, _>>()?;
        let mut env = Vec::new();
        for (k, v) in std::env::vars_os() {
            if k.as_bytes() == HANDOVER_ENV.as_bytes() {
                continue;
            }
            let mut kv = k.as_bytes().to_vec();
            kv.push(b'=');
            kv.extend_from_slice(v.as_bytes());
            env.push(c(&kv)?);
        }
        env.push(c(format!("{HANDOVER_ENV}={handover}").as_bytes())?);
        if let Some(fd) = keeper {
            env.push(c(format!("{KEEPER_ENV}={fd}").as_bytes())?);
        }
        Ok((path, argv, env))
    };
    match build() {
        Ok((path, argv, env)) => match nix::unistd::execve(&path, &argv, &env) {
            Err(e) => e,
            Ok(never) => match never {},
        },
        Err(e) => e,
    }
}
