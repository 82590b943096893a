//! What `isola up` sets up on the host before any service runs: its fd
//! limit and OOM score (and what services get back), the control socket,
//! and its claim on the stack's cgroup.

use std::os::fd::OwnedFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use isola_runtime::cgroup::{self, Cgroup};
use isola_runtime::plan::Rlimit;
use nix::fcntl::{open, Flock, FlockArg, OFlag};
use nix::sys::resource::{getrlimit, setrlimit, Resource};
use nix::sys::stat::Mode;

use crate::spec::policy::{OomPolicy, Stderr};
use crate::spec::stack::ServiceDef;
use crate::supervisor::{setup, UpError};
use crate::upgrade::snapshot::InheritedRecord;

/// Where the kernel caps RLIMIT_NOFILE for root.
const NR_OPEN: &str = "/proc/sys/fs/nr_open";
/// Our own fd limit at most: enough for 10,000 services and their clients.
const MAX_NOFILE: u64 = 1 << 20;
const OOM_SCORE_ADJ: &str = "/proc/self/oom_score_adj";
/// The supervisor is the last process the kernel's OOM killer should pick:
/// killing it takes every service down (their inits die with it).
const SUPERVISOR_OOM_SCORE_ADJ: i32 = -999;
/// The control socket's mode, from the umask at bind time.
const SOCKET_UMASK: u32 = 0o177;

/// What `isola up` was started with and changed for itself: services get
/// it back unless their spec says otherwise.
#[derive(Clone, Copy)]
pub(crate) struct Inherited {
    /// RLIMIT_NOFILE as we found it (ours is raised).
    nofile: Option<Rlimit>,
    /// The OOM score we were started with, when we lowered our own.
    oom_score_adj: Option<i32>,
}

impl Inherited {
    pub(crate) fn adjust() -> Inherited {
        Inherited {
            nofile: raise_nofile(),
            oom_score_adj: protect_from_oom(),
        }
    }

    /// What an upgrade hands on: the first supervisor's findings (the new
    /// binary finds our raised limit and lowered score).
    pub(crate) fn record(&self) -> InheritedRecord {
        InheritedRecord {
            nofile: self.nofile.map(|r| (r.soft, r.hard)),
            oom_score_adj: self.oom_score_adj,
        }
    }

    pub(crate) fn from_record(r: InheritedRecord) -> Inherited {
        Inherited {
            nofile: r.nofile.map(|(soft, hard)| Rlimit {
                resource: Resource::RLIMIT_NOFILE,
                soft,
                hard,
            }),
            oom_score_adj: r.oom_score_adj,
        }
    }

    /// What a supervisor started with these would give back.
    #[cfg(test)]
    pub(crate) fn with(nofile: Option<Rlimit>, oom_score_adj: Option<i32>) -> Inherited {
        Inherited {
            nofile,
            oom_score_adj,
        }
    }

    /// Add what the supervisor gives every service to its plan, once, as
    /// it is loaded: the fd limit and OOM score `isola up` started with
    /// (unless the spec sets them), `memory.oom.group` for `oom: kill`.
    fn complete_plan(&self, def: &mut ServiceDef, no_cgroup: bool) {
        let plan = &mut def.plan;
        let sets_nofile = plan
            .rlimits
            .iter()
            .any(|r| r.resource == Resource::RLIMIT_NOFILE);
        if let (false, Some(nofile)) = (sets_nofile, self.nofile) {
            plan.rlimits.push(nofile);
        }
        if plan.oom_score_adj.is_none() {
            plan.oom_score_adj = self.oom_score_adj;
        }
        if def.policy.oom == OomPolicy::Kill && !no_cgroup {
            plan.cgroup_files
                .push(cgroup::limits::CgroupFile::new("memory.oom.group", "1"));
        }
    }
}

/// What the supervisor adds to every plan it loads, kept so that the
/// spawner, which builds a service's plan again from the stack file at
/// each start, adds the same.
#[derive(Clone)]
pub(crate) struct PlanAdditions {
    pub(crate) inherited: Inherited,
    pub(crate) no_cgroup: bool,
    /// The control socket (`notify: "systemd"` services get its directory).
    pub(crate) socket: PathBuf,
}

