//! A service spec, as `isola run`/`check` read it and as an OCI bundle's
//! config.json is read by `isola create`: never a panic, every refusal one
//! line.
#![no_main]

use isola_runtime::plan::{Dialect, Plan};
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match isola_runtime::spec::parse_str(text, Path::new("/")) {
        Ok(spec) => {
            for d in [Dialect::Isola, Dialect::Oci] {
                if let Err(e) = Plan::read(&spec, d) {
                    assert!(!e.to_string().contains('\n'), "{e}");
                }
            }
        }
        Err(e) => assert!(!e.to_string().contains('\n'), "{e}"),
    }
});
