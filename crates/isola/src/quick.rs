//! `isola run`'s limit flags (`--memory 256M --cpus 1.5 …`, over the
//! spec's `linux.resources`, as `systemd-run -p MemoryMax=` and `docker run
//! --memory` cap a command) and its spec-less form, `isola run [flags] --
//! CMD ARGS…`: the starter sandbox (`isola spec`) around a host command, in
//! host-root mode — the host read-only, a fresh /dev and /tmp — with the
//! binds `--ro`/`--rw` ask for.

use std::path::{Path, PathBuf};

use isola_images::root::SandboxRoot;
use isola_images::{config, Reference};
use isola_runtime::shorthand::{parse_bytes, IoMax, Limits, Merge};
use isola_runtime::{exit, spec, starter, Plan, SpecError};
use serde_json::{json, Value};

use crate::image::{self, ImageFlags};
use crate::Exit;

/// Where an image's root goes: the sandbox's name, the store and
/// registry flags.
pub(crate) struct Images<'a> {
    pub(crate) name: &'a str,
    pub(crate) flags: &'a ImageFlags,
}

/// A plan, and the image root it runs on (held until it is dropped or
/// removed).
pub(crate) struct Prepared {
    pub(crate) plan: Plan,
    pub(crate) root: Option<SandboxRoot>,
}

impl Prepared {
    fn plain(plan: Plan) -> Prepared {
        Prepared { plan, root: None }
    }

    /// `plan` on `root`; a plan that failed takes the root's directory with it.
    fn with_root(plan: Result<Plan, Exit>, root: Option<SandboxRoot>) -> Result<Prepared, Exit> {
        let mut plan = match plan {
            Ok(p) => p,
            Err(e) => {
                if let Some(r) = root {
                    let _ = r.remove();
                }
                return Err(e);
            }
        };
        if let Some(r) = &root {
            image::attach(&mut plan, r)?;
        }
        Ok(Prepared { plan, root })
    }
}

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
    /// loopback only), pasta (its own namespace, outbound through pasta)
    /// or host.
    #[arg(long, value_parser = ["none", "pasta", "host"])]
    net: Option<String>,
    /// Host paths visible read-only (without a spec; e.g. under /tmp).
    #[arg(long)]
    ro: Vec<PathBuf>,
    /// Host paths writable (without a spec).
    #[arg(long)]
    rw: Vec<PathBuf>,
}

