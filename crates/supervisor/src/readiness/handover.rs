//! A service's notify socket, notify pipe and fd store across an upgrade:
//! the fds cross the exec, so a `READY=1`, `WATCHDOG=1` or stored fd sent
//! meanwhile waits in the socket and is read once, by the new binary.

use std::os::fd::AsFd;

use isola_runtime::handover::{Incoming, Outgoing};
use nix::errno::Errno;

use super::notify_socket::NotifySocket;
use super::{Key, Readiness};
use crate::shell::context::{Ctx, ServiceIx};
use crate::shell::reactor::Interest;
use crate::upgrade::snapshot::{ReadyRecord, StoredRecord};

impl Readiness {
    /// Service `i`'s fds, kept across the exec.
    pub(crate) fn export(&self, i: ServiceIx, out: &mut Outgoing) -> Result<ReadyRecord, Errno> {
        let Some(r) = self.services.get(i) else {
            return Ok(ReadyRecord::default());
        };
        let mut store = Vec::new();
        for (name, fd) in r.store.entries() {
            store.push(StoredRecord {
                name: name.to_string(),
                fd: out.keep(fd)?,
            });
        }
        Ok(ReadyRecord {
            socket: r.socket.as_ref().map(|s| out.keep(s.fd())).transpose()?,
            pipe: r.pipe.as_ref().map(|p| out.keep(p.as_fd())).transpose()?,
            store,
        })
    }

    /// Service `i`'s fds as an older binary left them.
    pub(crate) fn adopt(
        &mut self,
        ctx: &mut Ctx<'_>,
        (i, name, store_max): (ServiceIx, &str, u32),
        rec: &ReadyRecord,
        fds: &mut Incoming,
    ) -> Result<(), String> {
        let mut take = |fd: i32| {
            fds.take(fd)
                .ok_or_else(|| format!("{name}: fd {fd} not handed over"))
        };
        let socket = rec.socket.map(&mut take).transpose()?;
        let pipe = rec.pipe.map(&mut take).transpose()?;
        let mut stored = Vec::with_capacity(rec.store.len());
        for s in &rec.store {
            stored.push((s.name.clone(), take(s.fd)?));
        }
        let control_socket = self.control_socket.clone();
        let r = self.entry(i);
        r.store.set_max(store_max);
        for (n, fd) in stored {
            r.store.restore(n, fd);
        }
        let epoll = |e: Errno| format!("{name}: epoll: {e}");
        if let Some(fd) = socket {
            let ns = NotifySocket::adopt(&control_socket, name, fd);
            ctx.reactor
                .add(ns.fd(), Key::Socket(i).token(), Interest::Read)
                .map_err(epoll)?;
            r.socket = Some(ns);
        }
        if let Some(fd) = pipe {
            ctx.reactor
                .add(fd.as_fd(), Key::Pipe(i).token(), Interest::Read)
                .map_err(epoll)?;
            r.pipe = Some(fd);
        }
        Ok(())
    }
}
