//! Enabling controllers from the mount down to a group's parent: each
//! directory on the way delegates what its children need.

use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use super::limits::CgroupFile;
use super::{io_err, CgroupError, CGROUP_MOUNT};

/// `root` and every directory between the mount and it, each delegating
/// `controllers` to its children.
pub(super) fn make_parents(
    root: &Path,
    controllers: &[String],
    files: &[CgroupFile],
) -> Result<(), CgroupError> {
    let mut dir = PathBuf::from(CGROUP_MOUNT);
    let rel = root
        .strip_prefix(CGROUP_MOUNT)
        .map_err(|_| CgroupError::BadRoot(root.to_owned()))?;
    enable_controllers(&dir, controllers, files)?;
    for comp in rel.components() {
        dir.push(comp);
        match fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io_err(&dir)(e)),
        }
        enable_controllers(&dir, controllers, files)?;
    }
    Ok(())
}

fn enable_controllers(
    dir: &Path,
    wanted: &[String],
    files: &[CgroupFile],
) -> Result<(), CgroupError> {
    let avail_path = dir.join("cgroup.controllers");
    let available = fs::read_to_string(&avail_path).map_err(io_err(&avail_path))?;
    let ctl_path = dir.join("cgroup.subtree_control");
    let enabled = fs::read_to_string(&ctl_path).map_err(io_err(&ctl_path))?;
    let mut add = String::new();
    let mut needed_add = String::new();
    for c in wanted {
        let is_available = available.split_whitespace().any(|a| a == c);
        if !is_available {
            // Base controllers are optional (only read for status); a
            // controller a limit needs is not.
            let needed = files.iter().any(|f| f.controller() == Some(c.as_str()));
            if needed {
                return Err(CgroupError::Controller {
                    controller: c.clone(),
                    path: dir.to_owned(),
                    available: available.trim().to_string(),
                });
            }
            continue;
        }
        if !enabled.split_whitespace().any(|e| e == c) {
            add.push_str(&format!("+{c} "));
            if files.iter().any(|f| f.controller() == Some(c.as_str())) {
                needed_add.push_str(&format!("+{c} "));
            }
        }
    }
    let wrote = match add.is_empty() {
        true => Ok(()),
        false => fs::write(&ctl_path, add.trim_end()),
    };
    match wrote {
        Ok(()) => return Ok(()),
        // Root's error, whatever the controller: as before.
        Err(source) if !refused_to_us(&source) => {
            return Err(CgroupError::Write {
                path: ctl_path,
                value: add,
                source,
            })
        }
        // A base controller an unprivileged caller may not enable (a
        // directory above the subtree delegated to it is not its to write)
        // is only missing from status; one a limit needs is an error.
        Err(_) if needed_add.is_empty() => return Ok(()),
        Err(_) => {}
    }
    fs::write(&ctl_path, needed_add.trim_end()).map_err(|source| {
        if refused_to_us(&source) {
            CgroupError::NotDelegated {
                controllers: needed_add.replace('+', "").trim().to_string(),
                path: ctl_path,
            }
        } else {
            CgroupError::Write {
                path: ctl_path,
                value: needed_add,
                source,
            }
        }
    })
}

/// A write an unprivileged caller is not allowed.
fn refused_to_us(e: &std::io::Error) -> bool {
    e.kind() == ErrorKind::PermissionDenied && crate::plan::rootless::unprivileged()
}
