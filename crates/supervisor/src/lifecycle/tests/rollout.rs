//! Overlapping restarts, rolling restarts of replicas, scaling and group
//! requests in the core. Same fake clock as above.

use super::*;

const CONN: ConnId = 9;

fn overlap() -> Value {
    json!({"restart": {"policy": "always", "mode": "overlap", "readyTimeoutMs": 5000},
           "sockets": [{"name": "http", "listen": "tcp://127.0.0.1:18999"}]})
}

impl H {
    /// Report every launched init as started.
    pub(super) fn start_launched(&mut self) -> Vec<usize> {
        let launched = self.launched();
        for i in &launched {
            let now = self.now;
            self.core.started(*i, 100, now);
        }
        launched
    }

    fn answers(effects: &[Effect]) -> Vec<State> {
        effects
            .iter()
            .filter_map(|e| match e {
                Effect::Answer(CONN, s) => Some(*s),
                _ => None,
            })
            .collect()
    }
}

#[test]
fn overlap_starts_the_new_sandbox_first_and_stops_the_old_once_it_is_ready() {
    let mut h = H::running(json!({"web": overlap()}));
    let old = h.i("web");
    let now = h.at(1000);
    h.core.restart(old, CONN, now);
    let fx = h.effects();
    let new = fx
        .iter()
        .find_map(|e| match e {
            Effect::Launch(j) => Some(*j),
            _ => None,
        })
        .expect("the successor launches");
    assert_ne!(new, old);
    // Nothing of the old sandbox is touched yet; the name stays on it.
    assert!(!fx
        .iter()
        .any(|e| matches!(e, Effect::Signal(..) | Effect::KillGroup(_))));
    assert_eq!(h.i("web"), old);
    assert_eq!(h.core.service(new).unwrap().predecessor, Some(old));
    h.at(1500);
    let now = h.now;
    h.core.started(new, 200, now);
    let fx = h.effects();
    // Ready (no readiness gate): the name moves, the old one stops, the
    // client hears `running`.
    assert_eq!(h.i("web"), new);
    assert!(fx.contains(&Effect::HandedOver(old, new)), "{fx:?}");
    assert!(fx.contains(&Effect::Signal(old, Signal::SIGTERM)), "{fx:?}");
    assert_eq!(H::answers(&fx), [State::Running]);
    assert_eq!(h.core.service(new).unwrap().restarts, 1);
    let now = h.at(1600);
    h.core.exited(
        old,
        Exit {
            code: 143,
            oom_kills: 0,
            new_oom_kills: 0,
        },
        now,
    );
    let fx = h.effects();
    assert!(fx.contains(&Effect::Forget(old)), "{fx:?}");
    assert!(h.core.service(old).is_none());
    assert_eq!(h.state("web"), State::Running);
}

#[test]
fn a_successor_that_exits_or_is_never_ready_goes_and_the_old_one_keeps_serving() {
    let mut h = H::running(json!({"web": {
        "restart": {"policy": "always", "mode": "overlap", "readyTimeoutMs": 5000},
        "replicas": 1,
        "probes": {"readiness": {"tcp": {"port": 1}, "periodMs": 1000}}
    }}));
    let old = h.i("web.1");
    let now = h.at(1000);
    h.core.restart(old, CONN, now);
    let new = h.start_launched()[0];
    h.effects();
    // Exits before it is ready: never restarted, the old one stays.
    let now = h.at(2000);
    h.core.exited(
        new,
        Exit {
            code: 1,
            oom_kills: 0,
            new_oom_kills: 0,
        },
        now,
    );
    let fx = h.effects();
    assert_eq!(H::answers(&fx), [State::Failed]);
    assert!(fx.contains(&Effect::Forget(new)), "{fx:?}");
    assert!(!fx.iter().any(|e| matches!(e, Effect::Launch(_))), "{fx:?}");
    assert_eq!((h.i("web.1"), h.state("web.1")), (old, State::Running));

    // Runs but never gets ready: stopped at readyTimeoutMs.
    let now = h.at(3000);
    h.core.restart(old, CONN, now);
    let new = h.start_launched()[0];
    h.effects();
    let now = h.at(8001);
    h.core.tick(now);
    let fx = h.effects();
    assert!(fx.contains(&Effect::Signal(new, Signal::SIGTERM)), "{fx:?}");
    assert!(
        !fx.contains(&Effect::Signal(old, Signal::SIGTERM)),
        "{fx:?}"
    );
    assert_eq!(H::answers(&fx), [State::Failed]);
    assert_eq!(h.i("web.1"), old);
}

