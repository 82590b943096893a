//! CNI networks at run time: the plugins of a network's configuration
//! list, run by the supervisor — ADD while a sandbox's init holds in its
//! new network namespace, DEL once the sandbox is gone — as children the
//! reaper collects like any other, never waited for in the loop. Their
//! input and output are memfds (a plugin never blocks on a pipe nobody
//! reads), each has a deadline, and an ADD's result is kept on disk for
//! its DEL, as libcni caches them: the next `isola up` after a SIGKILL
//! releases what the killed one took.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use isola_runtime::ExitStatus;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};

use crate::shell::context::ServiceIx;
use crate::spec::networks::cni::{plugin_path, CNI_PATH};
use crate::spec::networks::Cni;

/// A plugin that takes longer is killed, and its start fails.
const PLUGIN_TIMEOUT: Duration = Duration::from_secs(30);

/// A plugin process of ours, for the reaper.
pub(crate) type OpId = u64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verb {
    Add,
    Del,
    Check,
}

/// One sandbox on one CNI network.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Attachment {
    container: String,
    ifname: String,
    /// The network's position in the stack (not kept on disk).
    #[serde(skip)]
    net: usize,
    /// `CNI_NETNS` of its ADDs: the held init's namespace.
    #[serde(skip)]
    netns: String,
    name: String,
    version: String,
    plugins: Vec<Value>,
    /// What ADD answered (DEL is given it).
    result: Option<Value>,
}

/// A plugin running.
struct Op {
    service: ServiceIx,
    /// The start it works for (a later start of the service has another).
    container: String,
    verb: Verb,
    /// Its attachment, by position in the start's (ADD) or on its own
    /// (DEL).
    at: usize,
    plugin: usize,
    out: File,
    pid: Pid,
    deadline: Instant,
    timed_out: bool,
}

/// A sandbox's attachments while it starts and runs.
struct Start {
    attachments: Vec<Attachment>,
    /// ADD chains still running.
    pending: usize,
    failed: Option<String>,
}

/// A sandbox's addresses on its CNI networks, by network position.
pub(crate) type Addresses = Vec<(usize, Ipv4Addr)>;

