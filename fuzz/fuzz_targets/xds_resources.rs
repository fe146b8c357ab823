//! Delta xDS responses (Address and Authorization resources) → store conversion and apply:
//! `nodetunnel::fuzzing::xds_response`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = nodetunnel::fuzzing::xds_response(data);
});
