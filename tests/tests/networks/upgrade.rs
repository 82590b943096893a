//! An upgrade of a stack with networks: the bridges, pairs and rules stay
//! as they are, every service keeps its address, names resolve before,
//! during and after, and a service restarted after the upgrade gets its
//! address back.

use super::*;

#[test]
fn an_upgrade_keeps_every_address_and_name_of_a_stack_on_networks() {
    require_vm();
    let up = up_file("netup", &stack());
    for s in ["lone", "db", "web", "edge", "rep.1", "rep.2"] {
        up.wait_state(s, "running");
    }
    assert_eq!(ask(&up, "web", "db", 5432), "db");
    let addrs = |up: &Up| -> Vec<(String, Value, Value)> {
        up.status()
            .into_iter()
            .map(|s| {
                (
                    s["name"].to_string(),
                    s["pid"].clone(),
                    s["addresses"].clone(),
                )
            })
            .collect()
    };
    let before = addrs(&up);
    let links = leftovers();
    // Names asked for all through the upgrades, from inside edge.
    let asker = up.spawn_cli(&[
        "exec",
        "edge",
        "--",
        "python3",
        "-c",
        "import socket, time\nok = bad = 0\nend = time.time() + 6\nwhile time.time() < end:\n    try:\n        socket.getaddrinfo('web', 80, socket.AF_INET); ok += 1\n    except Exception:\n        bad += 1\n    time.sleep(0.02)\nprint(ok, bad)\n",
    ]);
    std::thread::sleep(Duration::from_millis(500));
    for k in 0..3 {
        let (code, out, err) = up.cli(&["upgrade"]);
        assert_eq!(code, 0, "upgrade {k}: {out}{err}\n{}", up.stderr());
    }
    let asked = wait_output(asker, Duration::from_secs(60));
    let said = String::from_utf8_lossy(&asked.stdout).into_owned();
    let counts: Vec<u64> = said
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    assert!(counts.len() == 2 && counts[0] > 0, "{said}");
    assert_eq!(counts[1], 0, "lookups failed during the upgrades: {said}");
    assert_eq!(addrs(&up), before, "a pid or an address changed");
    assert_eq!(leftovers(), links, "links or tables changed");
    // The nameserver knows everyone, the rules still hold.
    assert_eq!(ask(&up, "web", "db", 5432), "db");
    assert_eq!(ask(&up, "web", "api", 8080), "web");
    assert!(resolve(&up, "edge", "db").starts_with("error"));
    // A restart after the upgrade: the same address, reachable by name.
    let db = address(&up, "db", "back");
    let (code, _, err) = up.cli(&["restart", "db"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(address(&up, "db", "back"), db);
    let t = Instant::now();
    while ask(&up, "web", "db", 5432) != "db" {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "db unreachable after its restart"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    up.down();
    assert!(leftovers().is_empty(), "{:?}", leftovers());
    assert_clean();
}
