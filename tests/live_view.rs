//! End-to-end: the live view (`/live` on the admin port) in a real headless Chromium. Real
//! `nodetunnel-control`, two real tunnels (dedicated mode) and iptables capture carry known
//! traffic to the server on n2: three HBONE connections from `client` with known bytes (and a
//! fourth held open while the page is loaded: live, its bytes not yet counted), one HBONE
//! connection from `client2` that the DENY policy `default/deny-client2` refuses, and one
//! plaintext connection from `client` (n1's capture off, so it reaches n2's :15006). Then
//! Chromium loads `http://127.0.0.1:15000/live` inside n2's namespace, runs the page's script
//! (which fetches `/live/graph.json`) and dumps the DOM; the test reads the drawn edges by their
//! `data-*` attributes and checks their numbers, and that the denied edge is red and names the
//! policy. Screenshots of the page are written to `<target>/tmp/live-view.png` (n2) and
//! `live-view-client-node.png` (n1, the outbound side).
//!
//! Topology as in tests/policy.rs. Needs root and the Debian `chromium` package; without them
//! the test prints "skipped" — and fails under CI=true.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nodetunnel_testbed::traffic::{echo_handler, echo_roundtrip, request_then_read_all};
use nodetunnel_testbed::{
    addr, assert_eventually, connect_from, namespaces_available, spiffe_id, Capture, Match,
    MeshConfig, Netns, Policy, Server, StringMatch, Topology, Tunnel,
};

const SERVER_PORT: u16 = 8080;
const GRAPH_DEADLINE: Duration = Duration::from_secs(15);
/// A browser that neither renders nor exits within this is hung, not slow.
const BROWSER_DEADLINE: Duration = Duration::from_secs(90);
/// Sizes of the three allowed HBONE connections' echoes: each byte goes there and back.
const HBONE_SIZES: [usize; 3] = [1_000, 2_000, 4_000];
const PLAINTEXT_SIZE: usize = 500;
const DENY_POLICY: &str = "default/deny-client2";
/// The page's colour for denied edges (`COLORS.denied` in live_view.html).
const DENIED_RED: &str = "#dc2626";

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_nodetunnel"))
}

fn server_addr() -> SocketAddr {
    (addr::SERVER, SERVER_PORT).into()
}

/// The Chromium binary, or `None` (skipped) when it is not installed — a failure under CI=true.
fn chromium(test: &str) -> Option<PathBuf> {
    let found = ["chromium", "chromium-browser"].iter().find_map(|name| {
        std::env::var_os("PATH").and_then(|path| {
            std::env::split_paths(&path)
                .map(|dir| dir.join(name))
                .find(|p| p.is_file())
        })
    });
    if found.is_none() {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("{test}: needs the Debian `chromium` package (tests/run installs it); CI=true, so this is a failure, not a skip");
        }
        eprintln!("{test}: skipped: chromium is not installed (apt-get install chromium)");
    }
    found
}

/// Runs headless Chromium in `ns` with `args` and the page `url`; its stdout. Killed (and the
/// test failed) if it has not exited within [`BROWSER_DEADLINE`].
fn browse(ns: &Netns, chromium: &Path, profile: &Path, args: &[&str], url: &str) -> String {
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns.name()])
        .arg(chromium)
        .args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--hide-scrollbars",
            // Long enough for the page to fetch the JSON and draw; virtual time, not a wait.
            "--virtual-time-budget=5000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning chromium");
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || std::io::read_to_string(stdout).unwrap_or_default());
    let err = std::thread::spawn(move || std::io::read_to_string(stderr).unwrap_or_default());
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for chromium") {
            break status;
        }
        if started.elapsed() > BROWSER_DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "chromium did not finish within {BROWSER_DEADLINE:?}; stderr:\n{}",
                err.join().unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let (out, err) = (out.join().unwrap(), err.join().unwrap());
    assert!(status.success(), "chromium failed ({status}):\n{err}");
    out
}

