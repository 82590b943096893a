use super::*;

fn def() -> Autoscale {
    Autoscale {
        min: 1,
        max: 4,
        backlog: 4,
        cpu: None,
        up_after: Duration::from_millis(500),
        down_after: Duration::from_millis(3000),
        idle: Duration::from_millis(10_000),
    }
}

fn census(wanted: u32) -> Census {
    Census {
        wanted,
        ..Census::default()
    }
}

fn queue(queued: u32) -> Readings {
    Readings {
        queued,
        ..Readings::default()
    }
}

/// Readings every 100 ms from `from` for `ms`: the first change, and
/// when (ms after `from`).
fn run(
    c: &mut Controller,
    census: Census,
    r: Readings,
    from: Instant,
    ms: u64,
) -> Option<(u64, Scale)> {
    (0..=ms / 100).find_map(|k| {
        let at = from + Duration::from_millis(k * 100);
        c.decide(census, r, at).map(|s| (k * 100, s))
    })
}

#[test]
fn a_queue_above_backlog_for_up_after_adds_one_replica() {
    let t0 = Instant::now();
    let mut c = Controller::new(def(), t0);
    assert_eq!(
        run(&mut c, census(1), queue(4), t0, 5000),
        None,
        "at backlog is not above"
    );
    let t1 = t0 + Duration::from_secs(10);
    let (at, s) = run(&mut c, census(1), queue(9), t1, 5000).unwrap();
    assert_eq!(at, 500);
    assert_eq!((s.from, s.to), (1, 2));
    assert_eq!(s.why, "accept queue 9 > 4 for 500 ms");
}

#[test]
fn a_dip_below_restarts_the_window() {
    let t0 = Instant::now();
    let mut c = Controller::new(def(), t0);
    let ms = |k| t0 + Duration::from_millis(k);
    assert_eq!(c.decide(census(1), queue(9), ms(0)), None);
    assert_eq!(c.decide(census(1), queue(9), ms(400)), None);
    assert_eq!(c.decide(census(1), queue(2), ms(450)), None);
    assert_eq!(c.decide(census(1), queue(9), ms(600)), None);
    assert_eq!(c.decide(census(1), queue(9), ms(1000)), None);
    assert!(c.decide(census(1), queue(9), ms(1100)).is_some());
}

#[test]
fn nothing_is_decided_while_a_replica_starts_nor_above_max() {
    let t0 = Instant::now();
    let mut c = Controller::new(def(), t0);
    let starting = Census {
        wanted: 2,
        settling: true,
        ..Census::default()
    };
    assert_eq!(run(&mut c, starting, queue(50), t0, 5000), None);
    // Once it serves, the window starts then: no double count.
    let later = t0 + Duration::from_secs(6);
    let (at, s) = run(&mut c, census(2), queue(50), later, 5000).unwrap();
    assert_eq!((at, s.to), (500, 3));
    assert_eq!(run(&mut c, census(4), queue(50), later, 5000), None);
    // A count above max (a reload lowered it) comes down at once.
    assert_eq!(c.decide(census(6), queue(50), later).unwrap().to, 4);
}

#[test]
fn a_queue_high_all_along_adds_the_next_replica_once_the_last_serves() {
    let t0 = Instant::now();
    let mut c = Controller::new(def(), t0);
    let (at, _) = run(&mut c, census(1), queue(20), t0, 5000).unwrap();
    assert_eq!(at, 500);
    let t1 = t0 + Duration::from_millis(500);
    let starting = Census {
        wanted: 2,
        settling: true,
        ..Census::default()
    };
    assert_eq!(run(&mut c, starting, queue(20), t1, 300), None);
    // It serves and the queue is still above: the next one once it had
    // 200 ms to take what waited.
    let t2 = t1 + Duration::from_millis(400);
    assert_eq!(c.decide(census(2), queue(20), t2), None);
    let t2 = t2 + Duration::from_millis(200);
    assert_eq!(c.decide(census(2), queue(20), t2).unwrap().to, 3);
    // A dip while it starts ends the window as any dip does.
    assert_eq!(
        c.decide(census(3), queue(0), t2 + Duration::from_millis(100)),
        None
    );
    assert_eq!(
        c.decide(census(3), queue(20), t2 + Duration::from_millis(200)),
        None
    );
}

#[test]
fn down_by_one_after_down_after_never_below_min() {
    let t0 = Instant::now();
    let mut c = Controller::new(def(), t0);
    let (at, s) = run(&mut c, census(3), queue(0), t0, 10_000).unwrap();
    assert_eq!((at, s.from, s.to), (3000, 3, 2));
    assert_eq!(s.why, "accept queue 0 ≤ 2 for 3000 ms");
    // The next step waits a whole window again.
    let t1 = t0 + Duration::from_millis(3000);
    let (at, s) = run(&mut c, census(2), queue(0), t1, 10_000).unwrap();
    assert_eq!((at, s.to), (3000, 1));
    assert_eq!(run(&mut c, census(1), queue(0), t1, 60_000), None);
    // Two waiting (half the backlog) is low still; three keep them.
    assert_eq!(run(&mut c, census(3), queue(2), t1, 3000).unwrap().1.to, 2);
    assert_eq!(run(&mut c, census(3), queue(3), t1, 10_000), None);
}

