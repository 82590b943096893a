//! Limits the way people already write them — `512M`, `1.5` CPUs, a pids
//! count — mapped onto OCI's `linux.resources`: `isola run`'s flags
//! (`--memory 256M --cpus 1.5 …`, which override the spec, as
//! `systemd-run -p MemoryMax=` and `docker run --memory` do) and a service's
//! `limits` object in stack files and specs (which may not also set the
//! same resource in `linux.resources`: that is an error naming both).

use serde_json::{json, Map, Value};

use crate::error::SpecError;

/// The cgroup v2 `cpu.max` period a `cpus` value is expressed over.
const CPU_PERIOD_US: u64 = 100_000;
/// Binary units, as `memory.max` and docker read them.
const UNITS: &[(char, u32)] = &[('K', 10), ('M', 20), ('G', 30), ('T', 40)];

/// `512`, `64K`, `256M`, `1.5G`, `2T` (binary units; `B`/`iB` optional).
pub fn parse_bytes(field: &str, text: &str) -> Result<u64, SpecError> {
    let bad = || {
        SpecError::new(
            field,
            format!("{text:?}: use a number of bytes with K, M, G or T (e.g. 256M)"),
        )
    };
    let t = text.trim();
    let t = t
        .strip_suffix("iB")
        .or_else(|| t.strip_suffix('B'))
        .unwrap_or(t);
    let (num, shift) = match t.chars().last().map(|c| c.to_ascii_uppercase()) {
        Some(c) if c.is_ascii_alphabetic() => {
            let shift = UNITS
                .iter()
                .find(|(u, _)| *u == c)
                .map(|(_, s)| *s)
                .ok_or_else(bad)?;
            (&t[..t.len() - 1], shift)
        }
        _ => (t, 0),
    };
    if let Ok(n) = num.parse::<u64>() {
        return n.checked_mul(1u64 << shift).ok_or_else(bad);
    }
    let f: f64 = num.parse().map_err(|_| bad())?;
    // Units are powers of two up to 2^40: exact in an f64.
    #[allow(clippy::cast_precision_loss)]
    let v = f * (1u64 << shift) as f64;
    if !v.is_finite() || v < 0.0 || v >= u64::MAX as f64 {
        return Err(bad());
    }
    // Whole bytes: a fraction of a byte is no limit anyone means.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    Ok(v as u64)
}

/// One `--io-max DEV:rbps=N,wbps=N,riops=N,wiops=N` (DEV as MAJ:MIN or a
/// device path).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IoMax {
    pub major: i64,
    pub minor: i64,
    /// (OCI throttle list, rate)
    pub rates: Vec<(&'static str, u64)>,
}

impl IoMax {
    pub fn parse(field: &str, text: &str) -> Result<IoMax, SpecError> {
        let bad = |why: &str| SpecError::new(field, format!("{text:?}: {why}"));
        let (dev, rest) = text
            .rsplit_once(':')
            .filter(|(d, _)| !d.is_empty())
            .ok_or_else(|| bad("use DEV:rbps=N,wbps=N,riops=N,wiops=N"))?;
        // MAJ:MIN has its own colon: "8:0:rbps=1M" splits at the last one.
        let (major, minor) = match dev.split_once(':') {
            Some((a, b)) => (
                a.parse().map_err(|_| bad("device major is not a number"))?,
                b.parse().map_err(|_| bad("device minor is not a number"))?,
            ),
            None => {
                use std::os::unix::fs::FileTypeExt;
                let st = std::fs::metadata(dev).map_err(|e| bad(&format!("{dev}: {e}")))?;
                if !st.file_type().is_block_device() {
                    return Err(bad(&format!("{dev}: not a block device")));
                }
                use std::os::unix::fs::MetadataExt;
                let rdev = st.rdev();
                let num = |n: u64| i64::try_from(n).map_err(|_| bad("device number out of range"));
                (
                    num(nix::sys::stat::major(rdev))?,
                    num(nix::sys::stat::minor(rdev))?,
                )
            }
        };
        let mut rates = Vec::new();
        for kv in rest.split(',') {
            let (k, v) = kv.split_once('=').ok_or_else(|| bad("use KEY=VALUE"))?;
            let list = match k {
                "rbps" => "throttleReadBpsDevice",
                "wbps" => "throttleWriteBpsDevice",
                "riops" => "throttleReadIOPSDevice",
                "wiops" => "throttleWriteIOPSDevice",
                _ => return Err(bad(&format!("{k}: use rbps, wbps, riops or wiops"))),
            };
            let rate = if k.ends_with("bps") {
                parse_bytes(field, v)?
            } else {
                v.parse().map_err(|_| bad(&format!("{v}: not a number")))?
            };
            rates.push((list, rate));
        }
        Ok(IoMax {
            major,
            minor,
            rates,
        })
    }
}