#[test]
fn the_old_sandbox_dying_first_hands_the_name_over_at_once() {
    let mut h = H::running(json!({"web": overlap()}));
    let old = h.i("web");
    let now = h.at(1000);
    h.core.restart(old, CONN, now);
    let new = h.launched()[0];
    let now = h.at(1100);
    h.core.exited(
        old,
        Exit {
            code: 137,
            oom_kills: 0,
            new_oom_kills: 0,
        },
        now,
    );
    let fx = h.effects();
    assert!(fx.contains(&Effect::HandedOver(old, new)), "{fx:?}");
    assert!(fx.contains(&Effect::Forget(old)), "{fx:?}");
    assert_eq!(h.i("web"), new);
    // It was launching: the name's client waits for it.
    let now = h.at(1200);
    h.core.started(new, 300, now);
    assert_eq!(H::answers(&h.effects()), [State::Running]);
}

#[test]
fn a_rolling_restart_takes_one_replica_at_a_time_and_answers_at_the_end() {
    let mut h = H::running(json!({"web": {"replicas": 3, "restart": {"policy": "always"}}}));
    let now = h.at(1000);
    h.core.restart_group("web", CONN, now);
    for k in 1..=3 {
        let name = format!("web.{k}");
        let i = h.i(&name);
        let fx = h.effects();
        let stopping: Vec<usize> = fx
            .iter()
            .filter_map(|e| match e {
                Effect::Signal(i, _) => Some(*i),
                _ => None,
            })
            .collect();
        assert_eq!(stopping, [i], "only {name} stops now: {fx:?}");
        assert!(H::answers(&fx).is_empty());
        let now = h.at(1000 + 100 * k);
        h.core.exited(
            i,
            Exit {
                code: 143,
                oom_kills: 0,
                new_oom_kills: 0,
            },
            now,
        );
        assert_eq!(h.launched(), [i]);
        h.core.started(i, 100, now);
    }
    assert_eq!(H::answers(&h.effects()), [State::Running]);
    for k in 1..=3 {
        assert_eq!(h.svc_restarts(&format!("web.{k}")), 1);
    }
}

#[test]
fn scale_adds_the_lowest_free_numbers_and_removes_the_highest() {
    let mut h = H::running(json!({"web": {"replicas": 2}}));
    let now = h.at(1000);
    assert!(h.core.scale("web", 4, now).is_ok());
    let launched = h.start_launched();
    assert_eq!(launched.len(), 2);
    assert!(h.core.find("web.3").is_some() && h.core.find("web.4").is_some());
    let now = h.at(2000);
    h.core.scale("web", 1, now).unwrap();
    let fx = h.effects();
    let stopped: Vec<usize> = fx
        .iter()
        .filter_map(|e| match e {
            Effect::Signal(i, _) => Some(*i),
            _ => None,
        })
        .collect();
    assert_eq!(stopped.len(), 3, "{fx:?}");
    assert!(!stopped.contains(&h.i("web.1")));
    let e = h.core.scale("nope", 2, now).unwrap_err();
    assert!(e.contains("not a replicated service"), "{e}");
}

#[test]
fn a_group_stop_is_answered_once_every_replica_stopped() {
    let mut h = H::running(json!({"web": {"replicas": 2}}));
    let now = h.at(1000);
    h.core.group_request("web", true, CONN, now);
    assert!(H::answers(&h.effects()).is_empty());
    let (a, b) = (h.i("web.1"), h.i("web.2"));
    let exit = Exit {
        code: 143,
        oom_kills: 0,
        new_oom_kills: 0,
    };
    h.core.exited(a, exit, now);
    assert!(H::answers(&h.effects()).is_empty());
    h.core.exited(b, exit, now);
    assert_eq!(H::answers(&h.effects()), [State::Stopped]);
}

