//! The payload's ids: supplementary groups, gid, uid — keeping the
//! capabilities across the change for the OCI order.

use nix::unistd::{Gid, Uid};

use super::{step, Step};
use crate::plan::Plan;

pub(super) fn switch_user(plan: &Plan, uid: u32, gid: u32) -> Result<(), Step> {
    let gids: Vec<Gid> = plan
        .additional_gids
        .iter()
        .map(|g| Gid::from_raw(*g))
        .collect();
    // The caller's supplementary groups go (as crun clears them). In a
    // user namespace whose gid_map was written without CAP_SETGID,
    // setgroups is denied: with nothing to set, nothing to do.
    match nix::unistd::setgroups(&gids) {
        Err(nix::errno::Errno::EPERM)
            if gids.is_empty() && (plan.new_user_ns() || setgroups_denied()) => {}
        r => r.map_err(step("user", "setgroups"))?,
    }
    nix::sys::prctl::set_keepcaps(true).map_err(step("user", "PR_SET_KEEPCAPS"))?;
    let g = Gid::from_raw(gid);
    nix::unistd::setresgid(g, g, g).map_err(step("user", format!("setgid {gid}")))?;
    let u = Uid::from_raw(uid);
    nix::unistd::setresuid(u, u, u).map_err(step("user", format!("setuid {uid}")))?;
    nix::sys::prctl::set_keepcaps(false).map_err(step("user", "PR_SET_KEEPCAPS"))?;
    Ok(())
}

/// Whether this user namespace was mapped with setgroups denied.
fn setgroups_denied() -> bool {
    std::fs::read_to_string("/proc/self/setgroups").is_ok_and(|s| s.trim() == "deny")
}
