//! OCI `linux.seccomp` → classic BPF programs, compiled once by seccompiler.
//!
//! A seccompiler filter has one match and one mismatch action, an OCI profile
//! any number; so a profile becomes stacked filters whose combined result is
//! the profile's. The kernel runs every filter and keeps the most severe
//! answer (kill > trap > errno > trace > log > allow):
//!   * a base filter returns the default action for every syscall no rule
//!     names and allows the named ones;
//!   * one filter per other action returns that action for its rules and
//!     allows everything else.
//!
//! A syscall matching rules of several actions gets the most severe of them.

use std::collections::{BTreeMap, BTreeSet};

use oci_spec::runtime::{
    LinuxSeccomp, LinuxSeccompAction as Act, LinuxSeccompOperator as Op, LinuxSyscall,
};
use seccompiler::TargetArch;
use serde_json::{json, Value};

use crate::error::SpecError;

const FIELD: &str = "linux.seccomp";

#[cfg(target_arch = "x86_64")]
const ARCH: TargetArch = TargetArch::x86_64;
#[cfg(target_arch = "aarch64")]
const ARCH: TargetArch = TargetArch::aarch64;
#[cfg(target_arch = "riscv64")]
const ARCH: TargetArch = TargetArch::riscv64;

/// A compiled filter, in the kernel's own instruction type.
pub type Program = Vec<libc::sock_filter>;

/// Compile the profile into the programs to install, in order.
pub fn compile(profile: &LinuxSeccomp) -> Result<Vec<Program>, SpecError> {
    if profile.listener_path().is_some() {
        return Err(SpecError::new(
            format!("{FIELD}.listenerPath"),
            "seccomp notify is not supported",
        ));
    }
    if profile.flags().as_ref().is_some_and(|f| !f.is_empty()) {
        return Err(SpecError::new(
            format!("{FIELD}.flags"),
            "seccomp filter flags are not supported",
        ));
    }
    let default = action_json(
        profile.default_action(),
        profile.default_errno_ret(),
        &format!("{FIELD}.defaultAction"),
    )?;
    let syscalls: &[LinuxSyscall] = profile.syscalls().as_deref().unwrap_or(&[]);

    // Rules per action, keyed by the action's JSON text so ERRNO(1) and
    // ERRNO(38) stay apart.
    let mut by_action: BTreeMap<String, (Value, Vec<Value>)> = BTreeMap::new();
    let mut all_rules = Vec::new();
    for (i, sc) in syscalls.iter().enumerate() {
        let field = format!("{FIELD}.syscalls[{i}]");
        if sc.names().is_empty() {
            return Err(SpecError::new(
                format!("{field}.names"),
                "must name at least one syscall",
            ));
        }
        let action = action_json(sc.action(), sc.errno_ret(), &format!("{field}.action"))?;
        let args = args_json(sc, &field)?;
        for name in sc.names() {
            let rule = match &args {
                Some(a) => json!({"syscall": name, "args": a}),
                None => json!({"syscall": name}),
            };
            all_rules.push(rule.clone());
            if action != json!("allow") {
                by_action
                    .entry(action.to_string())
                    .or_insert_with(|| (action.clone(), Vec::new()))
                    .1
                    .push(rule);
            }
        }
    }

    let mut filters = Vec::new();
    if default != json!("allow") {
        if all_rules.is_empty() {
            return Err(SpecError::new(
                format!("{FIELD}.syscalls"),
                "no syscall is allowed: the sandbox could not even exec its payload",
            ));
        }
        filters.push(json!({"mismatch_action": default, "match_action": "allow", "filter": dedupe(all_rules)}));
    }
    for (action, rules) in by_action.into_values() {
        filters.push(
            json!({"mismatch_action": "allow", "match_action": action, "filter": dedupe(rules)}),
        );
    }

    let mut programs = Vec::with_capacity(filters.len());
    for f in filters {
        programs.push(compile_one(&f, syscalls)?);
    }
    Ok(programs)
}

fn compile_one(filter: &Value, syscalls: &[LinuxSyscall]) -> Result<Program, SpecError> {
    let doc = json!({ "f": filter }).to_string();
    match seccompiler::compile_from_json(doc.as_bytes(), ARCH) {
        Ok(mut map) => map
            .remove("f")
            .map(|prog| {
                prog.iter()
                    .map(|i| libc::sock_filter {
                        code: i.code,
                        jt: i.jt,
                        jf: i.jf,
                        k: i.k,
                    })
                    .collect()
            })
            .ok_or_else(|| SpecError::new(FIELD, "seccompiler returned no program")),
        Err(seccompiler::Error::JsonFrontend(e))
            if e.to_string().starts_with("Invalid syscall name") =>
        {
            Err(SpecError::new(
                format!("{FIELD}.syscalls"),
                format!(
                    "unknown syscall names for {ARCH:?}: {}",
                    unknown_names(syscalls).join(", ")
                ),
            ))
        }
        Err(e) => Err(SpecError::new(FIELD, e.to_string())),
    }
}

/// All names the compiler does not know (reported together, not one by one).
fn unknown_names(syscalls: &[LinuxSyscall]) -> Vec<String> {
    let names: BTreeSet<&String> = syscalls.iter().flat_map(|s| s.names()).collect();
    names
        .into_iter()
        .filter(|n| !known_syscall(n))
        .cloned()
        .collect()
}

