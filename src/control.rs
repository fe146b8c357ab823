//! `nodetunnel-control`: a small standalone control plane serving Istio's delta xDS and CA APIs
//! from a YAML mesh description (the `LOCAL_XDS_PATH` shape), so a mesh runs without istiod.

pub mod auth;
pub mod ca_service;
pub mod connections;
pub mod mesh;
pub mod push;
pub mod watch;
pub mod xds_server;
