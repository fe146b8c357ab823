//! Compiles the crate's `.proto` files without a system `protoc`: `protox` parses them
//! into a `FileDescriptorSet` (it bundles the `google/protobuf/*` includes), and
//! `tonic-prost-build` generates prost messages plus tonic clients and servers.

use std::path::{Path, PathBuf};

use prost::Message;

const PROTO_ROOT: &str = "proto";

const PROTOS: &[&str] = &[
    "istio/workload.proto",
    "istio/authorization.proto",
    "istio/ca.proto",
    "istio/zds.proto",
    "google/rpc/status.proto",
    "envoy/type/v3/semantic_version.proto",
    "envoy/config/core/v3/base.proto",
    "envoy/service/discovery/v3/discovery.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed={PROTO_ROOT}");
    println!("cargo:rerun-if-changed=build.rs");

    let root = Path::new(PROTO_ROOT);
    let files: Vec<PathBuf> = PROTOS.iter().map(|p| root.join(p)).collect();
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
    }

    let fds = protox::compile(&files, [root])?;

    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    // The full set (our files plus the google/protobuf imports), for reflection tools.
    std::fs::write(out_dir.join("file_descriptor_set.bin"), fds.encode_to_vec())?;

    // Well-known types (google.protobuf.*) map to `prost-types` (prost-build's default
    // extern path); their descriptors stay in the set because code generation needs them,
    // and prost-build emits no code for those extern packages.
    let mut config = tonic_prost_build::Config::new();
    config.enable_type_names();
    // `prost::Name::type_url()` then yields e.g. type.googleapis.com/istio.workload.Address,
    // the form xDS uses in `Any` and `type_url`.
    config.type_name_domain(["."], "type.googleapis.com");

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .build_transport(true)
        .emit_rerun_if_changed(false)
        .compile_fds_with_config(fds, config)?;

    Ok(())
}
