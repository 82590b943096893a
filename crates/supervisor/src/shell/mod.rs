//! The loop's plumbing and the code where the parts meet: the
//! [`reactor`] (the epoll set and its tokens), the [`context`] a part
//! gets (reactor, time, outbox), the loop's own [`wakeups`] (signals, the
//! timer), [`orchestrate`] (effects and the sequences over several parts),
//! [`requests`] and [`status`] (control requests answered), and what
//! `isola up` shows of the whole stack ([`progress`], [`under_systemd`]).

pub(crate) mod context;
pub(crate) mod orchestrate;
pub(crate) mod progress;
pub(crate) mod reactor;
mod requests;
mod status;
pub(crate) mod under_systemd;
pub(crate) mod wakeups;
