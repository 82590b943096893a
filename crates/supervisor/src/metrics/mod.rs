//! Metrics for Prometheus: `isola up --metrics ADDR` serves `GET /metrics`
//! from the loop ([`server`]), in the format the scraper asks for
//! ([`exposition`]); `isola metrics` gets the same text through the
//! control socket. What is measured is the shell's (`shell/metrics.rs`):
//! the core's counters and the sandboxes' cgroup files.

use std::net::SocketAddr;
use std::path::PathBuf;

pub(crate) mod exposition;
pub(crate) mod server;

/// Where `--metrics` listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetricsAddr {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl MetricsAddr {
    /// `tcp://HOST:PORT` or `unix:///path`; the error says what is wrong
    /// with the value.
    pub fn parse(s: &str) -> Result<MetricsAddr, String> {
        if let Some(a) = s.strip_prefix("tcp://") {
            return a.parse().map(MetricsAddr::Tcp).map_err(|_| {
                format!("{s}: not an address (tcp://127.0.0.1:9100, tcp://[::1]:9100)")
            });
        }
        if let Some(p) = s.strip_prefix("unix://") {
            if p.starts_with('/') {
                return Ok(MetricsAddr::Unix(PathBuf::from(p)));
            }
            return Err(format!(
                "{s}: the path must be absolute (unix:///run/isola/metrics.sock)"
            ));
        }
        Err(format!("{s}: must be tcp://HOST:PORT or unix:///PATH"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(
            MetricsAddr::parse("tcp://127.0.0.1:9100"),
            Ok(MetricsAddr::Tcp("127.0.0.1:9100".parse().unwrap()))
        );
        assert!(MetricsAddr::parse("tcp://[::1]:9100").is_ok());
        assert_eq!(
            MetricsAddr::parse("unix:///run/m.sock"),
            Ok(MetricsAddr::Unix("/run/m.sock".into()))
        );
        for bad in [
            "127.0.0.1:9100",
            "tcp://localhost",
            "unix://rel.sock",
            "http://x",
        ] {
            let e = MetricsAddr::parse(bad).unwrap_err();
            assert!(e.starts_with(bad), "{e}");
        }
    }
}