/// What a plugin's exit led to.
#[derive(Default)]
pub(crate) struct Exited {
    /// Plugins started next (the reaper watches them).
    pub(crate) spawned: Vec<(Pid, OpId)>,
    /// A sandbox's ADDs all ended: its addresses, by network, or why not.
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
                del_now(&a);
            }
            let _ = std::fs::remove_file(&path);
        }
        CniRuns {
            ops: HashMap::new(),
            next: 0,
            starts: HashMap::new(),
            deleting: HashMap::new(),
            cache,
        }
    }

    /// Sandbox `i` (its init `init`) holds in its network namespace: ADD
    /// it to each of `nets` (network position, its list, interface name).
    pub(crate) fn add(
        &mut self,
        i: ServiceIx,
        init: Pid,
        nets: &[(usize, &Cni, String)],
    ) -> Result<Vec<(Pid, OpId)>, String> {
        let attachments: Vec<Attachment> = nets
            .iter()
            .map(|(k, c, ifname)| Attachment {
                container: format!("isola-{}-{i}", init.as_raw()),
                ifname: ifname.clone(),
                net: *k,
                netns: format!("/proc/{}/ns/net", init.as_raw()),
                name: c.name.clone(),
                version: c.version.clone(),
                plugins: c.plugins.clone(),
                result: None,
            })
            .collect();
        let mut spawned = Vec::new();
        for (at, a) in attachments.iter().enumerate() {
            self.save(a)?;
            let op = self.spawn(i, Verb::Add, at, 0, a, &a.netns)?;
            spawned.push(op);
        }
        self.starts.insert(
            i,
            Start {
                pending: attachments.len(),
                attachments,
                failed: None,
            },
        );
        Ok(spawned)
    }

    /// Sandbox `i` is gone (or never started): DEL what it was added to.
    pub(crate) fn remove(&mut self, i: ServiceIx) -> Vec<(Pid, OpId)> {
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

    /// Plugin `op` exited.
    pub(crate) fn exited(&mut self, id: OpId, status: ExitStatus) -> Exited {
        let Some(mut op) = self.ops.remove(&id) else {
            return Exited::default();
        };
        let answer = read_answer(&mut op, status);
        match op.verb {
            Verb::Del => self.del_exited(id, op, answer),
            Verb::Add => self.add_exited(op, answer),
            Verb::Check => self.check_exited(op, answer),
        }
    }

    /// Every sandbox whose ADDs are done: CHECK each of its networks as
    /// ADD made them (a reload asks; a failure restarts the service).
    pub(crate) fn check_all(&mut self) -> Vec<(Pid, OpId)> {
        let ready: Vec<(ServiceIx, usize, Attachment)> = (self.starts.iter())
            .filter(|(_, s)| s.pending == 0 && s.failed.is_none())
            .flat_map(|(i, s)| {
                let each = s.attachments.iter().enumerate();
                each.map(move |(at, a)| (*i, at, a.clone()))
            })
            .collect();
        let mut spawned = Vec::new();
        for (i, at, a) in ready {
            if let Ok(op) = self.spawn(i, Verb::Check, at, 0, &a, &a.netns) {
                spawned.push(op);
            }
        }
        spawned
    }

    fn check_exited(&mut self, op: Op, answer: Result<Value, String>) -> Exited {
        let mut out = Exited::default();
        let Some(a) = self.starts.get(&op.service).and_then(|s| {
            s.attachments
                .get(op.at)
                .filter(|a| a.container == op.container)
                .cloned()
        }) else {
            return out;
        };
        match answer {
            Ok(_) if op.plugin + 1 < a.plugins.len() => {
                let next = self.spawn(op.service, Verb::Check, op.at, op.plugin + 1, &a, &a.netns);
                match next {
                    Ok(spawned) => out.spawned.push(spawned),
                    Err(e) => out.broken = Some((op.service, e)),
                }
            }
            Ok(_) => {}
            Err(e) => {
                let why = format!("network {} ({}): CNI CHECK: {e}", a.name, a.ifname);
                out.broken = Some((op.service, why));
            }
        }
        out
    }

    fn add_exited(&mut self, op: Op, answer: Result<Value, String>) -> Exited {
        let mut out = Exited::default();
        // A start that went meanwhile (its DELs ran) is no one's now.
        let Some(start) = self.starts.get_mut(&op.service).filter(|s| {
            s.attachments
                .get(op.at)
                .is_some_and(|a| a.container == op.container)
        }) else {
            return out;
        };
        let a = &mut start.attachments[op.at];
        let next = op.plugin + 1;
        match answer {
            Ok(result) if next < a.plugins.len() && start.failed.is_none() => {
                a.result = Some(result);
                let a = a.clone();
                match self.spawn(op.service, Verb::Add, op.at, next, &a, &a.netns) {
                    Ok(spawned) => out.spawned.push(spawned),
                    Err(e) => self.chain_ended(op.service, Some(e), &mut out),
                }
                return out;
            }
            Ok(result) => {
                a.result = Some(result);
                let a = a.clone();
                let saved = self.save(&a).err();
                self.chain_ended(op.service, saved, &mut out);
            }
            Err(e) => {
                let why = format!("network {} ({}): {e}", a.name, a.ifname);
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
        let result = match &start.failed {
            Some(f) => Err(f.clone()),
            None => Ok(start
                .attachments
                .iter()
                .filter_map(|a| Some((a.net, first_ipv4(a.result.as_ref()?)?)))
                .collect()),
        };
        out.done = Some((i, result));
    }

    fn del_exited(&mut self, id: OpId, op: Op, answer: Result<Value, String>) -> Exited {
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
            let _ = std::fs::remove_file(self.path_of(&a));
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
        let (pid, out) = start_plugin(verb, plugin, a, netns)?;
        let id = self.next;
        self.next += 1;
        self.ops.insert(
            id,
            Op {
                service,
                container: a.container.clone(),
                verb,
                at,
                plugin,
                out,
                pid,
                deadline: Instant::now() + PLUGIN_TIMEOUT,
                timed_out: false,
            },
        );
        Ok((pid, id))
    }

    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.ops
            .values()
            .filter(|o| !o.timed_out)
            .map(|o| o.deadline)
            .min()
    }

    /// Kill the plugins past their deadline (their exit fails the start).
    pub(crate) fn expire(&mut self, now: Instant) {
        for op in self.ops.values_mut() {
            if !op.timed_out && op.deadline <= now {
                op.timed_out = true;
                let _ = kill(op.pid, Signal::SIGKILL);
            }
        }
    }

    /// At exit: the DELs in flight waited for (a while), and every
    /// attachment left deleted now.
    pub(crate) fn finish(&mut self) {
        let until = Instant::now() + PLUGIN_TIMEOUT;
        for op in self.ops.values() {
            wait_until(op.pid, until);
        }
        self.ops.clear();
        let starts = self.starts.drain().flat_map(|(_, s)| s.attachments);
        let left: Vec<Attachment> = starts
            .chain(self.deleting.drain().map(|(_, a)| a))
            .collect();
        // DEL is idempotent: one cut short is run whole again.
        for a in left {
            del_now(&a);
            let _ = std::fs::remove_file(cache_path(&self.cache, &a));
        }
    }

    fn path_of(&self, a: &Attachment) -> PathBuf {
        cache_path(&self.cache, a)
    }

    fn save(&self, a: &Attachment) -> Result<(), String> {
        let p = self.path_of(a);
        let text = serde_json::to_vec(a).map_err(|e| e.to_string())?;
        std::fs::create_dir_all(&self.cache)
            .and_then(|()| std::fs::write(&p, text))
            .map_err(|e| format!("{}: {e}", p.display()))
    }
}

fn cache_path(dir: &Path, a: &Attachment) -> PathBuf {
    dir.join(format!("{}-{}.json", a.container, a.ifname))
}

fn cached(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| Some(e.ok()?.path())).collect())
        .unwrap_or_default()
}

