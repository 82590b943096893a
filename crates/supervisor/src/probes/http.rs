//! An HTTP probe's exchange: `GET PATH` with `Connection: close`, then
//! the answer's status line (200–399 pass), without blocking.

use std::net::IpAddr;
use std::os::fd::{AsFd, OwnedFd};

use nix::errno::Errno;

use super::{connect_error, socket_error};
use crate::shell::context::Verdict;
use crate::shell::reactor::{Interest, Reactor, Token};

/// The most of an HTTP answer read: the status line is all a probe needs.
const MAX_HTTP_HEAD: usize = 4096;

pub(super) fn request(
    host: IpAddr,
    port: u16,
    path: &str,
    headers: &[(String, String)],
) -> Vec<u8> {
    let host_header = match host {
        IpAddr::V6(h) => format!("[{h}]:{port}"),
        IpAddr::V4(h) => format!("{h}:{port}"),
    };
    let mut req = format!("GET {path} HTTP/1.1\r\n");
    let has = |name: &str| headers.iter().any(|(k, _)| k.eq_ignore_ascii_case(name));
    if !has("host") {
        req.push_str(&format!("Host: {host_header}\r\n"));
    }
    if !has("user-agent") {
        req.push_str("User-Agent: isola-probe\r\n");
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("Connection: close\r\n\r\n");
    req.into_bytes()
}

/// An HTTP probe's exchange: the request, then the answer's head.
pub(super) struct Exchange {
    pub(super) sock: OwnedFd,
    request: Vec<u8>,
    written: usize,
    head: Vec<u8>,
}

impl Exchange {
    pub(super) fn new(sock: OwnedFd, request: Vec<u8>) -> Exchange {
        Exchange {
            sock,
            request,
            written: 0,
            head: Vec::new(),
        }
    }

    /// One step: connected → write the request (then wait to read, with
    /// `token`) → read the status line. `Some` once it is decided.
    pub(super) fn progress(&mut self, reactor: &Reactor, token: Token) -> Option<Verdict> {
        if self.written < self.request.len() {
            return self.send(reactor, token);
        }
        read_status(&self.sock, &mut self.head)
    }

    fn send(&mut self, reactor: &Reactor, token: Token) -> Option<Verdict> {
        if let Some(e) = socket_error(&self.sock) {
            return Some(Verdict::fail(connect_error(e)));
        }
        match nix::unistd::write(&self.sock, &self.request[self.written..]) {
            Ok(n) => self.written += n,
            Err(Errno::EAGAIN | Errno::EINTR) => return None,
            Err(e) => return Some(Verdict::fail(format!("send: {}", e.desc()))),
        }
        if self.written == self.request.len() {
            if let Err(e) = reactor.modify(self.sock.as_fd(), token, Interest::Read) {
                return Some(Verdict::fail(format!("epoll: {e}")));
            }
        }
        None
    }
}

/// Read the answer's status line; `Some` once it is decided.
fn read_status(sock: &OwnedFd, head: &mut Vec<u8>) -> Option<Verdict> {
    let mut buf = [0u8; 1024];
    loop {
        match nix::unistd::read(sock, &mut buf) {
            Ok(0) => {
                return Some(
                    parse_status(head)
                        .unwrap_or_else(|| Verdict::fail("connection closed before a status line")),
                )
            }
            Ok(n) => {
                head.extend_from_slice(&buf[..n]);
                if let Some(v) = parse_status(head) {
                    return Some(v);
                }
                if head.len() >= MAX_HTTP_HEAD {
                    return Some(Verdict::fail("no HTTP status line"));
                }
            }
            Err(Errno::EAGAIN) => return None,
            Err(Errno::EINTR) => {}
            Err(e) => return Some(Verdict::fail(format!("receive: {}", e.desc()))),
        }
    }
}

/// `HTTP/1.1 503 …` → failed, "503". `None` while the line is incomplete.
fn parse_status(head: &[u8]) -> Option<Verdict> {
    let end = head.windows(2).position(|w| w == b"\r\n")?;
    let line = String::from_utf8_lossy(&head[..end]);
    let mut parts = line.split_whitespace();
    let proto = parts.next().unwrap_or_default();
    let code = parts.next().and_then(|c| c.parse::<u16>().ok());
    match code {
        Some(c) if proto.starts_with("HTTP/") => Some(Verdict {
            ok: (200..400).contains(&c),
            message: c.to_string(),
        }),
        _ => Some(Verdict::fail(format!(
            "not an HTTP answer: {:?}",
            truncate(&line)
        ))),
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(60).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines() {
        assert_eq!(
            parse_status(b"HTTP/1.1 200 OK\r\n"),
            Some(Verdict::pass("200"))
        );
        assert_eq!(
            parse_status(b"HTTP/1.0 302 Found\r\nLoc"),
            Some(Verdict::pass("302"))
        );
        assert_eq!(
            parse_status(b"HTTP/1.1 503 Busy\r\n"),
            Some(Verdict::fail("503"))
        );
        assert_eq!(parse_status(b"HTTP/1.1 200"), None);
        assert!(!parse_status(b"SSH-2.0-OpenSSH\r\n").unwrap().ok);
    }

    #[test]
    fn requests_name_the_host_and_close() {
        let r = request(
            "127.0.0.1".parse().unwrap(),
            8080,
            "/healthz",
            &[("X-Probe".into(), "1".into())],
        );
        let r = String::from_utf8(r).unwrap();
        assert!(r.starts_with("GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n"));
        assert!(r.contains("X-Probe: 1\r\n"));
        assert!(r.ends_with("Connection: close\r\n\r\n"));
    }
}
