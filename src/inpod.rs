//! In-pod mode: a node agent hands the tunnel each pod's network namespace over ZDS, and the
//! tunnel runs a proxy inside it.
//!
//! - [`zds`]: the tunnel side of the protocol (connect, hello, typed and validated requests,
//!   acks, reconnect backoff).
//! - [`snapshot`]: which pods to run as requests arrive (snapshot, drain, replace), no I/O.
//! - [`zds_server`]: the agent side, for tests and tools; [`agent`]: a small node agent built
//!   on it (`nodetunnel zds-agent`) that hands named namespaces to a tunnel.
//! - `seqpacket`: the `SOCK_SEQPACKET` + `SCM_RIGHTS` transport; `codec`: the protobuf wire
//!   format of the ZDS messages.
//! - [`pod`]: one pod's proxy, inside its namespace; [`manager`]: the loop tying ZDS requests to
//!   pod proxies and readiness.

#![deny(unsafe_code)]

pub mod agent;
pub mod manager;
pub mod pod;
mod seqpacket;
pub mod snapshot;
pub mod zds;
pub mod zds_server;
