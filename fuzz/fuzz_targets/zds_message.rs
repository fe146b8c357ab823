//! ZDS datagrams (the agent → tunnel requests with their descriptors and control buffer, and
//! the tunnel → agent hello and acks): `nodetunnel_zds::fuzzing::zds_datagram`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = nodetunnel_zds::fuzzing::zds_datagram(data);
});
