//! The state an `isola upgrade` hands to the new binary: the snapshot's
//! format, in one place.
//!
//! Version rule: [`FORMAT`] goes up whenever a field is added, removed or
//! changes meaning; a binary reads its own format and the one before it
//! (N-1 → N), and refuses any other with one line — the old supervisor
//! then keeps running (the new binary is asked first, see `upgrade::check`).
//! Fields are JSON, times relative to the moment of the snapshot (a
//! monotonic `Instant` means nothing in another process image) or epoch
//! milliseconds, and fds by their number in the process (the runtime's
//! `handover` owns how they cross the exec).

use std::os::fd::RawFd;

use serde::{Deserialize, Serialize};

use crate::control::Run;
use crate::lifecycle::exit_policy::Reason;

/// This binary's snapshot format. 2: scale pins, image roots, the time
/// the snapshot was taken, queued services, each probe's next time. 3:
/// the inits are a keeper's children (told by it, not reaped by us): a
/// binary that reads 2 at most must refuse.
pub(crate) const FORMAT: u32 = 3;
/// The oldest format this binary reads.
pub(crate) const OLDEST_READ: u32 = 1;

/// The environment variable naming the handover's memfd.
pub const HANDOVER_ENV: &str = "ISOLA_HANDOVER";

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Snapshot {
    pub(crate) format: u32,
    /// The writer's version.
    pub(crate) version: String,
    /// When the first supervisor of this line of upgrades started.
    pub(crate) started_ms: u64,
    /// Upgrades so far, this one included.
    pub(crate) upgrades: u32,
    /// Supervisors a keeper started after one died, so far.
    #[serde(default)]
    pub(crate) recoveries: u32,
    /// The path the writer was started from (what an upgrade without
    /// `--binary` execs): a supervisor the keeper starts again keeps it
    /// (its own `/proc/self/exe` may name a file replaced since).
    #[serde(default)]
    pub(crate) binary: Option<std::path::PathBuf>,
    /// When the snapshot was taken (epoch ms): the new binary tells how
    /// long nobody watched the services.
    #[serde(default)]
    pub(crate) taken_ms: Option<u64>,
    /// What `isola up` was started with (its fd limit, OOM score).
    pub(crate) inherited: InheritedRecord,
    /// The stack file's text as last loaded (the file may have changed
    /// since; a reload is the user's to ask for).
    pub(crate) stack_text: String,
    pub(crate) control: RawFd,
    pub(crate) metrics: Option<RawFd>,
    /// The stack's cgroup directory, flocked.
    pub(crate) group: Option<RawFd>,
    pub(crate) conns: Vec<ConnRecord>,
    pub(crate) held: Vec<HeldRecord>,
    /// Replica counts `isola scale` fixed, by group.
    #[serde(default)]
    pub(crate) pins: Vec<(String, u32)>,
    /// Image services' roots held (their locks), and roots set aside to
    /// be deleted when the stack ends.
    #[serde(default)]
    pub(crate) roots: Vec<RootRecord>,
    #[serde(default)]
    pub(crate) roots_gone: Vec<std::path::PathBuf>,
    /// A killed supervisor's roots were set aside already.
    #[serde(default)]
    pub(crate) roots_cleared: bool,
    /// The stack's networks (bridges and rules stay in the kernel).
    #[serde(default)]
    pub(crate) networks: Option<NetworksRecord>,
    pub(crate) services: Vec<ServiceRecord>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct InheritedRecord {
    /// RLIMIT_NOFILE (soft, hard) as the first supervisor found it.
    pub(crate) nofile: Option<(u64, u64)>,
    pub(crate) oom_score_adj: Option<i32>,
}

/// A control connection, mid-stream.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ConnRecord {
    pub(crate) fd: RawFd,
    /// Read, not yet a whole request.
    pub(crate) inbuf: Vec<u8>,
    /// Queued, not yet written.
    pub(crate) out: Vec<u8>,
    pub(crate) answer: usize,
    /// Following one service's log (its name), or every one's (`""`).
    pub(crate) follow: Option<String>,
    pub(crate) events: bool,
    /// The client that asked for this upgrade: answered by the new binary.
    pub(crate) asked: bool,
}

