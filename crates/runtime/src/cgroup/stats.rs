//! What `isola status` shows of a running sandbox's cgroup. The files stay
//! open for the sandbox's life: a status request over a thousand services
//! is then one pread per value, not a path walk, an open and a close.

use std::fs::File;
use std::os::unix::fs::FileExt;

use super::{flat_key, io_err, Cgroup, CgroupError};

#[derive(Debug)]
pub struct StatFiles {
    current: File,
    /// memory.peak is newer than the rest (Linux 5.19).
    peak: Option<File>,
    cpu: File,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub memory_current: Option<u64>,
    pub memory_peak: Option<u64>,
    pub cpu_usec: Option<u64>,
}

impl StatFiles {
    pub fn open(cg: &Cgroup) -> Result<StatFiles, CgroupError> {
        let open = |name: &str| {
            let p = cg.path().join(name);
            File::open(&p).map_err(io_err(&p))
        };
        Ok(StatFiles {
            current: open("memory.current")?,
            peak: open("memory.peak").ok(),
            cpu: open("cpu.stat")?,
        })
    }

    /// Values the kernel would not give are `None`.
    pub fn read(&self) -> Stats {
        let mut buf = [0u8; 1024];
        let mut number = |f: &File| {
            let text = fresh(f, &mut buf)?;
            text.trim().parse().ok()
        };
        let memory_current = number(&self.current);
        let memory_peak = self.peak.as_ref().and_then(&mut number);
        let cpu_usec = fresh(&self.cpu, &mut buf).and_then(|t| flat_key(t, "usage_usec"));
        Stats {
            memory_current,
            memory_peak,
            cpu_usec,
        }
    }
}

/// The file's current content: a cgroup file read from offset 0 is
/// generated anew. (usage_usec is cpu.stat's first line, so a short read
/// still holds it.)
fn fresh<'a>(f: &File, buf: &'a mut [u8]) -> Option<&'a str> {
    let n = f.read_at(buf, 0).ok()?;
    std::str::from_utf8(&buf[..n]).ok()
}