/// The start tags named `tag` whose attributes include `attr`, each as its attribute map (with
/// the serializer's entities decoded) and the markup up to the tag's end (`</tag>`).
fn elements<'a>(dom: &'a str, tag: &str, attr: &str) -> Vec<(BTreeMap<String, String>, &'a str)> {
    let open = format!("<{tag} ");
    let close = format!("</{tag}>");
    let mut found = Vec::new();
    let mut rest = dom;
    while let Some(at) = rest.find(&open) {
        let element = &rest[at..];
        let end = element.find('>').expect("an unterminated tag");
        let attrs = attributes(&element[open.len()..end]);
        let body_end = element.find(&close).unwrap_or(element.len());
        if attrs.contains_key(attr) {
            found.push((attrs, &element[..body_end]));
        }
        rest = &element[end..];
    }
    found
}

/// `name="value"` pairs of one start tag, as Chromium serializes them.
fn attributes(tag: &str) -> BTreeMap<String, String> {
    let mut attrs = BTreeMap::new();
    let mut rest = tag;
    while let Some(eq) = rest.find("=\"") {
        let name = rest[..eq].trim().to_string();
        let value_start = eq + 2;
        let len = rest[value_start..]
            .find('"')
            .expect("an unterminated value");
        let value = rest[value_start..value_start + len]
            .replace("&quot;", "\"")
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&amp;", "&");
        attrs.insert(name, value);
        rest = &rest[value_start + len + 1..];
    }
    attrs
}

/// The text of an element's markup: tags dropped, entities decoded.
fn text(markup: &str) -> String {
    let mut out = String::new();
    let mut in_tag = false;
    for c in markup.chars() {
        match c {
            '<' => in_tag = true,
            '>' => in_tag = false,
            _ if !in_tag => out.push(c),
            _ => {}
        }
    }
    out.replace("&amp;", "&")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
}

/// n2's `/live/graph.json` edge for `direction`/`protocol` from `source` to the server.
fn graph_edge(
    tunnel: &Tunnel,
    direction: &str,
    protocol: &str,
    source: &str,
    destination: &str,
) -> Option<serde_json::Value> {
    let body = tunnel.admin_get("/live/graph.json").ok()?;
    let graph: serde_json::Value = serde_json::from_str(&body).ok()?;
    graph["edges"].as_array()?.iter().find_map(|e| {
        (e["direction"] == direction
            && e["protocol"] == protocol
            && e["source"] == source
            && e["destination"] == destination)
            .then(|| e.clone())
    })
}

/// An edge's (total, live) connections.
fn counts(edge: &serde_json::Value) -> (u64, u64) {
    let n = |field: &str| edge[field].as_u64().unwrap_or(u64::MAX);
    (n("total_connections"), n("live_connections"))
}

fn connect(topo: &Topology, src: Ipv4Addr) -> std::net::TcpStream {
    topo.ns("n1")
        .run(move || connect_from(src, server_addr()))
        .expect("connecting to the server")
}

