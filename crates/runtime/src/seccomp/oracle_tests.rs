//! The generator against an oracle: seccompiler (Firecracker's, the crate
//! isola's generator replaced; a dev-dependency only). Random profiles —
//! default action, syscall lists, argument comparisons of every operator,
//! errno values — × random syscall numbers and arguments: the verdict of
//! our programs (stacked as the kernel stacks them) must equal the verdict
//! of seccompiler's program, run through the same classic-BPF interpreter,
//! for every case. `ISOLA_SECCOMP_SEED` and `ISOLA_SECCOMP_PROFILES` widen
//! a run (`make fuzz`); the default is a few thousand cases.
//!
//! seccompiler has one match action per filter: each profile uses one
//! action for all its rules (and another for the default). It masks a
//! MASKED_EQ datum with the mask, libseccomp and we do not (a datum with
//! bits outside the mask never matches): generated data lie inside the mask.

use std::collections::BTreeMap;

use seccompiler::{
    SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule,
};
use serde_json::{json, Value};

use super::bpf::{self, AUDIT_ARCH_X86_64};
use super::syscalls_x86_64::SYSCALLS;

const X32_SYSCALL_BIT: u32 = 0x4000_0000;
const DEFAULT_PROFILES: u64 = 400;
const CASES_PER_PROFILE: usize = 40;

