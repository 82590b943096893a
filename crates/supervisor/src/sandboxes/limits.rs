//! `isola update`: new limits written to a running sandbox's cgroup, each
//! file's old value read first and put back if the kernel refuses a later
//! one, so a refused update changes nothing.

use isola_runtime::cgroup::limits::CgroupFile;
use isola_runtime::cgroup::Cgroup;

use super::Sandboxes;
use crate::shell::context::ServiceIx;

impl Sandboxes {
    /// Write `files` to service `i`'s running sandbox, if it runs (one
    /// that does not gets them at its next start, from its plan).
    pub(crate) fn update_limits(&self, i: ServiceIx, files: &[CgroupFile]) -> Result<(), String> {
        match self.running(i).and_then(|(_, cg)| cg) {
            Some(path) => write_all(path, files),
            None => Ok(()),
        }
    }
}

/// Write `files` in order; on a refusal, put back the ones written.
fn write_all(path: &std::path::Path, files: &[CgroupFile]) -> Result<(), String> {
    let cg = Cgroup::open(path).map_err(|e| e.to_string())?;
    let mut done: Vec<(String, String)> = Vec::new();
    for f in files {
        let old = cg.read(&f.file).map_err(|e| e.to_string())?;
        if let Err(e) = cg.write(&f.file, &f.value) {
            for (file, value) in done.iter().rev() {
                let _ = cg.write(file, value);
            }
            return Err(e.to_string());
        }
        done.push((f.file.clone(), old.trim().to_string()));
    }
    Ok(())
}
