//! CNI networks at run time: the plugins of a network's configuration
//! list, run by the supervisor — ADD while a sandbox's init holds in its
//! new network namespace, DEL once the sandbox is gone, CHECK at a reload
//! — as children the reaper collects like any other, never waited for in
//! the loop ([`plugin`]: memfds for their input and output, a deadline
//! each). An ADD's result is kept on disk for its DEL, as libcni caches
//! them: the next `isola up` after a SIGKILL releases what the killed one
//! took.

use std::collections::{HashMap, VecDeque};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Instant;

use isola_runtime::ExitStatus;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

use crate::shell::context::ServiceIx;
use crate::spec::networks::Cni;

mod plugin;
use plugin::{first_ipv4, Verb, PLUGIN_TIMEOUT};

/// CHECKs run at once at most (a reload of 10,000 sandboxes on a CNI
/// network must not fork 10,000 plugins together).
const MAX_CHECKS: usize = 8;

/// A plugin process of ours, for the reaper.
pub(crate) type OpId = u64;

/// One sandbox on one CNI network (kept on disk as JSON).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(super) struct Attachment {
    container: String,
    ifname: String,
    /// The stack network's name (its position may change at a reload).
    #[serde(default)]
    network: String,
    /// `CNI_NETNS` of its ADDs and CHECKs: the held init's namespace.
    #[serde(skip)]
    netns: String,
    /// The list's `name` and `cniVersion`, and its plugins.
    name: String,
    version: String,
    plugins: Vec<Value>,
    /// The list allows CHECK (version 0.4.0 or later, no `disableCheck`).
    #[serde(default)]
    check: bool,
    /// What ADD answered (DEL and CHECK are given it).
    result: Option<Value>,
}

/// A plugin running.
struct Op {
    service: ServiceIx,
    /// The start it works for (a later start of the service has another).
    container: String,
    verb: Verb,
    /// Its attachment's position in the start's.
    at: usize,
    plugin: usize,
    run: plugin::Running,
    deadline: Instant,
    timed_out: bool,
}

/// A sandbox's attachments while it starts and runs.
struct Start {
    attachments: Vec<Attachment>,
    /// ADD chains still running.
    pending: usize,
    failed: Option<String>,
    /// The sandbox went while ADDs ran: DEL once they are done.
    ending: bool,
}

/// A sandbox's addresses on its CNI networks, by network name.
pub(crate) type Addresses = Vec<(String, Ipv4Addr)>;

/// What a plugin's exit (or a request) led to.
#[derive(Default)]
pub(crate) struct Exited {
    /// Plugins started next (the reaper watches them).
    pub(crate) spawned: Vec<(Pid, OpId)>,
    /// A sandbox's ADDs all ended: its addresses, or why not.
    pub(crate) done: Option<(ServiceIx, Result<Addresses, String>)>,
    /// A CHECK of a running sandbox's network failed: why.
    pub(crate) broken: Option<(ServiceIx, String)>,
}

pub(crate) struct CniRuns {
    ops: HashMap<OpId, Op>,
    next: OpId,
    starts: HashMap<ServiceIx, Start>,
    /// DELs in flight (their attachments).
    deleting: HashMap<OpId, Attachment>,
    /// CHECKs waiting for a slot, and how many run.
    checks: VecDeque<(ServiceIx, usize, Attachment)>,
    checking: usize,
    cache: PathBuf,
}

impl CniRuns {
    /// Results are cached in `cache`; what a killed supervisor left there
    /// is deleted first (its namespaces are gone: DEL releases addresses).
    pub(crate) fn new(cache: PathBuf) -> CniRuns {
        for path in cached(&cache) {
            if let Some(a) = std::fs::read(&path)
                .ok()
                .and_then(|t| serde_json::from_slice::<Attachment>(&t).ok())
            {
                plugin::del_now(&a);
            }
            let _ = std::fs::remove_file(&path);
        }
        CniRuns::empty(cache)
    }

    /// Nothing at work, nothing known; results cached in `cache`.
    fn empty(cache: PathBuf) -> CniRuns {
        CniRuns {
            ops: HashMap::new(),
            next: 0,
            starts: HashMap::new(),
            deleting: HashMap::new(),
            checks: VecDeque::new(),
            checking: 0,
            cache,
        }
    }

    /// Plugins at work (an upgrade waits for them).
    pub(crate) fn busy(&self) -> bool {
        !self.ops.is_empty() || !self.deleting.is_empty() || !self.checks.is_empty()
    }

    /// The running sandboxes' attachments, by service name, with their
    /// `CNI_NETNS` (an upgrade hands them over).
    pub(crate) fn export(
        &self,
        name_of: &dyn Fn(ServiceIx) -> Option<String>,
    ) -> Vec<(String, String, Vec<Value>)> {
        self.starts
            .iter()
            .filter_map(|(i, s)| {
                let netns = s.attachments.first()?.netns.clone();
                let all = (s.attachments.iter())
                    .filter_map(|a| serde_json::to_value(a).ok())
                    .collect();
                Some((name_of(*i)?, netns, all))
            })
            .collect()
    }

