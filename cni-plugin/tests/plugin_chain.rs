//! The plugin as a container runtime runs it: last in a conflist after Debian's reference
//! `bridge` + `host-local`, on real network namespaces, against the Kubernetes API stand-in
//! and a fake node agent (a real HTTP server on the real Unix socket).
//!
//! Layout: a "node" netns (the bridge `ntt<pid>br0` lives there, the plugins run there, the
//! API stand-in listens on its 127.0.0.1) and a "pod" netns (gets `eth0`). Nothing is created
//! in the test process's own namespace; both namespaces and the temp dir go on drop.
//!
//! Needs root (CI=true: fails instead of skipping) and `/usr/lib/cni/{bridge,host-local}`
//! (Debian `containernetworking-plugins`).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use nodetunnel_testbed::cni::{dir_of, Attachment, CniError, ConfList, Runner};
use nodetunnel_testbed::kube_api::{KubeApi, PodBuilder};
use nodetunnel_testbed::netns::unique_prefix;
use nodetunnel_testbed::{namespaces_available, Netns};
use serde_json::{json, Value};
use tokio::sync::oneshot;

const REFERENCE_PLUGINS: &str = "/usr/lib/cni";
const PLUGIN: &str = "nodetunnel-cni";
const AMBIENT: (&str, &str) = ("istio.io/dataplane-mode", "ambient");

/// Whether this machine can run the tests; with CI=true a missing piece is a failure.
fn available(test: &str) -> bool {
    if !namespaces_available(test) {
        return false;
    }
    let bridge = Path::new(REFERENCE_PLUGINS).join("bridge");
    if !bridge.is_file() {
        let msg = format!(
            "{test}: {} missing (install containernetworking-plugins)",
            bridge.display()
        );
        assert!(std::env::var("CI").as_deref() != Ok("true"), "{msg}");
        eprintln!("{msg}: skipped");
        return false;
    }
    true
}

/// One node with its API stand-in, run dir, IPAM dir and a pod netns.
struct Node {
    node: Netns,
    pod_ns: Netns,
    dir: tempfile::TempDir,
    kube: KubeApi,
    runner: Runner,
    bridge: String,
}

impl Node {
    fn new() -> Node {
        let prefix = unique_prefix();
        let node = Netns::create(&format!("{prefix}-node")).unwrap();
        let pod_ns = Netns::create(&format!("{prefix}-pod")).unwrap();
        let dir = tempfile::Builder::new()
            .prefix(&format!("{prefix}-cni-"))
            .tempdir()
            .unwrap();
        std::fs::create_dir_all(dir.path().join("run")).unwrap();
        let kube = KubeApi::start(Some(&node), Ipv4Addr::LOCALHOST).unwrap();
        kube.write_kubeconfig(&dir.path().join("run/istio-cni-kubeconfig"))
            .unwrap();
        let ours = PathBuf::from(env!("CARGO_BIN_EXE_nodetunnel-cni"));
        let runner = Runner::new(vec![REFERENCE_PLUGINS.into(), dir_of(&ours)]);
        Node {
            node,
            pod_ns,
            dir,
            kube,
            runner,
            bridge: format!("ntt{}br0", std::process::id()),
        }
    }

    fn run_dir(&self) -> PathBuf {
        self.dir.path().join("run")
    }

    fn ipam_dir(&self) -> PathBuf {
        self.dir.path().join("ipam")
    }

    fn bridge_entry(&self) -> Value {
        json!({
            "type": "bridge",
            "bridge": self.bridge,
            "isGateway": true,
            "ipam": {
                "type": "host-local",
                "subnet": "10.99.0.0/24",
                "routes": [{"dst": "0.0.0.0/0"}],
                "dataDir": self.ipam_dir(),
            }
        })
    }

