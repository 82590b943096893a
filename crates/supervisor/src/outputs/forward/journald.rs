//! journald's native protocol: one datagram per line to its socket,
//! `KEY=value` fields (systemd.journal-fields(7)), sent without waiting.

use std::io::ErrorKind;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;

use super::{Context, Drops, Origin};

/// Where journald listens for native entries.
pub(crate) const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";

pub(super) struct Journald {
    path: PathBuf,
    /// Made on the first line: a stack that sends nothing holds no fd.
    socket: Option<UnixDatagram>,
    drops: Drops,
    entry: Vec<u8>,
}

impl Journald {
    pub(super) fn new(path: PathBuf) -> Journald {
        Journald {
            path,
            socket: None,
            drops: Drops::default(),
            entry: Vec::new(),
        }
    }

    pub(super) fn dropped(&self) -> u64 {
        self.drops.total
    }

    pub(super) fn send(
        &mut self,
        cx: &Context,
        origin: &Origin<'_>,
        line: &str,
        notes: &mut Vec<String>,
    ) {
        let sink = "journald";
        let socket = match &self.socket {
            Some(s) => s,
            None => match UnixDatagram::unbound().and_then(|s| {
                s.set_nonblocking(true)?;
                Ok(s)
            }) {
                Ok(s) => self.socket.insert(s),
                Err(e) => return self.drops.dropped(1, &sink, &e, notes),
            },
        };
        entry(&mut self.entry, cx, origin, line);
        match socket.send_to(&self.entry, &self.path) {
            Ok(_) => self.drops.delivered(&sink, notes),
            Err(e) => {
                let why = match e.kind() {
                    ErrorKind::WouldBlock => "full".to_string(),
                    ErrorKind::NotFound | ErrorKind::ConnectionRefused => {
                        format!("{}: not listening", self.path.display())
                    }
                    _ => e.to_string(),
                };
                self.drops.dropped(1, &sink, &why, notes);
            }
        }
    }
}

/// One journal entry of `line`, into `buf`.
fn entry(buf: &mut Vec<u8>, cx: &Context, origin: &Origin<'_>, line: &str) {
    buf.clear();
    field(buf, "MESSAGE", line.as_bytes());
    field(buf, "PRIORITY", &[b'0' + origin.severity()]);
    field(buf, "SYSLOG_IDENTIFIER", origin.service.as_bytes());
    field(buf, "ISOLA_STACK", cx.stack.as_bytes());
    field(buf, "ISOLA_SERVICE", origin.service.as_bytes());
    field(buf, "ISOLA_STREAM", origin.stream.as_str().as_bytes());
    if let Some(r) = origin.replica {
        field(buf, "ISOLA_REPLICA", r.to_string().as_bytes());
    }
    if let (Some(pid), true) = (origin.pid, cx.root) {
        field(buf, "OBJECT_PID", pid.to_string().as_bytes());
    }
}

/// `KEY=value\n`; a value with a newline in the binary form (`KEY\n`,
/// its length as 64-bit little endian, the value, `\n`).
fn field(buf: &mut Vec<u8>, key: &str, value: &[u8]) {
    buf.extend_from_slice(key.as_bytes());
    if value.contains(&b'\n') {
        buf.push(b'\n');
        buf.extend_from_slice(&(value.len() as u64).to_le_bytes());
    } else {
        buf.push(b'=');
    }
    buf.extend_from_slice(value);
    buf.push(b'\n');
}
