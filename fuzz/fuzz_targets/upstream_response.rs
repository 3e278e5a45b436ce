//! Fuzz target: see `keygate_server::hostile::upstream_response` for the input shape and the
//! invariants.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| keygate_server::hostile::upstream_response(data));
