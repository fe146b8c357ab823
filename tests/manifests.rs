//! The deployment manifests checked for what a schema cannot see (schemas: manifests/check.sh).
//! Every overlay is rendered with `kubectl kustomize` (the standalone one after its own
//! make-secrets.sh), and each container's environment, resolved as the kubelet would resolve
//! it (`nodetunnel_testbed::manifests::pod_env`), is handed to the binary's own loader through
//! `check-config` / `--check-config`, under `env -i`:
//! - every variable set is one the binary reads, and every value parses;
//! - the probes and the metrics port are the ports the binary says it serves;
//! - what ties the pieces together matches: the ZDS socket both sides use, the control plane's
//!   address and certificate names, the node-bound tokens.
//!
//! The RBAC rules are checked against the agent's real API calls in cni-plugin/tests/agent.rs.
//! Needs kubectl; without it each test prints "skipped" (and fails under CI=true).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use nodetunnel_testbed::manifests::pod_env::{materialize, Materialized, PodFacts};
use nodetunnel_testbed::manifests::{self, Rendered, OVERLAYS, STANDALONE_NODES};
use nodetunnel_testbed::sibling_binary;
use serde_json::Value;

const NAMESPACE: &str = "istio-system";

fn tunnel_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_nodetunnel"))
}

/// Other packages' binaries: `cargo test --workspace` (or `cargo build --workspace`) puts them
/// beside this test's.
fn agent_bin() -> PathBuf {
    sibling_binary("nodetunnel-cni-agent").expect("the nodetunnel-cni-agent binary")
}

fn control_bin() -> PathBuf {
    sibling_binary("nodetunnel-control").expect("the nodetunnel-control binary")
}

fn render(overlay: &str) -> Rendered {
    manifests::render(overlay, tunnel_bin()).unwrap_or_else(|e| panic!("{e}"))
}

/// The container's pod as the kubelet would start it on node-a.
fn pod(rendered: &Rendered, kind: &str, name: &str, container: &str) -> Materialized {
    let workload = rendered
        .object(kind, name)
        .unwrap_or_else(|e| panic!("{e}"));
    materialize(
        rendered,
        workload,
        container,
        &PodFacts::example(&format!("{name}-x7k2p")),
    )
    .unwrap_or_else(|e| panic!("overlays/{}: {e}", rendered.overlay))
}

/// Runs `cmd` (a `check-config`) and returns its JSON report; fails with its stderr.
fn report(what: &str, mut cmd: std::process::Command) -> Value {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: running: {e}"));
    assert!(
        out.status.success(),
        "{what}: the binary refuses the manifest's settings: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{what}: not a JSON report ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// `nodetunnel check-config` with the tunnel container's environment.
fn check_tunnel(what: &str, tunnel: &Materialized) -> Value {
    let mut cmd = std::process::Command::new(tunnel_bin());
    cmd.env_clear()
        .envs(tunnel.env.iter().cloned())
        .arg("check-config");
    report(what, cmd)
}

/// `report.variables.ignored`: variables set that the binary does not read.
fn ignored(report: &Value) -> Vec<String> {
    report["variables"]["ignored"]
        .as_array()
        .expect("variables.ignored in the report")
        .iter()
        .map(|v| v.as_str().unwrap_or_default().to_string())
        .collect()
}

/// The port of an `<ip>:<port>` the report names.
fn port_of(addr: &Value) -> u64 {
    let text = addr
        .as_str()
        .unwrap_or_else(|| panic!("{addr} is not an address"));
    text.rsplit_once(':')
        .and_then(|(_, port)| port.parse().ok())
        .unwrap_or_else(|| panic!("{text} has no port"))
}

fn container<'a>(workload: &'a Value, name: &str) -> &'a Value {
    workload["spec"]["template"]["spec"]["containers"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == name))
        .unwrap_or_else(|| panic!("no container {name}"))
}

fn container_port(container: &Value, name: &str) -> u64 {
    container["ports"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == name))
        .and_then(|p| p["containerPort"].as_u64())
        .unwrap_or_else(|| panic!("no container port {name}"))
}

/// A probe's HTTP port, which must be a number (a named port would hide a mismatch here).
fn probe_port(container: &Value, probe: &str) -> u64 {
    container[probe]["httpGet"]["port"]
        .as_u64()
        .unwrap_or_else(|| panic!("{probe}.httpGet.port is not a number: {}", container[probe]))
}

