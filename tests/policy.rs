//! End-to-end: authorization policy enforced by real tunnels. Real `nodetunnel-control` serving
//! the mesh file over delta xDS, two real `nodetunnel` processes (dedicated mode), iptables
//! capture, traffic over HBONE (and plaintext on :15006 when n1's capture is off). Each test also
//! asks the server's tunnel to explain its decision (`/debug/authorize`) and checks the answer
//! says what the access log said.
//!
//! Topology as in tests/hbone.rs: n1 10.77.1.1 (client 10.77.1.10, client2 10.77.1.11) and n2
//! 10.77.2.1 (server 10.77.2.10, echo on 8080); the control plane runs in n1.
//!
//! Needs root; without it each test prints "skipped: needs root" (and fails under CI=true).

use std::net::{Ipv4Addr, SocketAddr};
use std::thread;
use std::time::Duration;

use nodetunnel_testbed::traffic::{echo_handler, echo_roundtrip, request_then_read_all};
use nodetunnel_testbed::tunnel::{field, http_get};
use nodetunnel_testbed::{
    addr, assert_eventually, connect_from, namespaces_available, port, spiffe_id, Capture,
    ControlPlane, Match, MeshConfig, Policy, PolicyScope, Server, StringMatch, Topology, Tunnel,
};

const SERVER_PORT: u16 = 8080;
const SYNC_DEADLINE: Duration = Duration::from_secs(20);
const LOG_DEADLINE: Duration = Duration::from_secs(10);
/// The policy istiod makes of a mesh-wide STRICT PeerAuthentication.
const STRICT: &str = "istio_converted_static_strict";

fn bin() -> &'static std::path::Path {
    std::path::Path::new(env!("CARGO_BIN_EXE_nodetunnel"))
}

fn topology(test: &str) -> Option<Topology> {
    if !namespaces_available(test) {
        return None;
    }
    Some(Topology::two_node(test, Capture::ALL).expect("building the topology"))
}

/// The control plane serving `cfg` (from `<topology dir>/mesh.yaml`), both tunnels, and the
/// echo server. Returns the mesh file's path for later rewrites.
struct Mesh2 {
    topo: Topology,
    _cp: ControlPlane,
    mesh: std::path::PathBuf,
    t2: Tunnel,
    _t1: Tunnel,
    server: Server,
}

fn start(topo: Topology, cfg: &MeshConfig) -> Mesh2 {
    let (cp, mesh) = topo
        .start_mesh_control("n1", bin(), cfg)
        .unwrap_or_else(|e| panic!("starting the control plane: {e}"));
    let tunnel = |node: &str| {
        topo.start_control_tunnel(node, bin(), &cp, &[])
            .unwrap_or_else(|e| panic!("starting the tunnel on {node}: {e}"))
    };
    let t2 = tunnel("n2");
    let t1 = tunnel("n1");
    let server = Server::start(topo.ns("n2"), server_addr(), echo_handler).unwrap();
    Mesh2 {
        topo,
        _cp: cp,
        mesh,
        t2,
        _t1: t1,
        server,
    }
}

fn server_addr() -> SocketAddr {
    (addr::SERVER, SERVER_PORT).into()
}

impl Mesh2 {
    /// A connection from `src` on n1 to the server carries an echo.
    fn assert_admitted(&self, src: Ipv4Addr, what: &str) {
        let mut s = self
            .topo
            .ns("n1")
            .run(move || connect_from(src, server_addr()))
            .unwrap_or_else(|e| panic!("{what}: connect: {e}"));
        echo_roundtrip(&mut s, what.as_bytes())
            .unwrap_or_else(|e| panic!("{what}: must be admitted, but: {e}"));
    }