impl QuickFlags {
    /// `--net pasta`: outbound access through pasta.
    pub(crate) fn outbound(&self) -> bool {
        self.net.as_deref() == Some("pasta")
    }
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

/// A spec file (or `-`) with the flags' limits over its own. A spec that
/// names an `image` gets its root prepared (as `name`) and held.
pub(crate) fn load(
    path: &str,
    flags: &LimitFlags,
    quick: &QuickFlags,
    image: &Images<'_>,
) -> Result<Prepared, Exit> {
    if quick.net.is_some() || !quick.ro.is_empty() || !quick.rw.is_empty() {
        return Err(Exit(
            exit::USAGE,
            "--net, --ro and --rw shape the sandbox of a command without a spec (isola run -- CMD); with a spec, use its namespaces and mounts".into(),
        ));
    }
    let limits = flags.limits().map_err(usage)?;
    let (text, base) = crate::cmd::common::read_spec(path)?;
    if limits.is_empty() && !text.contains("\"image\"") && !text.contains("\"entrypoint\"") {
        return crate::cmd::common::load_text(&text, &base, path).map(Prepared::plain);
    }
    let bad = |e: &dyn std::fmt::Display| Exit(exit::USAGE, format!("{path}: {e}"));
    let mut v: Value = serde_json::from_str(&text).map_err(|e| bad(&e))?;
    // Everything that can fail on the spec alone, before a root exists.
    apply(&mut v, &limits).map_err(|e| bad(&e))?;
    let Some(obj) = v.as_object_mut() else {
        return plan_of(v, &base, path).map(Prepared::plain);
    };
    let insecure = image::take_insecure(obj).map_err(|e| bad(&e.1))?;
    let fields = config::take_fields(obj, "").map_err(|e| bad(&e))?;
    let root = match fields {
        Some(f) => {
            let r = Reference::parse(&f.image, "image").map_err(|e| bad(&e))?;
            let entry = f.entrypoint.as_deref();
            Some(image::prepare(
                obj,
                &r,
                entry,
                image.name,
                image.flags,
                &insecure,
            )?)
        }
        None => None,
    };
    Prepared::with_root(plan_of(v, &base, path), root)
}

/// The image `r` in the starter sandbox, as `podman run IMAGE CMD` runs
/// it: the image's command unless `command` is given (after its
/// Entrypoint), its environment, working directory and user.
pub(crate) fn image_command(
    r: &str,
    command: &[String],
    flags: &LimitFlags,
    quick: &QuickFlags,
    no_cgroup: bool,
    image: &Images<'_>,
) -> Result<Prepared, Exit> {
    let r = Reference::parse(r, "REF").map_err(|e| image::fail(e, exit::USAGE))?;
    let limits = flags.limits().map_err(usage)?;
    let mut v = starter(no_cgroup, quick);
    if let Some(p) = v["process"].as_object_mut() {
        // The image's own, unless the command line says otherwise.
        for k in ["args", "cwd", "user", "env"] {
            p.remove(k);
        }
        if !command.is_empty() {
            p.insert("args".into(), json!(command));
        }
        if let Ok(term) = std::env::var("TERM") {
            p.insert("env".into(), json!([format!("TERM={term}")]));
        }
    }
    v["mounts"] = json!(binds(quick, None)?);
    apply(&mut v, &limits).map_err(usage)?;
    let Some(obj) = v.as_object_mut() else {
        return Err(Exit(exit::SETUP, "starter spec is not an object".into()));
    };
    let root = image::prepare(obj, &r, None, image.name, image.flags, &[])?;
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
    Prepared::with_root(plan_of(v, &cwd, &r.to_string()), Some(root))
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
    let mut v = starter(no_cgroup, quick);
    v["process"]["args"] = json!(command);
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
    v["process"]["cwd"] = json!(cwd);
    if let Ok(term) = std::env::var("TERM") {
        if let Some(env) = v["process"]["env"].as_array_mut() {
            env.retain(|e| !e.as_str().is_some_and(|e| e.starts_with("TERM=")));
            env.push(json!(format!("TERM={term}")));
        }
    }
    v["mounts"] = json!(binds(quick, Some(&cwd))?);
    apply(&mut v, &limits).map_err(usage)?;
    plan_of(v, &cwd, "isola run --")
}

/// The starter spec, without its limits for `--no-cgroup` and without a
/// network namespace for `--net host`.
fn starter(no_cgroup: bool, quick: &QuickFlags) -> Value {
    let mut v = starter::starter_spec();
    if no_cgroup {
        if let Some(linux) = v["linux"].as_object_mut() {
            linux.remove("resources");
        }
    }
    if quick.net.as_deref() == Some("host") {
        if let Some(ns) = v["linux"]["namespaces"].as_array_mut() {
            ns.retain(|n| n["type"] != "network");
        }
    }
    v
}

/// The starter's `/tmp` and the binds `--ro` and `--rw` ask for. `cwd`:
/// the working directory, kept reachable (read-only unless --rw names
/// it) where the sandbox has its own (/tmp, /dev).
fn binds(quick: &QuickFlags, cwd: Option<&Path>) -> Result<Vec<Value>, Exit> {
    let mut mounts = vec![
        json!({"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev", "mode=1777", "size=64m"]}),
    ];
    let private = ["/tmp", "/dev"];
    if let Some(cwd) = cwd {
        if private.iter().any(|p| cwd.starts_with(p))
            && !quick.rw.iter().any(|p| cwd.starts_with(p))
        {
            mounts.push(bind(cwd, true));
        }
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
    Ok(mounts)
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
