//! nodetunnel: a per-node tunnel for Kubernetes ambient service mesh.
//!
//! Modules follow the data flow and depend one way:
//! `config` → `state` (workloads, services) → `identity` (certificates) → `tls` →
//! `hbone` (client, pool, server) → `proxy` (outbound, inbound, copy) → `app` (wiring).
//! `socket` holds the only syscall-level code; network namespace handles come from
//! `nodetunnel-base` (shared with the ZDS crate and the CNI agent).

//!
//! The public surface is what the `nodetunnel` binary, the control plane crate and the
//! integration tests use: [`app::run`] with a [`config::Config`]; the mesh model in [`state`],
//! which the control plane encodes and the xDS client fills; [`identity`] (SPIFFE ids, the CA
//! the control plane serves, the CA client and certificate manager the tests drive); the
//! [`xds`] client and its resource conversions; and the gRPC endpoint type in [`grpc`].
//! Everything on the data path (`hbone`, `proxy`, `authz`, `tls`, `inpod`, `socket`, `drain`,
//! `admin`, `metrics`) is private, so the compiler reports what nothing uses.

mod admin;
pub mod app;
pub mod authz;
pub mod config;
mod dns;
mod drain;
#[doc(hidden)]
pub mod fuzzing;
pub mod grpc;
mod hbone;
pub mod identity;
mod inpod;
mod metrics;
mod proxy;
mod socket;
pub mod state;
mod tls;
pub mod xds;
