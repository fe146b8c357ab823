//! A `nodetunnel-control` process inside a namespace: the control plane (delta xDS + CA) the
//! tunnels of a test mesh connect to, as they would to istiod.
//!
//! Tunnels authenticate with a bearer token bound to their node: `tokens.txt` lists one token
//! per node of the topology (`<token> node=<node> <label>`), and each node's tunnel reads its own
//! token file ([`ControlPlane::node_token_file`]), so it may obtain certificates for its own
//! node's workloads only. A test can hand a tunnel a token the control plane rejects, or
//! another node's token.

use std::fs;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::netns::Netns;
use crate::process::{fresh_log_path, NsProcess};
use crate::tunnel::http_get;

/// Istio's xDS + CA port on istiod.
pub const XDS_PORT: u16 = 15012;
/// The control plane's status port (`/ready`, `/debug/connections`, `/debug/mesh`), on
/// 127.0.0.1 inside its namespace.
pub const STATUS_PORT: u16 = 15014;
/// Prefix of the token each node's tunnel presents unless a test says otherwise (see
/// [`node_token`]).
pub const NODE_TOKEN: &str = "nodetunnel-test-token";

/// The token the control plane binds to `node`.
pub fn node_token(node: &str) -> String {
    format!("{NODE_TOKEN}-{node}")
}

/// How long [`ControlPlane::start`] waits for `/ready`.
const READY_DEADLINE: Duration = Duration::from_secs(20);

/// What the control plane serves and where.
#[derive(Clone, Debug)]
pub struct ControlPlaneSpec {
    /// The mesh YAML (LOCAL_XDS_PATH shape); edits are pushed to connected tunnels.
    pub mesh: PathBuf,
    /// Plug-in CA directory (`nodetunnel generate-ca`); its `root-cert.pem` is the tunnels'
    /// XDS_ROOT_CA and CA_ROOT_CA.
    pub ca_dir: PathBuf,
    /// The address tunnels dial (a node IP of the namespace it runs in).
    pub ip: Ipv4Addr,
    /// Extra command-line arguments (e.g. `--max-cert-ttl 10s`).
    pub args: Vec<String>,
    /// The nodes that get a token bound to them (the topology's nodes).
    pub nodes: Vec<String>,
}

impl ControlPlaneSpec {
    pub fn new(mesh: &Path, ca_dir: &Path, ip: Ipv4Addr, args: &[&str]) -> ControlPlaneSpec {
        ControlPlaneSpec {
            mesh: mesh.to_path_buf(),
            ca_dir: ca_dir.to_path_buf(),
            ip,
            args: args.iter().map(|a| a.to_string()).collect(),
            nodes: Vec::new(),
        }
    }

    /// Binds a token to each of `nodes` (their tunnels' [`ControlPlane::node_token_file`]).
    pub fn for_nodes<'a>(mut self, nodes: impl IntoIterator<Item = &'a str>) -> ControlPlaneSpec {
        self.nodes = nodes.into_iter().map(str::to_string).collect();
        self
    }
}

/// A running control plane; killed on drop.
pub struct ControlPlane {
    spec: ControlPlaneSpec,
    ns: Netns,
    bin: PathBuf,
    dir: PathBuf,
    process: Option<NsProcess>,
}

impl ControlPlane {
    /// Writes the accepted-token file (a token per node of the spec, bound to it) and each
    /// node's token file into `dir`, starts `bin` (`nodetunnel-control`) in `ns` and waits until
    /// `/ready` answers 200.
    pub fn start(ns: &Netns, bin: &Path, dir: &Path, spec: ControlPlaneSpec) -> Result<Self> {
        let mut accepted = String::from("# <token> node=<node> <label>\n");
        for node in &spec.nodes {
            accepted.push_str(&format!(
                "{} node={node} tunnel on {node}\n",
                node_token(node)
            ));
            write_token(dir, &node_token_file_name(node), &node_token(node))?;
        }
        let tokens = dir.join("tokens.txt");
        fs::write(&tokens, accepted)
            .map_err(|e| Error::io(format!("writing {}", tokens.display()), e))?;
        let mut cp = ControlPlane {
            spec,
            ns: ns.clone(),
            bin: bin.to_path_buf(),
            dir: dir.to_path_buf(),
            process: None,
        };
        cp.launch()?;
        Ok(cp)
    }