#[test]
fn the_live_view_draws_known_traffic_with_its_counts_and_the_denial() {
    let test = "live_view_browser";
    if !namespaces_available(test) {
        return;
    }
    let Some(chromium) = chromium(test) else {
        return;
    };
    let topo = Topology::two_node(test, Capture::ALL).expect("building the topology");
    let mut cfg = MeshConfig::standard(SERVER_PORT);
    cfg.policies
        .push(Policy::deny("default", "deny-client2").rule([[
            Match::default().principal(StringMatch::exact("cluster.local/ns/default/sa/client2")),
        ]]));
    let (cp, _mesh) = topo
        .start_mesh_control("n1", bin(), &cfg)
        .expect("starting the control plane");
    let t2 = topo
        .start_control_tunnel("n2", bin(), &cp, &[])
        .expect("starting the tunnel on n2");
    let t1 = topo
        .start_control_tunnel("n1", bin(), &cp, &[])
        .expect("starting the tunnel on n1");
    let _server = Server::start(topo.ns("n2"), server_addr(), echo_handler).unwrap();

    // Known traffic. Allowed HBONE: three echoes of known sizes, each connection closed.
    for size in HBONE_SIZES {
        let mut s = connect(&topo, addr::CLIENT);
        echo_roundtrip(&mut s, &vec![b'h'; size]).expect("an allowed HBONE echo");
    }
    // One more that stays open while the page is looked at: live, its bytes not counted yet.
    let mut held = connect(&topo, addr::CLIENT);
    echo_roundtrip(&mut held, b"still open").expect("the held connection's echo");
    // Denied HBONE: client2 gets nothing back.
    let mut s = connect(&topo, addr::CLIENT2);
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let got = request_then_read_all(&mut s, b"must not arrive\n").expect("a refused connection");
    assert!(got.is_empty(), "client2 was answered: {got:?}");
    drop(s);
    // Plaintext: n1 captures nothing, so the connection reaches n2's :15006 as plain TCP.
    topo.node("n1").set_capture(Capture::NONE).unwrap();
    let mut s = connect(&topo, addr::CLIENT);
    echo_roundtrip(&mut s, &vec![b'p'; PLAINTEXT_SIZE]).expect("a plaintext echo");
    drop(s);

    // The JSON first (connections count when they close, so wait for the last close)...
    let hbone_bytes: u64 = HBONE_SIZES.iter().map(|&n| n as u64).sum();
    let (client, client2, server) = ("default/client", "default/client2", "default/server");
    let client_ip = addr::CLIENT.to_string();
    assert_eventually!(
        graph_edge(&t2, "inbound", "HBONE", client, server).is_some_and(|e| counts(&e) == (4, 1))
            && graph_edge(&t2, "inbound", "HBONE", client2, server)
                .is_some_and(|e| e["denied_connections"] == 1)
            && graph_edge(&t2, "inbound", "TCP", &client_ip, server)
                .is_some_and(|e| counts(&e) == (1, 0)),
        GRAPH_DEADLINE,
        "n2's graph never showed the traffic: {:?}\n{}",
        t2.admin_get("/live/graph.json"),
        t2.log_tail(20)
    );
    let allowed = graph_edge(&t2, "inbound", "HBONE", client, server).unwrap();
    assert_eq!(allowed["bytes_sent"], hbone_bytes, "{allowed:#}");
    assert_eq!(allowed["bytes_received"], hbone_bytes, "{allowed:#}");
    assert_eq!(allowed["failed_connections"], 0, "{allowed:#}");
    // ...and the client's side: the same connections, outbound.
    assert_eventually!(
        graph_edge(&t1, "outbound", "HBONE", client, server)
            .is_some_and(|e| counts(&e) == (4, 1) && e["bytes_sent"] == hbone_bytes),
        GRAPH_DEADLINE,
        "n1's graph never showed the outbound edge: {:?}",
        t1.admin_get("/live/graph.json")
    );
    // The refused one, as its client's tunnel saw it: a failure the peer decided.
    assert_eventually!(
        graph_edge(&t1, "outbound", "HBONE", client2, server).is_some_and(|e| {
            e["failed_connections"] == 1 && e["last_failure"] == "peer_refused"
        }),
        GRAPH_DEADLINE,
        "n1's graph never showed client2's refused connection: {:?}",
        t1.admin_get("/live/graph.json")
    );

    // The page, rendered by a real browser in n2's namespace (the admin port is loopback only).
    let url = "http://127.0.0.1:15000/live";
    let profile = tempfile::tempdir().unwrap();
    let dom = browse(t2.ns(), &chromium, profile.path(), &["--dump-dom"], url);
    assert!(
        dom.contains("data-generated-at="),
        "the page's script never rendered the JSON:\n{dom:.3000}"
    );

    let edges = elements(&dom, "g", "data-edge");
    let labels = elements(&dom, "g", "data-label-for");
    // The words drawn beside an edge (its labels sit in a layer above the nodes).
    let label = |edge: &BTreeMap<String, String>| {
        labels
            .iter()
            .find(|(a, _)| a["data-label-for"] == edge["data-edge-id"])
            .map(|(_, markup)| text(markup))
            .unwrap_or_else(|| panic!("no label drawn for {edge:?}"))
    };
    let edge = |direction: &str, protocol: &str, from: &str| {
        let name = format!("{from}→{server}");
        edges
            .iter()
            .find(|(a, _)| {
                a["data-edge"] == name
                    && a["data-direction"] == direction
                    && a["data-protocol"] == protocol
            })
            .unwrap_or_else(|| {
                panic!(
                    "no {direction} {protocol} edge {name} drawn; edges: {:#?}",
                    edges.iter().map(|(a, _)| a).collect::<Vec<_>>()
                )
            })
    };
    let (hbone, markup) = edge("inbound", "HBONE", client);
    assert_eq!(hbone["data-connections"], "4", "{hbone:?}");
    assert_eq!(hbone["data-live"], "1", "{hbone:?}");
    assert_eq!(
        hbone["data-bytes"],
        (2 * hbone_bytes).to_string(),
        "{hbone:?}"
    );
    assert_eq!(hbone["data-bytes-sent"], hbone_bytes.to_string());
    assert_eq!(hbone["data-denied"], "0");
    assert_eq!(hbone["data-denied-by"], "");
    let path = &elements(markup, "path", "stroke")[0].0;
    assert_eq!(path["stroke-dasharray"], "none", "HBONE is drawn solid");
    assert_ne!(path["stroke"], DENIED_RED, "an allowed edge is not red");
    assert!(
        label(hbone).contains("4 conns (1 live)"),
        "{}",
        label(hbone)
    );

    let (denied, markup) = edge("inbound", "HBONE", client2);
    assert_eq!(denied["data-connections"], "1", "{denied:?}");
    assert_eq!(denied["data-denied"], "1", "{denied:?}");
    assert_eq!(denied["data-denied-by"], DENY_POLICY, "{denied:?}");
    assert!(denied["class"].contains("denied"), "{denied:?}");
    let path = &elements(markup, "path", "stroke")[0].0;
    assert_eq!(path["stroke"], DENIED_RED, "the denied edge is red");
    assert!(
        label(denied).contains(&format!("1 denied by {DENY_POLICY}")),
        "the denied edge names the policy: {}",
        label(denied)
    );

    let (plain, markup) = edge("inbound", "TCP", &client_ip);
    assert_eq!(plain["data-connections"], "1", "{plain:?}");
    assert_eq!(plain["data-bytes"], (2 * PLAINTEXT_SIZE).to_string());
    let path = &elements(markup, "path", "stroke")[0].0;
    assert_ne!(
        path["stroke-dasharray"], "none",
        "plaintext is drawn dashed"
    );

    // Nodes: the server is this node's pod; the clients are peers.
    let nodes: BTreeMap<String, String> = elements(&dom, "g", "data-node")
        .into_iter()
        .map(|(a, _)| (a["data-node"].clone(), a["data-local"].clone()))
        .collect();
    assert_eq!(
        nodes.get(server).map(String::as_str),
        Some("true"),
        "{nodes:?}"
    );
    assert_eq!(
        nodes.get(client).map(String::as_str),
        Some("false"),
        "{nodes:?}"
    );
    assert_eq!(
        nodes.get(client2).map(String::as_str),
        Some("false"),
        "{nodes:?}"
    );

    // The table beneath says the same.
    let rows = elements(&dom, "tr", "data-edge-id");
    let denied_row = rows
        .iter()
        .find(|(a, _)| a["data-edge"] == format!("{client2}→{server}"))
        .expect("a table row for the denied edge");
    assert_eq!(denied_row.0["class"], "denied");
    assert!(text(denied_row.1).contains(DENY_POLICY), "{}", denied_row.1);
    assert_eq!(
        denied_row.0["title"],
        format!("DENY policy {DENY_POLICY} matched")
    );
    assert!(
        dom.contains(&spiffe_id("default", "client").replace("spiffe://", "")),
        "the peer's identity is shown"
    );

    // The screenshots a person looks at: the server's node, and the client's (outbound side).
    for (tunnel, file) in [(&t2, "live-view.png"), (&t1, "live-view-client-node.png")] {
        let png = Path::new(env!("CARGO_TARGET_TMPDIR")).join(file);
        screenshot(tunnel.ns(), &chromium, profile.path(), url, &png);
        eprintln!("live view screenshot: {}", png.display());
    }
    drop(held);
}

/// Writes a 1280×900 screenshot of `url` (loaded in `ns`) to `png`, and checks it is a PNG
/// with something drawn on it.
fn screenshot(ns: &Netns, chromium: &Path, profile: &Path, url: &str, png: &Path) {
    let _ = std::fs::remove_file(png);
    browse(
        ns,
        chromium,
        profile,
        &[
            &format!("--screenshot={}", png.display()),
            "--window-size=1280,900",
        ],
        url,
    );
    let image = std::fs::read(png).unwrap_or_else(|e| panic!("{}: {e}", png.display()));
    assert!(
        image.starts_with(b"\x89PNG\r\n\x1a\n"),
        "{} is not a PNG",
        png.display()
    );
    assert!(
        image.len() > 10_000,
        "{} is only {} bytes: a blank page?",
        png.display(),
        image.len()
    );
}