/// A held listening socket: the `index`th of service group `group`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct HeldRecord {
    pub(crate) group: String,
    pub(crate) index: usize,
    pub(crate) fd: RawFd,
}

/// The stack's networks as the old binary ran them, by network in the
/// stack's order; sandboxes by service name.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct NetworksRecord {
    pub(crate) subnets: Vec<String>,
    /// isola's bridge of each network (name, ifindex).
    pub(crate) bridges: Vec<Option<(String, u32)>>,
    pub(crate) segments: Vec<SegmentsRecord>,
    pub(crate) pools: Vec<PoolRecord>,
    /// Which bridge of each network a running sandbox's pair is on.
    pub(crate) ports: Vec<(String, Vec<(usize, usize)>)>,
    /// The addresses each running sandbox has, by network.
    pub(crate) addrs: Vec<(String, Vec<(usize, std::net::Ipv4Addr)>)>,
    pub(crate) seq: u32,
    pub(crate) bridge_seq: usize,
    pub(crate) dns: DnsRecord,
    /// Running sandboxes on CNI networks: service, `CNI_NETNS`, and what
    /// each ADD answered (DEL and CHECK are given it).
    #[serde(default)]
    pub(crate) cni: Vec<(String, String, Vec<serde_json::Value>)>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct SegmentsRecord {
    pub(crate) ports: Vec<usize>,
    /// Each further bridge (name, ifindex) and its pair's host end.
    pub(crate) extra: Vec<(String, u32, u32)>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct PoolRecord {
    pub(crate) by_name: Vec<(String, std::net::Ipv4Addr)>,
    pub(crate) in_use: Vec<(std::net::Ipv4Addr, String)>,
    pub(crate) next: u32,
}

/// The nameserver's sockets: UDP and TCP per network, the upstream's.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct DnsRecord {
    pub(crate) udp: Vec<Option<RawFd>>,
    pub(crate) tcp: Vec<Option<RawFd>>,
    pub(crate) upstream: Option<RawFd>,
}

/// An image root held: its name in the store, its lock's fd, the services
/// on it (an overlap's two sandboxes share a read-only one).
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct RootRecord {
    pub(crate) name: String,
    /// The image it was made for.
    pub(crate) digest: String,
    pub(crate) fd: RawFd,
    pub(crate) users: Vec<String>,
}

/// A service as every part holds it.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ServiceRecord {
    pub(crate) name: String,
    pub(crate) core: CoreRecord,
    pub(crate) sandbox: SandboxRecord,
    pub(crate) output: OutputRecord,
    pub(crate) ready: ReadyRecord,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "phase")]
pub(crate) enum PhaseRecord {
    Running {
        for_ms: u64,
    },
    Backoff {
        in_ms: u64,
    },
    /// Waiting for a start slot or a dependency.
    Queued,
    Stopped,
    Exited,
    Failed,
    /// Setting up or stopping: only in the copy a new binary checks.
    Busy,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ExitRecord {
    pub(crate) reason: Reason,
    pub(crate) code: Option<i32>,
    pub(crate) signal: Option<i32>,
}

/// The lifecycle core's view.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct CoreRecord {
    pub(crate) phase: PhaseRecord,
    pub(crate) restarts: u32,
    pub(crate) streak: u32,
    /// Launches within the start limit's interval, how long ago.
    pub(crate) starts_ago_ms: Vec<u64>,
    pub(crate) last_exit: Option<ExitRecord>,
    pub(crate) last_exit_message: Option<String>,
    pub(crate) oom_kills: u64,
    pub(crate) probe_failures: [u64; 3],
    pub(crate) health: HealthRecord,
    /// Its cgroup files (file, value) when `isola update` changed them
    /// live: kept until the next reload, as before the upgrade.
    #[serde(default)]
    pub(crate) live_limits: Option<Vec<(String, String)>>,
}

