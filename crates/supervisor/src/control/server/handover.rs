//! Control connections across an upgrade: the listener and every client
//! cross the exec with what they had half-sent and what was queued for
//! them, so a `logs -f` or `events` client goes on without a gap and the
//! client that asked for the upgrade is answered by the new binary.

use std::os::fd::{AsFd, RawFd};
use std::os::unix::net::UnixStream;

use isola_runtime::handover::{Incoming, Outgoing};
use nix::errno::Errno;

use super::{token, Conn, ControlServer, Follow};
use crate::lifecycle::ConnId;
use crate::shell::context::Ctx;
use crate::shell::reactor::{Interest, Reactor};
use crate::upgrade::snapshot::ConnRecord;

impl ControlServer {
    /// The listener and the connections, kept across the exec; `asked`
    /// is the one that asked for the upgrade.
    /// Only the listener: a keeper's snapshot hands no connection over
    /// (a client of a supervisor that died sees its connection close).
    pub(crate) fn export_listener(&self, out: &mut Outgoing) -> Result<RawFd, Errno> {
        out.keep(self.listener.as_fd())
    }

    pub(crate) fn export(
        &self,
        out: &mut Outgoing,
        asked: ConnId,
    ) -> Result<(RawFd, Vec<ConnRecord>), Errno> {
        let listener = out.keep(self.listener.as_fd())?;
        let mut ids: Vec<_> = self.conns.keys().copied().collect();
        ids.sort_unstable();
        let mut conns = Vec::with_capacity(ids.len());
        for id in ids {
            let Some(c) = self.conns.get(&id) else {
                continue;
            };
            conns.push(ConnRecord {
                fd: out.keep(c.stream.as_fd())?,
                inbuf: c.inbuf.clone(),
                out: c.out.clone(),
                answer: c.answer,
                follow: c.follow.as_ref().map(|f| match f {
                    Follow::Service(name) => name.clone(),
                    Follow::All => String::new(),
                }),
                events: c.events,
                asked: id == asked,
            });
        }
        Ok((listener, conns))
    }

    /// The clients an older binary served, each taken from the handover
    /// (one whose fd is missing is gone); the one that asked for the
    /// upgrade, to be answered.
    pub(crate) fn adopt(
        &mut self,
        reactor: &Reactor,
        records: &[ConnRecord],
        fds: &mut Incoming,
    ) -> Option<ConnId> {
        let mut asked = None;
        for r in records {
            let Some(fd) = fds.take(r.fd) else { continue };
            let stream = UnixStream::from(fd);
            let id = self.next_conn;
            self.next_conn += 1;
            if reactor
                .add(stream.as_fd(), token(id), Interest::Read)
                .is_err()
            {
                continue;
            }
            let follow = r.follow.as_ref().map(|n| match n.as_str() {
                "" => Follow::All,
                name => Follow::Service(name.to_string()),
            });
            let conn = Conn {
                stream,
                inbuf: r.inbuf.clone(),
                out: r.out.clone(),
                answer: r.answer,
                follow,
                events: r.events,
            };
            self.conns.insert(id, conn);
            if r.asked {
                asked = Some(id);
            }
        }
        asked
    }

    /// What was queued before the exec goes out as the clients take it.
    pub(crate) fn resume_writes(&mut self, ctx: &mut Ctx<'_>) {
        let ids: Vec<_> = self.conns.keys().copied().collect();
        for id in ids {
            self.flush(ctx, id);
        }
    }
}
