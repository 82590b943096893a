//! Health in the core: probes scheduled and judged, readiness, the
//! watchdog, notify, and dependency conditions. Same fake clock as above.

use super::*;
use crate::spec::health::ProbeKind;

impl H {
    /// Advance to `ms` and tick; the probes that came due.
    fn tick_to(&mut self, ms: u64) -> Vec<(usize, ProbeKind)> {
        let now = self.at(ms);
        self.core.tick(now);
        self.effects()
            .into_iter()
            .filter_map(|e| match e {
                Effect::Probe(i, k) => Some((i, k)),
                _ => None,
            })
            .collect()
    }

    fn probe(&mut self, name: &str, kind: ProbeKind, ok: bool, msg: &str) -> Vec<Effect> {
        let (i, now) = (self.i(name), self.now);
        self.core.probe_done(i, kind, ok, msg.to_string(), now);
        self.effects()
    }

    fn svc(&self, name: &str) -> &Service {
        self.core.service(self.i(name)).unwrap()
    }
}

fn liveness_http() -> Value {
    json!({"liveness": {"http": {"port": 8080, "path": "/healthz"}, "periodMs": 1000}})
}

#[test]
fn liveness_failures_kill_and_the_restart_policy_takes_over() {
    let mut h = H::running(json!({"web": {"probes": liveness_http()}}));
    assert_eq!(
        h.svc("web").health.label(&h.svc("web").def.policy.health),
        "healthy"
    );
    for n in 1..=3u64 {
        assert_eq!(h.tick_to(n * 1000), [(0, ProbeKind::Liveness)], "probe {n}");
        let fx = h.probe("web", ProbeKind::Liveness, false, "503");
        if n < 3 {
            assert_eq!(h.state("web"), State::Running);
            assert!(events(&fx).contains(&format!(
                "probe failed: liveness http :8080/healthz: 503 ({n}/3)"
            )));
        } else {
            assert!(
                events(&fx)
                    .contains(&"unhealthy: liveness http :8080/healthz: 503 (3/3)".to_string()),
                "{fx:?}"
            );
            assert!(fx.contains(&Effect::Signal(0, Signal::SIGTERM)));
        }
    }
    assert_eq!(h.state("web"), State::Stopping);
    // No probe runs while it stops.
    assert!(h.tick_to(5000).is_empty());
    h.exited("web", 0);
    let s = h.svc("web");
    assert_eq!(s.last_exit.map(|e| e.reason), Some(Reason::Unhealthy));
    assert_eq!(
        s.last_exit_message.as_deref(),
        Some("liveness http :8080/healthz: 503 (3/3)")
    );
    // Exit code 0 after SIGTERM, yet a failure: on-failure restarts it.
    assert_eq!(h.state("web"), State::Backoff);
}

#[test]
fn a_success_resets_the_failure_count() {
    let mut h = H::running(json!({"web": {"probes": liveness_http()}}));
    for (n, ok) in [(1, false), (2, false), (3, true), (4, false), (5, false)] {
        h.tick_to(n * 1000);
        h.probe("web", ProbeKind::Liveness, ok, "x");
    }
    assert_eq!(h.state("web"), State::Running);
}

#[test]
fn the_startup_probe_gates_liveness_and_readiness() {
    let mut h = H::running(json!({"db": {"probes": {
        "startup": {"exec": ["ready"], "periodMs": 500, "failureThreshold": 10},
        "liveness": {"tcp": {"port": 5432}, "periodMs": 100, "failureThreshold": 1},
        "readiness": {"tcp": {"port": 5432}, "periodMs": 100}
    }}}));
    let label = |h: &H| h.svc("db").health.label(&h.svc("db").def.policy.health);
    assert_eq!(label(&h), "starting");
    // Only the startup probe runs, however long it takes.
    for n in 0..5u64 {
        assert_eq!(h.tick_to(n * 500), [(0, ProbeKind::Startup)]);
        h.probe("db", ProbeKind::Startup, false, "exit code 1");
    }
    assert_eq!(h.state("db"), State::Running);
    h.tick_to(2500);
    let fx = h.probe("db", ProbeKind::Startup, true, "exit code 0");
    assert!(events(&fx).contains(&"startup probe passed".to_string()));
    let due = h.tick_to(2500);
    assert_eq!(due, [(0, ProbeKind::Liveness), (0, ProbeKind::Readiness)]);
    assert!(
        !h.svc("db").health.ready,
        "not ready before readiness passes"
    );
    let fx = h.probe("db", ProbeKind::Readiness, true, "connected");
    assert_eq!(events(&fx), ["ready", "healthy"]);
    assert!(h.svc("db").health.ready);
}

