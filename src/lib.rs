//! nodetunnel: a per-node tunnel for Kubernetes ambient service mesh.
//!
//! Modules follow the data flow and depend one way:
//! `config` → `state` (workloads, services) → `identity` (certificates) → `tls` →
//! `hbone` (client, pool, server) → `proxy` (outbound, inbound, copy) → `app` (wiring).
//! `socket` holds the only syscall-level code; network namespace handles come from
//! `nodetunnel-base` (shared with the ZDS crate and the CNI agent).

pub mod admin;
pub mod app;
pub mod authz;
pub mod config;
pub mod drain;
pub mod grpc;
pub mod hbone;
pub mod identity;
pub mod inpod;
pub mod metrics;
pub mod proxy;
pub mod socket;
pub mod state;
pub mod tls;
pub mod xds;