    /// What an older binary ran: its cache is the running sandboxes', so
    /// nothing in it is deleted (unlike [`CniRuns::new`]).
    pub(crate) fn adopted(
        cache: PathBuf,
        starts: &[(String, String, Vec<Value>)],
        index_of: &dyn Fn(&str) -> Option<ServiceIx>,
    ) -> CniRuns {
        let mut runs = CniRuns::empty(cache);
        for (name, netns, all) in starts {
            let Some(i) = index_of(name) else { continue };
            let attachments: Vec<Attachment> = (all.iter())
                .filter_map(|v| serde_json::from_value::<Attachment>(v.clone()).ok())
                .map(|mut a| {
                    a.netns.clone_from(netns);
                    a
                })
                .collect();
            let start = Start {
                attachments,
                pending: 0,
                failed: None,
                ending: false,
            };
            runs.starts.insert(i, start);
        }
        runs
    }

    /// Sandbox `i` (its init `init`) holds in its network namespace: ADD
    /// it to each of `nets` (network name, its list, interface name).
    /// None: it is done at once.
    pub(crate) fn add(&mut self, i: ServiceIx, init: Pid, nets: &[(&str, &Cni, String)]) -> Exited {
        let attachments: Vec<Attachment> = nets
            .iter()
            .map(|(network, c, ifname)| Attachment {
                container: format!("isola-{}-{i}", init.as_raw()),
                ifname: ifname.clone(),
                network: (*network).to_string(),
                netns: format!("/proc/{}/ns/net", init.as_raw()),
                name: c.name.clone(),
                version: c.version.clone(),
                plugins: c.plugins.clone(),
                check: c.check,
                result: None,
            })
            .collect();
        let mut out = Exited::default();
        if attachments.is_empty() {
            out.done = Some((i, Ok(Vec::new())));
            return out;
        }
        let start = Start {
            pending: attachments.len(),
            attachments: attachments.clone(),
            failed: None,
            ending: false,
        };
        self.starts.insert(i, start);
        for (at, a) in attachments.iter().enumerate() {
            let started = self
                .save(a)
                .and_then(|()| self.spawn(i, Verb::Add, at, 0, a, &a.netns));
            match started {
                Ok(op) => out.spawned.push(op),
                Err(e) => self.chain_ended(i, Some(e), &mut out),
            }
        }
        out
    }

    /// Sandbox `i` is gone (or never started): DEL what it was added to —
    /// once its ADDs in flight are done, so none allocates after its DEL.
    pub(crate) fn remove(&mut self, i: ServiceIx) -> Vec<(Pid, OpId)> {
        match self.starts.get_mut(&i) {
            Some(s) if s.pending > 0 => {
                s.ending = true;
                Vec::new()
            }
            Some(_) => self.del_all(i),
            None => Vec::new(),
        }
    }

    /// DEL every attachment of `i`'s start (it is forgotten).
    fn del_all(&mut self, i: ServiceIx) -> Vec<(Pid, OpId)> {
        let Some(start) = self.starts.remove(&i) else {
            return Vec::new();
        };
        let mut spawned = Vec::new();
        for a in start.attachments {
            let last = a.plugins.len().saturating_sub(1);
            // Kept on disk when it cannot start: the next `isola up` tries.
            if let Ok(op) = self.spawn(i, Verb::Del, 0, last, &a, "") {
                self.deleting.insert(op.1, a);
                spawned.push(op);
            }
        }
        spawned
    }

    /// Every start at exit, or when a reload drops the networks: DELs
    /// started for all (the reaper collects them; a cache file left
    /// behind is the next `isola up`'s).
    pub(crate) fn remove_all(&mut self) -> Vec<(Pid, OpId)> {
        let all: Vec<ServiceIx> = self.starts.keys().copied().collect();
        all.into_iter().flat_map(|i| self.del_all(i)).collect()
    }

    /// Plugin `op` exited.
    pub(crate) fn exited(&mut self, id: OpId, status: ExitStatus) -> Exited {
        let Some(mut op) = self.ops.remove(&id) else {
            return Exited::default();
        };
        let answer = op.run.answer(op.verb, status, op.timed_out);
        match op.verb {
            Verb::Del => self.del_exited(id, &op, answer),
            Verb::Add => self.add_exited(&op, answer),
            Verb::Check => self.check_exited(&op, answer),
        }
    }

    /// The attachment `op` worked for, if its start is still the one.
    fn attachment_of(&mut self, op: &Op) -> Option<&mut Attachment> {
        let s = self.starts.get_mut(&op.service)?;
        s.attachments
            .get_mut(op.at)
            .filter(|a| a.container == op.container)
    }