/// xorshift64*: reproducible from the seed, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % u64::try_from(n).unwrap()).unwrap()
    }
    fn small(&mut self, n: u32) -> u32 {
        u32::try_from(self.next() % u64::from(n)).unwrap()
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
    /// Values where comparisons change their answer: small numbers, the
    /// 32-bit edges, all ones, and plain random words.
    fn value(&mut self) -> u64 {
        match self.below(6) {
            0 => self.next() % 8,
            1 => u64::from(u32::MAX) + (self.next() % 3) - 1,
            2 => u64::MAX - self.next() % 2,
            3 => self.next() & 0xffff_ffff,
            4 => 1 << self.below(64),
            _ => self.next(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Act {
    Allow,
    Errno(u32),
    KillProcess,
    KillThread,
    Trap,
    Log,
}

impl Act {
    fn random(r: &mut Rng) -> Act {
        match r.below(6) {
            0 => Act::Allow,
            1 => Act::Errno(1 + r.small(133)),
            2 => Act::KillProcess,
            3 => Act::KillThread,
            4 => Act::Trap,
            _ => Act::Log,
        }
    }
    fn oci(self) -> (&'static str, Option<u32>) {
        match self {
            Act::Allow => ("SCMP_ACT_ALLOW", None),
            Act::Errno(e) => ("SCMP_ACT_ERRNO", Some(e)),
            Act::KillProcess => ("SCMP_ACT_KILL_PROCESS", None),
            Act::KillThread => ("SCMP_ACT_KILL_THREAD", None),
            Act::Trap => ("SCMP_ACT_TRAP", None),
            Act::Log => ("SCMP_ACT_LOG", None),
        }
    }
    fn oracle(self) -> SeccompAction {
        match self {
            Act::Allow => SeccompAction::Allow,
            Act::Errno(e) => SeccompAction::Errno(e),
            Act::KillProcess => SeccompAction::KillProcess,
            Act::KillThread => SeccompAction::KillThread,
            Act::Trap => SeccompAction::Trap,
            Act::Log => SeccompAction::Log,
        }
    }
}

const OPS: &[&str] = &[
    "SCMP_CMP_EQ",
    "SCMP_CMP_NE",
    "SCMP_CMP_LT",
    "SCMP_CMP_LE",
    "SCMP_CMP_GT",
    "SCMP_CMP_GE",
    "SCMP_CMP_MASKED_EQ",
];

struct Arg {
    index: u8,
    op: &'static str,
    value: u64,
    value_two: u64,
}

struct Entry {
    names: Vec<&'static str>,
    args: Vec<Arg>,
}

struct Profile {
    default: Act,
    action: Act,
    entries: Vec<Entry>,
}

fn random_profile(r: &mut Rng) -> Profile {
    let default = Act::random(r);
    let mut action = Act::random(r);
    while action == default {
        action = Act::random(r);
    }
    let n = 1 + r.below(12);
    let entries = (0..n)
        .map(|_| {
            let names = (0..1 + r.below(3))
                .map(|_| SYSCALLS[r.below(SYSCALLS.len())].0)
                .collect();
            let args = if r.chance(40) {
                Vec::new()
            } else {
                (0..1 + r.below(3))
                    .map(|_| {
                        let op = OPS[r.below(OPS.len())];
                        let value = r.value();
                        // Inside the mask (see the module doc).
                        let value_two = r.value() & value;
                        Arg {
                            index: u8::try_from(r.below(6)).unwrap(),
                            op,
                            value,
                            value_two,
                        }
                    })
                    .collect()
            };
            Entry { names, args }
        })
        .collect();
    Profile {
        default,
        action,
        entries,
    }
}

fn to_oci(p: &Profile) -> Value {
    let (d, de) = p.default.oci();
    let (a, ae) = p.action.oci();
    let syscalls: Vec<Value> = p
        .entries
        .iter()
        .map(|e| {
            let mut v = json!({"names": e.names, "action": a});
            if let Some(errno) = ae {
                v["errnoRet"] = json!(errno);
            }
            if !e.args.is_empty() {
                v["args"] = e
                    .args
                    .iter()
                    .map(|x| json!({"index": x.index, "op": x.op, "value": x.value, "valueTwo": x.value_two}))
                    .collect();
            }
            v
        })
        .collect();
    let mut v = json!({"defaultAction": d, "syscalls": syscalls});
    if let Some(errno) = de {
        v["defaultErrnoRet"] = json!(errno);
    }
    v
}

fn oracle_program(p: &Profile) -> Vec<libc::sock_filter> {
    // One syscall may sit in several entries: an unconditional one wins,
    // conditional ones are alternatives (as in libseccomp).
    let mut rules: BTreeMap<i64, Option<Vec<SeccompRule>>> = BTreeMap::new();
    for e in &p.entries {
        for name in &e.names {
            let nr = i64::from(super::syscall_nr(name).expect("a table name"));
            let slot = rules.entry(nr).or_insert_with(|| Some(Vec::new()));
            if e.args.is_empty() {
                *slot = None;
            } else if let Some(list) = slot {
                let conds = e
                    .args
                    .iter()
                    .map(|x| {
                        let (op, value) = match x.op {
                            "SCMP_CMP_EQ" => (SeccompCmpOp::Eq, x.value),
                            "SCMP_CMP_NE" => (SeccompCmpOp::Ne, x.value),
                            "SCMP_CMP_LT" => (SeccompCmpOp::Lt, x.value),
                            "SCMP_CMP_LE" => (SeccompCmpOp::Le, x.value),
                            "SCMP_CMP_GT" => (SeccompCmpOp::Gt, x.value),
                            "SCMP_CMP_GE" => (SeccompCmpOp::Ge, x.value),
                            _ => (SeccompCmpOp::MaskedEq(x.value), x.value_two),
                        };
                        SeccompCondition::new(x.index, SeccompCmpArgLen::Qword, op, value).unwrap()
                    })
                    .collect();
                list.push(SeccompRule::new(conds).unwrap());
            }
        }
    }
    let rules = rules
        .into_iter()
        .map(|(nr, r)| (nr, r.unwrap_or_default()))
        .collect();
    let filter = SeccompFilter::new(
        rules,
        p.default.oracle(),
        p.action.oracle(),
        seccompiler::TargetArch::x86_64,
    )
    .unwrap();
    let prog: seccompiler::BpfProgram = filter.try_into().unwrap();
    prog.iter()
        .map(|i| libc::sock_filter {
            code: i.code,
            jt: i.jt,
            jf: i.jf,
            k: i.k,
        })
        .collect()
}

/// What the kernel answers with several filters: the most severe action
/// (lowest as a signed number once the data bits are off); on a tie, the
/// filter installed last.
fn stacked(programs: &[super::Program], arch: u32, nr: u32, args: [u64; 6]) -> u32 {
    let mut verdict: Option<u32> = None;
    for p in programs.iter().rev() {
        let ret = bpf::run(p, arch, nr, args);
        let severity = |r: u32| (r & 0xffff_0000).cast_signed();
        if verdict.is_none_or(|v| severity(ret) < severity(v)) {
            verdict = Some(ret);
        }
    }
    verdict.unwrap_or(bpf::RET_ALLOW)
}

fn random_case(r: &mut Rng, p: &Profile) -> (u32, [u64; 6]) {
    let nr = match r.below(10) {
        0..=5 => {
            let e = &p.entries[r.below(p.entries.len())];
            super::syscall_nr(e.names[r.below(e.names.len())]).unwrap()
        }
        6 | 7 => SYSCALLS[r.below(SYSCALLS.len())].1,
        8 => r.small(1024),
        _ => X32_SYSCALL_BIT | r.small(600),
    };
    // Arguments near the profile's own values, so both sides of each
    // comparison come up.
    let near: Vec<u64> = p
        .entries
        .iter()
        .flat_map(|e| e.args.iter())
        .flat_map(|a| {
            [
                a.value,
                a.value.wrapping_add(1),
                a.value.wrapping_sub(1),
                a.value_two,
                a.value_two | !a.value,
            ]
        })
        .collect();
    let mut args = [0u64; 6];
    for a in &mut args {
        *a = if !near.is_empty() && r.chance(70) {
            near[r.below(near.len())]
        } else {
            r.value()
        };
    }
    (nr, args)
}

#[test]
fn verdicts_equal_seccompilers_for_random_profiles_and_calls() {
    let seed: u64 = std::env::var("ISOLA_SECCOMP_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x15_01a);
    let profiles: u64 = std::env::var("ISOLA_SECCOMP_PROFILES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_PROFILES);
    let mut r = Rng(seed | 1);
    let mut cases = 0;
    for k in 0..profiles {
        let p = random_profile(&mut r);
        let oci = to_oci(&p);
        let parsed: oci_spec::runtime::LinuxSeccomp = serde_json::from_value(oci.clone()).unwrap();
        let ours =
            super::compile(&parsed, false).unwrap_or_else(|e| panic!("profile {k}: {e}\n{oci}"));
        let oracle = oracle_program(&p);
        for _ in 0..CASES_PER_PROFILE {
            let (nr, args) = random_case(&mut r, &p);
            let want = bpf::run(&oracle, AUDIT_ARCH_X86_64, nr, args);
            let got = stacked(&ours, AUDIT_ARCH_X86_64, nr, args);
            assert_eq!(
                got, want,
                "seed {seed} profile {k}: nr {nr:#x} args {args:x?}: ours {got:#x}, seccompiler {want:#x}\n{oci}"
            );
            cases += 1;
        }
        // Another architecture: both kill.
        let other = stacked(&ours, 0x4000_0003, 1, [0; 6]);
        assert_eq!(other, bpf::run(&oracle, 0x4000_0003, 1, [0; 6]));
    }
    assert!(cases >= 1000 || profiles < 25, "only {cases} cases");
}
