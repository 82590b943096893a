//! The lifecycle on the host: no root, no sandbox, a fake clock. Each test
//! drives [`Core`] with the inputs the event loop would feed it and checks
//! the phases and the effects it asks for.

use std::path::Path;

use nix::sys::signal::Signal;
use serde_json::{json, Value};

use super::*;
use crate::lifecycle::exit_policy::Reason;

/// A stack of `true` services with these supervision fields.
fn defs(services: Value) -> Vec<ServiceDef> {
    let mut map = serde_json::Map::new();
    for (name, extra) in services.as_object().cloned().unwrap_or_default() {
        let mut s = json!({"process": {"args": ["true"]}});
        for (k, v) in extra.as_object().cloned().unwrap_or_default() {
            s[k] = v;
        }
        map.insert(name, s);
    }
    let text = json!({ "services": map }).to_string();
    crate::spec::stack::parse(&text, Path::new("/"))
        .expect("test stack")
        .services
}

/// A core, a fake clock, and what the core asked for so far.
pub(super) struct H {
    pub(super) core: Core,
    t0: Instant,
    pub(super) now: Instant,
}

impl H {
    pub(super) fn new(services: Value) -> H {
        H::with_slots(services, 16)
    }

    fn with_slots(services: Value, slots: usize) -> H {
        let t0 = Instant::now();
        H {
            core: Core::new(defs(services), slots, 7),
            t0,
            now: t0,
        }
    }

    /// Move the clock to `ms` after the start.
    fn at(&mut self, ms: u64) -> Instant {
        self.now = self.t0 + Duration::from_millis(ms);
        self.now
    }

    fn i(&self, name: &str) -> usize {
        self.core.find(name).unwrap_or_else(|| panic!("no {name}"))
    }

    fn phase(&self, name: &str) -> Phase {
        self.core.service(self.i(name)).map(|s| s.phase).unwrap()
    }

    fn state(&self, name: &str) -> State {
        self.phase(name).state()
    }

    /// Every effect queued since the last call.
    fn effects(&mut self) -> Vec<Effect> {
        std::iter::from_fn(|| self.core.next_effect()).collect()
    }

    /// The indices launched since the last call (other effects dropped).
    fn launched(&mut self) -> Vec<usize> {
        self.effects()
            .into_iter()
            .filter_map(|e| match e {
                Effect::Launch(i) => Some(i),
                _ => None,
            })
            .collect()
    }

    fn start_all(&mut self) {
        let now = self.now;
        self.core.start_all(now);
    }

    fn started(&mut self, name: &str) {
        let (i, now) = (self.i(name), self.now);
        self.core.started(i, 100, now);
    }

    fn exited(&mut self, name: &str, code: i32) {
        self.exited_after_ooms(name, code, 0, 0);
    }

    /// The sandbox ended with `oom` OOM kills this run, `new` of them not
    /// reported before.
    fn exited_after_ooms(&mut self, name: &str, code: i32, oom: u64, new: u64) {
        let (i, now) = (self.i(name), self.now);
        let exit = Exit {
            code,
            oom_kills: oom,
            new_oom_kills: new,
        };
        self.core.exited(i, exit, now);
    }

    /// Start everything and report every init as started.
    pub(super) fn running(services: Value) -> H {
        let mut h = H::new(services);
        h.start_all();
        for i in h.launched() {
            let now = h.now;
            h.core.started(i, 100, now);
        }
        h.effects();
        h
    }
}

fn failure(code: i32, why: &str, transient: bool) -> StartError {
    StartError {
        code,
        why: why.to_string(),
        transient,
    }
}

fn notes(effects: &[Effect]) -> Vec<String> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Note(m) => Some(m.clone()),
            _ => None,
        })
        .collect()
}

fn answers(effects: &[Effect]) -> Vec<(ConnId, State)> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Answer(c, s) => Some((*c, *s)),
            _ => None,
        })
        .collect()
}

