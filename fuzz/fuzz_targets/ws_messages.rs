//! Fuzz target: see `keygate_server::hostile::ws_messages` for the input shape and the invariants.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| keygate_server::hostile::ws_messages(data));