    /// A connection from `src` on n1 to the server gets no data back and the server
    /// application never sees it. Returns the refusal's access-log line on n2.
    fn assert_denied(&self, src: Ipv4Addr, protocol: &str, what: &str) -> String {
        let before = self.server.accepted();
        let denials_before = self.t2.access_lines(&[("flag", "policy_denied")]).len();
        let got = self
            .topo
            .ns("n1")
            .run(move || -> std::io::Result<Vec<u8>> {
                let mut s = connect_from(src, server_addr())?;
                s.set_read_timeout(Some(Duration::from_secs(15)))?;
                request_then_read_all(&mut s, b"must not arrive\n")
            })
            .unwrap_or_else(|e| panic!("{what}: connect: {e}"));
        assert!(
            got.is_empty(),
            "{what}: the client received {} bytes: {:?}",
            got.len(),
            String::from_utf8_lossy(&got)
        );
        assert_eventually!(
            self.t2.access_lines(&[("flag", "policy_denied")]).len() > denials_before,
            LOG_DEADLINE,
            "{what}: no policy_denied line on n2:\n{}",
            self.t2.log_tail(20)
        );
        // Give a (wrongly) forwarded connection time to show up before concluding it did not.
        thread::sleep(Duration::from_millis(300));
        assert_eq!(
            self.server.accepted(),
            before,
            "{what}: the server application saw a connection"
        );
        let lines = self.t2.access_lines(&[
            ("flag", "policy_denied"),
            ("protocol", protocol),
            ("dst.addr", &server_addr().to_string()),
        ]);
        lines.last().cloned().unwrap_or_else(|| {
            panic!(
                "{what}: no {protocol} denial line:\n{}",
                self.t2.log_tail(20)
            )
        })
    }

    fn rewrite(&self, cfg: &MeshConfig) {
        cfg.write(&self.mesh).expect("rewriting mesh.yaml");
    }

    /// Waits until n2's tunnel holds exactly the policies `keys`.
    fn wait_for_policies(&self, keys: &[&str]) {
        let mut want: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
        want.sort();
        assert_eventually!(
            self.t2.config_dump().is_ok_and(|dump| {
                let mut have: Vec<String> = dump["policies"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|p| {
                        format!(
                            "{}/{}",
                            p["namespace"].as_str().unwrap_or(""),
                            p["name"].as_str().unwrap_or("")
                        )
                    })
                    .collect();
                have.sort();
                have == want
            }),
            SYNC_DEADLINE,
            "n2 never held exactly the policies {keys:?}"
        );
    }

    /// n2's explanation for a connection from `source_ip` (with `identity`, or plaintext) to
    /// the server's port.
    fn explain(&self, identity: Option<&str>, source_ip: &str) -> serde_json::Value {
        let mut path = format!(
            "/debug/authorize?source_ip={source_ip}&destination={}&port={SERVER_PORT}",
            addr::SERVER
        );
        if let Some(id) = identity {
            path.push_str(&format!("&source_identity={id}"));
        }
        let body = self
            .t2
            .admin_get(&path)
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: not JSON ({e}): {body}"))
    }

