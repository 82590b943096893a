use super::*;

#[test]
fn requests_as_the_cli_writes_them() {
    let r: Request = serde_json::from_str(r#"{"cmd":"stop","name":"web"}"#).unwrap();
    assert_eq!(r, Request::Stop { name: "web".into() });
    let r: Request = serde_json::from_str(r#"{"cmd":"logs","name":"w"}"#).unwrap();
    assert_eq!(
        r,
        Request::Logs {
            name: "w".into(),
            lines: DEFAULT_LOG_LINES,
            follow: false,
            since: None,
        }
    );
    let back = serde_json::to_string(&Request::Status).unwrap();
    assert_eq!(back, r#"{"cmd":"status"}"#);
}

#[test]
fn bad_requests_say_what_is_wrong() {
    let cases = [
        (r#"{"cmd":"explode"}"#, "unknown variant `explode`"),
        (r#"{"cmd":"stop"}"#, "missing field `name`"),
        (r#"{"cmd":"stop","name":"a","x":1}"#, "unknown field `x`"),
        (r#"{"name":"a"}"#, "missing field `cmd`"),
        (r#"{"cmd":"logs","name":"a","lines":-1}"#, "invalid value"),
    ];
    for (text, want) in cases {
        let e = serde_json::from_str::<Request>(text).unwrap_err();
        let msg = short_error(&e);
        assert!(msg.contains(want), "{text}: {msg}");
        assert!(!msg.contains(" at line "), "{msg}");
    }
}

#[test]
fn responses_leave_out_what_a_command_does_not_use() {
    let text = serde_json::to_string(&Response::state(State::Running)).unwrap();
    assert_eq!(text, r#"{"ok":true,"state":"running"}"#);
    let text = serde_json::to_string(&Response::err("no")).unwrap();
    assert_eq!(text, r#"{"ok":false,"error":"no"}"#);
}

#[test]
fn status_rows_round_trip() {
    let runs: VecDeque<Run> = [Run {
        start_ms: 5,
        exit_ms: None,
    }]
    .into();
    let deps = vec!["db".to_string()];
    let row = StatusRow {
        name: "web".into(),
        state: State::Backoff,
        pid: None,
        restarts: 2,
        uptime_ms: None,
        started_at_ms: Some(5),
        last_exit: Some(ExitRow {
            reason: Reason::OomKill,
            code: None,
            signal: Some(9),
            message: None,
        }),
        oom_kills: 1,
        waiting_for: None,
        memory_current: None,
        memory_peak: None,
        cpu_usec: Some(3),
        history: History::Borrowed(&runs),
        depends_on: Cow::Borrowed(&deps),
        restart_policy: "always".into(),
        health: "healthy".into(),
        ready: true,
        probe: BTreeMap::new(),
        notify_status: None,
        group: Some("web".into()),
        replacing: None,
        limits: BTreeMap::new(),
        addresses: BTreeMap::new(),
        addresses6: BTreeMap::new(),
        autoscale: None,
    };
    let text = serde_json::to_string(&row).unwrap();
    assert!(text.contains(r#""lastExit":{"reason":"oom-kill","code":null,"signal":9}"#));
    let back: StatusRow = serde_json::from_str(&text).unwrap();
    assert_eq!(back.state, State::Backoff);
    assert_eq!(
        back.history.runs(),
        runs.iter().copied().collect::<Vec<_>>()
    );
    assert_eq!(&*back.depends_on, &deps[..]);
}
