//! The keeper: a tiny process per stack that outlives its supervisor.
//!
//! `isola up` forks before it does anything else: the original process
//! (the pid a shell or systemd knows) becomes the keeper, the child the
//! supervisor. The supervisor clones every init as the keeper's child
//! (CLONE_PARENT, its spawner too), so an init's PDEATHSIG follows the
//! keeper, not the supervisor, and a supervisor that dies — `kill -9`, an
//! OOM kill, a panic — takes no service with it. The keeper holds:
//!
//! - every init's exit, unreaped until the supervisor acknowledged it (so
//!   a pid is never reused while the supervisor may still signal it, and
//!   an exit it never heard of is told to the next one, exactly once);
//! - a copy of every fd the supervisor's last snapshot names (output
//!   pipes, held and notify sockets, fd stores, the control socket…), so
//!   no pipe loses its reader and no socket closes;
//! - that snapshot, a sealed memfd in the handover format an upgrade uses.
//!
//! When its supervisor dies without saying goodbye, the keeper starts a
//! new one exactly as an upgrade does: the fds at the numbers the snapshot
//! names them by, the memfd in `ISOLA_HANDOVER`, the binary the dead one
//! ran. The supervisor takes snapshots at rest, when something changed,
//! no more often than its cost allows ([`link`]).
//!
//! Protocol (SOCK_SEQPACKET, one message per datagram, integers little
//! endian): supervisor → keeper: `H` n fd numbers with the n fds
//! (SCM_RIGHTS, ≤ 16): copies for the next snapshot; `S` with the
//! snapshot's memfd: hold what it names (sent now, or held already at
//! that number), let go of the rest; `F`: let go of everything, snapshot
//! included (answered `f`: the supervisor is about to close or rebind
//! what the keeper holds); `E` with an O_PATH fd of its binary; `A` pid:
//! that exit is taken, reap it; `N` text: for systemd's `NOTIFY_SOCKET`
//! (the keeper is the unit's main pid); `B` code: the stack ended, exit
//! with it. keeper → supervisor: `X` pid, code, how (0 exited with code,
//! 1 killed by signal code); `f`.

mod handing;
pub(crate) mod link;
pub(crate) mod process;
mod recovery;

pub use link::Channel;
pub use process::{keep, signals};

/// The environment variable naming the keeper's socket in a supervisor
/// it (or an upgrade) exec'd.
pub const KEEPER_ENV: &str = "ISOLA_KEEPER";
/// Set (to 1) in a supervisor the keeper started after one died.
pub const RECOVERED_ENV: &str = "ISOLA_RECOVERED";

/// Most fds in one `H` message (what one receive takes).
const FDS_PER_MESSAGE: usize = 16;

fn le_bytes(numbers: &[i32]) -> Vec<u8> {
    numbers.iter().flat_map(|n| n.to_le_bytes()).collect()
}

fn le_i32(b: &[u8]) -> Option<i32> {
    Some(i32::from_le_bytes(b.get(..4)?.try_into().ok()?))
}

/// The i32s of a message's body.
fn numbers(body: &[u8]) -> impl Iterator<Item = i32> + '_ {
    body.chunks_exact(4).filter_map(le_i32)
}
