//! Garbage in, one clear line out: stack files, service specs, control
//! requests and notify datagrams, mutated at random from valid ones (byte
//! flips, insertions, truncations, keys dropped, values of the wrong type
//! or out of range). Nothing may panic; every refusal is one line naming
//! what is wrong. Cases per input: `ISOLA_FUZZ_CASES` (default 2000; `make
//! fuzz` runs far more), seeded so a failure can be replayed
//! (`ISOLA_FUZZ_SEED`).

use std::path::Path;

use serde_json::{json, Value};

use crate::control::{short_error, Request};

struct Rng(u64);

impl Rng {
    fn new() -> Rng {
        let seed: u64 = std::env::var("ISOLA_FUZZ_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0x2545_f491_4f6c_dd1d);
        // Mixed, so that seeds 2 and 3 differ after the low bit is set.
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % u64::try_from(n.max(1)).unwrap_or(1)).unwrap_or(0)
    }
}

fn cases() -> usize {
    std::env::var("ISOLA_FUZZ_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2000)
}

/// Values that break things: wrong types, edges, huge and negative.
fn odd_value(r: &mut Rng) -> Value {
    let choices = [
        json!(null),
        json!(-1),
        json!(0),
        json!(u64::MAX),
        json!(i64::MIN),
        json!(1e308),
        json!(""),
        json!("\u{0}"),
        json!("../../etc"),
        json!([]),
        json!({}),
        json!([null]),
        json!(true),
        json!("x".repeat(5000)),
    ];
    choices[r.below(choices.len())].clone()
}

/// Every path to a value in `v` (keys and indices).
fn paths(v: &Value, at: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                at.push(k.clone());
                out.push(at.clone());
                paths(x, at, out);
                at.pop();
            }
        }
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                at.push(i.to_string());
                out.push(at.clone());
                paths(x, at, out);
                at.pop();
            }
        }
        _ => {}
    }
}

