use std::time::{Duration, Instant};

use super::families::*;
use super::*;
use crate::lifecycle::{Effect, Exit};
use crate::shell::reactor::Reactor;
use crate::spec::health::ProbeKind;

#[test]
fn cgroup_file_readers() {
    let psi = "some avg10=0.00 avg60=0.00 avg300=0.00 total=1500000\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=250\n";
    assert_eq!(psi_total(psi, "some"), Some(1_500_000.0));
    assert_eq!(psi_total(psi, "full"), Some(250.0));
    let io = "254:0 rbytes=4096 wbytes=8192 rios=1 wios=2\n8:0 rbytes=1 wbytes=0\n";
    assert_eq!(io_bytes(io, "rbytes="), Some(4097.0));
    assert_eq!(io_bytes(io, "wbytes="), Some(8192.0));
    assert_eq!(
        key("anon 10\ninactive_file 4096\n", "inactive_file"),
        Some(4096.0)
    );
    assert_eq!(key("VmRSS 1234 kB\n", "VmRSS"), Some(1234.0));
}
/// A scrape reads its services a slice at a time: with no time left,
/// one per turn, and it is done after the last.
#[test]
fn a_scrape_is_read_in_slices() {
    let reactor = Reactor::new().unwrap();
    let setup = crate::sandboxes::Setup {
        stack_root: "/nonexistent".into(),
        no_cgroup: true,
        group: None,
        spawner: None,
        stats_cap: 0,
        siblings: false,
    };
    let sb = Sandboxes::new(&reactor, setup).unwrap();
    let core = stack();
    let mut job = Job {
        asker: Asker::Control(1),
        todo: reported(&core),
        next: 0,
        samples: HashMap::new(),
    };
    assert_eq!(job.todo.len(), 3);
    let past = Instant::now();
    assert!(!job.read(&sb, past));
    assert_eq!(job.next, 1);
    assert!(!job.read(&sb, past));
    assert!(job.read(&sb, past), "the last one ends it");
    let mut all = Job { next: 0, ..job };
    assert!(
        all.read(&sb, Instant::now() + Duration::from_secs(1)),
        "time for all"
    );
}

fn stack() -> Core {
    let text = r#"{"services": {
    "web": {"process": {"args": ["true"]}, "replicas": 2},
    "db": {"process": {"args": ["true"]},
           "restart": {"policy": "always", "delayMs": 1, "maxDelayMs": 1},
           "probes": {"liveness": {"tcp": {"port": 5432}, "failureThreshold": 9}}}}}"#;
    let defs = crate::spec::stack::parse(text, std::path::Path::new("/"))
        .expect("stack")
        .services;
    Core::new(defs, 16, 1)
}

fn launch_all(core: &mut Core, now: Instant) {
    let launched: Vec<usize> = std::iter::from_fn(|| core.next_effect())
        .filter_map(|e| match e {
            Effect::Launch(i) => Some(i),
            _ => None,
        })
        .collect();
    for i in launched {
        core.started(i, 100, now);
    }
}

fn own() -> Own<'static> {
    Own {
        lines_dropped: [("stdout", 7), ("stderr", 0), ("journald", 2), ("syslog", 0)],
        sockets: vec![SocketQueue {
            service: "web",
            socket: "http",
            queue: isola_runtime::listen::AcceptQueue {
                queued: 3,
                backlog: 128,
                drops: 9,
            },
        }],
        loop_lag: Duration::from_millis(12),
        autoscaled: vec![Scaled {
            service: "api",
            desired: 3,
            ups: 4,
            downs: 1,
        }],
    }
}

/// The core's families, as a scraper reads them; the probe failures
/// and restarts of a service survive its restart.
#[test]
fn counters_survive_a_restart_and_replicas_are_labelled() {
    let mut core = stack();
    let t0 = Instant::now();
    core.start_all(t0);
    launch_all(&mut core, t0);
    let db = core.find("db").unwrap();
    let fail =
        |core: &mut Core, t| core.probe_done(db, ProbeKind::Liveness, false, "refused".into(), t);
    fail(&mut core, t0);
    fail(&mut core, t0);
    let exit = Exit {
        code: 1,
        oom_kills: 0,
        new_oom_kills: 0,
    };
    core.exited(db, exit, t0);
    let t1 = t0 + Duration::from_millis(50);
    core.tick(t1);
    launch_all(&mut core, t1);
    fail(&mut core, t1);
    let text = render(
        Format::Text,
        &core,
        &HashMap::new(),
        &ResourceWatch::default(),
        &own(),
    );
    let want = [
        "isola_service_up{service=\"web.1\",group=\"web\",replica=\"1\"} 1",
        "isola_service_up{service=\"db\"} 1",
        "isola_service_restarts_total{service=\"db\"} 1",
        "isola_service_restarts_total{service=\"web.2\",group=\"web\",replica=\"2\"} 0",
        "isola_service_probe_failures_total{service=\"db\",probe=\"liveness\"} 3",
        "isola_log_lines_dropped_total{sink=\"stdout\"} 7",
        "isola_log_lines_dropped_total{sink=\"journald\"} 2",
        "isola_socket_accept_queue{service=\"web\",socket=\"http\"} 3",
        "isola_socket_backlog{service=\"web\",socket=\"http\"} 128",
        "isola_socket_listen_drops_total{service=\"web\",socket=\"http\"} 9",
        "isola_supervisor_loop_lag_seconds 0.012",
        "isola_autoscale_replicas{service=\"api\"} 3",
        "isola_autoscale_decisions_total{service=\"api\",direction=\"up\"} 4",
        "isola_autoscale_decisions_total{service=\"api\",direction=\"down\"} 1",
    ];
    for w in want {
        assert!(text.lines().any(|l| l == w), "no {w:?} in\n{text}");
    }
    // One family each: every HELP line names a different family.
    let helps: Vec<&str> = text.lines().filter(|l| l.starts_with("# HELP ")).collect();
    let mut names: Vec<&str> = helps.iter().filter_map(|l| l.split(' ').nth(2)).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), helps.len());
    let om = render(
        Format::OpenMetrics,
        &core,
        &HashMap::new(),
        &ResourceWatch::default(),
        &own(),
    );
    assert!(om.contains("# TYPE isola_service_restarts counter\n"));
    assert!(om.ends_with("# EOF\n"));
}
