//! The new binary asked first: `BINARY handover-check up ARGS…` (our own
//! arguments) reads a copy of the snapshot on its stdin, runs the checks
//! its take-over would (`shell::resume::check_resume`) and says `isola
//! VERSION` if it can take over. A binary that is not isola (or an isola
//! without upgrades: an unknown command), exits at once, crashes, cannot
//! read this format or would refuse this stack fails here, before
//! anything changes.

use std::ffi::OsString;
use std::fs::File;
use std::os::fd::BorrowedFd;
use std::path::Path;
use std::process::{Command, Stdio};

use nix::sys::memfd::{memfd_create, MFdFlags};
use nix::unistd::Pid;

use super::snapshot::HANDOVER_ENV;

/// The subcommand the new binary is asked with.
pub(crate) const CHECK_COMMAND: &str = "handover-check";

/// Start the check: its pid and the memfd its stdout and stderr go to.
pub(super) fn spawn(
    binary: &Path,
    args: &[OsString],
    snapshot: BorrowedFd<'_>,
) -> Result<(Pid, File), String> {
    let output = memfd_create(c"isola-upgrade-check", MFdFlags::MFD_CLOEXEC)
        .map(File::from)
        .map_err(|e| format!("memfd: {e}"))?;
    let dup = |f: &File| f.try_clone().map_err(|e| format!("dup: {e}"));
    let stdin = snapshot
        .try_clone_to_owned()
        .map_err(|e| format!("dup: {e}"))?;
    let child = Command::new(binary)
        .arg(CHECK_COMMAND)
        .args(args.iter().skip(1))
        .stdin(Stdio::from(stdin))
        .stdout(Stdio::from(dup(&output)?))
        .stderr(Stdio::from(dup(&output)?))
        .env_remove(HANDOVER_ENV)
        .spawn()
        .map_err(|e| format!("{}: {e}", binary.display()))?;
    let pid = i32::try_from(child.id()).map_err(|_| "pid out of range".to_string())?;
    // Reaped by the supervisor's reaper (a `std::process::Child` dropped
    // neither waits nor kills).
    drop(child);
    Ok((Pid::from_raw(pid), output))
}

/// What the check's exit `code` and output say: the new version, or why
/// not.
pub(super) fn verdict(code: i32, said: &str) -> Result<String, String> {
    let first = said.lines().next().unwrap_or("").trim();
    let last = said
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim();
    match (code, first.strip_prefix("isola ")) {
        (0, Some(rest)) if !rest.trim().is_empty() => {
            Ok(rest.split_whitespace().next().unwrap_or(rest).to_string())
        }
        (0, _) if first.is_empty() => Err(format!("not isola (`{CHECK_COMMAND}` printed nothing)")),
        (0, _) => Err(format!("not isola (`{CHECK_COMMAND}` printed {first:?})")),
        (code, _) if last.is_empty() => Err(format!("cannot take over (exit {code})")),
        (code, _) => Err(format!("cannot take over (exit {code}): {last}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_check_is_judged_by_its_exit_and_first_line() {
        assert_eq!(
            verdict(0, "isola 1.2.3 (takes over 2)\n"),
            Ok("1.2.3".into())
        );
        assert!(verdict(0, "").unwrap_err().contains("printed nothing"));
        assert!(verdict(0, "hello\n").unwrap_err().contains("not isola"));
        let e = verdict(1, "isola: snapshot format 9\n").unwrap_err();
        assert!(e.contains("exit 1") && e.contains("format 9"), "{e}");
    }
}
