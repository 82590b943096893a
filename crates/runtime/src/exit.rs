//! Exit codes, as runc, crun and the shell use them: one place, so `isola
//! run`, `isola up` and the init agree on what a number means.

/// Success.
pub const OK: u8 = 0;
/// A runtime failure that is not the user's input (a supervisor error).
pub const FAILURE: u8 = 1;
/// Bad input: a malformed spec, an unknown field, a conflicting option.
pub const USAGE: u8 = 2;
/// The sandbox could not be set up (the runtime's own failure).
pub const SETUP: u8 = 125;
/// The command exists but could not be executed.
pub const NOT_EXECUTABLE: u8 = 126;
/// The command was not found.
pub const NOT_FOUND: u8 = 127;
/// A process killed by signal N exits with `SIGNALED + N`.
pub const SIGNALED: i32 = 128;

/// An exit code as the sandbox's status is: `i32`, as `waitid` gives it.
pub const fn code(c: u8) -> i32 {
    c as i32
}
