//! A service's output pipes across an upgrade: the read ends cross the
//! exec unread (what the service writes meanwhile waits in the pipe), with
//! the part of a line read before it.

use std::os::fd::AsFd;

use isola_runtime::handover::{Incoming, Outgoing};
use nix::errno::Errno;

use super::{Key, Outputs, Pipe, Stream};
use crate::logs::LineBuffer;
use crate::shell::context::{Ctx, ServiceIx};
use crate::shell::reactor::Interest;
use crate::upgrade::snapshot::{OutputRecord, PipeRecord};

impl Outputs {
    /// Service `i`'s pipes, kept across the exec.
    pub(crate) fn export(&self, i: ServiceIx, out: &mut Outgoing) -> Result<OutputRecord, Errno> {
        let Some(o) = self.services.get(i) else {
            return Ok(OutputRecord::default());
        };
        let mut keep = |p: &Option<Pipe>| -> Result<Option<PipeRecord>, Errno> {
            let Some(p) = p else { return Ok(None) };
            Ok(Some(PipeRecord {
                fd: out.keep(p.fd.as_fd())?,
                pending: p.buf.pending().to_vec(),
            }))
        };
        Ok(OutputRecord {
            pid: o.pid,
            stdout: keep(&o.pipes[Stream::Stdout.index()])?,
            stderr: keep(&o.pipes[Stream::Stderr.index()])?,
        })
    }

    /// Service `i`'s pipes as an older binary left them, read from here on.
    pub(crate) fn adopt(
        &mut self,
        ctx: &mut Ctx<'_>,
        i: ServiceIx,
        rec: &OutputRecord,
        fds: &mut Incoming,
    ) -> Result<(), String> {
        let Some(o) = self.services.get_mut(i) else {
            return Err(format!("service {i}: no output"));
        };
        o.pid = rec.pid;
        for (stream, p) in [(Stream::Stdout, &rec.stdout), (Stream::Stderr, &rec.stderr)] {
            let Some(p) = p else { continue };
            let fd = fds.take(p.fd).ok_or_else(|| {
                format!(
                    "{}: {} pipe: fd {} not handed over",
                    o.name,
                    stream.as_str(),
                    p.fd
                )
            })?;
            ctx.reactor
                .add(fd.as_fd(), Key::Pipe(i, stream).token(), Interest::Read)
                .map_err(|e| format!("{}: epoll: {e}", o.name))?;
            o.pipes[stream.index()] = Some(Pipe {
                fd,
                buf: LineBuffer::resumed(p.pending.clone()),
            });
        }
        Ok(())
    }

    /// Before the exec: our own lines out as far as they go now.
    pub(crate) fn flush_own(&mut self) {
        for s in &mut self.sinks {
            s.try_flush();
        }
    }
}