    fn add_exited(&mut self, op: &Op, answer: Result<Value, String>) -> Exited {
        let mut out = Exited::default();
        let ending = self
            .starts
            .get(&op.service)
            .is_some_and(|s| s.ending || s.failed.is_some());
        let Some(a) = self.attachment_of(op) else {
            return out;
        };
        match answer {
            Ok(result) => {
                a.result = Some(result);
                let a = a.clone();
                if op.plugin + 1 < a.plugins.len() && !ending {
                    match self.spawn(op.service, Verb::Add, op.at, op.plugin + 1, &a, &a.netns) {
                        Ok(spawned) => out.spawned.push(spawned),
                        Err(e) => self.chain_ended(op.service, Some(e), &mut out),
                    }
                    return out;
                }
                let saved = self.save(&a).err();
                self.chain_ended(op.service, saved, &mut out);
            }
            Err(e) => {
                let why = format!("network {} ({}): {e}", a.network, a.ifname);
                self.chain_ended(op.service, Some(why), &mut out);
            }
        }
        out
    }

    /// One of sandbox `i`'s ADD chains ended (`failed`: why not well).
    fn chain_ended(&mut self, i: ServiceIx, failed: Option<String>, out: &mut Exited) {
        let Some(start) = self.starts.get_mut(&i) else {
            return;
        };
        start.pending = start.pending.saturating_sub(1);
        if let Some(f) = failed {
            start.failed.get_or_insert(f);
        }
        if start.pending > 0 {
            return;
        }
        if start.ending {
            out.spawned.extend(self.del_all(i));
            return;
        }
        let result = match &start.failed {
            Some(f) => Err(f.clone()),
            None => Ok(start
                .attachments
                .iter()
                .filter_map(|a| Some((a.network.clone(), first_ipv4(a.result.as_ref()?)?)))
                .collect()),
        };
        out.done = Some((i, result));
    }

    fn del_exited(&mut self, id: OpId, op: &Op, answer: Result<Value, String>) -> Exited {
        let mut out = Exited::default();
        let Some(a) = self.deleting.remove(&id) else {
            return out;
        };
        if answer.is_ok() && op.plugin > 0 {
            if let Ok(spawned) = self.spawn(op.service, Verb::Del, 0, op.plugin - 1, &a, "") {
                self.deleting.insert(spawned.1, a);
                out.spawned.push(spawned);
            }
            return out;
        }
        // Done, or failed: a failed DEL stays on disk for the next try.
        if answer.is_ok() {
            let _ = std::fs::remove_file(cache_path(&self.cache, &a));
        }
        out
    }

    /// Start plugin `plugin` of `a` for `verb`.
    fn spawn(
        &mut self,
        service: ServiceIx,
        verb: Verb,
        at: usize,
        plugin: usize,
        a: &Attachment,
        netns: &str,
    ) -> Result<(Pid, OpId), String> {
        let run = plugin::start(verb, plugin, a, netns)?;
        let (id, pid) = (self.next, run.pid);
        self.next += 1;
        let op = Op {
            service,
            container: a.container.clone(),
            verb,
            at,
            plugin,
            run,
            deadline: Instant::now() + PLUGIN_TIMEOUT,
            timed_out: false,
        };
        self.ops.insert(id, op);
        Ok((pid, id))
    }

    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.ops
            .values()
            .filter(|o| !o.timed_out)
            .map(|o| o.deadline)
            .min()
    }

    /// Kill the plugins past their deadline (their exit fails their work).
    pub(crate) fn expire(&mut self, now: Instant) {
        for op in self.ops.values_mut() {
            if !op.timed_out && op.deadline <= now {
                op.timed_out = true;
                let _ = kill(op.run.pid, Signal::SIGKILL);
            }
        }
    }

    /// At exit: the plugins in flight waited for (a while), and every
    /// attachment left deleted now.
    pub(crate) fn finish(&mut self) {
        let until = Instant::now() + PLUGIN_TIMEOUT;
        for op in self.ops.values() {
            plugin::wait_until(op.run.pid, until);
        }
        self.ops.clear();
        let starts = self.starts.drain().flat_map(|(_, s)| s.attachments);
        let left: Vec<Attachment> = starts
            .chain(self.deleting.drain().map(|(_, a)| a))
            .collect();
        // DEL is idempotent: one cut short is run whole again.
        for a in left {
            plugin::del_now(&a);
            let _ = std::fs::remove_file(cache_path(&self.cache, &a));
        }
    }

    fn save(&self, a: &Attachment) -> Result<(), String> {
        let p = cache_path(&self.cache, a);
        let text = serde_json::to_vec(a).map_err(|e| e.to_string())?;
        std::fs::create_dir_all(&self.cache)
            .and_then(|()| std::fs::write(&p, text))
            .map_err(|e| format!("{}: {e}", p.display()))
    }
}

mod check;

fn cache_path(dir: &Path, a: &Attachment) -> PathBuf {
    dir.join(format!("{}-{}.json", a.container, a.ifname))
}

fn cached(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| Some(e.ok()?.path())).collect())
        .unwrap_or_default()
}
