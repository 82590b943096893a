//! Between processes: fds over unix sockets ([`fdpass`]), socket
//! activation's fds and `LISTEN_*` variables ([`listen`]) and the
//! parent↔init protocol on the sync socket (`sync`).

pub mod fdpass;
pub mod handover;
pub mod listen;
pub mod sock_diag;
pub(crate) mod sync;