#[test]
fn a_stop_during_an_overlap_fails_the_restart_and_answers_the_stop_once_down() {
    // A readiness probe keeps the new sandbox from taking over at once.
    let mut def = overlap();
    def["probes"] = json!({"readiness": {"tcp": {"port": 1}, "periodMs": 1000}});
    let mut h = H::running(json!({"web": def}));
    let old = h.i("web");
    let now = h.at(1000);
    h.core.restart(old, CONN, now);
    let new = h.start_launched()[0];
    h.effects();
    const STOPPER: ConnId = 10;
    let now = h.at(1100);
    h.core.stop(old, STOPPER, now);
    let fx = h.effects();
    assert_eq!(H::answers(&fx), [State::Failed], "{fx:?}");
    assert!(
        !fx.iter().any(|e| matches!(e, Effect::Answer(STOPPER, _))),
        "{fx:?}"
    );
    assert!(fx.contains(&Effect::Signal(new, Signal::SIGTERM)), "{fx:?}");
    assert!(fx.contains(&Effect::Signal(old, Signal::SIGTERM)), "{fx:?}");
    let now = h.at(1200);
    h.core.exited(
        old,
        Exit {
            code: 143,
            oom_kills: 0,
            new_oom_kills: 0,
        },
        now,
    );
    assert!(h
        .effects()
        .contains(&Effect::Answer(STOPPER, State::Stopped)));
}

#[test]
fn a_second_group_restart_joins_the_roll_in_progress() {
    let mut h = H::running(json!({"web": {"replicas": 3, "restart": {"policy": "always"}}}));
    const SECOND: ConnId = 10;
    let exit = Exit {
        code: 143,
        oom_kills: 0,
        new_oom_kills: 0,
    };
    let (w1, w2) = (h.i("web.1"), h.i("web.2"));
    let now = h.at(1000);
    h.core.restart_group("web", CONN, now);
    h.core.exited(w1, exit, now);
    h.core.started(w1, 100, now);
    h.effects();
    // web.2 is stopping now; a second request must not take web.1 down
    // beside it (two of three replicas gone).
    let now = h.at(1100);
    h.core.restart_group("web", SECOND, now);
    let fx = h.effects();
    assert!(
        !fx.iter().any(|e| matches!(e, Effect::Signal(..))),
        "{fx:?}"
    );
    for (k, i) in [(2, w2), (3, h.i("web.3"))] {
        let now = h.at(1100 + 100 * k);
        h.core.exited(i, exit, now);
        assert_eq!(h.launched(), [i]);
        h.core.started(i, 100, now);
    }
    let fx = h.effects();
    assert!(fx.contains(&Effect::Answer(CONN, State::Running)), "{fx:?}");
    assert!(
        fx.contains(&Effect::Answer(SECOND, State::Running)),
        "{fx:?}"
    );
}

impl H {
    fn svc_restarts(&self, name: &str) -> u32 {
        self.core.service(self.i(name)).unwrap().restarts
    }
}

fn exit(code: i32) -> Exit {
    Exit {
        code,
        oom_kills: 0,
        new_oom_kills: 0,
    }
}

/// A thousand overlaps and a thousand reloads that replace a service keep
/// the table as long as the most services there were at once: indices of
/// forgotten services are reused once the loop says its wakeup is over.
#[test]
fn a_thousand_overlaps_and_reloads_leave_the_table_bounded() {
    let mut h = H::running(json!({"web": overlap(), "db": {}}));
    for k in 0..1000u64 {
        let old = h.i("web");
        let now = h.at(1000 + k * 10);
        h.core.restart(old, CONN, now);
        h.start_launched();
        assert_ne!(h.i("web"), old, "handed over");
        let now = h.now;
        h.core.exited(old, exit(143), now);
        assert!(h.effects().contains(&Effect::Forget(old)));
        h.core.recycle();
    }
    assert_eq!(h.core.len(), 3, "two services and one successor at a time");
    for k in 0..1000u64 {
        // `db` gives way to `db2`, and back: one removed, one added.
        let name = if k % 2 == 0 { "db2" } else { "db" };
        let gone = h.core.find(if k % 2 == 0 { "db" } else { "db2" }).unwrap();
        let now = h.at(20_000 + k * 10);
        h.core
            .reload(defs(json!({"web": overlap(), name: {}})), now);
        let now = h.now;
        h.core.exited(gone, exit(143), now);
        h.start_launched();
        h.core.recycle();
    }
    assert!(h.core.len() <= 4, "{}", h.core.len());
    assert_eq!(h.core.services().count(), 2);
}

