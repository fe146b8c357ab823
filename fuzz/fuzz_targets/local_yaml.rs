//! `LOCAL_XDS_PATH` files through the local YAML loader: `nodetunnel::fuzzing::local_yaml`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = nodetunnel::fuzzing::local_yaml(data);
});