#[test]
fn startup_exhausting_its_threshold_kills() {
    let mut h = H::running(json!({"db": {"probes": {
        "startup": {"tcp": {"port": 1}, "periodMs": 10, "failureThreshold": 2}
    }}}));
    h.tick_to(0);
    h.probe("db", ProbeKind::Startup, false, "connection refused");
    h.tick_to(10);
    let fx = h.probe("db", ProbeKind::Startup, false, "connection refused");
    assert!(
        events(&fx).contains(&"unhealthy: startup tcp :1: connection refused (2/2)".to_string())
    );
    assert_eq!(h.state("db"), State::Stopping);
}

#[test]
fn readiness_failure_only_unreadies_and_healthy_dependents_wait() {
    let mut h = H::new(json!({
        "db": {"probes": {"readiness": {"tcp": {"port": 5432}, "periodMs": 100, "failureThreshold": 2}}},
        "web": {"dependsOn": {"db": "healthy"}}
    }));
    h.start_all();
    assert_eq!(h.launched(), [0]);
    h.started("db");
    assert!(h.launched().is_empty(), "web waits for db to be healthy");
    assert_eq!(h.svc("web").blocked_on.as_deref(), Some("db to be healthy"));
    h.tick_to(0);
    let fx = h.probe("db", ProbeKind::Readiness, true, "connected");
    assert!(fx.contains(&Effect::Launch(1)), "db ready: web starts");
    h.started("web");
    for n in 1..=3u64 {
        h.tick_to(n * 100);
        let fx = h.probe("db", ProbeKind::Readiness, false, "connection refused");
        if n == 2 {
            assert!(
                events(&fx).contains(
                    &"not ready: readiness tcp :5432: connection refused (2/2)".to_string()
                ),
                "{fx:?}"
            );
        }
    }
    assert_eq!(h.state("db"), State::Running, "readiness never restarts");
    assert_eq!(h.state("web"), State::Running, "nor stops dependents");
    assert!(!h.svc("db").health.ready);
}

#[test]
fn a_missed_watchdog_kills_and_pings_keep_it_alive() {
    let mut h = H::running(json!({"app": {"notify": "systemd", "watchdogMs": 1000}}));
    let ping = Notice {
        watchdog: true,
        ..Notice::default()
    };
    for ms in [500, 1200, 1900] {
        let now = h.at(ms);
        h.core.notified(0, ping.clone(), now);
        h.core.tick(now);
    }
    assert_eq!(h.state("app"), State::Running);
    let now = h.at(2900);
    h.core.tick(now);
    let fx = h.effects();
    assert!(
        events(&fx).contains(&"watchdog missed (1000 ms)".to_string()),
        "{fx:?}"
    );
    h.exited("app", 143);
    assert_eq!(
        h.svc("app").last_exit.map(|e| e.reason),
        Some(Reason::Watchdog)
    );
    assert_eq!(h.state("app"), State::Backoff);
}

#[test]
fn notify_ready_gates_readiness_and_status_is_kept() {
    let mut h = H::new(json!({
        "db": {"notify": "systemd"},
        "web": {"dependsOn": {"db": "healthy"}}
    }));
    h.start_all();
    h.launched();
    h.started("db");
    assert!(h.launched().is_empty());
    let now = h.now;
    let n = Notice {
        ready: true,
        status: Some("accepting connections".into()),
        ..Notice::default()
    };
    h.core.notified(0, n, now);
    assert_eq!(h.launched(), [1]);
    assert_eq!(
        h.svc("db").health.notify_status.as_deref(),
        Some("accepting connections")
    );
    let now = h.now;
    let stopping = Notice {
        stopping: true,
        ..Notice::default()
    };
    h.core.notified(0, stopping, now);
    assert!(!h.svc("db").health.ready);
}

#[test]
fn completed_dependencies() {
    let stack = json!({
        "migrate": {"restart": {"policy": "no"}},
        "web": {"dependsOn": {"migrate": "completed"}}
    });
    let mut h = H::new(stack.clone());
    h.start_all();
    assert_eq!(h.launched(), [0]);
    h.started("migrate");
    assert!(h.launched().is_empty(), "running is not completed");
    h.exited("migrate", 0);
    assert_eq!(h.launched(), [1]);

    let mut h = H::new(stack);
    h.start_all();
    h.launched();
    h.started("migrate");
    h.exited("migrate", 1);
    let fx = h.effects();
    assert!(!fx.iter().any(|e| matches!(e, Effect::Launch(_))));
    assert_eq!(h.state("web"), State::Failed);
    let why = "migrate did not complete: exited with code 1";
    assert_eq!(h.svc("web").blocked_on.as_deref(), Some(why));
    assert!(events(&fx).contains(&format!("not started: {why}")));
}

#[test]
fn a_person_stopping_outranks_a_health_kill() {
    let mut h = H::running(
        json!({"web": {"probes": {"liveness": {"tcp": {"port": 1}, "failureThreshold": 1}}}}),
    );
    let now = h.now;
    h.core.stop(0, 9, now);
    h.tick_to(20_000);
    assert!(h.effects().is_empty() || h.state("web") == State::Stopping);
    h.exited("web", 143);
    assert_eq!(h.state("web"), State::Stopped);
}
