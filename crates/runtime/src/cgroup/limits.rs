//! OCI `linux.resources` → cgroup v2 file writes, validated against the
//! kernel's bounds. Pure: nothing here touches the filesystem.

use oci_spec::runtime::{LinuxBlockIo, LinuxCpu, LinuxMemory, LinuxResources, LinuxThrottleDevice};

use crate::error::SpecError;

const FIELD: &str = "linux.resources";
const MIN_MEMORY: i64 = 64 * 1024;
/// The kernel's cpu.max bounds (kernel/sched/core.c): 1 ms ≤ period ≤ 1 s,
/// quota ≥ 1 ms.
const MIN_PERIOD: u64 = 1_000;
const MAX_PERIOD: u64 = 1_000_000;
const MIN_QUOTA: i64 = 1_000;
const DEFAULT_PERIOD: u64 = 100_000;

/// One cgroup file and the value written to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupFile {
    pub file: String,
    pub value: String,
}

impl CgroupFile {
    pub fn new(file: impl Into<String>, value: impl Into<String>) -> CgroupFile {
        CgroupFile {
            file: file.into(),
            value: value.into(),
        }
    }

    /// The controller the file belongs to (`memory` of `memory.max`).
    pub fn controller(&self) -> Option<&str> {
        self.file.split_once('.').map(|(c, _)| c)
    }
}

type Writes = Vec<CgroupFile>;

fn err(field: &str, msg: String) -> SpecError {
    SpecError::new(format!("{FIELD}.{field}"), msg)
}

/// Fields cgroup v2 has no file for and the kernel deprecated (kernel
/// memory is counted in memory.max; io has no leaf weights): ignored with
/// a warning each, as crun and runc do, so older clients' specs still run.
pub fn ignored(res: &LinuxResources) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(mem) = res.memory() {
        for (field, set) in [
            ("memory.kernel", mem.kernel().is_some()),
            ("memory.kernelTCP", mem.kernel_tcp().is_some()),
        ] {
            if set {
                out.push(format!(
                    "{FIELD}.{field}: ignored on cgroup v2 (counted in memory.limit)"
                ));
            }
        }
    }
    if let Some(bio) = res.block_io() {
        let device_leaf = bio
            .weight_device()
            .iter()
            .flatten()
            .any(|d| d.leaf_weight().is_some());
        if bio.leaf_weight().is_some() || device_leaf {
            out.push(format!(
                "{FIELD}.blockIO.leafWeight: ignored on cgroup v2 (io has no leaf weights)"
            ));
        }
    }
    out
}

/// Every (file, value) to write, in an order the kernel accepts
/// (memory.max before memory.swap.max and the like).
pub fn translate(res: &LinuxResources) -> Result<Writes, SpecError> {
    let mut w = Writes::new();
    if let Some(cpu) = res.cpu() {
        cpu_files(cpu, &mut w)?;
    }
    if let Some(mem) = res.memory() {
        memory_files(mem, &mut w)?;
    }
    if let Some(pids) = res.pids() {
        let limit = pids.limit();
        let v = if limit <= 0 {
            "max".to_string()
        } else {
            limit.to_string()
        };
        w.push(CgroupFile::new("pids.max", v));
    }
    if let Some(bio) = res.block_io() {
        block_io_files(bio, &mut w)?;
    }
    if res
        .hugepage_limits()
        .as_ref()
        .is_some_and(|v| !v.is_empty())
    {
        return Err(err("hugepageLimits", "not supported by isola yet".into()));
    }
    if res.network().is_some() {
        return Err(err(
            "network",
            "not supported on cgroup v2 (no net_cls/net_prio)".into(),
        ));
    }
    if res.rdma().as_ref().is_some_and(|m| !m.is_empty()) {
        return Err(err("rdma", "not supported by isola yet".into()));
    }
    // `devices` becomes the device filter program (super::devices).
    if let Some(unified) = res.unified() {
        let mut keys: Vec<_> = unified.keys().collect();
        keys.sort();
        for k in keys {
            check_unified_key(k)?;
            w.push(CgroupFile::new(k.clone(), unified[k].clone()));
        }
    }
    Ok(w)
}

