//! Networking of stack networks: links, addresses and routes set up from
//! inside the process, over rtnetlink ([`rtnl`]), without running `ip`.
//!
//! Every [`Rtnl`] works in the network namespace of the thread that opened
//! it, so a caller reaches another namespace by opening one on a thread
//! that `setns`'d there (or by putting a veth's peer there at creation).

pub mod attach;
pub mod rtnl;

pub use attach::{NetInterface, Networking, V6};
pub use rtnl::Rtnl;

/// Whether the kernel takes `name` as an interface name as it is
/// (`dev_valid_name`): 1 to 15 bytes (IFNAMSIZ less the NUL), not `.` or
/// `..`, no `/`, `:` or whitespace. A NUL would cut the name short in the
/// request, and a `%` makes the kernel pick a name from a template
/// (`br%d` becomes `br0`), after which the link is not found by the name
/// asked for; both are refused too.
#[must_use]
pub fn valid_ifname(name: &str) -> bool {
    (1..=15).contains(&name.len())
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| matches!(c, '/' | ':' | '%' | '\0') || c.is_whitespace())
}
