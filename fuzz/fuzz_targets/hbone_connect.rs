//! HTTP/2 from an HBONE peer into the real HBONE server, each CONNECT's target parsed:
//! `nodetunnel::fuzzing::hbone_connect`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = nodetunnel::fuzzing::hbone_connect(data);
});
