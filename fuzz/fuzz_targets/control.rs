//! A line on the control socket (malformed, partial, oversized, binary):
//! never a panic, every refusal one line.
#![no_main]

use isola_supervisor::control::{short_error, Request};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(e) = serde_json::from_slice::<Request>(data) {
        assert!(!short_error(&e).contains('\n'));
    }
});