/// One syscall with an unconditional rule must not also carry conditional
/// ones in the same filter: seccompiler would then match only the conditions.
fn dedupe(rules: Vec<Value>) -> Vec<Value> {
    let unconditional: BTreeSet<String> = rules
        .iter()
        .filter(|r| r.get("args").is_none())
        .filter_map(|r| r["syscall"].as_str().map(str::to_string))
        .collect();
    let mut seen = BTreeSet::new();
    rules
        .into_iter()
        .filter(|r| {
            let name = r["syscall"].as_str().unwrap_or_default().to_string();
            if unconditional.contains(&name) {
                r.get("args").is_none() && seen.insert(name)
            } else {
                true
            }
        })
        .collect()
}

fn action_json(a: Act, errno: Option<u32>, field: &str) -> Result<Value, SpecError> {
    Ok(match a {
        Act::ScmpActAllow => json!("allow"),
        Act::ScmpActErrno => json!({"errno": errno.unwrap_or(libc::EPERM as u32)}),
        Act::ScmpActKill | Act::ScmpActKillThread => json!("kill_thread"),
        Act::ScmpActKillProcess => json!("kill_process"),
        Act::ScmpActTrap => json!("trap"),
        Act::ScmpActLog => json!("log"),
        Act::ScmpActTrace => json!({"trace": errno.unwrap_or(0)}),
        Act::ScmpActNotify => {
            return Err(SpecError::new(field, "SCMP_ACT_NOTIFY is not supported"))
        }
    })
}

fn args_json(sc: &LinuxSyscall, field: &str) -> Result<Option<Vec<Value>>, SpecError> {
    let Some(args) = sc.args() else {
        return Ok(None);
    };
    if args.is_empty() {
        return Ok(None);
    }
    let mut out = Vec::new();
    for (j, a) in args.iter().enumerate() {
        if a.index() > 5 {
            return Err(SpecError::new(
                format!("{field}.args[{j}].index"),
                format!("{}: must be 0-5", a.index()),
            ));
        }
        let (op, val) = match a.op() {
            Op::ScmpCmpNe => (json!("ne"), a.value()),
            Op::ScmpCmpLt => (json!("lt"), a.value()),
            Op::ScmpCmpLe => (json!("le"), a.value()),
            Op::ScmpCmpEq => (json!("eq"), a.value()),
            Op::ScmpCmpGe => (json!("ge"), a.value()),
            Op::ScmpCmpGt => (json!("gt"), a.value()),
            // OCI: value is the mask, valueTwo the expected masked value.
            Op::ScmpCmpMaskedEq => (json!({"masked_eq": a.value()}), a.value_two().unwrap_or(0)),
        };
        out.push(json!({"index": a.index(), "type": "qword", "op": op, "val": val}));
    }
    Ok(Some(out))
}

/// Whether seccompiler knows this syscall name on the running architecture.
pub fn known_syscall(name: &str) -> bool {
    let doc = json!({"f": {"mismatch_action": "allow", "match_action": {"errno": 1}, "filter": [{"syscall": name}]}});
    seccompiler::compile_from_json(doc.to_string().as_bytes(), ARCH).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(j: Value) -> LinuxSeccomp {
        serde_json::from_value(j).expect("profile parses")
    }

    #[test]
    fn allow_list_is_one_filter() {
        let p = profile(
            json!({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read", "write", "exit_group"], "action": "SCMP_ACT_ALLOW"}]}),
        );
        assert_eq!(compile(&p).unwrap().len(), 1);
    }

    #[test]
    fn several_actions_stack() {
        let p = profile(json!({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
            {"names": ["read", "write"], "action": "SCMP_ACT_ALLOW"},
            {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38},
            {"names": ["reboot"], "action": "SCMP_ACT_KILL_PROCESS"}
        ]}));
        assert_eq!(compile(&p).unwrap().len(), 3);
        let p = profile(
            json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["mount"], "action": "SCMP_ACT_ERRNO"}]}),
        );
        assert_eq!(compile(&p).unwrap().len(), 1);
    }

    #[test]
    fn unknown_names_are_all_named() {
        let p = profile(
            json!({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read", "frobnicate", "zork"], "action": "SCMP_ACT_ALLOW"}]}),
        );
        let e = compile(&p).unwrap_err();
        assert_eq!(e.field, "linux.seccomp.syscalls");
        assert!(e.message.contains("frobnicate, zork"), "{e}");
    }

    #[test]
    fn arguments_compile() {
        let p = profile(json!({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
            {"names": ["clone"], "action": "SCMP_ACT_ALLOW", "args": [{"index": 0, "value": 2114060288u64, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}]},
            {"names": ["personality"], "action": "SCMP_ACT_ALLOW", "args": [{"index": 0, "value": 0, "op": "SCMP_CMP_EQ"}]},
            {"names": ["personality"], "action": "SCMP_ACT_ALLOW"}
        ]}));
        assert_eq!(compile(&p).unwrap().len(), 1);
    }

    #[test]
    fn nothing_allowed_is_refused() {
        let p = profile(json!({"defaultAction": "SCMP_ACT_KILL"}));
        assert!(compile(&p).is_err());
    }
}