fn cpu_files(cpu: &LinuxCpu, w: &mut Writes) -> Result<(), SpecError> {
    let period = cpu.period().unwrap_or(DEFAULT_PERIOD);
    if !(MIN_PERIOD..=MAX_PERIOD).contains(&period) {
        return Err(err(
            "cpu.period",
            format!("{period}: must be between {MIN_PERIOD} and {MAX_PERIOD} µs"),
        ));
    }
    match cpu.quota() {
        Some(q) if q > 0 && q < MIN_QUOTA => {
            return Err(err(
                "cpu.quota",
                format!("{q}: must be at least {MIN_QUOTA} µs, or -1 for no limit"),
            ));
        }
        Some(q) if q == 0 || q < -1 => {
            return Err(err(
                "cpu.quota",
                format!("{q}: must be at least {MIN_QUOTA} µs, or -1 for no limit"),
            ));
        }
        Some(q) if q > 0 => w.push(CgroupFile::new("cpu.max", format!("{q} {period}"))),
        Some(_) => w.push(CgroupFile::new("cpu.max", format!("max {period}"))),
        None if cpu.period().is_some() => {
            w.push(CgroupFile::new("cpu.max", format!("max {period}")))
        }
        None => {}
    }
    if let Some(b) = cpu.burst() {
        w.push(CgroupFile::new("cpu.max.burst", b.to_string()));
    }
    if let Some(s) = cpu.shares() {
        if s != 0 {
            if !(2..=262_144).contains(&s) {
                return Err(err(
                    "cpu.shares",
                    format!("{s}: must be between 2 and 262144"),
                ));
            }
            w.push(CgroupFile::new(
                "cpu.weight",
                shares_to_weight(s).to_string(),
            ));
        }
    }
    if let Some(idle) = cpu.idle() {
        w.push(CgroupFile::new("cpu.idle", idle.to_string()));
    }
    if cpu.realtime_runtime().is_some() || cpu.realtime_period().is_some() {
        return Err(err(
            "cpu.realtimeRuntime",
            "not supported on cgroup v2".into(),
        ));
    }
    if let Some(c) = cpu.cpus() {
        check_cpuset_list("cpu.cpus", c)?;
        w.push(CgroupFile::new("cpuset.cpus", c.clone()));
    }
    if let Some(m) = cpu.mems() {
        check_cpuset_list("cpu.mems", m)?;
        w.push(CgroupFile::new("cpuset.mems", m.clone()));
    }
    Ok(())
}

/// cgroup v1 shares (2..262144) → v2 weight (1..10000) by the logarithmic
/// mapping runc 1.3 and crun 1.23 use: 2→1, 1024→100 (both defaults), 262144→10000.
pub(crate) fn shares_to_weight(shares: u64) -> u64 {
    if shares <= 2 {
        return 1;
    }
    if shares >= 262_144 {
        return 10_000;
    }
    let l = (shares as f64).log2();
    let exponent = (l * l + 125.0 * l) / 612.0 - 7.0 / 34.0;
    // Between 1 and 10,000 for shares in [2, 262,144): the cast is exact.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let weight = 10f64.powf(exponent).ceil() as u64;
    weight
}

fn check_cpuset_list(field: &str, v: &str) -> Result<(), SpecError> {
    let ok = !v.is_empty()
        && v.split(',').all(|part| {
            let mut it = part.splitn(2, '-');
            let a = it.next().map(|x| x.parse::<u32>().is_ok()).unwrap_or(false);
            let b = it.next().map(|x| x.parse::<u32>().is_ok()).unwrap_or(true);
            a && b
        });
    if ok {
        Ok(())
    } else {
        Err(err(
            field,
            format!("{v:?}: expected a list such as \"0-2,4\""),
        ))
    }
}