/// Limits in short form; `None` leaves a resource as the spec has it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Limits {
    pub memory: Option<u64>,
    /// Swap allowed beyond `memory` (memory.swap.max; 0: no swap).
    pub memory_swap: Option<u64>,
    pub cpus: Option<f64>,
    /// cgroup v2 cpu.weight, 1–10000.
    pub cpu_weight: Option<u64>,
    pub pids: Option<u64>,
    /// cgroup v2 io.weight, 1–10000.
    pub io_weight: Option<u64>,
    pub io_max: Vec<IoMax>,
}

/// How [`Limits::apply`] meets what `linux.resources` already says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Merge<'a> {
    /// The short form wins (command-line flags over the spec).
    Override,
    /// Setting a resource twice is an error; `prefix` names the fields.
    Exclusive(&'a str),
}

impl Limits {
    pub fn is_empty(&self) -> bool {
        *self == Limits::default()
    }

    /// A stack file's `limits` object: `memory`, `memorySwap` (bytes or
    /// strings with units), `cpus`, `cpuWeight`, `pids`, `ioWeight`.
    pub fn from_json(v: &Value, field: &str) -> Result<Limits, SpecError> {
        let Value::Object(m) = v else {
            return Err(SpecError::new(field, "must be an object"));
        };
        let mut l = Limits::default();
        for (k, v) in m {
            let f = format!("{field}.{k}");
            let bytes = |v: &Value| match v {
                Value::String(s) => parse_bytes(&f, s),
                Value::Number(n) => n.as_u64().ok_or_else(|| {
                    SpecError::new(&f, format!("{n}: must be a whole number of bytes"))
                }),
                _ => Err(SpecError::new(
                    &f,
                    "use a number of bytes or a string like \"512M\"",
                )),
            };
            let count = |v: &Value| {
                v.as_u64().filter(|n| *n > 0).ok_or_else(|| {
                    SpecError::new(&f, format!("{v}: must be a whole number above 0"))
                })
            };
            match k.as_str() {
                "memory" => l.memory = Some(bytes(v)?),
                "memorySwap" => l.memory_swap = Some(bytes(v)?),
                "cpus" => {
                    l.cpus = Some(v.as_f64().ok_or_else(|| {
                        SpecError::new(&f, format!("{v}: must be a number of CPUs, like 1.5"))
                    })?)
                }
                "cpuWeight" => l.cpu_weight = Some(count(v)?),
                "pids" => l.pids = Some(count(v)?),
                "ioWeight" => l.io_weight = Some(count(v)?),
                _ => {
                    return Err(SpecError::new(
                        f,
                        "unknown field (use memory, memorySwap, cpus, cpuWeight, pids, ioWeight)",
                    ))
                }
            }
        }
        l.check(&|name| format!("{field}.{name}"))?;
        Ok(l)
    }

