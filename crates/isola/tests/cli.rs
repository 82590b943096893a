//! The CLI on the host: validation, the shipped specs, and the refusal of
//! cgroup work on a host whose /sys/fs/cgroup is not unified. Nothing here
//! needs root or creates anything.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn isola(args: &[&str], stdin: &str) -> Output {
    use std::io::Write;
    let mut c = Command::new(env!("CARGO_BIN_EXE_isola"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run isola");
    c.stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write stdin");
    c.wait_with_output().expect("wait isola")
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[test]
fn shipped_specs_are_valid() {
    let specs = repo().join("specs");
    let tmp = std::env::temp_dir().join(format!("isola-cli-specs-{}", std::process::id()));
    std::fs::create_dir_all(tmp.join("rootfs/bin")).unwrap();
    let mut n = 0;
    for e in std::fs::read_dir(&specs).unwrap() {
        let p = e.unwrap().path();
        if p.extension().and_then(|x| x.to_str()) != Some("json") {
            continue;
        }
        // Image stacks pull from a registry: the VM's image tests check
        // them against a real one (images::the_shipped_image_stack_runs).
        if std::fs::read_to_string(&p).unwrap().contains("\"image\"") {
            continue;
        }
        // Specs with a relative rootfs are checked beside an empty one.
        let target = tmp.join(p.file_name().unwrap());
        std::fs::copy(&p, &target).unwrap();
        let out = isola(&["check", target.to_str().unwrap()], "");
        assert!(
            out.status.success(),
            "{}: {}",
            p.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        n += 1;
    }
    std::fs::remove_dir_all(&tmp).unwrap();
    assert!(n >= 4, "only {n} specs found");
}

#[test]
fn starter_spec_checks() {
    let out = isola(&["spec"], "");
    assert!(out.status.success());
    let check = isola(&["check", "-"], &String::from_utf8_lossy(&out.stdout));
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
}

#[test]
fn bad_specs_get_one_line_and_exit_2() {
    let cases = [
        (
            "{",
            "isola: -: malformed JSON at line 1 column 1: EOF while parsing an object",
        ),
        (
            r#"{"process": {"args": ["true"], "cwdd": "/"}}"#,
            "isola: -: process.cwdd: unknown field",
        ),
        (
            r#"{"process": {"args": ["true"]}, "linux": {"resources": {"cpu": {"quota": 10}}}}"#,
            "isola: -: linux.resources.cpu.quota: 10: must be at least 1000 µs, or -1 for no limit",
        ),
        (
            r#"{"process": {"args": ["true"]}, "restart": {"policy": "maybe"}}"#,
            "isola: -: restart.policy: `maybe`: unknown value",
        ),
    ];
    for (spec, want) in cases {
        let out = isola(&["check", "-"], spec);
        assert_eq!(out.status.code(), Some(2), "{spec}");
        assert_eq!(String::from_utf8_lossy(&out.stderr).trim_end(), want);
    }
    let out = isola(
        &["run", "--cgroup-root", "relative", "-"],
        r#"{"process": {"args": ["true"]}}"#,
    );
    assert_eq!(out.status.code(), Some(2));
    let out = isola(&["run", "--bogus"], "");
    assert_eq!(out.status.code(), Some(2), "clap usage errors are exit 2");
}

#[test]
fn a_non_unified_host_is_refused_before_anything_starts() {
    let st = nix::sys::statfs::statfs("/sys/fs/cgroup").expect("statfs /sys/fs/cgroup");
    let unified = st.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC;
    // A unified host would run the spec (the VM tests cover that side);
    // there, check the other refusal that happens before anything starts.
    let args: &[&str] = if unified {
        &["run", "--cgroup-root", "/tmp/not-a-cgroup", "-"]
    } else {
        &["run", "-"]
    };
    let want = if unified {
        "--cgroup-root /tmp/not-a-cgroup: must be an absolute path inside /sys/fs/cgroup"
    } else {
        "/sys/fs/cgroup is not a cgroup v2 (unified) hierarchy"
    };
    let marker = format!("isola-refused-{}", std::process::id());
    let spec = format!(r#"{{"process": {{"args": ["sh", "-c", "touch /tmp/{marker}"]}}}}"#);
    let out = isola(args, &spec);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(want), "{err}");
    assert!(
        !Path::new(&format!("/tmp/{marker}")).exists(),
        "the payload ran"
    );
}

#[test]
fn limit_flags_and_the_short_form_refuse_bad_input_in_one_line() {
    for (args, needle) in [
        (
            vec!["run", "--memory", "12X", "--", "true"],
            "--memory: \"12X\"",
        ),
        (vec!["run", "--cpus", "0", "--", "true"], "--cpus: 0"),
        (vec!["run", "--pids", "0", "--", "true"], "--pids: 0"),
        (
            vec!["run", "--memory-swap", "1G", "--", "true"],
            "--memory-swap",
        ),
        (
            vec!["run", "--io-max", "8:0:xbps=1", "--", "true"],
            "--io-max",
        ),
        (vec!["run", "--"], "give a SPEC"),
        (vec!["run", "-", "--", "true"], "not both"),
        (vec!["run", "--net", "host", "-"], "--net"),
    ] {
        let out = isola(&args, "");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
    }
    let stack = r#"{"services": {"db": {"process": {"args": ["sleep", "1"]},
        "limits": {"memory": "64M"}, "linux": {"resources": {"memory": {"limit": 1000000}}}}}}"#;
    let out = check_stack_file("limits", stack);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("services.db.limits.memory")
            && err.contains("services.db.linux.resources.memory.limit"),
        "{err}"
    );
}

