//! In-pod mode: a node agent hands the tunnel each pod's network namespace over ZDS, and the
//! tunnel runs a proxy inside it.
//!
//! - [`zds`]: the tunnel side of the protocol (connect, hello, typed and validated requests,
//!   acks, reconnect backoff); [`zds_server`]: the agent side of one connection, for tests that
//!   play the agent. Both live in the `nodetunnel-zds` crate, shared with `cni-plugin/` (whose
//!   node agent, like the testbed's `nodetunnel-zds-agent` tool, runs its snapshotting agent).
//! - [`snapshot`]: which pods to run as requests arrive (snapshot, drain, replace), no I/O.
//! - [`pod`]: one pod's proxy, inside its namespace; [`manager`]: the loop tying ZDS requests to
//!   pod proxies and readiness; [`handover`]: the kernel setting that lets a replacement
//!   tunnel take over a pod's listeners without a reset connection.

#![deny(unsafe_code)]

pub mod handover;
pub mod manager;
pub mod pod;
pub mod snapshot;
use nodetunnel_zds::client as zds;