impl PlanAdditions {
    pub(crate) fn add_to(&self, def: &mut ServiceDef) {
        self.inherited.complete_plan(def, self.no_cgroup);
        crate::readiness::notify_socket::complete_plan(def, &self.socket);
        crate::networks::complete_plan(def, &self.socket);
    }
}

/// The keeper's limit raised as the supervisor's is (it holds copies of
/// the supervisor's fds), and its OOM score lowered as the supervisor's
/// is (its death takes every service).
pub(crate) fn adjust_keeper() {
    let _ = raise_nofile();
    let _ = protect_from_oom();
}

/// A running service holds two fds ([`FDS_PER_RUNNING`]): raise
/// our RLIMIT_NOFILE (root may go up to fs.nr_open). Returns the original.
fn raise_nofile() -> Option<Rlimit> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
    let nr_open = std::fs::read_to_string(NR_OPEN)
        .ok()
        .and_then(|t| t.trim().parse::<u64>().ok())
        .unwrap_or(hard);
    let want = nr_open.min(MAX_NOFILE).max(hard);
    if setrlimit(Resource::RLIMIT_NOFILE, want, want).is_err() {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
    Some(Rlimit {
        resource: Resource::RLIMIT_NOFILE,
        soft,
        hard,
    })
}

/// Lowered the way containerd lowers its own; returns the original score
/// when it could (root), `None` when it was left alone.
fn protect_from_oom() -> Option<i32> {
    let original: i32 = std::fs::read_to_string(OOM_SCORE_ADJ)
        .ok()?
        .trim()
        .parse()
        .ok()?;
    if original <= SUPERVISOR_OOM_SCORE_ADJ {
        return None;
    }
    std::fs::write(OOM_SCORE_ADJ, SUPERVISOR_OOM_SCORE_ADJ.to_string()).ok()?;
    Some(original)
}

/// fds of a running service: the read ends of its stdout and stderr
/// pipes. Its init is reaped on SIGCHLD (no pidfd), its sync socket is
/// closed once the payload runs, its log is opened when written (through
/// the cache of [`crate::outputs::LOGS_OPEN`]), and its cgroup's stat
/// files are opened only into fds the stack leaves spare.
pub(crate) const FDS_PER_RUNNING: u64 = 2;

/// fds of a service while its sandbox sets up, besides its pipes: the
/// init's pidfd and sync socket, and /dev/null and the pipes' write ends
/// for the moment of the clone.
const FDS_PER_STARTING: u64 = 5;

/// fds of the supervisor itself: epoll, signalfd, timerfd, inotify, the
/// control socket, the spawner's socket, stdio and their non-blocking
/// copies, the stack's lock; a start burst's (MAX_STARTING sandboxes
/// setting up at once); and room for 64 clients.
const SUPERVISOR_FDS: u64 = 16 + FDS_PER_STARTING * crate::supervisor::MAX_STARTING as u64 + 64;

/// Open stat files of one running service (`memory.current`,
/// `memory.peak`, `cpu.stat`).
const FDS_PER_STATS: u64 = 3;
/// Tasks of a running service at least: its init and its payload.
const TASKS_PER_SERVICE: u64 = 2;

/// What a service's health costs in fds at most: its notify socket or
/// pipe, and one per probe (a probe in flight holds a socket or a pidfd).
fn health_fds(def: &ServiceDef) -> u64 {
    let h = &def.policy.health;
    let probes = h.probes.iter().filter(|p| p.is_some()).count();
    u64::from(h.notify.is_some()) + u64::try_from(probes).unwrap_or(u64::MAX)
}

/// Sockets the supervisor holds (once per service, however many replicas
/// share them) and fd stores at their limit.
fn held_fds<'a>(defs: impl Iterator<Item = &'a ServiceDef>) -> u64 {
    let mut groups = std::collections::HashSet::new();
    let mut n = 0u64;
    for d in defs {
        n += u64::from(d.policy.fd_store_max);
        if groups.insert(d.group_name()) {
            n += u64::try_from(d.policy.sockets.len()).unwrap_or(u64::MAX);
        }
    }
    n
}