#[test]
fn completions_and_man_pages_cover_every_command() {
    for (shell, marker) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef isola"),
        ("fish", "complete -c isola"),
    ] {
        let out = isola(&["completions", shell], "");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{shell}");
        assert!(text.contains(marker), "{shell}: {text}");
        for cmd in ["run", "up", "status", "scale", "exec"] {
            assert!(text.contains(cmd), "{shell} completions lack {cmd}");
        }
    }
    let dir = std::env::temp_dir().join(format!("isola-cli-man-{}", std::process::id()));
    let out = isola(&["manpages", dir.to_str().unwrap()], "");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for page in ["isola.1", "isola-run.1", "isola-up.1", "isola-oci.1"] {
        let text = std::fs::read_to_string(dir.join(page)).unwrap();
        assert!(text.contains(".TH"), "{page} is no man page");
    }
    let create = std::fs::read_to_string(dir.join("isola-oci-create.1")).unwrap();
    assert!(
        create.contains("console"),
        "the OCI create page lacks --console-socket"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn help_names_the_oci_runtime_commands() {
    // The OCI commands never reach the main parser (their argv is told
    // apart first): the help names them in a section of its own.
    for flag in ["--help", "-h"] {
        let out = isola(&[flag], "");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{flag}: {text}");
        let (_, section) = text
            .split_once("OCI runtime")
            .unwrap_or_else(|| panic!("{flag}: no OCI runtime section: {text}"));
        let verbs = section.lines().nth(1).unwrap_or_default();
        for verb in ["create", "start", "state", "kill", "delete", "exec"] {
            assert!(
                verbs.split(',').any(|v| v.trim() == verb),
                "{flag}: the OCI section lacks {verb}: {text}"
            );
        }
    }
}

#[test]
fn schema_prints_the_shipped_copies_and_refuses_an_unknown_kind() {
    for kind in ["service", "stack"] {
        let out = isola(&["schema", kind], "");
        assert!(out.status.success(), "{kind}");
        let shipped =
            std::fs::read_to_string(repo().join(format!("specs/schema/{kind}.schema.json")))
                .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), shipped, "{kind}");
    }
    let out = isola(&["schema", "pod"], "");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("pod"), "{err}");
}

