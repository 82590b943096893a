//! The supervisor itself: killed or terminated, and what its services
//! get from it (the fd limit, the OOM score).

use std::time::{Duration, Instant};

use isola_tests::up::*;
use isola_tests::*;
use serde_json::json;

#[test]
fn sigkill_of_the_keeper_takes_services_down_and_next_up_cleans() {
    require_vm();
    let services =
        json!({"a": svc("exec sleep 1444", json!({})), "b": svc("exec sleep 1445", json!({}))});
    let mut up = Up::start("killed", services.clone(), &[]);
    up.wait_state("a", "running");
    up.wait_state("b", "running");
    // `isola up`'s own pid is the keeper: the services' parent, and the
    // supervisor's (see keeper.rs for a supervisor killed alone).
    nix::sys::signal::kill(up.pid(), nix::sys::signal::Signal::SIGKILL).unwrap();
    let _ = up.child.take().unwrap().wait();
    let stack = up.stack_path().display().to_string();
    let t = Instant::now();
    // Neither the services, nor the supervisor and its spawner (same
    // command line) outlive it.
    while !processes_matching("sleep 144").is_empty() || !processes_matching(&stack).is_empty() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "survived the supervisor: {:?} {:?}",
            processes_matching("sleep 144"),
            processes_matching(&stack)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let stale = format!("{CGROUP_ROOT}/killed");
    assert!(
        std::path::Path::new(&format!("{stale}/a")).exists(),
        "expected the stale cgroup to test cleanup"
    );
    let up = up.spawn(&[]);
    up.wait_state("a", "running");
    assert!(
        up.stderr()
            .contains("removed stale cgroups of a previous run: a, b")
            || up
                .stderr()
                .contains("removed stale cgroups of a previous run: b, a"),
        "{}",
        up.stderr()
    );
    up.down();
    assert_clean();
}

#[test]
fn sigterm_stops_everything_and_exits_0() {
    require_vm();
    let mut up = Up::start(
        "term",
        json!({"a": svc("exec sleep 1000", json!({})), "b": svc("exec sleep 1000", json!({"dependsOn": ["a"]}))}),
        &[],
    );
    up.wait_state("b", "running");
    nix::sys::signal::kill(up.pid(), nix::sys::signal::Signal::SIGTERM).unwrap();
    let out = wait_output(up.child.take().unwrap(), Duration::from_secs(60));
    assert_eq!(out.status.code(), Some(0), "{}", up.stderr());
    assert!(
        !std::path::Path::new(&up.socket()).exists(),
        "socket left behind"
    );
    assert_clean();
}

#[test]
fn services_get_the_fd_limit_isola_up_started_with() {
    require_vm();
    // The supervisor raises its own RLIMIT_NOFILE for its many fds; its
    // services must not inherit that.
    let (soft, hard) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap();
    let up = Up::start(
        "nofile",
        json!({"probe": svc("ulimit -n; ulimit -Hn", json!({"restart": {"policy": "no"}}))}),
        &[],
    );
    up.wait_state("probe", "exited");
    assert_eq!(
        up.stdout_words("probe"),
        [soft.to_string(), hard.to_string()]
    );
    up.down();
    assert_clean();
}

#[test]
fn the_supervisor_is_the_oom_killers_last_choice_and_services_are_not() {
    require_vm();
    // Killing the supervisor takes every service down: it lowers its own
    // OOM score; services get the score `isola up` started with, or their
    // spec's.
    let started_with = std::fs::read_to_string("/proc/self/oom_score_adj").unwrap();
    let mut own = svc(
        "cat /proc/self/oom_score_adj",
        json!({"restart": {"policy": "no"}}),
    );
    own["process"]["oomScoreAdj"] = json!(300);
    let up = Up::start(
        "oomadj",
        json!({
            "inherits": svc("cat /proc/self/oom_score_adj", json!({"restart": {"policy": "no"}})),
            "own": own,
        }),
        &[],
    );
    // Both: the keeper (`isola up`'s own pid), whose death takes the
    // services, and the supervisor.
    for pid in [up.pid(), up.supervisor_pid()] {
        let score = std::fs::read_to_string(format!("/proc/{pid}/oom_score_adj")).unwrap();
        assert_eq!(score.trim(), "-999", "pid {pid}");
    }
    for (name, want) in [("inherits", started_with.trim()), ("own", "300")] {
        up.wait_state(name, "exited");
        assert_eq!(up.stdout_words(name), [want], "{name}");
    }
    up.down();
    assert_clean();
}