    /// Ranges the kernel would refuse, named by `name(field)`.
    pub fn check(&self, name: &dyn Fn(&str) -> String) -> Result<(), SpecError> {
        if let Some(c) = self.cpus {
            // Under 1 ms per 100 ms period the kernel refuses cpu.max.
            if !c.is_finite() || c < 0.01 {
                return Err(SpecError::new(
                    name("cpus"),
                    format!("{c}: must be at least 0.01"),
                ));
            }
        }
        for (f, w) in [("cpuWeight", self.cpu_weight), ("ioWeight", self.io_weight)] {
            if let Some(w) = w {
                if !(1..=10_000).contains(&w) {
                    return Err(SpecError::new(name(f), format!("{w}: must be 1-10000")));
                }
            }
        }
        if self.memory_swap.is_some() && self.memory.is_none() {
            return Err(SpecError::new(
                name("memorySwap"),
                "needs a memory limit beside it (the swap allowed beyond memory)",
            ));
        }
        Ok(())
    }

    /// Write these limits into `resources` (a `linux.resources` object).
    pub fn apply(&self, resources: &mut Value, merge: Merge<'_>) -> Result<(), SpecError> {
        if !resources.is_object() {
            *resources = json!({});
        }
        // In Exclusive mode, a resource the spec already sets is an error.
        let conflict = |r: &mut Value, path: &[&str], short: &str| match merge {
            Merge::Exclusive(prefix) if !slot(r, path).is_null() => Err(SpecError::new(
                format!("{prefix}limits.{short}"),
                format!(
                    "{prefix}linux.resources.{} sets it too: keep one of the two",
                    path.join(".")
                ),
            )),
            _ => Ok(()),
        };
        let r = resources;
        if let Some(m) = self.memory {
            conflict(r, &["memory", "limit"], "memory")?;
            *slot(r, &["memory", "limit"]) = json!(m);
            if let Some(s) = self.memory_swap {
                conflict(r, &["memory", "swap"], "memorySwap")?;
                // OCI swap counts memory+swap.
                *slot(r, &["memory", "swap"]) = json!(m.saturating_add(s));
            }
        }
        if let Some(c) = self.cpus {
            conflict(r, &["cpu", "quota"], "cpus")?;
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let quota = (c * CPU_PERIOD_US as f64).round() as i64;
            *slot(r, &["cpu", "quota"]) = json!(quota);
            *slot(r, &["cpu", "period"]) = json!(CPU_PERIOD_US);
        }
        if let Some(w) = self.cpu_weight {
            conflict(r, &["cpu", "shares"], "cpuWeight")?;
            conflict(r, &["unified", "cpu.weight"], "cpuWeight")?;
            remove(r, &["cpu", "shares"]);
            *slot(r, &["unified", "cpu.weight"]) = json!(w.to_string());
        }
        if let Some(p) = self.pids {
            conflict(r, &["pids", "limit"], "pids")?;
            *slot(r, &["pids", "limit"]) = json!(p);
        }
        if let Some(w) = self.io_weight {
            conflict(r, &["blockIO", "weight"], "ioWeight")?;
            conflict(r, &["unified", "io.weight"], "ioWeight")?;
            remove(r, &["blockIO", "weight"]);
            *slot(r, &["unified", "io.weight"]) = json!(format!("default {w}"));
        }
        for io in &self.io_max {
            for (list, rate) in &io.rates {
                let l = slot(r, &["blockIO", list]);
                if !l.is_array() {
                    *l = json!([]);
                }
                if let Value::Array(a) = l {
                    a.retain(|d| d["major"] != json!(io.major) || d["minor"] != json!(io.minor));
                    a.push(json!({"major": io.major, "minor": io.minor, "rate": rate}));
                }
            }
        }
        Ok(())
    }
}

/// The value at `path` in `v`, made (as objects) where missing.
fn slot<'a>(v: &'a mut Value, path: &[&str]) -> &'a mut Value {
    let mut cur = v;
    for p in path {
        if !cur.is_object() {
            *cur = Value::Object(Map::new());
        }
        let Value::Object(m) = cur else {
            unreachable!("made an object just above")
        };
        cur = m.entry((*p).to_string()).or_insert(Value::Null);
    }
    cur
}

