//! Protobuf and gRPC types for nodetunnel.
//!
//! The `.proto` files under `proto/` are nodetunnel's own, written to be wire compatible with
//! Istio's public APIs (workload discovery, L4 authorization, ZDS, the Istio CA) and with
//! Envoy's discovery (xDS) transport. `build.rs` compiles them with `protox` (no system
//! `protoc`) and generates prost messages plus tonic clients and servers. Well-known types
//! (`google.protobuf.*`) come from [`prost_types`].
//!
//! Every message implements [`prost::Name`], so `Name::type_url()` gives the
//! `type.googleapis.com/<package>.<Message>` form used by xDS.

/// Istio packages.
pub mod istio {
    /// `istio.workload`: workload discovery resources (`Address`, `Workload`, `Service`, ...).
    #[allow(clippy::all, clippy::pedantic, missing_docs)]
    pub mod workload {
        include!(concat!(env!("OUT_DIR"), "/istio.workload.rs"));
    }

    /// `istio.security`: L4 authorization policies delivered over xDS.
    #[allow(clippy::all, clippy::pedantic, missing_docs)]
    pub mod security {
        include!(concat!(env!("OUT_DIR"), "/istio.security.rs"));
    }

    /// `istio.v1.auth`: the Istio CA (`IstioCertificateService/CreateCertificate`).
    #[allow(clippy::all, clippy::pedantic, missing_docs)]
    pub mod auth {
        include!(concat!(env!("OUT_DIR"), "/istio.v1.auth.rs"));
    }

    /// `istio.workload.zds`: the node agent to node tunnel protocol.
    #[allow(clippy::all, clippy::pedantic, missing_docs)]
    pub mod zds {
        include!(concat!(env!("OUT_DIR"), "/istio.workload.zds.rs"));
    }
}

/// Envoy packages (module nesting mirrors the proto packages, which the generated code
/// relies on for cross-package references).
pub mod envoy {
    /// `envoy.service.*`
    pub mod service {
        /// `envoy.service.discovery.*`
        pub mod discovery {
            /// `envoy.service.discovery.v3`: xDS requests/responses and the ADS service.
            #[allow(clippy::all, clippy::pedantic, missing_docs)]
            pub mod v3 {
                include!(concat!(env!("OUT_DIR"), "/envoy.service.discovery.v3.rs"));
            }
        }
    }

    /// `envoy.config.*`
    pub mod config {
        /// `envoy.config.core.*`
        pub mod core {
            /// `envoy.config.core.v3`: `Node` and the few types it and discovery need.
            #[allow(clippy::all, clippy::pedantic, missing_docs)]
            pub mod v3 {
                include!(concat!(env!("OUT_DIR"), "/envoy.config.core.v3.rs"));
            }
        }
    }

    /// `envoy.type.*`
    pub mod r#type {
        /// `envoy.type.v3`: `SemanticVersion`.
        #[allow(clippy::all, clippy::pedantic, missing_docs)]
        pub mod v3 {
            include!(concat!(env!("OUT_DIR"), "/envoy.r#type.v3.rs"));
        }
    }
}

/// Google API packages.
pub mod google {
    /// `google.rpc`: `Status`.
    #[allow(clippy::all, clippy::pedantic, missing_docs)]
    pub mod rpc {
        include!(concat!(env!("OUT_DIR"), "/google.rpc.rs"));
    }
}

/// xDS type URL of `istio.workload.Address` resources.
pub const WORKLOAD_ADDRESS_TYPE_URL: &str = "type.googleapis.com/istio.workload.Address";

/// xDS type URL of `istio.security.Authorization` resources.
pub const AUTHORIZATION_TYPE_URL: &str = "type.googleapis.com/istio.security.Authorization";

/// Encoded `google.protobuf.FileDescriptorSet` of every `.proto` file in this crate, including
/// the `google/protobuf/*` files they import.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/file_descriptor_set.bin"));

#[cfg(test)]
mod tests;
