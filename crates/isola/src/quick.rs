//! `isola run`'s limit flags (`--memory 256M --cpus 1.5 …`, over the
//! spec's `linux.resources`, as `systemd-run -p MemoryMax=` and `docker run
//! --memory` cap a command) and its spec-less form, `isola run [flags] --
//! CMD ARGS…`: the starter sandbox (`isola spec`) around a host command, in
//! host-root mode — the host read-only, a fresh /dev and /tmp — with the
//! binds `--ro`/`--rw` ask for.

use std::path::{Path, PathBuf};

use isola_runtime::shorthand::{parse_bytes, IoMax, Limits, Merge};
use isola_runtime::{exit, spec, starter, Plan, SpecError};
use serde_json::{json, Value};

use crate::Exit;

#[derive(clap::Args, Default)]
pub(crate) struct LimitFlags {
    /// memory.max: bytes with K, M, G or T (256M).
    #[arg(long)]
    memory: Option<String>,
    /// Swap allowed beyond --memory (memory.swap.max; 0: none).
    #[arg(long)]
    memory_swap: Option<String>,
    /// CPUs (cpu.max): 1.5 is 150 ms per 100 ms.
    #[arg(long)]
    cpus: Option<f64>,
    /// cpu.weight, 1-10000 (100 is the default).
    #[arg(long)]
    cpu_weight: Option<u64>,
    /// pids.max: processes and threads.
    #[arg(long)]
    pids: Option<u64>,
    /// io.weight, 1-10000.
    #[arg(long)]
    io_weight: Option<u64>,
    /// io.max: DEV:rbps=N,wbps=N,riops=N,wiops=N (DEV as MAJ:MIN or /dev/…).
    #[arg(long)]
    io_max: Vec<String>,
}

#[derive(clap::Args, Default)]
pub(crate) struct QuickFlags {
    /// The command's network (without a spec): none (its own namespace,
    /// loopback only) or host.
    #[arg(long, value_parser = ["none", "host"])]
    net: Option<String>,
    /// Host paths visible read-only (without a spec; e.g. under /tmp).
    #[arg(long)]
    ro: Vec<PathBuf>,
    /// Host paths writable (without a spec).
    #[arg(long)]
    rw: Vec<PathBuf>,
}

impl LimitFlags {
    fn limits(&self) -> Result<Limits, SpecError> {
        let bytes =
            |f: &str, v: &Option<String>| v.as_deref().map(|t| parse_bytes(f, t)).transpose();
        let count = |f: &str, v: Option<u64>| match v {
            Some(0) => Err(SpecError::new(f, "0: must be above 0")),
            v => Ok(v),
        };
        let l = Limits {
            memory: bytes("--memory", &self.memory)?,
            memory_swap: bytes("--memory-swap", &self.memory_swap)?,
            cpus: self.cpus,
            cpu_weight: count("--cpu-weight", self.cpu_weight)?,
            pids: count("--pids", self.pids)?,
            io_weight: count("--io-weight", self.io_weight)?,
            io_max: self
                .io_max
                .iter()
                .map(|t| IoMax::parse("--io-max", t))
                .collect::<Result<_, _>>()?,
        };
        l.check(&|f| {
            let flag: String = f
                .chars()
                .flat_map(|c| {
                    if c.is_ascii_uppercase() {
                        vec!['-', c.to_ascii_lowercase()]
                    } else {
                        vec![c]
                    }
                })
                .collect();
            format!("--{flag}")
        })?;
        Ok(l)
    }
}

/// `isola update`'s flags as a `linux.resources` object.
pub(crate) fn resources(flags: &LimitFlags) -> Result<Value, Exit> {
    let limits = flags.limits().map_err(usage)?;
    if limits.is_empty() {
        return Err(Exit(
            exit::USAGE,
            "update: give a limit (--memory, --memory-swap, --cpus, --cpu-weight, --pids, --io-weight, --io-max)".into(),
        ));
    }
    let mut r = json!({});
    limits.apply(&mut r, Merge::Override).map_err(usage)?;
    Ok(r)
}

fn usage(e: SpecError) -> Exit {
    Exit(exit::USAGE, e.to_string())
}

