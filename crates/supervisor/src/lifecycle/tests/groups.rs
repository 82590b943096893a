//! Autoscaled groups in the core: a group with no replica, the count a
//! reload keeps, what the autoscaler is told. Same fake clock as above.

use super::*;

/// A core with these services, the autoscaled ones kept as written.
fn autoscaled(services: Value) -> H {
    let mut map = serde_json::Map::new();
    for (name, extra) in services.as_object().cloned().unwrap_or_default() {
        let mut s = json!({"process": {"args": ["true"]},
            "sockets": [{"name": "http", "listen": "tcp://127.0.0.1:18998"}]});
        for (k, v) in extra.as_object().cloned().unwrap_or_default() {
            s[k] = v;
        }
        map.insert(name, s);
    }
    let text = json!({ "services": map }).to_string();
    let stack = crate::spec::stack::parse(&text, Path::new("/")).expect("test stack");
    let t0 = Instant::now();
    let mut core = Core::new(stack.services, 16, 7);
    core.set_autoscaled(stack.autoscaled, |_| {});
    let mut h = H { core, t0, now: t0 };
    h.start_all();
    h.start_launched();
    h
}

impl H {
    fn gone(&mut self, name: &str) {
        self.exited(name, 143);
    }
}

#[test]
fn a_group_at_zero_scales_up_and_back_down() {
    let mut h = autoscaled(json!({"web": {"autoscale": {"min": 0, "max": 3}}}));
    assert!(h.core.find("web.1").is_none());
    assert_eq!(h.core.census("web", h.now).wanted, 0);
    let now = h.at(100);
    h.core
        .autoscale("web", 1, "a connection while scaled to zero", now)
        .unwrap();
    let fx = h.effects();
    assert!(fx.iter().any(|e| matches!(e, Effect::Launch(_))), "{fx:?}");
    assert!(fx.iter().any(|e| matches!(e, Effect::Event(_, m) if m == "web: scale 0 → 1: a connection while scaled to zero")), "{fx:?}");
    // Starting: the autoscaler waits for it.
    let c = h.core.census("web", h.now);
    assert_eq!((c.wanted, c.settling), (1, true));
    h.started("web.1");
    assert!(!h.core.census("web", h.now).settling);
    // Back to zero: wanted at once, while its sandbox stops.
    let now = h.at(200);
    h.core
        .autoscale("web", 0, "no connection for 60 s", now)
        .unwrap();
    assert_eq!(h.core.census("web", h.now).wanted, 0);
    assert_eq!(h.state("web.1"), State::Stopping);
    // A connection before it is gone: the new one takes the next number.
    h.core
        .autoscale("web", 1, "a connection while scaled to zero", now)
        .unwrap();
    assert!(h.core.find("web.2").is_some());
    h.gone("web.1");
    assert!(h.core.find("web.1").is_none(), "removed, not restarted");
}

#[test]
fn a_reload_keeps_the_count_within_the_new_bounds() {
    let mut h = autoscaled(json!({"web": {"autoscale": {"min": 1, "max": 4}}}));
    let now = h.at(100);
    h.core
        .autoscale("web", 3, "accept queue 9 > 4 for 500 ms", now)
        .unwrap();
    h.start_launched();
    h.effects();
    // The same file: nothing moves.
    let mut again = autoscaled(json!({"web": {"autoscale": {"min": 1, "max": 4}}}));
    let (defs, templates) = h_defs(&mut again);
    h.core.set_autoscaled(templates, |_| {});
    let now = h.at(200);
    h.core.reload(defs, now);
    let fx = h.effects();
    assert!(
        !fx.iter().any(|e| matches!(e, Effect::Signal(..))),
        "{fx:?}"
    );
    assert_eq!(h.core.census("web", h.now).wanted, 3);
    // max 2: the highest goes.
    let mut lower = autoscaled(json!({"web": {"autoscale": {"min": 1, "max": 2}}}));
    let (defs, templates) = h_defs(&mut lower);
    h.core.set_autoscaled(templates, |_| {});
    h.core.reload(defs, now);
    assert_eq!(h.state("web.3"), State::Stopping);
    assert_eq!(h.state("web.2"), State::Running);
}

/// What a reload hands the core: the services of `other`'s file and its
/// autoscaled definitions.
fn h_defs(other: &mut H) -> (Vec<ServiceDef>, Vec<ServiceDef>) {
    let names: Vec<String> = other
        .core
        .services()
        .map(|(_, s)| s.def.name.clone())
        .collect();
    let defs = names
        .iter()
        .filter_map(|n| other.core.service(other.i(n)).map(|s| s.def.clone()))
        .collect();
    let templates = other
        .core
        .autoscaled_groups()
        .filter_map(|g| other.core.autoscaled(g).cloned())
        .collect();
    (defs, templates)
}