    /// Our entry with `extra` fields on top of ambient-enabled defaults.
    fn our_entry(&self, extra: Value) -> Value {
        let mut entry = json!({
            "type": PLUGIN,
            "plugin_log_level": "debug",
            "cni_agent_run_dir": self.run_dir(),
            "ambient_enabled": true,
            "exclude_namespaces": ["kube-system"],
            "pod_namespace": "istio-system",
        });
        for (k, v) in extra.as_object().unwrap() {
            entry[k] = v.clone();
        }
        entry
    }

    fn conflist(&self, version: &str, plugins: Vec<Value>) -> ConfList {
        ConfList::parse(&json!({"cniVersion": version, "name": "ntt-pods", "plugins": plugins}))
            .unwrap()
    }

    fn chain(&self, version: &str, ours: Value) -> ConfList {
        self.conflist(version, vec![self.bridge_entry(), self.our_entry(ours)])
    }

    fn attachment(&self, container_id: &str, namespace: &str, pod: &str) -> Attachment {
        Attachment {
            container_id: container_id.to_string(),
            netns: self.pod_ns.path(),
            ifname: "eth0".to_string(),
            args: format!(
                "IgnoreUnknown=1;K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={pod};\
                 K8S_POD_INFRA_CONTAINER_ID={container_id}"
            ),
        }
    }

    /// Runs `f` with the runner on a thread inside the node netns (plugins inherit it).
    fn in_node<T: Send + 'static>(&self, f: impl FnOnce(&Runner) -> T + Send + 'static) -> T {
        let runner = self.runner.clone();
        self.node.run(move || f(&runner))
    }

    fn add_steps(&self, list: &ConfList, att: &Attachment) -> Result<Vec<Value>, CniError> {
        let (list, att) = (list.clone(), att.clone());
        self.in_node(move |r| r.add_steps(&list, &att))
    }

    fn del(&self, list: &ConfList, att: &Attachment, result: Option<&Value>) {
        let (list, att, result) = (list.clone(), att.clone(), result.cloned());
        self.in_node(move |r| r.del(&list, &att, result.as_ref()))
            .unwrap();
    }

    /// host-local's reservations: one file per IP, named by it, holding the container id.
    fn reserved_ips(&self) -> Vec<(String, String)> {
        let dir = self.ipam_dir().join("ntt-pods");
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return Vec::new();
        };
        let mut ips: Vec<(String, String)> = entries
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.parse::<std::net::IpAddr>().ok()?;
                let content = std::fs::read_to_string(e.path()).ok()?;
                Some((name, content.lines().next().unwrap_or_default().to_string()))
            })
            .collect();
        ips.sort();
        ips
    }
}

/// The first address of a result, without prefix.
fn first_ip(result: &Value) -> String {
    let address = result["ips"][0]["address"].as_str().unwrap();
    address.split('/').next().unwrap().to_string()
}