fn remove(v: &mut Value, path: &[&str]) {
    if let Some((last, parents)) = path.split_last() {
        if let Value::Object(m) = slot(v, parents) {
            m.remove(*last);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_with_units() {
        for (t, v) in [
            ("512", 512),
            ("64K", 64 << 10),
            ("256M", 256 << 20),
            ("256MiB", 256 << 20),
            ("1.5G", 3 << 29),
            ("2t", 2 << 40),
        ] {
            assert_eq!(parse_bytes("--memory", t).unwrap(), v, "{t}");
        }
        for bad in ["", "12X", "-1", "M", "1e400G"] {
            let e = parse_bytes("--memory", bad).unwrap_err();
            assert_eq!(e.field, "--memory");
            assert!(e.message.contains(&format!("{bad:?}")), "{e}");
        }
    }

    #[test]
    fn short_form_maps_onto_oci_resources() {
        let l = Limits::from_json(
            &json!({"memory": "512M", "memorySwap": 0, "cpus": 1.5, "pids": 200, "ioWeight": 100, "cpuWeight": 50}),
            "services.web.limits",
        )
        .unwrap();
        let mut r = json!({});
        l.apply(&mut r, Merge::Exclusive("services.web.")).unwrap();
        assert_eq!(r["memory"]["limit"], json!(512u64 << 20));
        assert_eq!(r["memory"]["swap"], json!(512u64 << 20));
        assert_eq!(r["cpu"]["quota"], json!(150_000));
        assert_eq!(r["cpu"]["period"], json!(100_000));
        assert_eq!(r["pids"]["limit"], json!(200));
        assert_eq!(r["unified"]["io.weight"], json!("default 100"));
        assert_eq!(r["unified"]["cpu.weight"], json!("50"));
        // The result is an OCI resources object the translation takes.
        let parsed: oci_spec::runtime::LinuxResources = serde_json::from_value(r).unwrap();
        assert!(crate::cgroup::limits::translate(&parsed).is_ok());
    }

    #[test]
    fn the_same_resource_twice_names_both_fields() {
        let l = Limits::from_json(&json!({"memory": "1G"}), "services.web.limits").unwrap();
        let mut r = json!({"memory": {"limit": 1024}});
        let e = l
            .apply(&mut r, Merge::Exclusive("services.web."))
            .unwrap_err();
        assert_eq!(e.field, "services.web.limits.memory");
        assert!(
            e.message
                .contains("services.web.linux.resources.memory.limit"),
            "{e}"
        );
        // Flags override instead.
        l.apply(&mut r, Merge::Override).unwrap();
        assert_eq!(r["memory"]["limit"], json!(1u64 << 30));
    }

    #[test]
    fn bad_short_forms_name_the_field() {
        for (v, field) in [
            (json!({"memory": "lots"}), "limits.memory"),
            (json!({"cpus": 0}), "limits.cpus"),
            (json!({"pids": 0}), "limits.pids"),
            (json!({"ioWeight": 20000}), "limits.ioWeight"),
            (json!({"memorySwap": "1G"}), "limits.memorySwap"),
            (json!({"mem": 1}), "limits.mem"),
        ] {
            let e = Limits::from_json(&v, "limits").unwrap_err();
            assert_eq!(e.field, field, "{v}: {e}");
        }
        assert_eq!(
            IoMax::parse("--io-max", "8:0:rbps=1M,wiops=100").unwrap(),
            IoMax {
                major: 8,
                minor: 0,
                rates: vec![
                    ("throttleReadBpsDevice", 1 << 20),
                    ("throttleWriteIOPSDevice", 100)
                ]
            }
        );
        assert!(IoMax::parse("--io-max", "8:0:xbps=1").is_err());
        assert!(IoMax::parse("--io-max", "/etc/passwd:rbps=1").is_err());
    }
}
