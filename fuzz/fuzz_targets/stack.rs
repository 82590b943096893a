//! A stack file (`isola up`, `check`, reload): never a panic, every
//! refusal one line.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Err(e) = isola_supervisor::stack::parse(&text, Path::new("/")) {
        assert!(!e.to_string().contains('\n'), "{e}");
    }
});
