//! One CNI plugin process: its input (the plugin's configuration with the
//! list's name and version and the result so far), started as a child of
//! ours with memfds for stdin, stdout and stderr (no pipe to block on),
//! and its answer read once it has exited.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::time::{Duration, Instant};

use isola_runtime::ExitStatus;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};

use super::Attachment;
use crate::spec::networks::cni::{plugin_path, CNI_PATH};

/// A plugin that takes longer is killed, and what it worked for fails.
pub(super) const PLUGIN_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verb {
    Add,
    Del,
    Check,
}

/// A plugin started: its pid and where its output goes.
pub(super) struct Running {
    pub(super) pid: Pid,
    out: File,
    err: File,
}

/// The plugin's stdin: its own configuration, with the list's name and
/// version, and the result so far (CNI spec 1.0, `prevResult`).
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

/// Fork and exec plugin `plugin` of `a` for `verb`, in `netns`.
pub(super) fn start(
    verb: Verb,
    plugin: usize,
    a: &Attachment,
    netns: &str,
) -> Result<Running, String> {
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
    let (out, err) = (memfd(c"cni-out")?, memfd(c"cni-err")?);
    let dup = |f: &File| f.try_clone().map_err(|e| format!("memfd: {e}"));
    let command = match verb {
        Verb::Add => "ADD",
        Verb::Del => "DEL",
        Verb::Check => "CHECK",
    };
    let child = std::process::Command::new(&path)
        .env_clear()
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", &a.container)
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", &a.ifname)
        .env("CNI_PATH", CNI_PATH)
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .stdin(input)
        .stdout(dup(&out)?)
        .stderr(dup(&err)?)
        .spawn()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let pid = Pid::from_raw(i32::try_from(child.id()).unwrap_or(0));
    // Not waited for here: the reaper collects it.
    drop(child);
    Ok(Running { pid, out, err })
}

fn read_all(f: &mut File) -> String {
    let mut text = String::new();
    let _ = f.seek(SeekFrom::Start(0));
    let _ = f.read_to_string(&mut text);
    text
}

impl Running {
    /// What the plugin answered: its result (an ADD's must be one: a
    /// plugin's log lines go to stderr), or its error (`{code, msg,
    /// details}` on stdout, else its stderr's first line).
    pub(super) fn answer(
        &mut self,
        verb: Verb,
        status: ExitStatus,
        timed_out: bool,
    ) -> Result<Value, String> {
        if timed_out {
            return Err(format!("plugin timed out after {PLUGIN_TIMEOUT:?}"));
        }
        let out = read_all(&mut self.out);
        let parsed: Option<Value> = serde_json::from_str(out.trim()).ok();
        let mut first_err = || {
            let e = read_all(&mut self.err);
            e.trim().lines().next().unwrap_or("").to_string()
        };
        if status.code() == 0 {
            return match (verb, parsed) {
                (Verb::Add, Some(v @ Value::Object(_))) => Ok(v),
                (Verb::Add, _) => Err(format!("no result on stdout ({})", first_err())),
                (_, v) => Ok(v.unwrap_or(Value::Null)),
            };
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
            .unwrap_or_else(first_err);
        Err(format!("exit {}: {msg}", status.code()))
    }
}

/// DEL `a` through its whole chain, waiting (at start and exit only).
pub(super) fn del_now(a: &Attachment) {
    for plugin in (0..a.plugins.len()).rev() {
        if let Ok(r) = start(Verb::Del, plugin, a, "") {
            wait_until(r.pid, Instant::now() + PLUGIN_TIMEOUT);
        }
    }
}

/// Wait for child `pid` until `until`, then kill it.
pub(super) fn wait_until(pid: Pid, until: Instant) {
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

/// The first IPv4 address of a result (`ips[].address`, CIDR).
pub(super) fn first_ipv4(result: &Value) -> Option<std::net::Ipv4Addr> {
    result.get("ips")?.as_array()?.iter().find_map(|ip| {
        let a = ip.get("address")?.as_str()?;
        a.split('/').next()?.parse().ok()
    })
}