/// Refuse a stack that cannot run whole on this host — before anything
/// starts, in one line with the numbers and the fix — rather than let
/// thousands of services fail one by one. Returns how many running
/// services may keep their stat files open in the fds left spare.
///
/// An autoscaled service counts at its `max`: the stack must run whole at
/// its largest.
pub(crate) fn check_capacity(
    defs: &[ServiceDef],
    autoscaled: &[ServiceDef],
    running: usize,
) -> Result<usize, UpError> {
    // The replicas the file has, and the rest of each autoscaled
    // service's `max` (its definition as written stands for them).
    let more = autoscaled.iter().flat_map(|a| {
        let max = a.policy.autoscale.as_ref().map_or(0, |s| s.max);
        let min = a.policy.autoscale.as_ref().map_or(0, |s| s.min);
        // At zero the sockets are held still: counted once at least.
        std::iter::repeat_n(a, (max - min).max(1) as usize)
    });
    let all: Vec<&ServiceDef> = defs.iter().chain(more).collect();
    let services = all.len();
    let budget = FdBudget::of(&all);
    let spare = budget.check(services)?;
    check_tasks(services, running)?;
    Ok(usize::try_from(spare.min(budget.services)).unwrap_or(services))
}

/// The fds a stack needs at most, by what needs them.
struct FdBudget {
    services: u64,
    pipes: u64,
    health: u64,
    held: u64,
    logs: u64,
    /// Services with a stderr pipe of their own.
    separate: u64,
}

impl FdBudget {
    fn of(defs: &[&ServiceDef]) -> FdBudget {
        let n = u64::try_from(defs.len()).unwrap_or(u64::MAX);
        let merged = defs
            .iter()
            .filter(|d| d.policy.stderr == Stderr::Stdout)
            .count();
        let merged = u64::try_from(merged).unwrap_or(u64::MAX);
        FdBudget {
            services: n,
            pipes: n * FDS_PER_RUNNING - merged,
            health: defs.iter().map(|d| health_fds(d)).sum(),
            held: held_fds(defs.iter().copied()),
            logs: n.min(crate::outputs::LOGS_OPEN as u64),
            separate: n - merged,
        }
    }

    fn total(&self) -> u64 {
        self.pipes + self.health + self.held + self.logs + SUPERVISOR_FDS
    }

    /// Within RLIMIT_NOFILE? How many services' stat files fit beside.
    fn check(&self, services: usize) -> Result<u64, UpError> {
        let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
            return Ok(0);
        };
        let fds = self.total();
        if fds <= soft {
            return Ok(soft.saturating_sub(fds) / FDS_PER_STATS);
        }
        let merge = if self.separate > 0 && fds - self.separate <= soft {
            format!(
                ", or give the services \"stderr\": \"stdout\" (one pipe each instead of two: {} in all)",
                fds - self.separate
            )
        } else {
            String::new()
        };
        Err(UpError::Setup(format!(
            "{services} services need up to {fds} file descriptors ({}) but RLIMIT_NOFILE allows \
             {soft} (hard limit {hard}, and isola up could not raise it): raise it \
             (`ulimit -n {fds}`, or LimitNOFILE={fds} in the systemd unit), split the stack{merge}",
            self.parts()
        )))
    }

    fn parts(&self) -> String {
        let mut parts = vec![format!("output pipes {}", self.pipes)];
        if self.health > 0 {
            parts.push(format!("health checks {}", self.health));
        }
        if self.held > 0 {
            parts.push(format!("held sockets and stored fds {}", self.held));
        }
        parts.push(format!("open logs {}", self.logs));
        parts.push(format!("the supervisor {SUPERVISOR_FDS}"));
        parts.join(", ")
    }
}

