//! The loop's plumbing and the code where the parts meet: the
//! [`reactor`] (the epoll set and its tokens), the [`context`] a part
//! gets (reactor, time, outbox), the loop's own [`wakeups`] (signals, the
//! timer), [`orchestrate`] (effects and the sequences over several parts),
//! [`requests`] and [`status`] (control requests answered), and what
//! `isola up` tells of the whole stack ([`reports`]: [`progress`],
//! [`under_systemd`]).

mod autoscaling;
mod cni_starts;
pub(crate) mod context;
mod keeping;
pub(crate) mod loading;
pub(crate) mod loop_lag;
pub(crate) mod metrics;
pub(crate) mod orchestrate;
mod progress;
pub(crate) mod reactor;
mod reload;
pub(crate) mod reports;
mod requests;
pub(crate) mod resume;
pub(crate) mod rules;
mod status;
pub(crate) mod under_systemd;
pub(crate) mod upgrading;
pub(crate) mod wakeups;