#[test]
fn check_names_the_first_services_of_a_big_stack_and_counts_the_rest() {
    let services: Vec<String> = (0..100)
        .map(|i| format!(r#""s{i}": {{"process": {{"args": ["sleep", "1"]}}}}"#))
        .collect();
    let stack = format!(r#"{{"services": {{{}}}}}"#, services.join(", "));
    let out = check_stack_file("big", &stack);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains("services in start order: s0, s1,") && text.contains(", s19 and 80 more)"),
        "{text}"
    );
    assert!(!text.contains("s20"), "{text}");
}

/// `isola check` of a stack written to a file (stacks are told from specs
/// by reading the file, so not through stdin).
fn check_stack_file(tag: &str, text: &str) -> std::process::Output {
    let tmp = std::env::temp_dir().join(format!("isola-cli-{tag}-{}.json", std::process::id()));
    std::fs::write(&tmp, text).unwrap();
    let out = isola(&["check", tmp.to_str().unwrap()], "");
    let _ = std::fs::remove_file(&tmp);
    out
}

/// `autoscale` that cannot work: `isola check` (which reads a stack as
/// `isola up` does) refuses it in one line naming the field, exit 2.
#[test]
fn bad_autoscale_fields_are_refused_naming_the_field() {
    let sockets = r#""sockets": [{"name": "http", "listen": "tcp://127.0.0.1:18081"}]"#;
    let w = "services.web.autoscale";
    for (fields, want) in [
        (
            format!(r#"{sockets}, "autoscale": {{"min": 5, "max": 2}}"#),
            format!("{w}.min: 5: above max 2"),
        ),
        (
            format!(r#"{sockets}, "autoscale": {{"max": 1001}}"#),
            format!("{w}.max: 1001"),
        ),
        (
            format!(r#"{sockets}, "autoscale": {{"max": 4, "backlog": 0}}"#),
            format!("{w}.backlog: 0"),
        ),
        (
            format!(r#"{sockets}, "autoscale": {{"max": 4, "cpu": "fast"}}"#),
            format!("{w}.cpu: \"fast\""),
        ),
        (
            format!(r#"{sockets}, "autoscale": {{"max": 4, "upAfterMs": 0}}"#),
            format!("{w}.upAfterMs: 0"),
        ),
        (
            format!(r#"{sockets}, "autoscale": {{"max": 4, "downAfterMs": 0}}"#),
            format!("{w}.downAfterMs: 0"),
        ),
        (
            format!(r#"{sockets}, "autoscale": {{"max": 4, "idleMs": 0}}"#),
            format!("{w}.idleMs: 0"),
        ),
        (
            r#""autoscale": {"max": 4}"#.to_string(),
            format!("{w}: needs \"sockets\""),
        ),
        (
            format!(r#"{sockets}, "replicas": 2, "autoscale": {{"max": 4}}"#),
            format!("{w}: and \"replicas\""),
        ),
    ] {
        let stack =
            format!(r#"{{"services": {{"web": {{"process": {{"args": ["true"]}}, {fields}}}}}}}"#);
        let out = check_stack_file("autoscale", &stack);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{fields}: {err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains(&want), "{fields}: want {want:?} in {err}");
    }
    // The CPU target reads the replicas' cgroups: not with --no-cgroup.
    let stack = format!(
        r#"{{"services": {{"web": {{"process": {{"args": ["true"]}}, {sockets}, "autoscale": {{"max": 2, "cpu": "50%"}}}}}}}}"#
    );
    let tmp = std::env::temp_dir().join(format!("isola-cli-ascpu-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let (file, sock) = (tmp.join("s.json"), tmp.join("s.sock"));
    std::fs::write(&file, stack).unwrap();
    let out = isola(
        &[
            "up",
            "--no-cgroup",
            "--socket",
            sock.to_str().unwrap(),
            file.to_str().unwrap(),
        ],
        "",
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("services.web.autoscale.cpu: conflicts with --no-cgroup"),
        "{err}"
    );
    assert!(!sock.exists(), "nothing left behind");
    std::fs::remove_dir_all(&tmp).unwrap();
    let out = isola(&["scale", "--socket", "/nonexistent", "web", "lots"], "");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("lots: a number of replicas or auto"));
}