/// Room for every service's init and payload under pid_max and
/// threads-max, beside what runs already.
/// `running` of them run already: their processes are among the tasks
/// counted now.
fn check_tasks(services: usize, running: usize) -> Result<(), UpError> {
    let n = u64::try_from(services.saturating_sub(running)).unwrap_or(u64::MAX);
    let read = |p: &str| {
        std::fs::read_to_string(p)
            .ok()
            .and_then(|t| t.trim().parse::<u64>().ok())
    };
    // /proc/loadavg's fourth field: running/total tasks now.
    let tasks_now = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|t| {
            let field = t.split_whitespace().nth(3)?;
            field.split_once('/')?.1.parse::<u64>().ok()
        })
        .unwrap_or(0);
    let tasks = n * TASKS_PER_SERVICE + 1;
    let services = n;
    for (file, name) in [
        ("/proc/sys/kernel/pid_max", "kernel.pid_max"),
        ("/proc/sys/kernel/threads-max", "kernel.threads-max"),
    ] {
        if let Some(max) = read(file) {
            if tasks_now + tasks > max {
                return Err(UpError::Setup(format!(
                    "{services} services to start need at least {tasks} processes ({TASKS_PER_SERVICE} \
                     each: init and payload) and {tasks_now} run already, but {name} is {max}: \
                     raise it (sysctl -w {name}={}) or split the stack",
                    (tasks_now + tasks).next_power_of_two()
                )));
            }
        }
    }
    Ok(())
}

pub(crate) struct RemoveOnDrop(pub(crate) Option<PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Bind the control socket with mode 0600, refusing to steal it from a
/// supervisor that is still listening.
pub(crate) fn bind_socket(path: &Path) -> Result<UnixListener, UpError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(setup(dir.display()))?;
    }
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            return Err(UpError::Setup(format!(
                "{}: another isola supervisor is listening there (--socket to use another)",
                path.display()
            )));
        }
        std::fs::remove_file(path).map_err(setup(path.display()))?;
    }
    // The socket file takes its mode from the umask at bind time: no window
    // in which it is world-accessible.
    let old = nix::sys::stat::umask(Mode::from_bits_truncate(SOCKET_UMASK));
    let res = UnixListener::bind(path);
    nix::sys::stat::umask(old);
    let l = res.map_err(setup(path.display()))?;
    l.set_nonblocking(true).map_err(setup(path.display()))?;
    Ok(l)
}

/// The stack's cgroup (`<cgroup-root>/<stack>`), held by one supervisor at
/// a time: an exclusive flock on the directory, kept for the supervisor's
/// life and released by the kernel when it dies, however it dies. Two
/// stack files with the same name (or one stack started twice with two
/// sockets) would otherwise share the group, and the second's clean-up of
/// "stale" groups would kill the first one's services.
pub(crate) struct StackGroup {
    path: PathBuf,
    lock: Flock<OwnedFd>,
}

impl StackGroup {
    /// Create the group if needed and take it; then what is left inside is
    /// a dead supervisor's: kill and remove it (returns the names).
    pub(crate) fn claim(path: &Path) -> Result<(StackGroup, Vec<String>), UpError> {
        cgroup::create_parents(path).map_err(setup("cgroup"))?;
        let dir = open(
            path,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(setup(path.display()))?;
        let lock = Flock::lock(dir, FlockArg::LockExclusiveNonblock).map_err(|(_, e)| {
            UpError::Setup(match e {
                nix::errno::Errno::EWOULDBLOCK => format!(
                    "cgroup {} belongs to another running isola supervisor (a stack file of the \
                     same name?): stop it, rename this stack file or use another --cgroup-root",
                    path.display()
                ),
                e => format!("lock {}: {e}", path.display()),
            })
        })?;
        let stale = Cgroup::remove_children(path, false).map_err(setup("remove stale cgroups"))?;
        Ok((
            StackGroup {
                path: path.to_owned(),
                lock,
            },
            stale,
        ))
    }

    /// The claim as an older binary of ours held it (an upgrade): the same
    /// open file, so taking the lock again cannot fail on our own lock.
    pub(crate) fn adopt(path: &Path, dir: OwnedFd) -> Result<StackGroup, nix::errno::Errno> {
        let lock = Flock::lock(dir, FlockArg::LockExclusiveNonblock).map_err(|(_, e)| e)?;
        Ok(StackGroup {
            path: path.to_owned(),
            lock,
        })
    }

    /// The locked directory's fd (an upgrade keeps it across the exec).
    pub(crate) fn lock_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.lock.as_fd()
    }

    /// At the end: remove what is left, then the group and our claim.
    pub(crate) fn release(self) -> Result<Vec<String>, cgroup::CgroupError> {
        Cgroup::remove_children(&self.path, true)
    }
}
