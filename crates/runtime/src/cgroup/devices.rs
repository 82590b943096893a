//! The device cgroup v2 filter: `linux.resources.devices` (and the default
//! allow list) compiled to a `BPF_PROG_TYPE_CGROUP_DEVICE` program, which
//! the kernel runs on every open and mknod of a device node by a process of
//! the sandbox's cgroup. Without it, a payload with CAP_MKNOD could create
//! and open the host's disk. cgroup v2 has no `devices.allow` file: the
//! program is the only way.
//!
//! Semantics as runc: the rules are read in order and the last one that
//! matches decides; before them an implicit "deny all", after them the
//! default allow list (null, zero, full, tty, random, urandom, ptmx, pts),
//! so a spec cannot take those away by accident. The program tests the
//! rules last to first and returns at the first match.

use crate::error::SpecError;

/// `bpf_cgroup_dev_ctx.access_type`: type in the low 16 bits, access above.
const DEV_BLOCK: i32 = 1;
const DEV_CHAR: i32 = 2;
const ACC_MKNOD: u8 = 1;
const ACC_READ: u8 = 2;
const ACC_WRITE: u8 = 4;
const ACC_ALL: u8 = ACC_MKNOD | ACC_READ | ACC_WRITE;
/// Offsets in `struct bpf_cgroup_dev_ctx`.
const CTX_ACCESS_TYPE: i16 = 0;
const CTX_MAJOR: i16 = 4;
const CTX_MINOR: i16 = 8;

/// Device type a rule is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Char,
    Block,
}

/// One rule: allow or deny `access` (mknod/read/write bits) on devices of
/// `kind` (any when `None`) with this major and minor (any when `None`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DeviceRule {
    pub(crate) allow: bool,
    pub(crate) kind: Option<Kind>,
    pub(crate) major: Option<u32>,
    pub(crate) minor: Option<u32>,
    pub(crate) access: u8,
}

const fn allow_char(major: u32, minor: Option<u32>) -> DeviceRule {
    DeviceRule {
        allow: true,
        kind: Some(Kind::Char),
        major: Some(major),
        minor,
        access: ACC_ALL,
    }
}

/// What every sandbox may use whatever its spec says (runc's list).
pub(crate) const DEFAULT_ALLOWED: [DeviceRule; 8] = [
    allow_char(1, Some(3)), // null
    allow_char(1, Some(5)), // zero
    allow_char(1, Some(7)), // full
    allow_char(5, Some(0)), // tty
    allow_char(1, Some(8)), // random
    allow_char(1, Some(9)), // urandom
    allow_char(5, Some(2)), // ptmx
    allow_char(136, None),  // pts/*
];

const DENY_ALL: DeviceRule = DeviceRule {
    allow: false,
    kind: None,
    major: None,
    minor: None,
    access: ACC_ALL,
};

/// Parse an OCI `access` string ("rwm", any subset).
fn parse_access(s: &str) -> Option<u8> {
    let mut bits = 0;
    for c in s.chars() {
        bits |= match c {
            'r' => ACC_READ,
            'w' => ACC_WRITE,
            'm' => ACC_MKNOD,
            _ => return None,
        };
    }
    Some(bits)
}

/// The effective rules for `linux.resources.devices` and the nodes of
/// `linux.devices` (allowed as the spec lists them).
pub(crate) fn rules(
    spec: &[oci_spec::runtime::LinuxDeviceCgroup],
    nodes: &[oci_spec::runtime::LinuxDevice],
) -> Result<Vec<DeviceRule>, SpecError> {
    use oci_spec::runtime::LinuxDeviceType as T;
    let mut out = vec![DENY_ALL];
    for (i, d) in spec.iter().enumerate() {
        let field = |f: &str| format!("linux.resources.devices[{i}].{f}");
        let kind = match d.typ() {
            None | Some(T::A) => None,
            Some(T::C) | Some(T::U) => Some(Kind::Char),
            Some(T::B) => Some(Kind::Block),
            Some(T::P) => {
                return Err(SpecError::new(
                    field("type"),
                    "p: FIFOs are not device nodes",
                ))
            }
        };
        let num = |v: Option<i64>, f: &str| -> Result<Option<u32>, SpecError> {
            match v {
                None | Some(-1) => Ok(None),
                // Device numbers are far below 2^31 (12-bit majors, 20-bit
                // minors); the program compares them as signed immediates.
                Some(n) => u32::try_from(n)
                    .ok()
                    .filter(|n| i32::try_from(*n).is_ok())
                    .map(Some)
                    .ok_or_else(|| SpecError::new(field(f), format!("{n}: not a device number"))),
            }
        };
        let access = match d.access() {
            None => ACC_ALL,
            Some(a) => parse_access(a)
                .ok_or_else(|| SpecError::new(field("access"), format!("{a}: use r, w and m")))?,
        };
        out.push(DeviceRule {
            allow: d.allow(),
            kind,
            major: num(d.major(), "major")?,
            minor: num(d.minor(), "minor")?,
            access,
        });
    }
    out.extend(DEFAULT_ALLOWED);
    for n in nodes {
        let kind = match n.typ() {
            T::B => Kind::Block,
            _ => Kind::Char,
        };
        let num = |v: i64| u32::try_from(v).ok().filter(|n| i32::try_from(*n).is_ok());
        out.push(DeviceRule {
            allow: true,
            kind: Some(kind),
            major: num(n.major()),
            minor: num(n.minor()),
            access: ACC_ALL,
        });
    }
    Ok(out)
}