/// The plugin's stdin: its own configuration, with the list's name and
/// version, and the result so far (CNI spec 1.0, "prevResult").
fn plugin_input(plugin: usize, a: &Attachment) -> Value {
    let mut conf = a.plugins.get(plugin).cloned().unwrap_or(Value::Null);
    if let Value::Object(m) = &mut conf {
        m.insert("name".into(), json!(a.name));
        m.insert("cniVersion".into(), json!(a.version));
        if let Some(r) = &a.result {
            m.insert("prevResult".into(), r.clone());
        }
    }
    conf
}

fn memfd(name: &std::ffi::CStr) -> Result<File, String> {
    nix::sys::memfd::memfd_create(name, nix::sys::memfd::MFdFlags::MFD_CLOEXEC)
        .map(File::from)
        .map_err(|e| format!("memfd: {e}"))
}

/// Fork and exec the plugin; its stdout and stderr go to one memfd.
fn start_plugin(
    verb: Verb,
    plugin: usize,
    a: &Attachment,
    netns: &str,
) -> Result<(Pid, File), String> {
    let kind = a
        .plugins
        .get(plugin)
        .and_then(|p| p.get("type")?.as_str())
        .unwrap_or("");
    let path =
        plugin_path(kind).ok_or_else(|| format!("plugin `{kind}` not found in {CNI_PATH}"))?;
    let mut input = memfd(c"cni-in")?;
    input
        .write_all(plugin_input(plugin, a).to_string().as_bytes())
        .and_then(|()| input.seek(SeekFrom::Start(0)).map(drop))
        .map_err(|e| format!("memfd: {e}"))?;
    let out = memfd(c"cni-out")?;
    let err = out.try_clone().map_err(|e| format!("memfd: {e}"))?;
    let dup = out.try_clone().map_err(|e| format!("memfd: {e}"))?;
    let child = Command::new(&path)
        .env_clear()
        .env(
            "CNI_COMMAND",
            match verb {
                Verb::Add => "ADD",
                Verb::Del => "DEL",
                Verb::Check => "CHECK",
            },
        )
        .env("CNI_CONTAINERID", &a.container)
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", &a.ifname)
        .env("CNI_PATH", CNI_PATH)
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .stdin(Stdio::from(input))
        .stdout(Stdio::from(dup))
        .stderr(Stdio::from(err))
        .spawn()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let pid = Pid::from_raw(i32::try_from(child.id()).unwrap_or(0));
    // Not waited for here: the reaper collects it.
    drop(child);
    Ok((pid, out))
}

/// A plugin's answer: its result, or its error (`{code, msg, details}`).
fn read_answer(op: &mut Op, status: ExitStatus) -> Result<Value, String> {
    let mut text = String::new();
    let _ = op.out.seek(SeekFrom::Start(0));
    let _ = op.out.read_to_string(&mut text);
    if op.timed_out {
        return Err(format!("plugin timed out after {PLUGIN_TIMEOUT:?}"));
    }
    let parsed: Option<Value> = serde_json::from_str(text.trim()).ok();
    if status.code() == 0 {
        return Ok(parsed.unwrap_or(Value::Null));
    }
    let msg = parsed
        .as_ref()
        .and_then(|v| {
            let msg = v.get("msg")?.as_str()?;
            Some(match v.get("details").and_then(Value::as_str) {
                Some(d) if !d.is_empty() => format!("{msg}: {d}"),
                _ => msg.to_string(),
            })
        })
        .unwrap_or_else(|| text.trim().lines().next().unwrap_or("failed").to_string());
    Err(format!("exit {}: {msg}", status.code()))
}

/// The first IPv4 address of a result (`ips[].address`, CIDR).
fn first_ipv4(result: &Value) -> Option<Ipv4Addr> {
    result.get("ips")?.as_array()?.iter().find_map(|ip| {
        let a = ip.get("address")?.as_str()?;
        a.split('/').next()?.parse().ok()
    })
}

/// DEL `a` through its whole chain, waiting (at start and exit only).
fn del_now(a: &Attachment) {
    for plugin in (0..a.plugins.len()).rev() {
        if let Ok((pid, _)) = start_plugin(Verb::Del, plugin, a, "") {
            wait_until(pid, Instant::now() + PLUGIN_TIMEOUT);
        }
    }
}

/// Wait for child `pid` until `until`, then kill it.
fn wait_until(pid: Pid, until: Instant) {
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    loop {
        match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) if Instant::now() < until => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Ok(WaitStatus::StillAlive) => {
                let _ = kill(pid, Signal::SIGKILL);
                let _ = waitpid(pid, None);
                return;
            }
            _ => return,
        }
    }
}
