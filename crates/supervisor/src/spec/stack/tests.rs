use super::*;

fn svc(extra: &str) -> String {
    format!(r#"{{"process": {{"args": ["true"]}}{extra}}}"#)
}

fn stack(services: &[(&str, String)]) -> String {
    let body: Vec<String> = services
        .iter()
        .map(|(n, s)| format!("\"{n}\": {s}"))
        .collect();
    format!("{{\"services\": {{{}}}}}", body.join(", "))
}

fn parse_s(t: &str) -> Result<Stack, SpecError> {
    parse(t, Path::new("/"))
}

#[test]
fn dependency_order() {
    let t = stack(&[
        ("web", svc(r#", "dependsOn": ["db", "cache"]"#)),
        ("db", svc("")),
        ("cache", svc(r#", "dependsOn": ["db"]"#)),
    ]);
    let s = parse_s(&t).unwrap();
    let names: Vec<&str> = s.services.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, ["db", "cache", "web"]);
}

#[test]
fn replicas_are_services_named_after_theirs_and_dependents_wait_for_all() {
    let t = stack(&[
        ("api", svc(r#", "dependsOn": {"web": "healthy"}"#)),
        ("web", svc(r#", "replicas": 3"#)),
    ]);
    let s = parse_s(&t).unwrap();
    let names: Vec<&str> = s.services.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, ["web.1", "web.2", "web.3", "api"]);
    assert_eq!(s.services[1].group.as_deref(), Some("web"));
    let deps: Vec<&str> = s.services[3]
        .policy
        .depends_on
        .iter()
        .map(|d| d.name.as_str())
        .collect();
    assert_eq!(deps, ["web.1", "web.2", "web.3"]);
    let t = stack(&[("web", svc(r#", "replicas": 2"#)), ("web.2", svc(""))]);
    assert_eq!(
        parse_s(&t).unwrap_err().to_string(),
        "services.web.2: a service and a replica of another have this name"
    );
}

#[test]
fn the_stacks_logging_applies_where_a_service_says_nothing() {
    use crate::spec::logging::{LogFormat, SyslogTarget};
    let t = format!(
        r#"{{"logging": {{"format": "json", "syslog": "tcp://127.0.0.1:601"}}, "services": {{"a": {}, "b": {}}}}}"#,
        svc(""),
        svc(r#", "logging": {"syslog": null, "journald": true}"#)
    );
    let s = parse_s(&t).unwrap();
    let a = s.services[0].policy.logging.route();
    let b = s.services[1].policy.logging.route();
    assert_eq!(a.format, LogFormat::Json);
    assert_eq!(
        a.syslog,
        Some(SyslogTarget::Tcp("127.0.0.1:601".parse().unwrap()))
    );
    assert!(!a.journald);
    assert_eq!(b.format, LogFormat::Json);
    assert_eq!(b.syslog, None);
    assert!(b.journald);
}

#[test]
fn overlap_with_nothing_to_overlap_is_a_warning() {
    let t = stack(&[("web", svc(r#", "restart": {"mode": "overlap"}"#))]);
    let s = parse_s(&t).unwrap();
    assert!(
        s.warnings[0].starts_with("services.web.restart.mode: overlap: no sockets and no replicas"),
        "{:?}",
        s.warnings
    );
}

#[test]
fn bad_stacks_name_service_field_and_value() {
    let cases = [
        (
            stack(&[
                ("a", svc(r#", "dependsOn": ["b"]"#)),
                ("b", svc(r#", "dependsOn": ["a"]"#)),
            ]),
            "services.a.dependsOn: dependency cycle among a, b",
        ),
        (
            stack(&[("a", svc(r#", "dependsOn": ["zz"]"#))]),
            "services.a.dependsOn: zz: no such service",
        ),
        (
            stack(&[("a", svc("")), ("a", svc(""))]),
            "services.a: duplicate service name",
        ),
        (
            stack(&[("a", svc(r#", "restart": {"policy": "sometimes"}"#))]),
            "services.a.restart.policy: `sometimes`: unknown value",
        ),
        (
            stack(&[("a", svc(r#", "prcess": {}"#))]),
            "services.a.prcess: unknown field",
        ),
        (
            stack(&[(
                "a",
                svc(r#", "linux": {"resources": {"memory": {"limit": 10}}}"#),
            )]),
            "services.a.linux.resources.memory.limit: 10:",
        ),
        (stack(&[("a/b", svc(""))]), "services.a/b:"),
        (
            "{\"services\": {}, \"x\": 1}".to_string(),
            "unknown field `x`",
        ),
        ("{\"services\": {".to_string(), "malformed JSON at line 1"),
        (
            stack(&[("a", svc(r#", "fdStoreMax": 4"#))]),
            "services.a.fdStoreMax: 4: needs \"notify\": \"systemd\"",
        ),
        (
            stack(&[(
                "a",
                svc(
                    r#", "notify": {"fd": 3}, "sockets": [{"name": "h", "listen": "tcp://127.0.0.1:80"}]"#,
                ),
            )]),
            "services.a.notify.fd: 3: sockets and the fd store take 3 to 3; use 4 or more",
        ),
        (
            stack(&[("a", svc(r#", "replicas": 0"#))]),
            "services.a.replicas: 0: must be 1 to 1000",
        ),
        (
            stack(&[("a", svc(r#", "restart": {"mode": "hot"}"#))]),
            "services.a.restart.mode: `hot`: unknown value",
        ),
        (
            stack(&[("a", svc(r#", "logging": {"format": "xml"}"#))]),
            "services.a.logging.format: \"xml\": unknown value (text, json)",
        ),
        (
            r#"{"logging": {"syslog": "udp://loghost"}, "services": {"a": {"process": {"args": ["true"]}}}}"#.to_string(),
            "logging.syslog: `udp://loghost`: want udp://IP[:PORT]",
        ),
    ];
    for (text, want) in cases {
        let e = parse_s(&text).unwrap_err().to_string();
        assert!(e.starts_with(want), "{text}\n got {e}\nwant {want}");
    }
}

/// A fingerprint streamed into the hasher is the one a binary that hashed
/// the whole string computed: an upgrade's next reload restarts nothing.
#[test]
fn fingerprints_are_the_strings_hash() {
    use std::hash::{Hash, Hasher};
    let v: Value = serde_json::from_str(
        r#"{"process": {"args": ["/bin/sh", "-c", "echo \"é\" \\ x"], "env": ["A=1"]},
            "linux": {"resources": {"memory": {"limit": 1048576}}}, "restart": "always"}"#,
    )
    .expect("json");
    let mut whole = std::collections::hash_map::DefaultHasher::new();
    v.to_string().hash(&mut whole);
    let mut streamed = std::collections::hash_map::DefaultHasher::new();
    hash_json(&v, &mut streamed);
    assert_eq!(whole.finish(), streamed.finish());
}