fn events(effects: &[Effect]) -> Vec<String> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Event(_, m) => Some(m.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn stop_while_queued_drops_the_start_and_answers() {
    let mut h = H::with_slots(json!({"a": {}, "b": {}}), 1);
    h.start_all();
    assert_eq!(h.launched(), [h.i("a")]);
    assert_eq!(h.phase("b"), Phase::Queued);
    let now = h.now;
    let b = h.i("b");
    h.core.stop(b, 1, now);
    let fx = h.effects();
    assert_eq!(answers(&fx), [(1, State::Stopped)]);
    assert_eq!(h.state("b"), State::Stopped);
    h.started("a");
    assert_eq!(h.launched(), Vec::<usize>::new(), "b stays down");
}

#[test]
fn stop_while_launching_is_applied_once_the_init_reports() {
    let mut h = H::new(json!({"a": {}}));
    h.start_all();
    h.effects();
    let now = h.now;
    h.core.stop(0, 1, now);
    assert!(answers(&h.effects()).is_empty(), "not settled yet");
    assert!(matches!(
        h.phase("a"),
        Phase::Launching {
            then: Some(Intent::Stop),
            ..
        }
    ));
    h.started("a");
    let fx = h.effects();
    assert!(fx.contains(&Effect::Signal(0, Signal::SIGTERM)), "{fx:?}");
    assert_eq!(h.state("a"), State::Stopping);
    h.exited("a", 143);
    let fx = h.effects();
    assert_eq!(answers(&fx), [(1, State::Stopped)]);
    assert!(events(&fx).contains(&"stopped".to_string()));
}

#[test]
fn restart_while_stopping_starts_it_again_after_the_exit() {
    let mut h = H::running(json!({"a": {"restart": {"policy": "no"}}}));
    let now = h.now;
    h.core.stop(0, 1, now);
    h.core.restart(0, 2, now);
    assert!(matches!(
        h.phase("a"),
        Phase::Stopping {
            intent: Intent::Restart,
            ..
        }
    ));
    h.at(50);
    h.exited("a", 143);
    assert_eq!(
        h.launched(),
        [0],
        "relaunched after the old sandbox is gone"
    );
    h.started("a");
    let fx = h.effects();
    assert_eq!(answers(&fx), [(1, State::Running), (2, State::Running)]);
    assert_eq!(h.core.service(0).map(|s| s.restarts), Some(1));
}

#[test]
fn a_crash_loop_backs_off_then_fails_and_start_recovers_it() {
    let mut h = H::running(json!({"a": {"restart": {
        "policy": "always", "delayMs": 100, "maxDelayMs": 1000, "steps": 2,
        "limit": {"burst": 3, "intervalMs": 10000}
    }}}));
    let mut delays = Vec::new();
    for n in 0..2u64 {
        let t = n * 2000 + 10;
        h.at(t);
        h.exited("a", 1);
        let Phase::Backoff { until } = h.phase("a") else {
            panic!("{:?}", h.phase("a"))
        };
        delays.push(until.duration_since(h.now).as_millis());
        assert_eq!(h.core.next_deadline(), Some(until));
        let early = h.now + Duration::from_millis(1);
        h.core.tick(early);
        assert_eq!(h.state("a"), State::Backoff, "not before its time");
        h.core.tick(until);
        assert_eq!(h.launched(), [0]);
        h.started("a");
    }
    // delay · (max/delay)^((n−1)/steps): 100, 316 ms.
    assert_eq!(delays, [100, 316]);
    h.at(4500);
    h.exited("a", 1);
    let fx = h.effects();
    assert_eq!(h.state("a"), State::Failed, "{fx:?}");
    assert!(events(&fx)
        .iter()
        .any(|e| e.contains("failed: more than 3 starts within 10000 ms")));
    assert_eq!(h.core.service(0).map(|s| s.restarts), Some(2));
    let now = h.now;
    h.core.start(0, 9, now);
    assert_eq!(h.launched(), [0], "isola start forgives the start limit");
    h.started("a");
    assert_eq!(answers(&h.effects()), [(9, State::Running)]);
}

#[test]
fn a_start_error_answers_the_client_waiting_for_it() {
    let mut h = H::new(json!({"a": {"restart": {"policy": "no"}}}));
    let now = h.now;
    h.core.start(0, 4, now);
    assert_eq!(h.launched(), [0]);
    h.core
        .start_failed(0, failure(127, "sh: not found", false), now);
    let fx = h.effects();
    assert_eq!(answers(&fx), [(4, State::Exited)]);
    assert_eq!(events(&fx)[0], "start failed: sh: not found");
    let last = h.core.service(0).and_then(|s| s.last_exit).unwrap();
    assert_eq!((last.reason, last.code), (Reason::Exited, Some(127)));
    // And with a restart policy the failed start backs off like a crash.
    let mut h = H::new(json!({"a": {"restart": {"policy": "always"}}}));
    h.start_all();
    h.effects();
    let now = h.now;
    h.core
        .start_failed(0, failure(125, "sandbox setup failed", false), now);
    assert_eq!(h.state("a"), State::Backoff);
}

#[test]
fn a_shortage_postpones_the_start_and_never_fails_the_service() {
    // A policy that would give up at once on a real failure.
    let strict = json!({"restart": {"policy": "no", "delayMs": 100, "maxDelayMs": 1000,
        "limit": {"burst": 1, "intervalMs": 60000}}});
    let mut h = H::new(json!({"a": strict.clone(), "b": strict}));
    h.start_all();
    h.effects();
    let emfile = "cannot create pipes: EMFILE: Too many open files";
    let mut t = 0;
    for round in 1..=6 {
        for name in ["a", "b"] {
            let (i, now) = (h.i(name), h.now);
            h.core.start_failed(i, failure(125, emfile, true), now);
            assert_eq!(h.state(name), State::Backoff, "round {round}");
        }
        let fx = h.effects();
        assert!(
            events(&fx)[0].starts_with(&format!("start postponed: {emfile}; retrying in")),
            "{fx:?}"
        );
        if round == 1 {
            assert_eq!(
                notes(&fx),
                [
                    "1 service(s) waiting for resources (file descriptors, memory, pids); \
                  each retries with backoff",
                    "2 service(s) waiting for resources (file \
                  descriptors, memory, pids); each retries with backoff"
                ]
            );
        } else {
            assert!(notes(&fx).is_empty(), "one summary per doubling: {fx:?}");
        }
        let waiting = h.core.service(0).and_then(|s| s.waiting_for.clone());
        assert_eq!(waiting.as_deref(), Some(emfile));
        // Backoff grows on the restart curve; the retry relaunches both.
        t += 2000;
        h.at(t);
        let now = h.now;
        h.core.tick(now);
        assert_eq!(h.launched().len(), 2);
    }
    h.started("a");
    h.started("b");
    let fx = h.effects();
    assert_eq!(
        notes(&fx),
        ["every service that waited for resources has started"]
    );
    assert_eq!(h.core.service(0).and_then(|s| s.waiting_for.clone()), None);
    // A real failure is still judged by the policy.
    h.exited("a", 1);
    assert_eq!(h.state("a"), State::Exited);
}

#[test]
fn oom_policies() {
    // stop: the OOM kill stops the service; its exit counts as an OOM kill.
    let mut h = H::running(json!({"a": {"oom": "stop"}}));
    let now = h.now;
    h.core.oom_killed(0, 1, "33554432", now);
    let fx = h.effects();
    assert!(events(&fx)[0].starts_with("oom-kill: the kernel killed 1 process(es)"));
    assert!(fx.contains(&Effect::Signal(0, Signal::SIGTERM)));
    h.exited_after_ooms("a", 143, 1, 0);
    assert_eq!(h.state("a"), State::Stopped);
    let s = h.core.service(0).unwrap();
    assert_eq!(
        (s.oom_kills, s.last_exit.map(|e| e.reason)),
        (1, Some(Reason::OomKill))
    );

    // continue: counted, nothing stopped.
    let mut h = H::running(json!({"a": {"oom": "continue"}}));
    let now = h.now;
    h.core.oom_killed(0, 2, "max", now);
    assert_eq!(h.state("a"), State::Running);
    assert_eq!(h.core.service(0).map(|s| s.oom_kills), Some(2));

    // restart: an OOM-killed payload is restarted by the restart policy.
    let mut h = H::running(json!({"a": {"oom": "restart", "restart": {"policy": "on-failure"}}}));
    h.exited_after_ooms("a", 137, 1, 1);
    assert_eq!(h.state("a"), State::Backoff);
    let s = h.core.service(0).unwrap();
    assert_eq!(s.last_exit.map(|e| e.reason), Some(Reason::OomKill));
    assert_eq!(s.oom_kills, 1);
}

#[test]
fn dependencies_start_in_order_and_stop_in_reverse() {
    let mut h = H::new(json!({
        "web": {"dependsOn": ["db", "cache"]},
        "cache": {"dependsOn": ["db"]},
        "db": {},
    }));
    let (db, cache, web) = (h.i("db"), h.i("cache"), h.i("web"));
    h.start_all();
    assert_eq!(h.launched(), [db], "dependents wait while db starts");
    h.started("db");
    assert_eq!(h.launched(), [cache]);
    h.started("cache");
    assert_eq!(h.launched(), [web]);
    h.started("web");
    h.effects();

    let now = h.now;
    h.core.shutdown(Some(5), now);
    let signalled = |fx: &[Effect]| -> Vec<usize> {
        fx.iter()
            .filter_map(|e| match e {
                Effect::Signal(i, _) => Some(*i),
                _ => None,
            })
            .collect()
    };
    assert_eq!(signalled(&h.effects()), [web], "dependents stop first");
    h.exited("web", 143);
    assert_eq!(signalled(&h.effects()), [cache]);
    h.exited("cache", 143);
    assert_eq!(signalled(&h.effects()), [db]);
    assert!(!h.core.finished());
    h.exited("db", 143);
    let fx = h.effects();
    assert!(fx.contains(&Effect::AnswerDown(5)), "{fx:?}");
    assert!(h.core.finished());
}

#[test]
fn start_slots_bound_concurrent_launches() {
    let mut h = H::with_slots(json!({"a": {}, "b": {}, "c": {}}), 2);
    h.start_all();
    assert_eq!(h.launched().len(), 2);
    h.started("a");
    assert_eq!(h.launched().len(), 1, "a slot freed");
}

#[test]
fn reload_restarts_changed_starts_added_removes_gone_and_keeps_the_rest() {
    let mut h = H::running(json!({"same": {}, "changed": {}, "gone": {}}));
    let now = h.now;
    let gone = h.i("gone");
    let new = defs(json!({
        "same": {},
        "changed": {"stop": {"timeoutMs": 500}},
        "added": {},
    }));
    h.core.reload(new, now);
    let fx = h.effects();
    let (same, changed) = (h.i("same"), h.i("changed"));
    assert!(fx.contains(&Effect::Signal(changed, Signal::SIGTERM)));
    assert!(fx.contains(&Effect::Signal(gone, Signal::SIGTERM)));
    assert!(!fx
        .iter()
        .any(|e| matches!(e, Effect::Signal(i, _) if *i == same)));
    let added = h.i("added");
    assert!(fx.contains(&Effect::Added(added)));
    assert!(fx.contains(&Effect::Launch(added)));
    assert!(events(&fx).contains(&"changed: restarting".to_string()));

    h.exited("changed", 143);
    assert_eq!(h.launched(), [changed]);
    let timeout = h.core.service(changed).map(|s| s.def.policy.stop.timeout);
    assert_eq!(
        timeout,
        Some(Duration::from_millis(500)),
        "the new definition"
    );

    h.exited("gone", 143);
    let fx = h.effects();
    assert!(fx.contains(&Effect::Forget(gone)));
    assert!(h.core.service(gone).is_none());
    assert!(h.core.find("gone").is_none());
}

#[test]
fn shutdown_while_in_backoff_ends_at_once() {
    let mut h = H::running(json!({"a": {"restart": {"policy": "always", "delayMs": 5000}}}));
    h.exited("a", 1);
    assert_eq!(h.state("a"), State::Backoff);
    let now = h.now;
    h.core.shutdown(None, now);
    assert_eq!(h.state("a"), State::Stopped);
    assert!(h.core.finished());
    assert_eq!(h.core.next_deadline(), None, "no restart left armed");
    h.core.tick(h.t0 + Duration::from_secs(10));
    assert_eq!(h.launched(), Vec::<usize>::new());
}

#[test]
fn a_restart_asked_before_shutdown_does_not_outlive_it() {
    let mut h = H::running(json!({"a": {}}));
    let now = h.now;
    h.core.restart(0, 1, now);
    h.core.shutdown(None, now);
    h.exited("a", 143);
    assert_eq!(h.launched(), Vec::<usize>::new());
    assert_eq!(h.state("a"), State::Stopped);
    assert!(h.core.finished());
}

#[test]
fn the_stop_timeout_kills_the_group_once() {
    let mut h = H::running(json!({"a": {"stop": {"timeoutMs": 200, "signal": "SIGINT"}}}));
    let now = h.now;
    h.core.stop(0, 1, now);
    assert!(h.effects().contains(&Effect::Signal(0, Signal::SIGINT)));
    let kill_at = h.core.next_deadline().expect("armed");
    assert_eq!(kill_at, h.t0 + Duration::from_millis(200));
    h.core.tick(kill_at);
    let fx = h.effects();
    assert!(fx.contains(&Effect::KillGroup(0)));
    assert_eq!(h.core.next_deadline(), None);
    h.core.tick(kill_at + Duration::from_secs(1));
    assert!(!h.effects().contains(&Effect::KillGroup(0)));
    h.exited("a", 137);
    assert_eq!(h.state("a"), State::Stopped);
}

#[test]
fn a_client_that_leaves_is_not_answered() {
    let mut h = H::running(json!({"a": {}}));
    let now = h.now;
    h.core.stop(0, 3, now);
    h.core.forget_conn(3);
    h.exited("a", 143);
    assert!(answers(&h.effects()).is_empty());
}

#[test]
fn every_input_is_fast() {
    // The whole lifecycle of 1000 services, from start to shutdown.
    let mut services = serde_json::Map::new();
    for n in 0..1000 {
        services.insert(format!("s{n}"), json!({}));
    }
    let mut h = H::new(Value::Object(services));
    let t = std::time::Instant::now();
    h.start_all();
    while let Some(e) = h.core.next_effect() {
        if let Effect::Launch(i) = e {
            let now = h.now;
            h.core.started(i, 1, now);
        }
    }
    let now = h.now;
    h.core.shutdown(None, now);
    for i in 0..1000 {
        let exit = Exit {
            code: 143,
            oom_kills: 0,
            new_oom_kills: 0,
        };
        h.core.exited(i, exit, now);
    }
    assert!(h.core.finished());
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
}

mod groups;
mod rollout;
mod run_health;
