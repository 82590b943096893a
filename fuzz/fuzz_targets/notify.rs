//! An sd_notify datagram (READY=1, STATUS=, WATCHDOG=1, FDSTORE=1, …):
//! never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    isola_supervisor::fuzzing::notify(&String::from_utf8_lossy(data));
});