/// The current run's health (probe streaks start again: the next
/// probes are scheduled afresh).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct HealthRecord {
    pub(crate) started: bool,
    pub(crate) ready: bool,
    pub(crate) ever_ready: bool,
    pub(crate) notified_ready: bool,
    pub(crate) probe_ready: bool,
    /// When the watchdog expires.
    pub(crate) watchdog_in_ms: Option<u64>,
    /// When each probe runs next (`ProbeKind::index`; `None`: not
    /// scheduled, or in flight: it runs at once).
    #[serde(default)]
    pub(crate) probes_in_ms: [Option<u64>; 3],
    pub(crate) notify_status: Option<String>,
}

/// The sandbox's view: its runs, and the running one.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct SandboxRecord {
    pub(crate) cgroup_name: String,
    pub(crate) history: Vec<Run>,
    pub(crate) running: Option<RunningRecord>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct RunningRecord {
    /// The init: our unreaped child, before and after the exec.
    pub(crate) pid: i32,
    pub(crate) start_ms: u64,
    /// OOM kills of this run already reported.
    pub(crate) oom_seen: u64,
}

/// The output pipes, with what was read of an unfinished line.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct OutputRecord {
    pub(crate) pid: Option<i32>,
    pub(crate) stdout: Option<PipeRecord>,
    pub(crate) stderr: Option<PipeRecord>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct PipeRecord {
    pub(crate) fd: RawFd,
    pub(crate) pending: Vec<u8>,
}

impl OutputRecord {
    /// For a keeper's snapshot, which a supervisor that read on may have
    /// outdated: no half-read line (its head would be told twice).
    pub(crate) fn without_pending(mut self) -> OutputRecord {
        for p in [&mut self.stdout, &mut self.stderr].into_iter().flatten() {
            p.pending.clear();
        }
        self
    }
}

/// The notify socket and pipe, and the fd store.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ReadyRecord {
    pub(crate) socket: Option<RawFd>,
    pub(crate) pipe: Option<RawFd>,
    pub(crate) store: Vec<StoredRecord>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct StoredRecord {
    pub(crate) name: String,
    pub(crate) fd: RawFd,
}

impl Snapshot {
    /// How many of its services have a running sandbox.
    pub(crate) fn running(&self) -> usize {
        self.services
            .iter()
            .filter(|s| s.sandbox.running.is_some())
            .count()
    }

    pub(crate) fn encode(&self) -> Result<Vec<u8>, String> {
        serde_json::to_vec(self).map_err(|e| format!("snapshot: {e}"))
    }

    /// A snapshot this binary can take over from, or why not.
    pub(crate) fn decode(bytes: &[u8]) -> Result<Snapshot, String> {
        #[derive(Deserialize)]
        struct Head {
            format: u32,
        }
        let head: Head =
            serde_json::from_slice(bytes).map_err(|e| format!("snapshot: not one: {e}"))?;
        if !(OLDEST_READ..=FORMAT).contains(&head.format) {
            return Err(format!(
                "snapshot format {} (this isola reads {OLDEST_READ} to {FORMAT})",
                head.format
            ));
        }
        serde_json::from_slice(bytes).map_err(|e| format!("snapshot: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the first release with upgrades (format 1) wrote for a stack
    /// of two replicas on a held socket and a notify service, as its
    /// check child got it: this release reads it (N-1 → N).
    #[test]
    fn the_format_before_is_read_with_what_it_lacks_left_empty() {
        let v1 = include_bytes!("testdata/snapshot-v1.json");
        let snap = Snapshot::decode(v1).expect("format 1 is read");
        assert_eq!(snap.format, 1);
        assert_eq!(snap.services.len(), 3);
        assert_eq!(snap.running(), 3);
        assert_eq!(snap.held.len(), 1);
        assert!(snap.pins.is_empty() && snap.roots.is_empty());
        assert_eq!(snap.taken_ms, None);
        let health = &snap.services[0].core.health;
        assert_eq!(health.probes_in_ms, [None; 3]);
    }

    #[test]
    fn an_unknown_format_is_refused_by_number() {
        let e = Snapshot::decode(br#"{"format": 99}"#).unwrap_err();
        assert!(e.contains("format 99"), "{e}");
        assert!(Snapshot::decode(b"garbage")
            .unwrap_err()
            .contains("not one"));
    }
}