fn slot<'a>(v: &'a mut Value, path: &[String]) -> Option<&'a mut Value> {
    let mut cur = v;
    for p in path {
        cur = match cur {
            Value::Object(m) => m.get_mut(p)?,
            Value::Array(a) => a.get_mut(p.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(cur)
}

/// One structural mutation (a value replaced or a key dropped) or, as
/// text, a byte-level one.
fn mutate(base: &Value, r: &mut Rng) -> Vec<u8> {
    let mut v = base.clone();
    let mut all = Vec::new();
    paths(&v, &mut Vec::new(), &mut all);
    match r.below(4) {
        0 | 1 if !all.is_empty() => {
            let path = all[r.below(all.len())].clone();
            let drop_key = r.below(3) == 0;
            if drop_key {
                let (last, parent) = path.split_last().expect("non-empty path");
                if let Some(Value::Object(m)) = slot(&mut v, parent) {
                    m.remove(last);
                }
            } else if let Some(x) = slot(&mut v, &path) {
                *x = odd_value(r);
            }
            v.to_string().into_bytes()
        }
        _ => {
            let mut bytes = v.to_string().into_bytes();
            let n = bytes.len();
            match r.below(3) {
                0 => bytes.truncate(r.below(n)),
                1 => {
                    let i = r.below(n);
                    bytes[i] ^= 1 << r.below(8);
                }
                _ => {
                    let junk = b"{}[]\",:\\\x00\xff-0e9";
                    let i = r.below(n);
                    bytes.insert(i, junk[r.below(junk.len())]);
                }
            }
            bytes
        }
    }
}

fn one_line(e: &str) -> bool {
    !e.is_empty() && !e.contains('\n')
}

fn rich_stack() -> Value {
    json!({"services": {
        "db": {
            "process": {"args": ["true"], "env": ["A=1"], "user": {"uid": 65534, "gid": 65534}},
            "linux": {"namespaces": [{"type": "pid"}, {"type": "mount"}],
                      "resources": {"memory": {"limit": 67108864}, "pids": {"limit": 32},
                                    "devices": [{"allow": true, "type": "c", "major": 1, "minor": 3, "access": "rw"}]}},
            "probes": {"readiness": {"tcp": {"port": 5432}, "periodMs": 500}},
            "restart": {"policy": "always", "delayMs": 100, "limit": {"burst": 5, "intervalMs": 1000}}
        },
        "web": {
            "process": {"args": ["true"]},
            "linux": {"namespaces": [{"type": "pid"}, {"type": "network"}]},
            "dependsOn": {"db": "healthy"},
            "sockets": [{"name": "http", "listen": "tcp://127.0.0.1:8080", "backlog": 64}],
            "replicas": 2,
            "notify": "systemd",
            "fdStoreMax": 2,
            "watchdogMs": 1000,
            "restart": {"mode": "overlap", "readyTimeoutMs": 5000},
            "stop": {"signal": "SIGINT", "timeoutMs": 2000},
            "oom": "kill",
            "probes": {"liveness": {"http": {"port": 8080, "path": "/h"}, "failureThreshold": 2}}
        }
    }})
}

#[test]
fn mutated_stack_files_never_panic_and_are_refused_in_one_line() {
    let base = rich_stack();
    assert!(crate::spec::stack::parse(&base.to_string(), Path::new("/")).is_ok());
    let mut r = Rng::new();
    let (mut ok, mut refused) = (0, 0);
    for _ in 0..cases() {
        let text = mutate(&base, &mut r);
        let text = String::from_utf8_lossy(&text);
        match crate::spec::stack::parse(&text, Path::new("/")) {
            Ok(_) => ok += 1,
            Err(e) => {
                let line = e.to_string();
                assert!(one_line(&line), "{text}\n→ {line:?}");
                refused += 1;
            }
        }
    }
    eprintln!(
        "stack files: {} cases, {ok} accepted, {refused} refused in one line",
        ok + refused
    );
}

#[test]
fn garbage_control_requests_never_panic_and_get_one_line() {
    let bases = [
        json!({"cmd": "status"}),
        json!({"cmd": "logs", "name": "web", "lines": 10, "follow": true}),
        json!({"cmd": "scale", "name": "web", "replicas": 3}),
        json!({"cmd": "restart", "name": "web.1"}),
    ];
    let mut r = Rng::new();
    let (mut ok, mut refused) = (0, 0);
    for k in 0..cases() {
        let line = if k % 5 == 0 {
            // Pure noise, any bytes.
            (0..r.below(200))
                .map(|_| u8::try_from(r.next() & 0xff).unwrap_or(0))
                .collect()
        } else {
            mutate(&bases[k % bases.len()], &mut r)
        };
        match serde_json::from_slice::<Request>(&line) {
            Ok(_) => ok += 1,
            Err(e) => {
                assert!(one_line(&short_error(&e)), "{line:?}");
                refused += 1;
            }
        }
    }
    eprintln!(
        "control requests: {} cases, {ok} parsed, {refused} refused in one line",
        ok + refused
    );
}

#[test]
fn garbage_notify_datagrams_never_panic() {
    let bases = [
        "READY=1\nSTATUS=serving",
        "WATCHDOG=1",
        "FDSTORE=1\nFDNAME=counter",
        "EXTEND_TIMEOUT_USEC=5000000",
        "STOPPING=1\nBARRIER=1",
    ];
    let mut r = Rng::new();
    for k in 0..cases() {
        let mut bytes = bases[k % bases.len()].as_bytes().to_vec();
        for _ in 0..1 + r.below(4) {
            let n = bytes.len().max(1);
            match r.below(3) {
                0 => bytes.truncate(r.below(n)),
                1 => bytes.insert(r.below(n), u8::try_from(r.next() & 0xff).unwrap_or(0)),
                _ => bytes.extend_from_slice(b"\nEXTEND_TIMEOUT_USEC=99999999999999999999"),
            }
        }
        let text = String::from_utf8_lossy(&bytes);
        let _ = crate::readiness::notify_socket::parse(&text);
        let _ = crate::readiness::store_op(&text);
    }
}
