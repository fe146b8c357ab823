//! Test bed for nodetunnel: real network namespaces, real iptables capture, real daemon
//! processes.
//!
//! ```text
//! use nodetunnel_testbed::{addr, Capture, Topology, MeshConfig, Ca, Mesh, tunnel_env, env_refs};
//!
//! if !nodetunnel_testbed::namespaces_available("my_test") { return; }
//! let topo = Topology::two_node("my_test", Capture::ALL)?;         // n1 ⇄ n2, pods as IPs
//! MeshConfig::standard(8080).write(&topo.path("mesh.yaml"))?;
//! nodetunnel_testbed::generate_ca(bin, &topo.path("ca"))?;
//! let env = tunnel_env("n1", Mesh::File(&topo.path("mesh.yaml")), Ca::Dir(&topo.path("ca")));
//! let t1 = topo.start_tunnel("n1", bin, &env_refs(&env))?;          // waits for /healthz/ready
//! let server = Server::start(topo.ns("n2"), (addr::SERVER, 8080).into(), echo_handler)?;
//! let mut s = topo.ns("n1").run(|| connect_from(addr::CLIENT, (addr::SERVER, 8080).into()))?;
//! assert_eventually!(topo.ns("n2").established_on_local_port(15008).unwrap() == 1);
//! ```
//!
//! Everything is removed on drop (also during a panic); namespaces left by killed runs are
//! swept when the next topology is built. The harness does not link the daemon's crate: it
//! only drives the binary.

#![forbid(unsafe_code)]

pub mod cmd;
pub mod cni;
pub mod cni_agent;
pub mod config;
pub mod control;
pub mod dns;
mod error;
pub mod eventually;
pub mod fuzz_corpus;
pub mod inpod;
pub mod kube_api;
pub mod manifests;
pub mod netns;
mod privilege;
pub mod process;
pub mod procstat;
pub mod prom;
pub mod raw_hbone;
pub mod resolver;
pub mod sandbox;
pub mod server_pki;
mod signals;
pub mod topology;
pub mod traffic;
pub mod tunnel;
pub mod waypoint;

pub use config::{
    env_refs, generate_ca, set_env, shared_tunnel_env, spiffe_id, tunnel_env, Ca, LbHealthPolicy,
    LbMode, LbScope, LoadBalancer, Locality, Match, Mesh, MeshConfig, Policy, PolicyAction,
    PolicyScope, Protocol, Service, StringMatch, Waypoint, Workload,
};
pub use control::{node_token, ControlPlane, ControlPlaneSpec};
pub use dns::DnsServer;
pub use error::{Error, Result};
pub use inpod::{
    apply_inpod_rules, inpod_rules_v4, remove_inpod_rules, InpodMesh, InpodRules, MeshBins,
    PodNode, PodNs, PodTopology, PodTopologyBuilder, ZdsAgentProcess,
};
pub use netns::{cleanup_all, Netns};
pub use privilege::{namespaces_available, require_namespaces};
pub use process::EnvMode;
pub use procstat::ProcStats;
pub use raw_hbone::{ClientCert, RawHbone, RawHboneError, TestCa};
pub use server_pki::ServerPki;
pub use signals::cleanup_on_signals;
pub use topology::{addr, net, port, Capture, Node, NodeSpec, Pod, Topology};
pub use traffic::{connect_from, Server};
pub use tunnel::{Tunnel, TunnelLaunch};
pub use waypoint::{Hop, WaypointStandIn};

use std::path::PathBuf;

/// The testbed's ZDS agent tool (`src/bin/zds-agent.rs`), found with [`sibling_binary`].
pub const ZDS_AGENT_BIN: &str = "nodetunnel-zds-agent";

/// A workspace binary next to the current executable: cargo builds every binary into
/// `target/<profile>/`, beside the demo and bench, and test executables live one level down
/// in `target/<profile>/deps/`, so that directory's parent is looked in too. Tests of one
/// package find another package's binaries this way (`cargo test --workspace` builds them
/// all first).
pub fn sibling_binary(name: &str) -> Result<PathBuf> {
    let exe =
        std::env::current_exe().map_err(|e| Error::io("locating the current executable", e))?;
    let dir = exe
        .parent()
        .ok_or_else(|| Error::Invalid(format!("{} has no parent directory", exe.display())))?;
    let mut candidates = vec![dir.join(name)];
    if dir.file_name().is_some_and(|n| n == "deps") {
        candidates.extend(dir.parent().map(|d| d.join(name)));
    }
    candidates
        .into_iter()
        .find(|bin| bin.is_file())
        .ok_or_else(|| {
            Error::Invalid(format!(
                "{name} not found beside {} (build the workspace first: cargo build --workspace, \
             or --release for the release binaries)",
                exe.display()
            ))
        })
}
