//! `isola logs`: following, rotation, and every service interleaved.

use std::io::{BufRead, BufReader};
use std::time::{Duration, Instant};

use isola_tests::up::*;
use isola_tests::*;
use serde_json::json;

#[test]
fn logs_follow_and_rotate() {
    require_vm();
    let up = Up::start(
        "logs",
        json!({
            "ticker": svc("i=0; while :; do echo tick $i; i=$((i+1)); sleep 0.2; done", json!({})),
            "chatty": svc("seq 1 400", json!({"restart": {"policy": "no"}})),
        }),
        &["--log-max-bytes", "2000", "--log-files", "3"],
    );
    let mut f = up.spawn_cli(&["logs", "-f", "-n", "1", "ticker"]);
    let mut r = BufReader::new(f.stdout.take().unwrap());
    let mut ticks = Vec::new();
    let t = Instant::now();
    while ticks.len() < 4 {
        let mut line = String::new();
        assert!(r.read_line(&mut line).unwrap() > 0, "logs -f ended");
        if let Some(n) = line
            .trim()
            .strip_suffix("")
            .and_then(|l| l.split("tick ").nth(1))
        {
            ticks.push(n.parse::<u64>().unwrap());
        }
        assert!(t.elapsed() < Duration::from_secs(30));
    }
    let _ = f.kill();
    let _ = f.wait();
    assert!(
        ticks.windows(2).all(|w| w[1] == w[0] + 1),
        "not following in order: {ticks:?}"
    );

    up.wait_state("chatty", "exited");
    let mut names: Vec<String> = std::fs::read_dir(up.logdir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("chatty"))
        .collect();
    names.sort();
    assert_eq!(names, ["chatty.log", "chatty.log.1", "chatty.log.2"]);
    for n in &names {
        let len = std::fs::metadata(up.logdir().join(n)).unwrap().len();
        assert!(len <= 2000, "{n} is {len} bytes");
    }
    let (code, out, _) = up.cli(&["logs", "-n", "2", "chatty"]);
    assert_eq!(code, 0);
    assert!(out.contains("stdout 400"), "{out}");
    up.down();
    assert_clean();
}

#[test]
fn logs_without_a_name_interleave_every_service_by_time() {
    require_vm();
    let up = Up::start(
        "interleave",
        json!({
            "a": svc("echo a1; sleep 0.4; echo a2; exec sleep 1000", json!({})),
            "b": svc("sleep 0.2; echo b1; sleep 0.4; echo b2; exec sleep 1000", json!({}))
        }),
        &[],
    );
    up.wait_log("b", "b2");
    up.wait_log("a", "a2");
    let (code, out, err) = up.cli(&["logs"]);
    assert_eq!(code, 0, "{err}");
    let order: Vec<&str> = out
        .lines()
        .filter(|l| l.contains("| stdout "))
        .map(|l| l.rsplit(' ').next().unwrap())
        .collect();
    assert_eq!(order, ["a1", "b1", "a2", "b2"], "{out}");
    assert!(out.lines().any(|l| l == "b | stdout b1"), "{out}");
    // --timestamps keeps each line's time; --since drops what came before.
    let (_, out, _) = up.cli(&["logs", "-t", "-n", "1"]);
    // (The VM's clock may start at 1970: the shape, not the year.)
    let (time, rest) = out.trim_end().split_once(' ').unwrap();
    assert!(time.contains('T') && time.ends_with('Z'), "{out}");
    assert_eq!(rest, "b | stdout b2");
    let (code, out, _) = up.cli(&["logs", "--since", "2100-01-01T00:00:00Z"]);
    assert_eq!((code, out.as_str()), (0, ""));
    let (code, _, err) = up.cli(&["logs", "--since", "yesterday"]);
    assert_eq!(code, 2, "{err}");
    up.down();
    assert_clean();
}