/// A node agent stand-in: a hyper HTTP/1 server on `<run_dir>/pluginevent.sock` that records
/// each POSTed event and answers `status` + `body`.
struct FakeAgent {
    events: Arc<Mutex<Vec<(String, Value)>>>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl FakeAgent {
    fn start(run_dir: &Path, status: u16, body: &'static str) -> FakeAgent {
        let socket = run_dir.join("pluginevent.sock");
        let std_listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        std_listener.set_nonblocking(true).unwrap();
        let events: Arc<Mutex<Vec<(String, Value)>>> = Arc::default();
        let record = events.clone();
        let (stop, mut stopped) = oneshot::channel::<()>();
        let thread = thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::UnixListener::from_std(std_listener).unwrap();
                loop {
                    let stream = tokio::select! {
                        _ = &mut stopped => break,
                        accepted = listener.accept() => match accepted {
                            Ok((s, _)) => s,
                            Err(_) => break,
                        },
                    };
                    let record = record.clone();
                    tokio::spawn(async move {
                        let service =
                            hyper::service::service_fn(move |req: http::Request<Incoming>| {
                                let record = record.clone();
                                async move {
                                    let path = req.uri().path().to_string();
                                    let bytes = req.into_body().collect().await?.to_bytes();
                                    let event =
                                        serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                                    record.lock().unwrap().push((path, event));
                                    let mut resp =
                                        http::Response::new(Full::new(Bytes::from(body)));
                                    *resp.status_mut() =
                                        http::StatusCode::from_u16(status).unwrap();
                                    Ok::<_, hyper::Error>(resp)
                                }
                            });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
            });
        });
        FakeAgent {
            events,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    fn events(&self) -> Vec<(String, Value)> {
        self.events.lock().unwrap().clone()
    }
}

impl Drop for FakeAgent {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn failure_of(err: CniError) -> (i32, Value) {
    match err {
        CniError::PluginFailed(f) => {
            assert_eq!(f.plugin, PLUGIN, "the wrong plugin failed: {f:?}");
            eprintln!("plugin stderr:\n{}", f.stderr);
            let json = f
                .error
                .unwrap_or_else(|| panic!("no error JSON: {:?}", f.stdout));
            (f.exit_code.unwrap_or(-1), json)
        }
        other => panic!("expected a plugin failure, got {other}"),
    }
}

fn assert_error_shape(json: &Value, version: &str) {
    let obj = json.as_object().unwrap();
    let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["cniVersion", "code", "details", "msg"], "{json}");
    assert_eq!(json["cniVersion"], version);
    assert!(json["code"].is_u64() && json["msg"].is_string() && json["details"].is_string());
}

#[test]
fn non_ambient_pods_get_the_bridge_result_unchanged() {
    if !available("non_ambient_pods_get_the_bridge_result_unchanged") {
        return;
    }
    let n = Node::new();
    let agent = FakeAgent::start(&n.run_dir(), 200, "");
    n.kube.put_namespace("plain", &[]);
    n.kube.put_namespace("kube-system", &[AMBIENT]);
    n.kube.put_namespace("mesh", &[AMBIENT]);
    for (ns, pod) in [("plain", "web"), ("kube-system", "dns"), ("mesh", "off")] {
        n.kube.put_pod(PodBuilder::new(ns, pod).build());
    }
    // (namespace, pod, our extra config, whether the API may be asked)
    let cases = [
        ("plain", "web", json!({}), true),
        ("kube-system", "dns", json!({}), false),
        ("mesh", "off", json!({"ambient_enabled": false}), false),
    ];
    let mut n_case = 0;
    for version in ["1.0.0", "0.4.0"] {
        for (ns, pod, extra, may_ask_api) in &cases {
            n_case += 1;
            let list = n.chain(version, extra.clone());
            let att = n.attachment(&format!("plain{n_case}"), ns, pod);
            let before = n.kube.requests().len();
            let steps = n.add_steps(&list, &att).unwrap();
            assert_eq!(steps.len(), 2);
            // Our output is the bridge's result, in the list's version.
            assert_eq!(steps[1], steps[0], "{version} {ns}/{pod}");
            assert_eq!(steps[1]["cniVersion"], version);
            // The format is the version's: 0.4.0 keeps `ips[].version`, 1.0.0 has none.
            assert_eq!(
                steps[1]["ips"][0].get("version").is_some(),
                version == "0.4.0",
                "{}",
                steps[1]
            );
            if !may_ask_api {
                assert_eq!(n.kube.requests().len(), before, "{ns}/{pod}: API was asked");
            }
            n.del(&list, &att, Some(&steps[1]));
        }
    }
    assert!(
        agent.events().is_empty(),
        "agent contacted: {:?}",
        agent.events()
    );
    assert!(n.reserved_ips().is_empty(), "{:?}", n.reserved_ips());
}

#[test]
fn ambient_pod_is_enrolled_with_its_assigned_ip() {
    if !available("ambient_pod_is_enrolled_with_its_assigned_ip") {
        return;
    }
    let n = Node::new();
    let agent = FakeAgent::start(&n.run_dir(), 200, "");
    n.kube.put_namespace("mesh", &[AMBIENT]);
    n.kube.put_pod(PodBuilder::new("mesh", "web-0").build());
    let list = n.chain("1.0.0", json!({}));
    let att = n.attachment("amb1", "mesh", "web-0");
    let steps = n.add_steps(&list, &att).unwrap();
    assert_eq!(steps[1], steps[0]);
    let ip = first_ip(&steps[1]);
    // host-local reserved exactly that IP for this container.
    assert_eq!(n.reserved_ips(), vec![(ip.clone(), "amb1".to_string())]);
    let events = agent.events();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].0, "/cmdadd");
    // Istio's CNIPluginAddEvent as Go's encoding/json writes it: the address host-local gave,
    // its /24 as a 4-byte base64 mask, the bridge's gateway, eth0's index in the result.
    let body = &events[0].1;
    let mut keys: Vec<&str> = body
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(keys, ["IPs", "Netns", "PodName", "PodNamespace"], "{body}");
    assert_eq!(body["Netns"], json!(n.pod_ns.path()), "{body}");
    assert_eq!(body["PodName"], "web-0");
    assert_eq!(body["PodNamespace"], "mesh");
    let eth0 = steps[1]["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .position(|i| i["name"] == "eth0")
        .unwrap();
    assert_eq!(
        body["IPs"],
        json!([{
            "Interface": eth0,
            "Address": {"IP": ip, "Mask": "////AA=="},
            "Gateway": "10.99.0.1",
        }]),
        "{body}"
    );
    assert_eq!(body["IPs"][0]["Address"]["IP"], json!(ip));
    assert_eq!(body["IPs"][0]["Address"]["Mask"], "////AA==");
    // Our agent reads it back to the same address.
    let event: nodetunnel_cni::event::PluginEvent = serde_json::from_value(body.clone()).unwrap();
    assert_eq!(
        event.addresses().unwrap(),
        vec![ip.parse::<std::net::IpAddr>().unwrap()]
    );
    // The pod's eth0 really has it (the bridge worked; we did not disturb it).
    let addrs = n.pod_ns.ip(&["-4", "-o", "addr", "show", "eth0"]).unwrap();
    assert!(addrs.contains(&format!("{ip}/24")), "{addrs}");
    n.del(&list, &att, Some(&steps[1]));
}

#[test]
fn agent_refusal_fails_the_add_closed() {
    if !available("agent_refusal_fails_the_add_closed") {
        return;
    }
    let n = Node::new();
    let agent = FakeAgent::start(&n.run_dir(), 500, "cannot program the pod's netns");
    n.kube.put_namespace("mesh", &[AMBIENT]);
    n.kube.put_pod(PodBuilder::new("mesh", "web-0").build());
    for version in ["1.0.0", "0.4.0"] {
        let list = n.chain(version, json!({}));
        let att = n.attachment(
            &format!("refused{}", version.replace('.', "")),
            "mesh",
            "web-0",
        );
        let err = n.add_steps(&list, &att).unwrap_err();
        let (exit, json) = failure_of(err);
        assert_eq!(exit, 1);
        assert_error_shape(&json, version);
        assert_eq!(json["code"], 101);
        let details = json["details"].as_str().unwrap();
        assert!(details.contains("500"), "{details}");
        assert!(
            details.contains("cannot program the pod's netns"),
            "{details}"
        );
        // The runtime cleans up after a failed ADD.
        n.del(&list, &att, None);
    }
    assert_eq!(agent.events().len(), 2);
    assert!(n.reserved_ips().is_empty(), "{:?}", n.reserved_ips());
}

#[test]
fn missing_agent_or_api_fails_the_add_closed() {
    if !available("missing_agent_or_api_fails_the_add_closed") {
        return;
    }
    let n = Node::new();
    n.kube.put_namespace("mesh", &[AMBIENT]);
    n.kube.put_pod(PodBuilder::new("mesh", "web-0").build());
    let list = n.chain("1.0.0", json!({}));

    // No agent socket.
    let att = n.attachment("noagent", "mesh", "web-0");
    let (exit, json) = failure_of(n.add_steps(&list, &att).unwrap_err());
    assert_eq!(exit, 1);
    assert_error_shape(&json, "1.0.0");
    assert_eq!(json["code"], 11);
    let socket = n.run_dir().join("pluginevent.sock");
    assert!(
        json["details"]
            .as_str()
            .unwrap()
            .contains(&socket.display().to_string()),
        "{json}"
    );
    n.del(&list, &att, None);

    // The pod is not known to the API server.
    let _agent = FakeAgent::start(&n.run_dir(), 200, "");
    let att = n.attachment("nopod", "mesh", "ghost");
    let (_, json) = failure_of(n.add_steps(&list, &att).unwrap_err());
    assert_eq!(json["code"], 100, "{json}");
    n.del(&list, &att, None);

    // The API server cannot be reached: a kubeconfig pointing at a closed port.
    let dead_run = n.dir.path().join("dead-run");
    std::fs::create_dir_all(&dead_run).unwrap();
    let kubeconfig = std::fs::read_to_string(n.run_dir().join("istio-cni-kubeconfig")).unwrap();
    std::fs::write(
        dead_run.join("istio-cni-kubeconfig"),
        kubeconfig.replace(&n.kube.url(), "http://127.0.0.1:1"),
    )
    .unwrap();
    let _dead_agent = FakeAgent::start(&dead_run, 200, "");
    let list = n.chain("1.0.0", json!({"cni_agent_run_dir": dead_run}));
    let att = n.attachment("noapi", "mesh", "web-0");
    let (_, json) = failure_of(n.add_steps(&list, &att).unwrap_err());
    assert_eq!(json["code"], 11, "{json}");
    n.del(&list, &att, None);
    assert!(n.reserved_ips().is_empty(), "{:?}", n.reserved_ips());
}

#[test]
fn del_is_idempotent_check_passes_and_version_answers() {
    if !available("del_is_idempotent_check_passes_and_version_answers") {
        return;
    }
    let n = Node::new();
    let _agent = FakeAgent::start(&n.run_dir(), 200, "");
    n.kube.put_namespace("mesh", &[AMBIENT]);
    n.kube.put_pod(PodBuilder::new("mesh", "web-0").build());
    let list = n.chain("1.0.0", json!({}));
    let att = n.attachment("del1", "mesh", "web-0");
    let steps = n.add_steps(&list, &att).unwrap();
    let result = steps[1].clone();
    let ip = first_ip(&result);
    assert_eq!(n.reserved_ips(), vec![(ip, "del1".to_string())]);

    let (l, a, r) = (list.clone(), att.clone(), result.clone());
    n.in_node(move |runner| runner.check(&l, &a, &r)).unwrap();

    n.del(&list, &att, Some(&result));
    assert!(n.reserved_ips().is_empty(), "{:?}", n.reserved_ips());
    n.del(&list, &att, Some(&result));
    n.del(&list, &att, None);

    // Our plugin alone, with neither agent nor API nor run dir: DEL and CHECK still succeed.
    let alone = n.conflist(
        "1.0.0",
        vec![n.our_entry(json!({"cni_agent_run_dir": "/nonexistent/ntt-run"}))],
    );
    let (l, a, r) = (alone.clone(), att.clone(), result.clone());
    n.in_node(move |runner| {
        runner.del(&l, &a, Some(&r))?;
        runner.del(&l, &a, None)?;
        runner.check(&l, &a, &r)
    })
    .unwrap();

    let version = n.runner.version(PLUGIN, "1.0.0").unwrap();
    assert_eq!(
        version,
        json!({"cniVersion": "1.0.0",
               "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]})
    );
}
