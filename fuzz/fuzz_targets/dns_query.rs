//! DNS queries into the proxy's handler (mesh answers, FORMERR/SERVFAIL) and upstream replies
//! fitted to the client's size: `nodetunnel::fuzzing::dns_query`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = nodetunnel::fuzzing::dns_query(data);
});
