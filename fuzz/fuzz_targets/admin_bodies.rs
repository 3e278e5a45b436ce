//! Fuzz target: see `keygate_server::hostile::admin_bodies` for the input shape and the invariants.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| keygate_server::hostile::admin_bodies(data));
