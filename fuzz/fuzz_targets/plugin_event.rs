//! The plugin → agent event JSON (`POST /cmdadd`): `nodetunnel_cni::fuzzing::plugin_event`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = nodetunnel_cni::fuzzing::plugin_event(data);
});
