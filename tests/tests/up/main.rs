//! `isola up` and its client commands: a supervised stack in the VM.
//!
//! One test binary (`up`), a module per concern; the shared helpers (`Up`,
//! `svc`, `history`) are in `isola_tests::up`.

mod control;
mod cycles;
mod detach;
mod events;
mod logs;
mod oom;
mod restarts;
mod stacks;
mod stop;
mod supervisor;
mod systemd;
mod terminal;
