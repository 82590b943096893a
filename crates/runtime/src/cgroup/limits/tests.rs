//! The translation of `linux.resources` against literal cgroup writes.

use super::*;

/// The writes as (file, value) pairs, for comparing with literals.
fn translate(r: &LinuxResources) -> Result<Vec<(String, String)>, SpecError> {
    super::translate(r).map(|w| w.into_iter().map(|f| (f.file, f.value)).collect())
}

fn res(json: &str) -> LinuxResources {
    serde_json::from_str(json).expect("test resources parse")
}

#[test]
fn v1_only_fields_are_ignored_and_named() {
    let r = res(
        r#"{"memory":{"limit":67108864,"kernel":1,"kernelTCP":1},"blockIO":{"leafWeight":10}}"#,
    );
    assert_eq!(
        translate(&r).unwrap(),
        vec![("memory.max".into(), "67108864".into())]
    );
    let said = ignored(&r).join("\n");
    for f in ["memory.kernel:", "memory.kernelTCP:", "blockIO.leafWeight:"] {
        assert!(said.contains(f), "{f} in {said}");
    }
    assert!(ignored(&res(r#"{"memory":{"limit":67108864}}"#)).is_empty());
}

#[test]
fn shares_map_logarithmically() {
    assert_eq!(shares_to_weight(2), 1);
    assert_eq!(shares_to_weight(1024), 100);
    assert_eq!(shares_to_weight(262_144), 10_000);
    assert!(shares_to_weight(512) < 100 && shares_to_weight(2048) > 100);
}

#[test]
fn cpu_quota_and_period() {
    let w = translate(&res(r#"{"cpu":{"quota":20000,"period":100000}}"#)).unwrap();
    assert_eq!(w, vec![("cpu.max".into(), "20000 100000".into())]);
    let w = translate(&res(r#"{"cpu":{"quota":50000}}"#)).unwrap();
    assert_eq!(w, vec![("cpu.max".into(), "50000 100000".into())]);
    let w = translate(&res(r#"{"cpu":{"quota":-1}}"#)).unwrap();
    assert_eq!(w, vec![("cpu.max".into(), "max 100000".into())]);
}

#[test]
fn cpu_bounds_are_the_kernels() {
    let e = translate(&res(r#"{"cpu":{"period":999}}"#)).unwrap_err();
    assert_eq!(e.field, "linux.resources.cpu.period");
    assert!(e.message.starts_with("999:"));
    assert!(translate(&res(r#"{"cpu":{"period":1000001}}"#)).is_err());
    let e = translate(&res(r#"{"cpu":{"quota":999}}"#)).unwrap_err();
    assert_eq!(e.field, "linux.resources.cpu.quota");
    assert!(translate(&res(r#"{"cpu":{"quota":1000,"period":1000}}"#)).is_ok());
}

#[test]
fn memory_and_swap() {
    let w = translate(&res(
        r#"{"memory":{"limit":33554432,"swap":67108864,"reservation":1048576}}"#,
    ))
    .unwrap();
    assert_eq!(
        w,
        vec![
            ("memory.low".into(), "1048576".into()),
            ("memory.max".into(), "33554432".into()),
            ("memory.swap.max".into(), "33554432".into()),
        ]
    );
    let w = translate(&res(r#"{"memory":{"limit":-1,"swap":-1}}"#)).unwrap();
    assert_eq!(
        w,
        vec![
            ("memory.max".into(), "max".into()),
            ("memory.swap.max".into(), "max".into())
        ]
    );
    let e = translate(&res(r#"{"memory":{"limit":4096}}"#)).unwrap_err();
    assert_eq!(e.to_string(), "linux.resources.memory.limit: 4096: must be at least 65536 bytes (64 KiB), or -1 for no limit");
    assert!(translate(&res(r#"{"memory":{"limit":1048576,"swap":1000}}"#)).is_err());
}

#[test]
fn pids_and_io() {
    let w = translate(&res(
        r#"{"pids":{"limit":32},"blockIO":{"weight":500,"throttleWriteBpsDevice":[{"major":254,"minor":0,"rate":1048576}],"throttleReadIOPSDevice":[{"major":8,"minor":0,"rate":100}]}}"#,
    ))
    .unwrap();
    assert_eq!(
        w,
        vec![
            ("pids.max".into(), "32".into()),
            ("io.weight".into(), "default 4950".into()),
            ("io.max".into(), "254:0 wbps=1048576".into()),
            ("io.max".into(), "8:0 riops=100".into()),
        ]
    );
    assert_eq!(
        translate(&res(r#"{"pids":{"limit":-1}}"#)).unwrap()[0].1,
        "max"
    );
}

#[test]
fn unified_keys_are_checked() {
    let w = translate(&res(
        r#"{"unified":{"memory.high":"1000000","memory.oom.group":"1"}}"#,
    ))
    .unwrap();
    assert_eq!(w.len(), 2);
    for bad in ["../x", "cgroup.procs", "memory", "memory.high/../../x"] {
        let e = translate(&res(&format!(r#"{{"unified":{{"{bad}":"1"}}}}"#))).unwrap_err();
        assert!(
            e.field.starts_with("linux.resources.unified."),
            "{bad}: {e}"
        );
    }
}

#[test]
fn cpusets() {
    let w = translate(&res(r#"{"cpu":{"cpus":"0-1,3","mems":"0"}}"#)).unwrap();
    assert_eq!(
        w,
        vec![
            ("cpuset.cpus".into(), "0-1,3".into()),
            ("cpuset.mems".into(), "0".into())
        ]
    );
    assert!(translate(&res(r#"{"cpu":{"cpus":"a"}}"#)).is_err());
}
