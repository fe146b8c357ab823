//! ZDS, the protocol between a CNI node agent and the node tunnel (package
//! `istio.workload.zds`), both ends of it, so the tunnel and the CNI agent share one
//! implementation without the CNI side pulling in the data plane.
//!
//! - `seqpacket` (private): the `SOCK_SEQPACKET` + `SCM_RIGHTS` transport.
//! - [`client`]: the tunnel side (connect, hello, typed and validated requests, acks, backoff).
//! - [`server`]: the agent side of one connection (listen, accept, request → ack).
//! - [`agent`]: a node agent's ZDS half: holds the enrolled pods, sends each newly connected
//!   tunnel the snapshot and then every add and del.

#![deny(unsafe_code)]

pub mod agent;
pub mod client;
#[doc(hidden)]
pub mod fuzzing;
mod seqpacket;
pub mod server;

/// Who a pod is, as the agent describes it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WorkloadInfo {
    pub name: String,
    pub namespace: String,
    pub service_account: String,
}
