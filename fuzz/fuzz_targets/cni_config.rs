//! The CNI plugin's invocation: `CNI_*` variables, the stdin network config and its
//! `prevResult`: `nodetunnel_cni::fuzzing::cni_invocation`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = nodetunnel_cni::fuzzing::cni_invocation(data);
});