    fn launch(&mut self) -> Result<()> {
        let s = |p: &Path| p.to_string_lossy().into_owned();
        let mut args = vec![
            "--mesh".to_string(),
            s(&self.spec.mesh),
            "--listen".into(),
            self.addr().to_string(),
            "--ca-dir".into(),
            s(&self.spec.ca_dir),
            "--token-file".into(),
            s(&self.dir.join("tokens.txt")),
            "--tls-san".into(),
            self.spec.ip.to_string(),
            "--status-addr".into(),
            format!("127.0.0.1:{STATUS_PORT}"),
        ];
        args.extend(self.spec.args.iter().cloned());
        let log = fresh_log_path(&self.dir, "control-plane");
        let env = [("RUST_LOG", "info"), ("NO_COLOR", "1")];
        let process = NsProcess::spawn("control plane", &self.ns, &self.bin, &args, &env, &log)?;
        self.process = Some(process);
        self.wait_ready()
    }

    fn wait_ready(&mut self) -> Result<()> {
        let end = Instant::now() + READY_DEADLINE;
        loop {
            let process = self.process.as_mut().expect("launched");
            if let Some(status) = process.try_wait()? {
                return Err(Error::Invalid(format!(
                    "control plane exited with {status} before it was ready:\n{}",
                    process.default_tail()
                )));
            }
            match self.status("/ready") {
                Ok(_) => return Ok(()),
                Err(e) if Instant::now() >= end => {
                    return Err(Error::Invalid(format!(
                        "control plane not ready after {READY_DEADLINE:?} ({e}):\n{}",
                        self.log_tail(40)
                    )))
                }
                Err(_) => thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    /// SIGKILL: the control plane vanishes without a goodbye, as a crashed istiod would.
    pub fn kill(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.kill();
        }
    }

    /// Starts it again with the same spec and address (after [`kill`](Self::kill)).
    pub fn restart(&mut self) -> Result<()> {
        self.kill();
        self.launch()
    }

    /// `https://<ip>:15012`
    pub fn url(&self) -> String {
        format!("https://{}", self.addr())
    }

    pub fn addr(&self) -> SocketAddr {
        (self.spec.ip, XDS_PORT).into()
    }

    /// The root tunnels trust for the control plane's TLS.
    pub fn root_cert(&self) -> PathBuf {
        self.spec.ca_dir.join("root-cert.pem")
    }

    /// A token file holding `token` (for tunnels that should present something else).
    pub fn token_file(&self, name: &str, token: &str) -> Result<PathBuf> {
        write_token(&self.dir, name, token)
    }

    /// Replaces the accepted-token file with `bindings` (token, node), as Kubernetes updates a
    /// mounted secret (a new file renamed over the old); the control plane re-reads it on the
    /// next request.
    pub fn bind_tokens(&self, bindings: &[(&str, &str)]) -> Result<()> {
        let mut accepted = String::from("# <token> node=<node> <label>\n");
        for (token, node) in bindings {
            accepted.push_str(&format!("{token} node={node} rebound to {node}\n"));
        }
        let tokens = self.dir.join("tokens.txt");
        let staged = self.dir.join("tokens.txt.new");
        fs::write(&staged, accepted)
            .and_then(|()| fs::rename(&staged, &tokens))
            .map_err(|e| Error::io(format!("rewriting {}", tokens.display()), e))
    }

    /// The token file of `node`'s tunnel: the token bound to `node` ([`node_token`]). It
    /// exists for the nodes the spec names ([`ControlPlaneSpec::for_nodes`]); for another
    /// name the tunnel says the file is missing.
    pub fn node_token_file(&self, node: &str) -> PathBuf {
        self.dir.join(node_token_file_name(node))
    }

    /// `GET <path>` on the status port; the body of a 200, else an error naming the status.
    pub fn status(&self, path: &str) -> Result<String> {
        let owned = path.to_string();
        let (code, body) = self
            .ns
            .run(move || http_get(STATUS_PORT, &owned))
            .map_err(|e| Error::io(format!("GET {path} on the control plane"), e))?;
        if code == 200 {
            Ok(body)
        } else {
            Err(Error::Invalid(format!(
                "GET {path} answered {code}: {body}"
            )))
        }
    }

    /// Everything the control plane logged so far (all runs: the current log only).
    pub fn log(&self) -> String {
        self.process
            .as_ref()
            .map(NsProcess::log)
            .unwrap_or_default()
    }

    pub fn log_tail(&self, n: usize) -> String {
        self.process
            .as_ref()
            .map(|p| p.log_tail(n))
            .unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.process.as_ref().map_or(0, NsProcess::pid)
    }
}

fn node_token_file_name(node: &str) -> String {
    format!("node-token-{node}")
}

fn write_token(dir: &Path, name: &str, token: &str) -> Result<PathBuf> {
    let path = dir.join(name);
    fs::write(&path, format!("{token}\n"))
        .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
    Ok(path)
}
