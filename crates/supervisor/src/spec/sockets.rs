//! Sockets the supervisor holds for a service (`sockets`), created once in
//! the host's network namespace before the service first starts and handed
//! to every start at fds 3, 4, … (systemd's socket activation): while a
//! service restarts, connections wait in the listening socket's backlog
//! instead of being refused. A socket made in the host's namespace stays
//! there: a service in its own network namespace serves the host's port
//! through it, without veth or NAT.
//!
//! Also `fdStoreMax` and `replicas`, the other fields of zero-downtime.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use isola_runtime::SpecError;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::field;

/// `listen(2)`'s backlog when the spec does not say (the kernel caps it at
/// `net.core.somaxconn`).
const DEFAULT_BACKLOG: i32 = 4096;
/// Mode of a unix socket file when the spec does not say (systemd's
/// `SocketMode=` default).
const DEFAULT_UNIX_MODE: u32 = 0o666;
/// `LISTEN_FDNAMES` entries are at most this long (sd_listen_fds_with_names).
const MAX_NAME_LEN: usize = 255;
/// Most fds one service may keep in its fd store.
const MAX_FD_STORE: u32 = 1024;
/// Most replicas of one service.
pub const MAX_REPLICAS: u32 = 1000;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Address {
    Tcp(SocketAddr),
    Udp(SocketAddr),
    Unix(PathBuf),
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SocketDef {
    pub name: String,
    /// As written (`tcp://127.0.0.1:8080`), for messages.
    pub listen: String,
    pub address: Address,
    pub backlog: i32,
    /// Permission bits of a unix socket's file.
    pub mode: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SocketJson {
    name: String,
    listen: String,
    backlog: Option<i64>,
    mode: Option<String>,
}

/// Read `sockets`; `prefix` names the service (`services.web.`).
pub fn parse(sup: &Map<String, Value>, prefix: &str) -> Result<Vec<SocketDef>, SpecError> {
    let Some(v) = sup.get("sockets") else {
        return Ok(Vec::new());
    };
    let path = format!("{prefix}sockets");
    let raw: Vec<SocketJson> = field(v, &path)?;
    let mut out: Vec<SocketDef> = Vec::with_capacity(raw.len());
    for (k, s) in raw.into_iter().enumerate() {
        let at = format!("{path}[{k}]");
        check_name(&s.name).map_err(|why| SpecError::new(format!("{at}.name"), why))?;
        if out.iter().any(|o| o.name == s.name) {
            return Err(SpecError::new(
                format!("{at}.name"),
                format!("{}: duplicate socket name", s.name),
            ));
        }
        let address = parse_address(&s.listen).map_err(|why| {
            SpecError::new(format!("{at}.listen"), format!("{}: {why}", s.listen))
        })?;
        if out.iter().any(|o| o.address == address) {
            return Err(SpecError::new(
                format!("{at}.listen"),
                format!("{}: listed twice", s.listen),
            ));
        }
        let backlog = match s.backlog {
            None => DEFAULT_BACKLOG,
            Some(b) => i32::try_from(b).ok().filter(|b| *b >= 1).ok_or_else(|| {
                SpecError::new(format!("{at}.backlog"), format!("{b}: must be 1 or more"))
            })?,
        };
        let mode = match (&s.mode, &address) {
            (None, _) => DEFAULT_UNIX_MODE,
            (Some(m), Address::Unix(_)) => u32::from_str_radix(m, 8)
                .ok()
                .filter(|m| *m <= 0o777)
                .ok_or_else(|| {
                SpecError::new(
                    format!("{at}.mode"),
                    format!("{m}: expected octal like 0660"),
                )
            })?,
            (Some(m), _) => {
                return Err(SpecError::new(
                    format!("{at}.mode"),
                    format!("{m}: only for unix sockets"),
                ))
            }
        };
        out.push(SocketDef {
            name: s.name,
            listen: s.listen,
            address,
            backlog,
            mode,
        });
    }
    Ok(out)
}

fn check_name(name: &str) -> Result<(), String> {
    let ok = |c: char| c.is_ascii_alphanumeric() || "_-.".contains(c);
    if name.is_empty() || name.len() > MAX_NAME_LEN || !name.chars().all(ok) {
        return Err(format!(
            "{name:?}: 1 to {MAX_NAME_LEN} of A-Z a-z 0-9 _ - . (LISTEN_FDNAMES)"
        ));
    }
    Ok(())
}

pub(crate) fn parse_address(s: &str) -> Result<Address, String> {
    let (scheme, rest) = s
        .split_once("://")
        .ok_or("expected tcp://IP:PORT, udp://IP:PORT or unix:///PATH")?;
    match scheme {
        "tcp" | "udp" => {
            let addr: SocketAddr = rest.parse().map_err(|_| {
                "expected an IP address and a port (like 127.0.0.1:8080 or [::1]:8080)"
            })?;
            if addr.port() == 0 {
                return Err("port 0: give the port to listen on".into());
            }
            Ok(if scheme == "tcp" {
                Address::Tcp(addr)
            } else {
                Address::Udp(addr)
            })
        }
        "unix" => {
            let p = PathBuf::from(rest);
            if !p.is_absolute() {
                return Err("a unix socket needs an absolute path".into());
            }
            let dir = p.parent().unwrap_or(Path::new("/"));
            if !dir.is_dir() {
                return Err(format!("{}: no such directory", dir.display()));
            }
            if p.file_name().is_none() {
                return Err("no file name".into());
            }
            Ok(Address::Unix(p))
        }
        other => Err(format!("{other}: unknown scheme (tcp, udp or unix)")),
    }
}

/// `fdStoreMax`: fds the service may keep with `FDSTORE=1` (0: off).
pub fn parse_fd_store(sup: &Map<String, Value>, prefix: &str) -> Result<u32, SpecError> {
    let Some(v) = sup.get("fdStoreMax") else {
        return Ok(0);
    };
    let path = format!("{prefix}fdStoreMax");
    let n: u32 = field(v, &path)?;
    if n > MAX_FD_STORE {
        return Err(SpecError::new(path, format!("{n}: at most {MAX_FD_STORE}")));
    }
    Ok(n)
}

/// `replicas`: how many sandboxes of the service run (1 to MAX_REPLICAS).
pub fn parse_replicas(sup: &Map<String, Value>, prefix: &str) -> Result<u32, SpecError> {
    let Some(v) = sup.get("replicas") else {
        return Ok(1);
    };
    let path = format!("{prefix}replicas");
    let n: i64 = field(v, &path)?;
    u32::try_from(n)
        .ok()
        .filter(|n| (1..=MAX_REPLICAS).contains(n))
        .ok_or_else(|| SpecError::new(path, format!("{n}: must be 1 to {MAX_REPLICAS}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sockets(v: Value) -> Result<Vec<SocketDef>, SpecError> {
        parse(
            json!({ "sockets": v }).as_object().unwrap(),
            "services.web.",
        )
    }

    #[test]
    fn addresses_parse() {
        let s = sockets(json!([
            {"name": "http", "listen": "tcp://127.0.0.1:8080", "backlog": 16},
            {"name": "v6", "listen": "tcp://[::1]:8080"},
            {"name": "dns", "listen": "udp://127.0.0.1:5353"},
            {"name": "admin", "listen": "unix:///tmp/admin.sock", "mode": "0660"},
        ]))
        .unwrap();
        assert_eq!(
            s[0].address,
            Address::Tcp("127.0.0.1:8080".parse().unwrap())
        );
        assert_eq!(s[0].backlog, 16);
        assert_eq!(s[1].backlog, DEFAULT_BACKLOG);
        assert_eq!(
            s[2].address,
            Address::Udp("127.0.0.1:5353".parse().unwrap())
        );
        assert_eq!(s[3].address, Address::Unix("/tmp/admin.sock".into()));
        assert_eq!(s[3].mode, 0o660);
    }

    #[test]
    fn bad_sockets_name_the_field_and_value() {
        let cases = [
            (json!([{"name": "a", "listen": "tcp://localhost:80"}]), "services.web.sockets[0].listen: tcp://localhost:80: expected an IP"),
            (json!([{"name": "a", "listen": "127.0.0.1:80"}]), "services.web.sockets[0].listen: 127.0.0.1:80: expected tcp://"),
            (json!([{"name": "a", "listen": "sctp://127.0.0.1:80"}]), "services.web.sockets[0].listen: sctp://127.0.0.1:80: sctp: unknown scheme"),
            (json!([{"name": "a", "listen": "tcp://127.0.0.1:0"}]), "services.web.sockets[0].listen: tcp://127.0.0.1:0: port 0"),
            (json!([{"name": "a", "listen": "tcp://127.0.0.1:99999"}]), "services.web.sockets[0].listen: tcp://127.0.0.1:99999: expected an IP"),
            (json!([{"name": "a", "listen": "unix:///no/such/dir/s.sock"}]), "services.web.sockets[0].listen: unix:///no/such/dir/s.sock: /no/such/dir: no such directory"),
            (json!([{"name": "a", "listen": "tcp://127.0.0.1:80"}, {"name": "a", "listen": "tcp://127.0.0.1:81"}]), "services.web.sockets[1].name: a: duplicate socket name"),
            (json!([{"name": "a", "listen": "tcp://127.0.0.1:80"}, {"name": "b", "listen": "tcp://127.0.0.1:80"}]), "services.web.sockets[1].listen: tcp://127.0.0.1:80: listed twice"),
            (json!([{"name": "a:b", "listen": "tcp://127.0.0.1:80"}]), "services.web.sockets[0].name: \"a:b\""),
            (json!([{"name": "a", "listen": "tcp://127.0.0.1:80", "backlog": 0}]), "services.web.sockets[0].backlog: 0: must be 1 or more"),
            (json!([{"name": "a", "listen": "tcp://127.0.0.1:80", "mode": "0660"}]), "services.web.sockets[0].mode: 0660: only for unix sockets"),
            (json!([{"name": "a", "listen": "unix:///tmp/x.sock", "mode": "rw"}]), "services.web.sockets[0].mode: rw: expected octal"),
            (json!([{"name": "a", "listen": "tcp://127.0.0.1:80", "port": 1}]), "services.web.sockets[0].port: unknown field `port`"),
        ];
        for (v, want) in cases {
            let e = sockets(v.clone()).unwrap_err().to_string();
            assert!(e.starts_with(want), "{v}\n got {e}\nwant {want}");
        }
    }

    #[test]
    fn replicas_and_fd_store_bounds() {
        let p = |v: Value| parse_replicas(v.as_object().unwrap(), "");
        assert_eq!(p(json!({})).unwrap(), 1);
        assert_eq!(p(json!({"replicas": 4})).unwrap(), 4);
        assert_eq!(
            p(json!({"replicas": 0})).unwrap_err().to_string(),
            "replicas: 0: must be 1 to 1000"
        );
        assert!(p(json!({"replicas": -1})).is_err());
        let f = |v: Value| parse_fd_store(v.as_object().unwrap(), "");
        assert_eq!(f(json!({})).unwrap(), 0);
        assert_eq!(f(json!({"fdStoreMax": 8})).unwrap(), 8);
        assert!(f(json!({"fdStoreMax": 5000})).is_err());
    }
}