/// The hostPath behind the volume mounted at or above `path` in `workload`'s container.
fn host_path_of(pod: &Materialized, workload: &Value, path: &str) -> String {
    let volume = pod
        .mount_of(path)
        .unwrap_or_else(|| panic!("{path} is not under any volume mount"));
    workload["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .and_then(|vs| vs.iter().find(|v| v["name"] == volume))
        .and_then(|v| v["hostPath"]["path"].as_str())
        .unwrap_or_else(|| panic!("volume {volume} (for {path}) is not a hostPath"))
        .to_string()
}

#[test]
fn the_tunnels_env_loads_in_its_own_loader_and_its_probes_hit_the_ports_it_serves() {
    if !manifests::kubectl_available("tunnel_env") {
        return;
    }
    for overlay in OVERLAYS {
        let rendered = render(overlay);
        let what = format!("overlays/{overlay}: DaemonSet nodetunnel");
        let ds = rendered.object("DaemonSet", "nodetunnel").unwrap();
        let spec = container(ds, "nodetunnel");
        let tunnel = pod(&rendered, "DaemonSet", "nodetunnel", "nodetunnel");
        let got = check_tunnel(&what, &tunnel);
        // Its args are ztunnel's, which the binary accepts (`--help` parses them, then exits).
        // The image has no entrypoint: every container names its binary.
        assert_eq!(spec["command"], serde_json::json!(["nodetunnel"]), "{what}");
        assert_eq!(tunnel.args, ["proxy", "ztunnel"], "{what}");
        let help = tunnel.command(tunnel_bin()).arg("--help").output().unwrap();
        assert!(help.status.success(), "{what}: args refused: {help:?}");
        assert_eq!(
            ignored(&got),
            Vec::<String>::new(),
            "{what}: variables nothing reads"
        );

        // Probes and ports.
        assert_eq!(
            probe_port(spec, "readinessProbe"),
            port_of(&got["listen"]["readiness"]),
            "{what}: the readiness probe's port"
        );
        assert_eq!(spec["readinessProbe"]["httpGet"]["path"], "/healthz/ready");
        let metrics = port_of(&got["listen"]["metrics"]);
        assert_eq!(container_port(spec, "http-metrics"), metrics, "{what}");
        assert_eq!(
            container_port(spec, "http-ready"),
            port_of(&got["listen"]["readiness"])
        );
        let annotations = &ds["spec"]["template"]["metadata"]["annotations"];
        assert_eq!(
            annotations["prometheus.io/port"],
            metrics.to_string(),
            "{what}"
        );

        // The drain deadline fits the grace period the kubelet gives.
        let grace = ds["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
            .as_u64()
            .expect("terminationGracePeriodSeconds");
        assert_eq!(
            tunnel.var("TERMINATION_GRACE_PERIOD_SECONDS"),
            Some(grace.to_string().as_str()),
            "{what}"
        );
        assert!(
            got["drain_timeout_ms"].as_u64().unwrap() < grace * 1000,
            "{got}"
        );

        // Shared mode, on the agent's socket, in a hostPath the agent mounts too.
        let zds = tunnel.in_container(got["mode"]["shared"]["zds_socket"].as_str().unwrap());
        let agent_ds = rendered.object("DaemonSet", "nodetunnel-cni-node").unwrap();
        let agent = pod(&rendered, "DaemonSet", "nodetunnel-cni-node", "cni-agent");
        let agent_zds = agent.in_container(agent.var("ZTUNNEL_UDS_ADDRESS").unwrap());
        assert_eq!(agent_zds, zds, "{what}: the socket the agent listens on");
        let socket_dir = Path::new(&zds).parent().unwrap().display().to_string();
        assert_eq!(
            host_path_of(&tunnel, ds, &zds),
            host_path_of(&agent, agent_ds, &socket_dir),
            "{what}: the ZDS socket's directory is one host directory for both"
        );

        // Not on the host network, only the capabilities the data path uses.
        let pod_spec = &ds["spec"]["template"]["spec"];
        assert!(pod_spec["hostNetwork"].is_null() || pod_spec["hostNetwork"] == false);
        let security = &spec["securityContext"];
        assert_eq!(security["capabilities"]["drop"], serde_json::json!(["ALL"]));
        let added: BTreeSet<&str> = security["capabilities"]["add"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert_eq!(added, BTreeSet::from(["NET_ADMIN", "SYS_ADMIN", "NET_RAW"]));
        assert_ne!(security["privileged"], true, "{what}");
    }
}

#[test]
fn with_istio_points_the_tunnel_at_istiod_with_an_istio_ca_token() {
    if !manifests::kubectl_available("with_istio") {
        return;
    }
    let rendered = render("with-istio");
    let tunnel = pod(&rendered, "DaemonSet", "nodetunnel", "nodetunnel");
    let got = check_tunnel("with-istio tunnel", &tunnel);
    let istiod = "https://istiod.istio-system.svc:15012";
    assert_eq!(got["config_source"]["xds"], istiod);
    assert_eq!(got["ca"]["address"], istiod);
    // The token file the loader accepted is the projection for istiod's audience.
    let ds = rendered.object("DaemonSet", "nodetunnel").unwrap();
    let token = tunnel.in_container(tunnel.var("XDS_AUTH_TOKEN").unwrap());
    let volume = tunnel.mount_of(&token).expect("the token is mounted");
    let projected = ds["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == volume)
        .unwrap();
    assert_eq!(
        projected["projected"]["sources"][0]["serviceAccountToken"]["audience"], "istio-ca",
        "{projected}"
    );
    assert_eq!(
        ds["spec"]["template"]["spec"]["serviceAccountName"],
        "ztunnel"
    );
    assert_eq!(ds["metadata"]["namespace"], NAMESPACE);
}

#[test]
fn the_agents_env_loads_in_its_own_parser_and_its_probes_hit_the_ports_it_serves() {
    if !manifests::kubectl_available("agent_env") {
        return;
    }
    for overlay in OVERLAYS {
        let rendered = render(overlay);
        let what = format!("overlays/{overlay}: DaemonSet nodetunnel-cni-node");
        let ds = rendered.object("DaemonSet", "nodetunnel-cni-node").unwrap();
        let spec = container(ds, "cni-agent");
        let agent = pod(&rendered, "DaemonSet", "nodetunnel-cni-node", "cni-agent");
        assert_eq!(spec["command"], serde_json::json!(["nodetunnel-cni-agent"]));
        let mut cmd = agent.command(&agent_bin());
        cmd.arg("--check-config");
        let got = report(&what, cmd);
        assert_eq!(
            ignored(&got),
            Vec::<String>::new(),
            "{what}: variables nothing reads"
        );

        let health = port_of(&got["health"]);
        assert_eq!(probe_port(spec, "readinessProbe"), health, "{what}");
        assert_eq!(spec["readinessProbe"]["httpGet"]["path"], "/readyz");
        assert_eq!(probe_port(spec, "livenessProbe"), health, "{what}");
        assert_eq!(spec["livenessProbe"]["httpGet"]["path"], "/healthz");
        assert_eq!(container_port(spec, "http-health"), health);
        let metrics = port_of(&got["metrics"]);
        assert_eq!(container_port(spec, "http-metrics"), metrics, "{what}");
        let annotations = &ds["spec"]["template"]["metadata"]["annotations"];
        assert_eq!(
            annotations["prometheus.io/port"],
            metrics.to_string(),
            "{what}"
        );

        // The DaemonSet it looks up on shutdown is its own (and the Role allows that name).
        assert_eq!(
            got["daemonset"],
            format!("{NAMESPACE}/nodetunnel-cni-node"),
            "{what}"
        );
        let role = rendered.object("Role", "nodetunnel-cni").unwrap();
        assert_eq!(
            role["rules"][0]["resourceNames"],
            serde_json::json!(["nodetunnel-cni-node"])
        );

        // The host paths it works on are the host's: CNI dirs, /proc, the run dir the plugin
        // (running on the host) finds the event socket in.
        let host = |report_key: &str| {
            let path = agent.in_container(got[report_key].as_str().unwrap());
            host_path_of(&agent, ds, &path)
        };
        assert_eq!(host("cni_net_dir"), "/etc/cni/net.d", "{what}");
        assert_eq!(host("cni_bin_dir"), "/opt/cni/bin", "{what}");
        assert_eq!(host("proc_root"), "/proc", "{what}");
        let event_socket = agent.in_container(got["event_socket"].as_str().unwrap());
        let event_dir = Path::new(&event_socket)
            .parent()
            .unwrap()
            .display()
            .to_string();
        assert_eq!(
            host_path_of(&agent, ds, &event_dir),
            event_dir,
            "{what}: the plugin on the host looks for the event socket at the same path"
        );
        let pod_spec = &ds["spec"]["template"]["spec"];
        assert_eq!(pod_spec["hostNetwork"], true, "{what}");
        assert_eq!(pod_spec["hostPID"], true, "{what}");
    }
}

#[test]
fn the_standalone_control_plane_loads_its_mesh_tokens_and_ca_and_the_tunnels_can_reach_it() {
    if !manifests::kubectl_available("standalone_control") {
        return;
    }
    let rendered = render("standalone");
    let what = "overlays/standalone: Deployment nodetunnel-control";
    let deployment = rendered.object("Deployment", "nodetunnel-control").unwrap();
    let spec = container(deployment, "control");
    assert_eq!(spec["command"], serde_json::json!(["nodetunnel-control"]));
    let control = pod(&rendered, "Deployment", "nodetunnel-control", "control");
    let mut cmd = control.command(&control_bin());
    cmd.arg("--check-config");
    let got = report(what, cmd);
    assert_eq!(
        ignored(&got),
        Vec::<String>::new(),
        "{what}: variables nothing reads"
    );
    assert_eq!(
        got["tokens"],
        STANDALONE_NODES.len(),
        "{what}: one token per node"
    );
    assert_eq!(
        got["ca"]["source"], "dir",
        "{what}: the CA comes from the secret"
    );

    let status = port_of(&got["status_addr"]);
    assert_eq!(probe_port(spec, "readinessProbe"), status, "{what}");
    assert_eq!(spec["readinessProbe"]["httpGet"]["path"], "/ready");
    let listen = port_of(&got["listen"]);
    assert_eq!(container_port(spec, "grpc-xds"), listen, "{what}");

    // The tunnels dial the Service, whose port reaches the listener, and verify the serving
    // certificate against the name they dial.
    let service = rendered.object("Service", "nodetunnel-control").unwrap();
    let service_port = &service["spec"]["ports"][0];
    assert_eq!(service_port["targetPort"], "grpc-xds");
    let tunnel = pod(&rendered, "DaemonSet", "nodetunnel", "nodetunnel");
    let host = format!("nodetunnel-control.{NAMESPACE}.svc");
    let address = format!("https://{host}:{}", service_port["port"]);
    let tunnel_report = check_tunnel("standalone tunnel", &tunnel);
    assert_eq!(tunnel_report["config_source"]["xds"], address);
    assert_eq!(tunnel_report["ca"]["address"], address);
    let sans: Vec<&str> = got["ca"]["tls_sans"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        sans.contains(&host.as_str()),
        "{what}: serving names {sans:?}"
    );

    // The tunnel trusts the control plane's root, and presents its own node's token, the one
    // the control plane binds to that node.
    let root = std::fs::read(tunnel.var("XDS_ROOT_CA").unwrap()).expect("the tunnel's root");
    let ca_dir = control.var("CA_DIR").unwrap();
    let control_root = std::fs::read(Path::new(ca_dir).join("root-cert.pem")).unwrap();
    assert_eq!(
        root, control_root,
        "the tunnels trust the root the control plane signs with"
    );
    let token_path = tunnel.var("XDS_AUTH_TOKEN").unwrap();
    assert!(
        token_path.ends_with("/node-a"),
        "{token_path}: the node's token"
    );
    let token = std::fs::read_to_string(token_path).unwrap();
    let tokens = std::fs::read_to_string(control.var("TOKEN_FILE").unwrap()).unwrap();
    assert!(
        tokens
            .lines()
            .any(|line| line.starts_with(&format!("{token} node=node-a "))),
        "node-a's token is bound to node-a in the control plane's token file"
    );
    // Never the CA's key in a tunnel.
    let tunnel_ca_dir = Path::new(tunnel.var("XDS_ROOT_CA").unwrap())
        .parent()
        .unwrap();
    assert!(!tunnel_ca_dir.join("ca-key.pem").exists());
}

#[test]
fn a_misspelled_or_unparsable_variable_in_a_manifest_is_caught() {
    if !manifests::kubectl_available("misspelled") {
        return;
    }
    let rendered = render("with-istio");
    let tunnel = pod(&rendered, "DaemonSet", "nodetunnel", "nodetunnel");
    let with = |extra: (&str, &str)| {
        let mut c = std::process::Command::new(tunnel_bin());
        c.env_clear()
            .envs(tunnel.env.iter().cloned())
            .env(extra.0, extra.1)
            .arg("check-config");
        c
    };
    let got = report("tunnel + typo", with(("INPOD_UDS_PATH", "/x")));
    assert_eq!(ignored(&got), ["INPOD_UDS_PATH"]);
    let out = with(("TERMINATION_GRACE_PERIOD_SECONDS", "thirty"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("TERMINATION_GRACE_PERIOD_SECONDS=\"thirty\""),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The control plane's check loads the token file as start-up does: a line in the old
    // unbound format stops it, naming the file and line.
    let standalone = render("standalone");
    let control = pod(&standalone, "Deployment", "nodetunnel-control", "control");
    let bad_tokens = control.root().join("bad-tokens.txt");
    std::fs::write(&bad_tokens, "# tokens\nsecret-token tunnel on node-a\n").unwrap();
    let mut cmd = control.command(&control_bin());
    cmd.env("TOKEN_FILE", &bad_tokens).arg("--check-config");
    let out = cmd.output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("bad-tokens.txt:2"), "{stderr}");
    assert!(
        !stderr.contains("secret-token"),
        "a token is never printed: {stderr}"
    );

    let agent = pod(&rendered, "DaemonSet", "nodetunnel-cni-node", "cni-agent");
    let mut cmd = agent.command(&agent_bin());
    cmd.env("HEALTH_ADRESS", "0.0.0.0:1").arg("--check-config");
    assert_eq!(ignored(&report("agent + typo", cmd)), ["HEALTH_ADRESS"]);
    let mut cmd = agent.command(&agent_bin());
    cmd.env("AMBIENT_DNS_CAPTURE", "maybe")
        .arg("--check-config");
    let out = cmd.output().unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("maybe"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn every_container_runs_a_binary_the_image_builds() {
    if !manifests::kubectl_available("image_binaries") {
        return;
    }
    let dockerfile =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Dockerfile"))
            .expect("the Dockerfile");
    let built: BTreeSet<&str> = dockerfile
        .split_whitespace()
        .collect::<Vec<_>>()
        .windows(2)
        .filter(|w| w[0] == "--bin")
        .map(|w| w[1])
        .collect();
    assert_eq!(
        built,
        BTreeSet::from([
            "nodetunnel",
            "nodetunnel-cni",
            "nodetunnel-cni-agent",
            "nodetunnel-control"
        ]),
        "the binaries of the workspace's packages"
    );
    for overlay in OVERLAYS {
        let rendered = render(overlay);
        for kind in ["DaemonSet", "Deployment"] {
            for workload in rendered.of_kind(kind) {
                for c in workload["spec"]["template"]["spec"]["containers"]
                    .as_array()
                    .unwrap()
                {
                    let command = c["command"][0].as_str().unwrap_or_else(|| {
                        panic!("overlays/{overlay}: {kind} {}: container {} names no command (the image has no entrypoint)", workload["metadata"]["name"], c["name"])
                    });
                    assert!(
                        built.contains(command),
                        "overlays/{overlay}: {command} is not built"
                    );
                }
            }
        }
    }
}

/// The ignore list is exactly what Istio's own chart needs: its ztunnel env
/// (tests/fixtures/charts/ztunnel.env) loads with nothing left unread. No kubectl needed.
#[test]
fn istios_ztunnel_chart_env_leaves_nothing_unread() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/charts/ztunnel.env");
    let text = std::fs::read_to_string(&fixture).expect("the chart fixture");
    let env: Vec<(String, String)> = text
        .lines()
        .filter_map(|line| line.strip_prefix("env "))
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    assert!(env.len() > 10, "{}: env lines", fixture.display());
    let mut cmd = std::process::Command::new(tunnel_bin());
    cmd.env_clear().envs(env).arg("check-config");
    let got = report("Istio's ztunnel chart env", cmd);
    assert_eq!(ignored(&got), Vec::<String>::new());
    assert_eq!(got["listen"]["readiness"], "[::]:15021");
}