/// A spec file (or `-`) with the flags' limits over its own.
pub(crate) fn load(path: &str, flags: &LimitFlags, quick: &QuickFlags) -> Result<Plan, Exit> {
    if quick.net.is_some() || !quick.ro.is_empty() || !quick.rw.is_empty() {
        return Err(Exit(
            exit::USAGE,
            "--net, --ro and --rw shape the sandbox of a command without a spec (isola run -- CMD); with a spec, use its namespaces and mounts".into(),
        ));
    }
    let limits = flags.limits().map_err(usage)?;
    if limits.is_empty() {
        return crate::cmd::common::load(path);
    }
    let (text, base) = crate::cmd::common::read_spec(path)?;
    let bad = |e: &dyn std::fmt::Display| Exit(exit::USAGE, format!("{path}: {e}"));
    let mut v: Value = serde_json::from_str(&text).map_err(|e| bad(&e))?;
    apply(&mut v, &limits).map_err(|e| bad(&e))?;
    plan_of(v, &base, path)
}

/// The starter sandbox around `command`, flags applied. `no_cgroup`: the
/// starter's own limits and device rules go (they need a cgroup); limits
/// from flags still need one.
pub(crate) fn command(
    command: &[String],
    flags: &LimitFlags,
    quick: &QuickFlags,
    no_cgroup: bool,
) -> Result<Plan, Exit> {
    let limits = flags.limits().map_err(usage)?;
    let mut v = starter::starter_spec();
    if no_cgroup {
        if let Some(linux) = v["linux"].as_object_mut() {
            linux.remove("resources");
        }
    }
    v["process"]["args"] = json!(command);
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
    v["process"]["cwd"] = json!(cwd);
    if let Ok(term) = std::env::var("TERM") {
        if let Some(env) = v["process"]["env"].as_array_mut() {
            env.retain(|e| !e.as_str().is_some_and(|e| e.starts_with("TERM=")));
            env.push(json!(format!("TERM={term}")));
        }
    }
    if quick.net.as_deref() == Some("host") {
        if let Some(ns) = v["linux"]["namespaces"].as_array_mut() {
            ns.retain(|n| n["type"] != "network");
        }
    }
    let mut mounts = Vec::new();
    // The working directory stays reachable where the sandbox has its own
    // (/tmp): read-only unless --rw names it.
    let private = ["/tmp", "/dev"];
    if private.iter().any(|p| cwd.starts_with(p)) && !quick.rw.iter().any(|p| cwd.starts_with(p)) {
        mounts.push(bind(&cwd, true));
    }
    for (paths, ro) in [(&quick.ro, true), (&quick.rw, false)] {
        for p in paths {
            let p = std::fs::canonicalize(p).map_err(|e| {
                Exit(
                    exit::USAGE,
                    format!("--{} {}: {e}", if ro { "ro" } else { "rw" }, p.display()),
                )
            })?;
            mounts.push(bind(&p, ro));
        }
    }
    v["mounts"] = json!(mounts);
    apply(&mut v, &limits).map_err(usage)?;
    plan_of(v, &cwd, "isola run --")
}

fn bind(p: &Path, ro: bool) -> Value {
    json!({"destination": p, "type": "bind", "source": p, "options": ["rbind", if ro { "ro" } else { "rw" }]})
}

/// Put `limits` over the spec's own `linux.resources`.
fn apply(v: &mut Value, limits: &Limits) -> Result<(), SpecError> {
    if limits.is_empty() {
        return Ok(());
    }
    let Some(obj) = v.as_object_mut() else {
        return Err(SpecError::new("", "a service spec must be a JSON object"));
    };
    let linux = obj.entry("linux").or_insert_with(|| json!({}));
    let Some(linux) = linux.as_object_mut() else {
        return Err(SpecError::new("linux", "must be an object"));
    };
    let res = linux.entry("resources").or_insert_with(|| json!({}));
    limits.apply(res, Merge::Override)
}

fn plan_of(v: Value, base: &Path, what: &str) -> Result<Plan, Exit> {
    let svc =
        spec::parse_value(v, base, "").map_err(|e| Exit(exit::USAGE, format!("{what}: {e}")))?;
    crate::cmd::common::plan_of(&svc, what)
}
