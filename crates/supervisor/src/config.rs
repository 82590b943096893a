//! What `isola up` is started with: the supervisor's configuration.

use std::path::PathBuf;

use crate::logs::LogConfig;
use crate::spec::images::ImageContext;
use crate::supervisor::stack_name;

#[derive(Debug, Clone)]
pub struct Config {
    pub stack_path: PathBuf,
    pub socket: PathBuf,
    /// Parent of the stack's group: sandboxes live in `<cgroup_root>/<stack>/<service>`.
    pub cgroup_root: PathBuf,
    /// Why the stack runs without cgroups, when it does.
    pub no_cgroup: Option<NoCgroup>,
    pub logs: LogConfig,
    /// Print service output prefixed with the service name.
    pub echo: bool,
    /// Serve `GET /metrics` here (`--metrics`).
    pub metrics: Option<crate::metrics::MetricsAddr>,
    /// The image store image services' roots come from (`--store`).
    pub image_store: PathBuf,
    /// A user's stack with networks runs in a network namespace of its
    /// own, reached from the host only through the ports pasta forwards,
    /// fixed when `isola up` started: a held TCP or UDP socket a reload
    /// adds must be one of them. `None`: the host's network namespace.
    pub forwarded: Option<Forwarded>,
    /// The stack's keeper (`crate::keeper`), the parent of its inits,
    /// when `isola up` has one.
    pub keeper: Option<crate::keeper::Channel>,
}

/// The host addresses forwarded into a user's stack namespace.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Forwarded {
    pub tcp: Vec<std::net::SocketAddr>,
    pub udp: Vec<std::net::SocketAddr>,
}

/// Why a stack runs without cgroups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoCgroup {
    /// `--no-cgroup`.
    Asked,
    /// An unprivileged user with no cgroup subtree delegated: limits are
    /// refused with this line (what is missing, and how to get it).
    Undelegated(String),
}

impl Config {
    /// Where this stack's image services' roots are.
    pub fn images(&self) -> ImageContext {
        ImageContext::new(self.image_store.clone(), stack_name(&self.stack_path))
    }
}
