//! The control socket: a Unix stream socket speaking newline-delimited JSON.
//!
//! Requests (one JSON object per line):
//!   {"cmd": "status"}
//!   {"cmd": "stop" | "start" | "restart", "name": "web"}
//!   {"cmd": "logs", "name": "web", "lines": 100, "follow": true}
//!   {"cmd": "down"}
//! Responses: `{"ok": true, …}` or `{"ok": false, "error": "…"}`, one per
//! line; `logs` with `follow` then streams `{"line": "…"}` objects.

use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

pub const DEFAULT_SOCKET: &str = "/run/isola/isola.sock";

/// `--socket`, else `$ISOLA_SOCKET`, else the default.
pub fn socket_path(flag: Option<PathBuf>) -> PathBuf {
    flag.or_else(|| std::env::var_os("ISOLA_SOCKET").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET))
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no isola supervisor is listening on {0}")]
    NotListening(PathBuf),
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
    #[error("{0}")]
    Refused(String),
    #[error("bad response from supervisor: {0}")]
    Protocol(String),
}

pub struct Client {
    path: PathBuf,
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Client {
    pub fn connect(path: &Path) -> Result<Client, ClientError> {
        let s = UnixStream::connect(path).map_err(|e| match e.kind() {
            ErrorKind::NotFound | ErrorKind::ConnectionRefused => {
                ClientError::NotListening(path.to_owned())
            }
            _ => ClientError::Io(path.to_owned(), e),
        })?;
        let writer = s
            .try_clone()
            .map_err(|e| ClientError::Io(path.to_owned(), e))?;
        Ok(Client {
            path: path.to_owned(),
            reader: BufReader::new(s),
            writer,
        })
    }

    /// Send one request and read its response; `Refused` when `ok` is false.
    pub fn request(&mut self, req: &Value) -> Result<Value, ClientError> {
        let line = self.request_line(req)?;
        let resp: Value =
            serde_json::from_str(&line).map_err(|e| ClientError::Protocol(e.to_string()))?;
        if resp.get("ok") == Some(&Value::Bool(true)) {
            Ok(resp)
        } else {
            Err(ClientError::Refused(
                resp.get("error")
                    .and_then(Value::as_str)
                    .unwrap_or("request refused")
                    .to_string(),
            ))
        }
    }

    /// Send a request and return the answer's line as it came (for a
    /// caller that deserializes it into its own types).
    pub fn request_line(&mut self, req: &Value) -> Result<String, ClientError> {
        let mut line = req.to_string();
        line.push('\n');
        if let Err(e) = self.writer.write_all(line.as_bytes()) {
            // A refused peer is told why and hung up on, possibly before our
            // request went out: the reason is still there to read.
            if !matches!(e.kind(), ErrorKind::BrokenPipe | ErrorKind::ConnectionReset) {
                return Err(ClientError::Io(self.path.clone(), e));
            }
        }
        self.next_line()?
            .ok_or_else(|| ClientError::Protocol("connection closed".into()))
    }

    /// The next streamed object, `None` when the supervisor closed the connection.
    pub fn next_message(&mut self) -> Result<Option<Value>, ClientError> {
        match self.next_line()? {
            None => Ok(None),
            Some(line) => serde_json::from_str(&line)
                .map(Some)
                .map_err(|e| ClientError::Protocol(e.to_string())),
        }
    }

    fn next_line(&mut self) -> Result<Option<String>, ClientError> {
        let mut line = String::new();
        let n = self
            .reader
            .read_line(&mut line)
            .map_err(|e| ClientError::Io(self.path.clone(), e))?;
        Ok((n > 0).then_some(line))
    }
}

pub fn ok(extra: Value) -> Value {
    let mut v = json!({"ok": true});
    if let (Some(o), Value::Object(e)) = (v.as_object_mut(), extra) {
        o.extend(e);
    }
    v
}

pub fn err(msg: impl Into<String>) -> Value {
    json!({"ok": false, "error": msg.into()})
}