/// One eBPF instruction (`struct bpf_insn`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub(crate) struct Insn {
    pub(crate) code: u8,
    /// dst_reg in the low nibble, src_reg in the high one.
    pub(crate) regs: u8,
    pub(crate) off: i16,
    pub(crate) imm: i32,
}

// Opcodes (linux/bpf_common.h, linux/bpf.h).
const LDX_W: u8 = 0x61; // BPF_LDX | BPF_MEM | BPF_W
const ALU32_AND_K: u8 = 0x54;
const ALU32_RSH_K: u8 = 0x74;
const ALU32_MOV_K: u8 = 0xb4;
const ALU32_MOV_X: u8 = 0xbc;
const JMP_JNE_K: u8 = 0x55;
const JMP_JNE_X: u8 = 0x5d;
const JMP_EXIT: u8 = 0x95;
// Registers: r1 holds the context; r2 type, r3 access, r4 major, r5 minor.
const R0: u8 = 0;
const R1: u8 = 1;
const R2: u8 = 2;
const R3: u8 = 3;
const R4: u8 = 4;
const R5: u8 = 5;

const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: dst | (src << 4),
        off,
        imm,
    }
}

/// The program for `rules` (last matching rule wins; none matching: deny).
/// Every instruction is reachable (the kernel's verifier insists).
pub(crate) fn program(rules: &[DeviceRule]) -> Vec<Insn> {
    let mut p = vec![
        insn(LDX_W, R2, R1, CTX_ACCESS_TYPE, 0),
        insn(ALU32_AND_K, R2, 0, 0, 0xffff),
        insn(LDX_W, R3, R1, CTX_ACCESS_TYPE, 0),
        insn(ALU32_RSH_K, R3, 0, 0, 16),
        insn(LDX_W, R4, R1, CTX_MAJOR, 0),
        insn(LDX_W, R5, R1, CTX_MINOR, 0),
    ];
    for r in rules.iter().rev() {
        // Each test jumps past the rest of this block when it fails; the
        // block's length is known once its tests are listed.
        let mut tests: Vec<Insn> = Vec::new();
        if let Some(k) = r.kind {
            let t = if k == Kind::Block {
                DEV_BLOCK
            } else {
                DEV_CHAR
            };
            tests.push(insn(JMP_JNE_K, R2, 0, 0, t));
        }
        if r.access & ACC_ALL != ACC_ALL {
            // The access asked for must be within the rule's.
            tests.push(insn(ALU32_MOV_X, R1, R3, 0, 0));
            tests.push(insn(ALU32_AND_K, R1, 0, 0, i32::from(r.access)));
            tests.push(insn(JMP_JNE_X, R1, R3, 0, 0));
        }
        for (reg, v) in [(R4, r.major), (R5, r.minor)] {
            if let Some(v) = v {
                tests.push(insn(
                    JMP_JNE_K,
                    reg,
                    0,
                    0,
                    i32::from_ne_bytes(v.to_ne_bytes()),
                ));
            }
        }
        let verdict = [
            insn(ALU32_MOV_K, R0, 0, 0, i32::from(r.allow)),
            insn(JMP_EXIT, 0, 0, 0, 0),
        ];
        if tests.is_empty() {
            // Matches everything: the rules before it never decide, and
            // the verifier refuses code it cannot reach.
            p.extend(verdict);
            return p;
        }
        let len = tests.len() + verdict.len();
        for (k, mut t) in tests.into_iter().enumerate() {
            if t.code == JMP_JNE_K || t.code == JMP_JNE_X {
                // From the instruction after this one to the next block.
                t.off = i16::try_from(len - k - 1).unwrap_or(i16::MAX);
            }
            p.push(t);
        }
        p.extend(verdict);
    }
    p.extend([insn(ALU32_MOV_K, R0, 0, 0, 0), insn(JMP_EXIT, 0, 0, 0, 0)]);
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rules read directly: the last matching one decides.
    fn oracle(rules: &[DeviceRule], kind: Kind, major: u32, minor: u32, access: u8) -> bool {
        let mut verdict = false;
        for r in rules {
            let hit = r.kind.is_none_or(|k| k == kind)
                && r.major.is_none_or(|m| m == major)
                && r.minor.is_none_or(|m| m == minor)
                && access & r.access == access;
            if hit {
                verdict = r.allow;
            }
        }
        verdict
    }

    /// Run the program on one request: an interpreter for the few
    /// instructions the generator emits.
    fn run(p: &[Insn], kind: Kind, major: u32, minor: u32, access: u8) -> bool {
        let t: u32 = if kind == Kind::Block { 1 } else { 2 };
        let ctx = [t | (u32::from(access) << 16), major, minor];
        let mut r = [0u64; 11];
        let mut pc = 0usize;
        loop {
            let i = p[pc];
            let (dst, src) = (usize::from(i.regs & 0xf), usize::from(i.regs >> 4));
            let imm = u64::from(u32::from_ne_bytes(i.imm.to_ne_bytes()));
            pc += 1;
            match i.code {
                LDX_W => {
                    assert_eq!(src, 1);
                    r[dst] = u64::from(ctx[usize::try_from(i.off).unwrap() / 4]);
                }
                ALU32_AND_K => r[dst] &= imm,
                ALU32_RSH_K => r[dst] = (r[dst] & 0xffff_ffff) >> imm,
                ALU32_MOV_K => r[dst] = imm,
                ALU32_MOV_X => r[dst] = r[src] & 0xffff_ffff,
                JMP_JNE_K if r[dst] != imm => pc += usize::try_from(i.off).unwrap(),
                JMP_JNE_X if r[dst] != r[src] => pc += usize::try_from(i.off).unwrap(),
                JMP_JNE_K | JMP_JNE_X => {}
                JMP_EXIT => return r[0] == 1,
                c => panic!("unexpected opcode {c:#x}"),
            }
        }
    }

    /// No instruction the verifier would call unreachable.
    fn reachable(p: &[Insn]) -> bool {
        let mut seen = vec![false; p.len()];
        let mut todo = vec![0usize];
        while let Some(pc) = todo.pop() {
            if pc >= p.len() || seen[pc] {
                continue;
            }
            seen[pc] = true;
            match p[pc].code {
                JMP_EXIT => {}
                JMP_JNE_K | JMP_JNE_X => {
                    todo.push(pc + 1);
                    todo.push(pc + 1 + usize::try_from(p[pc].off).unwrap());
                }
                _ => todo.push(pc + 1),
            }
        }
        seen.into_iter().all(|s| s)
    }

    /// xorshift: reproducible random rule sets.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: u64) -> u32 {
            u32::try_from(self.next() % n).unwrap()
        }
    }

    #[test]
    fn the_program_decides_as_the_rules_read_in_order() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let kinds = [Kind::Char, Kind::Block];
        for _ in 0..300 {
            let mut rules = vec![DENY_ALL];
            for _ in 0..rng.below(8) {
                rules.push(DeviceRule {
                    allow: rng.below(2) == 1,
                    kind: [None, Some(Kind::Char), Some(Kind::Block)][rng.below(3) as usize],
                    major: (rng.below(3) > 0).then(|| rng.below(4)),
                    minor: (rng.below(3) > 0).then(|| rng.below(4)),
                    access: u8::try_from(1 + rng.below(7)).unwrap(),
                });
            }
            rules.extend(DEFAULT_ALLOWED);
            let p = program(&rules);
            assert!(reachable(&p), "{rules:?}");
            for _ in 0..50 {
                let kind = kinds[rng.below(2) as usize];
                let (major, minor) = (rng.below(5), rng.below(5));
                let access = u8::try_from(1 + rng.below(7)).unwrap();
                assert_eq!(
                    run(&p, kind, major, minor, access),
                    oracle(&rules, kind, major, minor, access),
                    "{rules:?} {kind:?} {major}:{minor} {access}"
                );
            }
        }
    }

    #[test]
    fn defaults_allow_the_usual_nodes_and_nothing_else() {
        let rules = rules(&[], &[]).unwrap();
        let p = program(&rules);
        assert!(reachable(&p));
        assert!(run(&p, Kind::Char, 1, 3, ACC_READ | ACC_WRITE));
        assert!(run(&p, Kind::Char, 136, 7, ACC_ALL));
        assert!(!run(&p, Kind::Block, 8, 0, ACC_READ));
        assert!(!run(&p, Kind::Block, 8, 0, ACC_MKNOD));
        assert!(!run(&p, Kind::Char, 10, 200, ACC_READ));
    }

    #[test]
    fn spec_rules_parse_and_bad_ones_name_the_field() {
        let parse = |j: &str| {
            let d: Vec<oci_spec::runtime::LinuxDeviceCgroup> = serde_json::from_str(j).unwrap();
            rules(&d, &[])
        };
        let r = parse(r#"[{"allow": true, "type": "b", "major": 254, "access": "r"}]"#).unwrap();
        assert_eq!(
            r[1],
            DeviceRule {
                allow: true,
                kind: Some(Kind::Block),
                major: Some(254),
                minor: None,
                access: ACC_READ
            }
        );
        let p = program(&r);
        assert!(run(&p, Kind::Block, 254, 0, ACC_READ));
        assert!(!run(&p, Kind::Block, 254, 0, ACC_WRITE));
        let e = parse(r#"[{"allow": true, "type": "c", "access": "rx"}]"#).unwrap_err();
        assert_eq!(
            e.to_string(),
            "linux.resources.devices[0].access: rx: use r, w and m"
        );
    }
}
