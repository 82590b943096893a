//! `isola update NAME`: a service's limits changed live. The new values
//! are written to the running sandbox's cgroup — each file's old value read
//! first and put back if the kernel refuses a later one, so a refused
//! update changes nothing — and kept for the service's later starts until
//! the next reload of the stack file (which restarts it with the file's).

use isola_runtime::cgroup::limits::{self, CgroupFile};
use isola_runtime::cgroup::Cgroup;
use oci_spec::runtime::LinuxResources;

use crate::control::Response;
use crate::supervisor::Supervisor;

impl Supervisor {
    pub(crate) fn update_limits(
        &mut self,
        name: &str,
        resources: &serde_json::Value,
    ) -> Response<'static> {
        let res: LinuxResources = match serde_json::from_value(resources.clone()) {
            Ok(r) => r,
            Err(e) => return Response::err(format!("update: {name}: {e}")),
        };
        let files = match limits::translate(&res) {
            Ok(f) if f.is_empty() => {
                return Response::err(format!("update: {name}: no limit given"))
            }
            Ok(f) => f,
            Err(e) => return Response::err(format!("update: {name}: {e}")),
        };
        let targets = match self.core.find(name) {
            Some(i) => vec![i],
            None => self.core.group_members(name),
        };
        if targets.is_empty() {
            return Response::err(format!("update: {name:?}: no such service"));
        }
        if self.cfg.no_cgroup {
            return Response::err(format!(
                "update: {name}: the supervisor runs without cgroups (--no-cgroup)"
            ));
        }
        for &i in &targets {
            let cgroup = self
                .running(i)
                .and_then(|r| r.sandbox.cgroup())
                .map(|c| c.path().to_path_buf());
            if let Some(path) = cgroup {
                if let Err(e) = write_all(&path, &files) {
                    let who = self
                        .core
                        .service(i)
                        .map(|s| s.def.name.clone())
                        .unwrap_or_default();
                    return Response::err(format!("update: {who}: {e} (nothing changed)"));
                }
            }
            self.core.set_live_limits(i, &files);
        }
        Response::ok()
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