#[test]
fn cpu_scales_by_the_ratio_and_down_only_when_one_fewer_stays_below() {
    let t0 = Instant::now();
    let mut d = def();
    d.cpu = Some(70.0);
    d.max = 8;
    let mut c = Controller::new(d, t0);
    let cpu = |p| Readings {
        cpu: Some(p),
        ..Readings::default()
    };
    let (at, s) = run(&mut c, census(2), cpu(150.0), t0, 5000).unwrap();
    // ceil(2 · 150 / 70) = 5.
    assert_eq!((at, s.to), (500, 5));
    assert_eq!(s.why, "cpu 150% > 70% for 500 ms");
    // 4 at 50%: 3 would be at 67% (< 70): one fewer.
    assert_eq!(run(&mut c, census(4), cpu(50.0), t0, 5000).unwrap().1.to, 3);
    // 3 at 50%: 2 would be at 75%: they stay.
    assert_eq!(run(&mut c, census(3), cpu(50.0), t0, 60_000), None);
    // Capped at max.
    assert_eq!(
        run(&mut c, census(6), cpu(600.0), t0, 5000).unwrap().1.to,
        8
    );
}

#[test]
fn from_zero_a_connection_starts_one_and_idle_goes_back_to_zero() {
    let t0 = Instant::now();
    let mut d = def();
    d.min = 0;
    let mut c = Controller::new(d, t0);
    assert!(c.watches_arrivals());
    assert_eq!(run(&mut c, census(0), queue(0), t0, 60_000), None);
    let arrival = Readings {
        arrived: true,
        ..Readings::default()
    };
    let t1 = t0 + Duration::from_secs(61);
    let s = c.decide(census(0), arrival, t1).unwrap();
    assert_eq!((s.from, s.to), (0, 1));
    assert_eq!(s.why, "a connection while scaled to zero");
    // Idle counts from the last arrival: 10 s later, back to zero.
    let (at, s) = run(&mut c, census(1), queue(0), t1, 20_000).unwrap();
    assert_eq!((at, s.to), (10_000, 0));
    assert_eq!(s.why, "no connection for 10 s");
    // A queue that is not empty is not idle.
    let t2 = t1 + Duration::from_secs(30);
    assert_eq!(c.decide(census(1), queue(1), t2), None);
}

#[test]
fn a_pin_or_a_persons_stop_holds_every_decision() {
    let t0 = Instant::now();
    let mut c = Controller::new(def(), t0);
    c.pin(Some(2), t0);
    assert_eq!(c.pinned(), Some(2));
    assert_eq!(run(&mut c, census(2), queue(50), t0, 5000), None);
    c.pin(None, t0);
    assert!(run(&mut c, census(2), queue(50), t0, 5000).is_some());
    let stopped = Census {
        wanted: 2,
        stopped: true,
        ..Census::default()
    };
    assert_eq!(run(&mut c, stopped, queue(50), t0, 5000), None);
}

#[test]
fn either_signal_holding_long_enough_adds_replicas() {
    let t0 = Instant::now();
    let mut d = def();
    d.cpu = Some(50.0);
    let mut c = Controller::new(d, t0);
    // CPU above all along, the queue crossing backlog every other reading.
    let reading = |k: u64| Readings {
        queued: if k.is_multiple_of(2) { 9 } else { 0 },
        cpu: Some(80.0),
        arrived: false,
    };
    let first = (0..=10).find_map(|k| {
        let at = t0 + Duration::from_millis(k * 100);
        c.decide(census(1), reading(k), at).map(|s| (k * 100, s))
    });
    let (at, s) = first.expect("the CPU window held");
    assert_eq!((at, s.to), (500, 2));
    assert!(s.why.starts_with("cpu 80% > 50%"), "{}", s.why);
}

#[test]
fn a_cpu_scale_up_is_judged_again_on_the_new_count() {
    let t0 = Instant::now();
    let mut d = def();
    d.cpu = Some(70.0);
    d.max = 8;
    let mut c = Controller::new(d, t0);
    let cpu = Readings {
        cpu: Some(150.0),
        ..Readings::default()
    };
    assert_eq!(run(&mut c, census(2), cpu, t0, 600).unwrap().1.to, 5);
    // The same figure right after, the new replicas serving: not again.
    let t1 = t0 + Duration::from_millis(800);
    assert_eq!(c.decide(census(5), cpu, t1), None);
}

#[test]
fn a_reload_that_lowers_min_to_zero_counts_idle_from_then() {
    let t0 = Instant::now();
    let mut c = Controller::new(def(), t0);
    let t1 = t0 + Duration::from_secs(3600);
    let mut d = def();
    d.min = 0;
    c.redefine(d, t1);
    // Quiet for an hour under min 1, but idle counts from the reload.
    assert_eq!(c.decide(census(1), queue(0), t1), None);
    let (at, s) = run(&mut c, census(1), queue(0), t1, 20_000).unwrap();
    assert_eq!((at, s.to), (10_000, 0));
}