    /// The value of n2's `nodetunnel_policy_denials_total` series whose labels include all of
    /// `labels` (`name="value"` pairs), 0 when there is none.
    fn denials(&self, labels: &[(&str, &str)]) -> u64 {
        let (status, text) = self
            .t2
            .ns()
            .run(|| http_get(port::METRICS, "/metrics"))
            .expect("GET /metrics on n2");
        assert_eq!(status, 200);
        text.lines()
            .filter(|l| l.starts_with("nodetunnel_policy_denials_total{"))
            .filter(|l| {
                labels
                    .iter()
                    .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    }
}

/// The access-log `reason` field (quoted in the line).
fn reason(line: &str) -> String {
    let start = line
        .find("reason=")
        .unwrap_or_else(|| panic!("no reason in {line}"))
        + "reason=".len();
    let rest = &line[start..];
    match rest.strip_prefix('"') {
        Some(quoted) => quoted[..quoted.find('"').unwrap_or(quoted.len())].to_string(),
        None => rest.split_whitespace().next().unwrap_or("").to_string(),
    }
}

/// The IP part of the line's `src` (the address n2 authorized).
fn src_ip(line: &str) -> String {
    let src: SocketAddr = field(line, "src.addr")
        .unwrap_or_else(|| panic!("no src in {line}"))
        .parse()
        .unwrap();
    src.ip().to_string()
}

fn client_id() -> String {
    spiffe_id("default", "client")
}

// ----------------------------------------------------------------------------------- tests

/// A namespace-wide deny-all (one rule without clauses) refuses every client of the namespace's
/// workloads; the log line, the metric and the explanation all name the policy.
#[test]
fn deny_all_in_the_namespace_refuses_every_client() {
    let Some(topo) = topology("policy_deny_all") else {
        return;
    };
    let mut cfg = MeshConfig::standard(SERVER_PORT);
    cfg.policies
        .push(Policy::deny("default", "deny-all").rule(Vec::<Vec<Match>>::new()));
    let m = start(topo, &cfg);

    let line = m.assert_denied(addr::CLIENT, "HBONE", "client under deny-all");
    assert_eq!(
        reason(&line),
        "DENY policy default/deny-all matched",
        "{line}"
    );
    assert_eq!(
        field(&line, "src.identity"),
        Some(client_id().as_str()),
        "{line}"
    );
    m.assert_denied(addr::CLIENT2, "HBONE", "client2 under deny-all");
    assert_eq!(
        m.denials(&[
            ("policy", "default/deny-all"),
            ("reason", "deny_policy"),
            ("protocol", "HBONE")
        ]),
        2
    );

    let answer = m.explain(Some(&client_id()), &src_ip(&line));
    assert_eq!(answer["decision"], "deny", "{answer:#}");
    assert_eq!(answer["reason"], reason(&line), "{answer:#}");
    assert_eq!(answer["policies"][0]["policy"], "default/deny-all");
    assert_eq!(answer["policies"][0]["decided"], true);
    assert_eq!(
        answer["policies"][0]["rules"][0]["why"],
        "no clauses: matches every connection"
    );
}

/// An ALLOW by principal admits that client only: another identity of the mesh is refused,
/// and the refusal names the ALLOW policy that did not match.
#[test]
fn allow_by_principal_admits_only_that_client() {
    let Some(topo) = topology("policy_allow_principal") else {
        return;
    };
    let mut cfg = MeshConfig::standard(SERVER_PORT);
    cfg.policies
        .push(Policy::allow("default", "allow-client").rule([[
            Match::default().principal(StringMatch::exact("cluster.local/ns/default/sa/client")),
        ]]));
    let m = start(topo, &cfg);

    m.assert_admitted(addr::CLIENT, "client (allowed by principal)");
    let line = m.assert_denied(
        addr::CLIENT2,
        "HBONE",
        "client2 (not the allowed principal)",
    );
    let want = "no ALLOW policy matched (ALLOW policies applying: default/allow-client)";
    assert_eq!(reason(&line), want, "{line}");
    assert_eq!(
        field(&line, "src.identity"),
        Some(spiffe_id("default", "client2").as_str()),
        "{line}"
    );
    assert_eq!(
        m.denials(&[("reason", "no_allow_match"), ("policy", "")]),
        1
    );

    let denied = m.explain(Some(&spiffe_id("default", "client2")), &src_ip(&line));
    assert_eq!(denied["decision"], "deny", "{denied:#}");
    assert_eq!(denied["reason"], want);
    let field0 = &denied["policies"][0]["rules"][0]["clauses"][0]["matches"][0]["fields"][0];
    assert_eq!(field0["field"], "principals");
    assert_eq!(
        field0["why"],
        "source principal \"cluster.local/ns/default/sa/client2\" matches none of the values"
    );
    let allowed = m.explain(Some(&client_id()), &src_ip(&line));
    assert_eq!(allowed["decision"], "allow", "{allowed:#}");
    assert_eq!(
        allowed["reason"],
        "ALLOW policy default/allow-client matched"
    );
}

/// PERMISSIVE (no STRICT policy) admits plaintext; a STRICT policy pushed over xDS refuses the
/// next plaintext connection and still admits HBONE; removing it admits plaintext again.
#[test]
fn strict_mtls_pushed_over_xds_refuses_plaintext_and_admits_hbone() {
    let Some(topo) = topology("policy_strict") else {
        return;
    };
    let mut cfg = MeshConfig::standard(SERVER_PORT);
    let m = start(topo, &cfg);
    let plaintext = |on: bool| {
        // n1's capture off: the client's connection reaches n2 as plain TCP (:15006).
        let capture = if on { Capture::NONE } else { Capture::ALL };
        m.topo.node("n1").set_capture(capture).unwrap();
    };

    plaintext(true);
    m.assert_admitted(addr::CLIENT, "plaintext under PERMISSIVE");

    cfg.policies.push(
        Policy::deny("istio-system", STRICT)
            .scope(PolicyScope::Global)
            .rule([[Match {
                not_principals: vec![StringMatch::Presence],
                ..Match::default()
            }]]),
    );
    m.rewrite(&cfg);
    m.wait_for_policies(&[&format!("istio-system/{STRICT}")]);

    let line = m.assert_denied(addr::CLIENT, "TCP", "plaintext under STRICT");
    let want = format!("DENY policy istio-system/{STRICT} matched");
    assert_eq!(reason(&line), want, "{line}");
    assert_eq!(
        m.denials(&[
            ("policy", &format!("istio-system/{STRICT}")),
            ("protocol", "TCP")
        ]),
        1
    );
    let answer = m.explain(None, &src_ip(&line));
    assert_eq!(answer["decision"], "deny", "{answer:#}");
    assert_eq!(answer["reason"], want);
    assert_eq!(answer["policies"][0]["scope"], "global");
    assert_eq!(
        answer["policies"][0]["rules"][0]["clauses"][0]["matches"][0]["fields"][0]["why"],
        "no verified identity (plaintext), so no principal: none of the excluded values can match"
    );

    plaintext(false);
    m.assert_admitted(addr::CLIENT, "HBONE under STRICT");
    let answer = m.explain(Some(&client_id()), &addr::CLIENT.to_string());
    assert_eq!(answer["decision"], "allow", "{answer:#}");

    cfg.policies.clear();
    m.rewrite(&cfg);
    m.wait_for_policies(&[]);
    plaintext(true);
    m.assert_admitted(addr::CLIENT, "plaintext once STRICT is removed");
}

/// A dry-run DENY that matches is never enforced: the connection is admitted, the tunnel logs
/// what the decision would have been, and the explanation shows both.
#[test]
fn a_dry_run_deny_is_logged_never_enforced() {
    let Some(topo) = topology("policy_dry_run") else {
        return;
    };
    let mut cfg = MeshConfig::standard(SERVER_PORT);
    cfg.policies.push(
        Policy::deny("default", "dry-deny")
            .dry_run()
            .rule(Vec::<Vec<Match>>::new()),
    );
    let m = start(topo, &cfg);

    m.assert_admitted(addr::CLIENT, "client under a dry-run deny-all");
    assert_eventually!(
        m.t2.log().lines().any(|l| l.contains("dry-run:")
            && l.contains("would be denied: DENY policy default/dry-deny matched")),
        LOG_DEADLINE,
        "no dry-run line on n2:\n{}",
        m.t2.log_tail(20)
    );
    assert_eq!(m.denials(&[]), 0, "a dry-run policy denied nothing");
    let answer = m.explain(Some(&client_id()), &addr::CLIENT.to_string());
    assert_eq!(answer["decision"], "allow", "{answer:#}");
    assert_eq!(answer["dry_run_decision"]["decision"], "deny", "{answer:#}");
    assert_eq!(answer["policies"][0]["dry_run"], true);
}
