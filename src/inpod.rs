//! In-pod mode: a node agent hands the tunnel each pod's network namespace over ZDS, and the
//! tunnel runs a proxy inside it.
//!
//! - [`zds`]: the tunnel side of the protocol (connect, hello, typed and validated requests,
//!   acks, reconnect backoff).
//! - [`snapshot`]: which pods to run as requests arrive (snapshot, drain, replace), no I/O.
//! - [`zds_server`]: the agent side, for tests and tools.
//! - `seqpacket`: the `SOCK_SEQPACKET` + `SCM_RIGHTS` transport; `codec`: the protobuf wire
//!   format of the ZDS messages.
//!
//! Wiring into the daemon comes later.

#![deny(unsafe_code)]

mod seqpacket;
pub mod snapshot;
pub mod zds;
pub mod zds_server;
