//! The control socket: the protocol both sides speak ([`protocol`], also
//! the CLI's client) and the supervisor's end of it ([`server`]:
//! listener, connections, framing and bounds — transport only; what a
//! request does is the shell's `requests`).

mod protocol;
pub(crate) mod server;

pub use protocol::*;