/// An index is not given to a newcomer in the wakeup that forgot it: an
/// event of that wakeup still naming it must not reach the newcomer.
#[test]
fn a_forgotten_index_is_reused_only_after_the_wakeup() {
    let mut h = H::running(json!({"web": overlap()}));
    let old = h.i("web");
    let now = h.at(1000);
    h.core.restart(old, CONN, now);
    h.start_launched();
    let now = h.now;
    h.core.exited(old, exit(143), now);
    h.effects();
    // Same wakeup: a second overlap gets a fresh index.
    let cur = h.i("web");
    h.core.restart(cur, CONN, now);
    let fresh = h.launched();
    assert!(fresh.iter().all(|j| *j != old), "{fresh:?} reused {old}");
    h.core.recycle();
}

/// A service removed while its overlap successor sets up: the successor
/// has nothing to take over and is stopped, and nothing points at the
/// removed service's index when a newcomer gets it.
#[test]
fn a_successor_whose_service_is_removed_is_stopped_and_lets_go_of_the_index() {
    let mut h = H::running(json!({"web": overlap(), "db": {}}));
    let old = h.i("web");
    let now = h.at(1000);
    h.core.restart(old, CONN, now);
    let succ = h.launched()[0];
    // The reload removes `web` before its successor reported.
    h.core.reload(defs(json!({"db": {}})), now);
    h.core.exited(old, exit(143), now);
    let fx = h.effects();
    assert!(fx.contains(&Effect::Forget(old)), "{fx:?}");
    let s = h.core.service(succ).expect("the successor is still there");
    assert_eq!(s.predecessor, None);
    assert!(
        matches!(
            s.phase,
            Phase::Launching {
                then: Some(Intent::Remove),
                ..
            }
        ),
        "{:?}",
        s.phase
    );
    // It reports, is stopped and forgotten; it never took a name.
    h.core.started(succ, 300, now);
    let fx = h.effects();
    assert!(
        fx.contains(&Effect::Signal(succ, Signal::SIGTERM)),
        "{fx:?}"
    );
    assert!(
        !fx.iter().any(|e| matches!(e, Effect::HandedOver(..))),
        "{fx:?}"
    );
    h.core.exited(succ, exit(143), now);
    assert!(h.effects().contains(&Effect::Forget(succ)));
    h.core.recycle();
    // A newcomer at the old index is left alone.
    let now = h.at(5000);
    h.core.reload(defs(json!({"db": {}, "web2": {}})), now);
    let new = h.i("web2");
    assert!([old, succ].contains(&new), "reused {new}");
    assert_eq!(h.core.service(new).unwrap().predecessor, None);
    assert_eq!(h.core.next_deadline(), None, "no stale overlap deadline");
}

/// A successor whose start is postponed for a shortage (both cgroup names
/// of the service still held) waits and starts later; it has not failed.
#[test]
fn a_postponed_successor_waits_instead_of_failing() {
    let mut h = H::running(json!({"web": overlap()}));
    let old = h.i("web");
    let now = h.at(1000);
    h.core.restart(old, CONN, now);
    let succ = h.launched()[0];
    let busy = StartError {
        code: 125,
        why: "cgroups web and web..next are both held".into(),
        transient: true,
    };
    h.core.start_failed(succ, busy, now);
    let fx = h.effects();
    assert!(
        !fx.iter()
            .any(|e| matches!(e, Effect::Answer(CONN, State::Failed))),
        "{fx:?}"
    );
    assert!(matches!(
        h.core.service(succ).unwrap().phase,
        Phase::Backoff { .. }
    ));
    // Its backoff over, it starts and takes over.
    let later = h.at(1500);
    h.core.tick(later);
    assert!(h.launched().contains(&succ));
    h.core.started(succ, 300, later);
    assert_eq!(h.i("web"), succ);
}