#[test]
fn a_replica_that_crashes_while_another_starts_is_counted_once() {
    let mut h = autoscaled(json!({"web": {"autoscale": {"min": 1, "max": 4},
        "restart": {"policy": "always", "delayMs": 1000}}}));
    let now = h.at(100);
    h.core
        .autoscale("web", 2, "accept queue 9 > 4 for 500 ms", now)
        .unwrap();
    h.effects();
    h.exited("web.1", 1);
    let c = h.core.census("web", h.now);
    assert_eq!(h.state("web.1"), State::Backoff);
    assert_eq!((c.wanted, c.settling), (2, true));
    h.started("web.2");
    let c = h.core.census("web", h.now);
    assert_eq!(
        (c.wanted, c.settling),
        (2, false),
        "backoff is not settling"
    );
}

#[test]
fn a_rolling_restart_or_a_persons_stop_is_seen_in_the_census() {
    let mut h = autoscaled(json!({"web": {"autoscale": {"min": 2, "max": 4}}}));
    let now = h.at(100);
    h.core.restart_group("web", 9, now);
    assert!(h.core.census("web", h.now).settling);
    let mut h = autoscaled(json!({"web": {"autoscale": {"min": 2, "max": 4}}}));
    h.core.group_request("web", true, 9, now);
    h.gone("web.1");
    h.gone("web.2");
    assert!(h.core.census("web", h.now).stopped);
}

#[test]
fn a_replica_never_ready_holds_decisions_only_for_ready_timeout() {
    let mut h = autoscaled(json!({"web": {"autoscale": {"min": 1, "max": 4},
        "notify": "systemd", "restart": {"readyTimeoutMs": 5000}}}));
    assert!(h.core.census("web", h.now).settling, "not ready yet");
    let later = h.at(5001);
    assert!(!h.core.census("web", later).settling);
}

#[test]
fn a_replica_made_from_the_definition_is_completed_by_its_own_name() {
    let mut h = autoscaled(json!({"web": {"autoscale": {"min": 0, "max": 2}}}));
    let t = h.core.autoscaled("web").cloned().unwrap();
    h.core
        .set_autoscaled(vec![t], |d| d.plan.hostname = Some(d.name.clone()));
    let now = h.at(100);
    h.core
        .autoscale("web", 1, "a connection while scaled to zero", now)
        .unwrap();
    let s = h.core.service(h.i("web.1")).unwrap();
    assert_eq!(s.def.plan.hostname.as_deref(), Some("web.1"));
}

#[test]
fn a_pinned_count_is_what_a_reload_keeps() {
    let mut h = autoscaled(json!({"web": {"autoscale": {"min": 1, "max": 2}}}));
    let now = h.at(100);
    h.core.pin("web", Some(0));
    h.core
        .autoscale("web", 0, "pinned by isola scale", now)
        .unwrap();
    h.gone("web.1");
    h.effects();
    // The file says min 1: the pin says none, and none starts.
    let mut again = autoscaled(json!({"web": {"autoscale": {"min": 1, "max": 2}}}));
    let (defs, templates) = h_defs(&mut again);
    h.core.set_autoscaled(templates, |_| {});
    h.core.reload(defs, now);
    assert!(h.launched().is_empty());
    assert!(h.core.find("web.1").is_none());
    // Unpinned, the file's min counts again.
    h.core.pin("web", None);
    let (defs, _) = h_defs(&mut again);
    h.core.reload(defs, now);
    assert_eq!(h.launched().len(), 1);
}

#[test]
fn isola_scale_of_a_fixed_count_makes_replicas_from_the_definition_as_written() {
    let text =
        json!({"services": {"web": {"process": {"args": ["true"]}, "replicas": 2}}}).to_string();
    let stack = crate::spec::stack::parse(&text, Path::new("/")).expect("test stack");
    let t0 = Instant::now();
    let mut core = Core::new(stack.services, 16, 7);
    core.set_autoscaled(Vec::new(), |d| d.plan.hostname = Some(d.name.clone()));
    core.set_replicated(stack.replicated);
    let mut h = H { core, t0, now: t0 };
    let now = h.at(100);
    h.core.scale("web", 3, now).unwrap();
    // Not a copy of web.1's (whose notify socket is web.1's own).
    let s = h.core.service(h.i("web.3")).unwrap();
    assert_eq!(s.def.plan.hostname.as_deref(), Some("web.3"));
}