fn memory_files(mem: &LinuxMemory, w: &mut Writes) -> Result<(), SpecError> {
    let bytes = |field: &str, v: i64| -> Result<String, SpecError> {
        match v {
            -1 => Ok("max".into()),
            v if v < MIN_MEMORY => Err(err(
                field,
                format!("{v}: must be at least {MIN_MEMORY} bytes (64 KiB), or -1 for no limit"),
            )),
            v => Ok(v.to_string()),
        }
    };
    if let Some(r) = mem.reservation() {
        w.push(CgroupFile::new(
            "memory.low",
            bytes("memory.reservation", r)?,
        ));
    }
    if let Some(l) = mem.limit() {
        w.push(CgroupFile::new("memory.max", bytes("memory.limit", l)?));
    }
    if let Some(s) = mem.swap() {
        // OCI swap is memory+swap; v2 swap.max counts swap alone.
        let v = match (s, mem.limit()) {
            (-1, _) => "max".to_string(),
            (s, Some(l)) if l > 0 && s >= l => (s - l).to_string(),
            (s, Some(l)) if l > 0 => {
                return Err(err(
                    "memory.swap",
                    format!("{s}: must be -1 or at least memory.limit ({l})"),
                ));
            }
            (s, _) => {
                return Err(err(
                    "memory.swap",
                    format!("{s}: needs a memory.limit (swap counts memory+swap)"),
                ));
            }
        };
        w.push(CgroupFile::new("memory.swap.max", v));
    }
    if mem.swappiness().is_some() {
        return Err(err(
            "memory.swappiness",
            "not supported on cgroup v2".into(),
        ));
    }
    if mem.disable_oom_killer() == Some(true) {
        return Err(err(
            "memory.disableOOMKiller",
            "not supported on cgroup v2".into(),
        ));
    }
    Ok(())
}

fn block_io_files(bio: &LinuxBlockIo, w: &mut Writes) -> Result<(), SpecError> {
    let weight = |field: &str, v: u16| -> Result<u64, SpecError> {
        if !(10..=1000).contains(&v) {
            return Err(err(field, format!("{v}: must be between 10 and 1000")));
        }
        // blkio 10..1000 → io 1..10000, linearly (as crun).
        Ok(1 + (u64::from(v) - 10) * 9999 / 990)
    };
    if let Some(v) = bio.weight() {
        w.push(CgroupFile::new(
            "io.weight",
            format!("default {}", weight("blockIO.weight", v)?),
        ));
    }
    for (i, d) in bio.weight_device().iter().flatten().enumerate() {
        if let Some(v) = d.weight() {
            let f = format!("blockIO.weightDevice[{i}].weight");
            w.push(CgroupFile::new(
                "io.weight",
                format!("{}:{} {}", d.major(), d.minor(), weight(&f, v)?),
            ));
        }
    }
    let throttles: [(&str, &Option<Vec<LinuxThrottleDevice>>, &str); 4] = [
        (
            "throttleReadBpsDevice",
            bio.throttle_read_bps_device(),
            "rbps",
        ),
        (
            "throttleWriteBpsDevice",
            bio.throttle_write_bps_device(),
            "wbps",
        ),
        (
            "throttleReadIOPSDevice",
            bio.throttle_read_iops_device(),
            "riops",
        ),
        (
            "throttleWriteIOPSDevice",
            bio.throttle_write_iops_device(),
            "wiops",
        ),
    ];
    for (field, devs, key) in throttles {
        for (i, d) in devs.iter().flatten().enumerate() {
            if d.major() < 0 || d.minor() < 0 {
                return Err(err(
                    &format!("blockIO.{field}[{i}]"),
                    format!("{}:{}: bad device number", d.major(), d.minor()),
                ));
            }
            let rate = if d.rate() == 0 {
                "max".to_string()
            } else {
                d.rate().to_string()
            };
            w.push(CgroupFile::new(
                "io.max",
                format!("{}:{} {key}={rate}", d.major(), d.minor()),
            ));
        }
    }
    Ok(())
}

/// `unified` keys must name an interface file of a controller, not a path or
/// one of the files isola itself manages.
fn check_unified_key(k: &str) -> Result<(), SpecError> {
    let managed = [
        "cgroup.procs",
        "cgroup.threads",
        "cgroup.subtree_control",
        "cgroup.kill",
        "cgroup.freeze",
        "cgroup.type",
    ];
    let well_formed = k.split_once('.').is_some_and(|(c, f)| {
        !c.is_empty() && !f.is_empty() && c.chars().all(|x| x.is_ascii_lowercase() || x == '_')
    }) && k
        .chars()
        .all(|x| x.is_ascii_alphanumeric() || "._-".contains(x));
    if !well_formed || managed.contains(&k) {
        return Err(err(
            &format!("unified.{k}"),
            "not a cgroup v2 interface file isola may set".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
