//! `nodetunnel-control`: a small standalone control plane serving Istio's delta xDS and CA APIs
//! from a YAML mesh description (the `LOCAL_XDS_PATH` shape), so a mesh runs without istiod.
//!
//! SKELETON: `auth` and `ca_service` belong to helper-ca; `mesh`, `watch`, `xds_server` and
//! `run` to helper-control.

pub mod auth;
pub mod ca_service;
pub mod mesh;
pub mod watch;
pub mod xds_server;
