//! The status table as people read it: aligned, human units (`41.2M/128.0M`
//! with the limit beside the usage, `3m12s`, CPU %), the state in colour on
//! a terminal (never when piped, never with `NO_COLOR`). `isola status` and
//! `isola top` both draw it.

use std::io::IsTerminal;

use isola_supervisor::control::StatusRow;
use isola_supervisor::lifecycle::State;

const HEADER: [&str; 9] = [
    "NAME",
    "STATE",
    "HEALTH",
    "PID",
    "RESTARTS",
    "UPTIME",
    "MEMORY",
    "CPU",
    "LAST EXIT",
];

/// Colour only for a person at a terminal (https://no-color.org).
pub(crate) fn color_wanted(out: &impl IsTerminal) -> bool {
    out.is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// CPU % averaged over the run (one sample).
pub(crate) fn cpu_average(s: &StatusRow) -> Option<f64> {
    let (cpu, up) = (s.cpu_usec?, s.uptime_ms?);
    (up > 0).then(|| cpu as f64 / (up as f64 * 10.0))
}

/// Header and one line per service, columns as wide as their widest cell.
/// On a stack with networks, the services' addresses follow the pid.
pub(crate) fn table(
    rows: &[StatusRow],
    cpu: &dyn Fn(&StatusRow) -> Option<f64>,
    color: bool,
) -> Vec<String> {
    let with_addresses = rows.iter().any(|r| !r.addresses.is_empty());
    let mut header: Vec<String> = HEADER.iter().map(|h| h.to_string()).collect();
    if with_addresses {
        header.insert(ADDRESS_AT, "ADDRESS".to_string());
    }
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|s| {
            let mut c: Vec<String> = cells(s, cpu).into();
            if with_addresses {
                c.insert(ADDRESS_AT, addresses(s));
            }
            c
        })
        .collect();
    let mut width: Vec<usize> = header.iter().map(String::len).collect();
    for c in &cells {
        for (w, cell) in width.iter_mut().zip(c.iter()) {
            *w = (*w).max(cell.chars().count());
        }
    }
    // Numbers right, words left; the last column unpadded.
    let numbers = if with_addresses { 5..=8 } else { 3..=7 };
    let last = header.len() - 1;
    let line = |c: &[String], state: Option<State>| {
        let mut out = String::new();
        for (k, cell) in c.iter().enumerate() {
            let pad = width[k].saturating_sub(cell.chars().count());
            let text = match (k, state) {
                (1, Some(st)) if color => paint(st, cell),
                _ => cell.clone(),
            };
            if k == last {
                out += &text;
            } else if numbers.contains(&k) || k == 3 {
                out += &format!("{}{text}  ", " ".repeat(pad));
            } else {
                out += &format!("{text}{}  ", " ".repeat(pad));
            }
        }
        out.trim_end().to_string()
    };
    std::iter::once(line(&header, None))
        .chain(cells.iter().zip(rows).map(|(c, s)| line(c, Some(s.state))))
        .collect()
}

/// Where the address column goes: after PID.
const ADDRESS_AT: usize = 4;

/// `10.89.1.2` on one network; `back=10.89.0.3,front=10.89.1.2` on more.
fn addresses(s: &StatusRow) -> String {
    match s.addresses.len() {
        0 => "-".to_string(),
        1 => s.addresses.values().cloned().collect(),
        _ => s
            .addresses
            .iter()
            .map(|(n, a)| format!("{n}={a}"))
            .collect::<Vec<_>>()
            .join(","),
    }
}

fn paint(st: State, text: &str) -> String {
    let code = match st {
        State::Running => "32",
        State::Starting | State::Backoff | State::Stopping => "33",
        State::Failed => "31",
        State::Stopped | State::Exited | State::ScaledToZero => "2",
    };
    format!("\x1b[{code}m{text}\x1b[0m")
}

fn cells(s: &StatusRow, cpu: &dyn Fn(&StatusRow) -> Option<f64>) -> [String; 9] {
    let dash = || "-".to_string();
    let limit = s
        .limits
        .get("memory.max")
        .and_then(|v| v.parse::<u64>().ok());
    let memory = match (s.memory_current, limit) {
        (Some(m), Some(l)) => format!("{}/{}", bytes(m), bytes(l)),
        (Some(m), None) => bytes(m),
        _ => dash(),
    };
    let mut last = s.last_exit.as_ref().map_or_else(dash, |e| {
        let reason = serde_json::to_value(e.reason)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        let how = match (e.code, e.signal) {
            (Some(c), _) => format!("{reason} {c}"),
            (_, Some(sig)) => format!("{reason} (signal {sig})"),
            _ => reason,
        };
        match &e.message {
            Some(m) => format!("{how}: {m}"),
            None => how,
        }
    });
    if s.oom_kills > 0 {
        last += &format!(", {} OOM kill(s)", s.oom_kills);
    }
    if let Some(st) = &s.notify_status {
        last += &format!("  [{st}]");
    }
    [
        s.name.to_string(),
        s.state.as_str().to_string(),
        s.health.to_string(),
        s.pid.map_or_else(dash, |p| p.to_string()),
        s.restarts.to_string(),
        s.uptime_ms.map_or_else(dash, duration),
        memory,
        cpu(s).map_or_else(dash, |c| format!("{c:.1}%")),
        last,
    ]
}

pub(crate) fn duration(ms: u64) -> String {
    match ms / 1000 {
        s if s < 60 => format!("{}.{}s", s, ms % 1000 / 100),
        s if s < 3600 => format!("{}m{}s", s / 60, s % 60),
        s => format!("{}h{}m", s / 3600, s % 3600 / 60),
    }
}

pub(crate) fn bytes(b: u64) -> String {
    const KIB: f64 = 1024.0;
    match b {
        b if b < 1 << 10 => format!("{b}B"),
        b if b < 1 << 20 => format!("{:.1}K", b as f64 / KIB),
        b if b < 1 << 30 => format!("{:.1}M", b as f64 / (KIB * KIB)),
        b => format!("{:.1}G", b as f64 / (KIB * KIB * KIB)),
    }
}
