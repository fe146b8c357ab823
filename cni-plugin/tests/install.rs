//! The install step against real directories: a primary CNI's config that gets our entry and
//! keeps it while the primary rewrites its file, the binary copy, the kubeconfig, uninstall,
//! and the upgrade check against a real HTTP server standing in for the API server.
//! No root needed: everything lives in temporary directories.

use std::fs;
use std::future::Future;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nodetunnel_cni::install::conflist::{self, ConflistError};
use nodetunnel_cni::install::{
    binary, files, kubeconfig, upgrade, BinaryOutcome, ConflistState, InstallConfig, InstallError,
    Installer, ShutdownAction,
};
use nodetunnel_cni::plugin::PluginConfig;
use serde_json::{json, Value};
use tempfile::TempDir;
use tokio::sync::oneshot;

const OURS: &str = "nodetunnel-cni";
const DEADLINE: Duration = Duration::from_secs(10);

/// A Calico-like primary config: several plugins, fields nobody here knows.
fn calico() -> Value {
    json!({
        "name": "k8s-pod-network",
        "cniVersion": "0.3.1",
        "plugins": [
            {
                "type": "calico",
                "log_level": "info",
                "log_file_path": "/var/log/calico/cni/cni.log",
                "datastore_type": "kubernetes",
                "nodename": "node-1",
                "mtu": 0,
                "ipam": {"type": "calico-ipam"},
                "policy": {"type": "k8s"},
                "kubernetes": {"kubeconfig": "/etc/cni/net.d/calico-kubeconfig"}
            },
            {"type": "portmap", "snat": true, "capabilities": {"portMappings": true}},
            {"type": "bandwidth", "capabilities": {"bandwidth": true}}
        ],
        "x-vendor-extension": {"keep": ["me", 1]}
    })
}

fn flannel() -> Value {
    json!({
        "name": "cbr0",
        "cniVersion": "1.0.0",
        "plugins": [
            {"type": "flannel", "delegate": {"hairpinMode": true, "isDefaultGateway": true}},
            {"type": "portmap", "capabilities": {"portMappings": true}}
        ]
    })
}

/// Our entry as the agent builds it: a serialized `PluginConfig` without `cniVersion`.
fn entry() -> Value {
    let cfg = PluginConfig {
        cni_version: String::new(),
        name: String::new(),
        plugin_type: OURS.into(),
        plugin_log_level: "info".into(),
        cni_agent_run_dir: "/var/run/istio-cni".into(),
        ambient_enabled: true,
        enablement_selectors: None,
        exclude_namespaces: vec!["kube-system".into()],
        pod_namespace: "istio-system".into(),
        native_nftables: false,
    };
    let mut v = serde_json::to_value(cfg).unwrap();
    v.as_object_mut().unwrap().shift_remove("cniVersion");
    v
}

struct Host {
    _tmp: TempDir,
    net: PathBuf,
    bin: PathBuf,
    run: PathBuf,
    source: PathBuf,
}

impl Host {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let net = tmp.path().join("net.d");
        let bin = tmp.path().join("bin");
        let run = tmp.path().join("run");
        let image = tmp.path().join("image");
        for d in [&net, &bin, &image] {
            fs::create_dir(d).unwrap();
        }
        let source = image.join(OURS);
        fs::write(&source, b"\x7fELF pretend plugin v1").unwrap();
        Self {
            _tmp: tmp,
            net,
            bin,
            run,
            source,
        }
    }

    fn config(&self, conf_name: Option<&str>) -> InstallConfig {
        InstallConfig {
            cni_net_dir: self.net.clone(),
            cni_bin_dir: self.bin.clone(),
            plugin_source: self.source.clone(),
            plugin_type: OURS.into(),
            conf_name: conf_name.map(Into::into),
            kubeconfig_path: self.run.join("istio-cni-kubeconfig"),
            entry: entry(),
        }
    }

    fn installer(&self) -> Arc<Installer> {
        let _ = tracing_subscriber::fmt()
            .with_env_filter("nodetunnel_cni=debug")
            .with_test_writer()
            .try_init();
        Arc::new(Installer::new(self.config(None)))
    }

    fn conf(&self, name: &str) -> PathBuf {
        self.net.join(name)
    }

    fn write(&self, name: &str, doc: &Value) {
        fs::write(self.conf(name), serde_json::to_vec_pretty(doc).unwrap()).unwrap();
    }

    fn read(&self, name: &str) -> Value {
        serde_json::from_slice(&fs::read(self.conf(name)).unwrap()).unwrap()
    }

    fn names(&self) -> Vec<String> {
        let mut names: Vec<_> = fs::read_dir(&self.net)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }
}

fn kube_config() -> kube::Config {
    let mut cfg = kube::Config::new("https://10.96.0.1:443".parse().unwrap());
    cfg.auth_info.token = Some("token-1".to_string().into());
    cfg.root_cert = Some(vec![b"not really DER but bytes".to_vec()]);
    cfg
}

/// How many plugins of our type the file at `path` holds (0 if unreadable mid-write).
fn ours_in(path: &Path) -> usize {
    let Ok(bytes) = fs::read(path) else { return 0 };
    let Ok(doc) = serde_json::from_slice::<Value>(&bytes) else {
        return 0;
    };
    doc["plugins"]
        .as_array()
        .map_or(0, |p| p.iter().filter(|p| p["type"] == OURS).count())
}

fn is_ours_last(doc: &Value) -> bool {
    doc["plugins"]
        .as_array()
        .and_then(|p| p.last())
        .is_some_and(|p| p["type"] == OURS)
}

async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + DEADLINE;
    loop {
        if cond() {
            return;
        }
        assert!(Instant::now() < end, "not within {DEADLINE:?}: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs `keep_installed` on its own task; dropping the guard stops it.
struct Keeper {
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Keeper {
    /// Starts `keep_installed` and returns once its first check is done, i.e. once its
    /// directory watch is in place: later repairs are the watch's doing (the periodic
    /// fallback is far beyond the deadline), not that first check's.
    async fn start(installer: &Arc<Installer>) -> Self {
        let (stop, stopped) = oneshot::channel::<()>();
        let inst = installer.clone();
        let before = installer.checks();
        let task = tokio::spawn(async move { inst.keep_installed(stopped).await });
        eventually("keep_installed is up", || installer.checks() > before).await;
        Self {
            stop: Some(stop),
            task: Some(task),
        }
    }

    async fn stop(mut self) {
        let _ = self.stop.take().map(|s| s.send(()));
        if let Some(task) = self.task.take() {
            tokio::time::timeout(DEADLINE, task)
                .await
                .expect("keep_installed did not stop on shutdown")
                .unwrap();
        }
    }
}

impl Drop for Keeper {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

// ---- conflist edits on realistic configs ----

#[test]
fn insert_into_calico_keeps_everything_and_puts_ours_last() {
    let original = calico();
    let out = conflist::insert(original.clone(), &entry()).unwrap();
    let plugins = out["plugins"].as_array().unwrap();
    assert_eq!(plugins.len(), 4);
    assert_eq!(
        &plugins[..3],
        original["plugins"].as_array().unwrap().as_slice()
    );
    assert_eq!(plugins[3]["type"], OURS);
    assert_eq!(plugins[3]["cniVersion"], "0.3.1");
    assert_eq!(plugins[3]["exclude_namespaces"], json!(["kube-system"]));
    assert_eq!(out["x-vendor-extension"], original["x-vendor-extension"]);
    let keys: Vec<_> = out.as_object().unwrap().keys().cloned().collect();
    assert_eq!(
        keys,
        ["name", "cniVersion", "plugins", "x-vendor-extension"]
    );
    // Serialized key order inside the untouched plugins is the original's too.
    let text = serde_json::to_string(&out).unwrap();
    assert!(text.contains(r#"{"type":"calico","log_level":"info","log_file_path""#));
}

#[test]
fn insert_twice_equals_once_and_remove_twice_restores_the_original() {
    let original = calico();
    let once = conflist::insert(original.clone(), &entry()).unwrap();
    let twice = conflist::insert(once.clone(), &entry()).unwrap();
    assert_eq!(
        serde_json::to_string(&once).unwrap(),
        serde_json::to_string(&twice).unwrap()
    );
    let removed = conflist::remove(twice, OURS);
    assert_eq!(removed, original);
    assert_eq!(
        serde_json::to_string(&conflist::remove(removed.clone(), OURS)).unwrap(),
        serde_json::to_string(&original).unwrap()
    );
}

// ---- choosing the primary config ----

#[test]
fn primary_is_the_first_loadable_file_by_name() {
    let host = Host::new();
    host.write(
        "99-loopback.conf",
        &json!({"cniVersion": "0.3.1", "name": "lo", "type": "loopback"}),
    );
    host.write("10-calico.conflist", &calico());
    fs::write(host.conf("05-broken.conflist"), b"{ not json").unwrap();
    host.write("07-empty.conflist", &json!({"name": "x", "plugins": []}));
    host.write("08-list-in-a-conf.conf", &flannel()); // no `type`: a runtime skips it
    fs::write(host.conf("00-readme.txt"), b"hello").unwrap();
    fs::create_dir(host.conf("01-dir.conflist")).unwrap();

    let chosen = files::choose_primary(&host.net, None).unwrap();
    assert_eq!(chosen, Some(host.conf("10-calico.conflist")));
}

#[test]
fn an_explicit_name_wins_and_follows_the_conf_to_conflist_rename() {
    let host = Host::new();
    host.write("10-calico.conflist", &calico());
    host.write("99-bridge.conflist", &flannel());
    let chosen = files::choose_primary(&host.net, Some("99-bridge.conflist")).unwrap();
    assert_eq!(chosen, Some(host.conf("99-bridge.conflist")));
    // Asked for X.conf, only X.conflist is there (our own wrap renamed it): use that.
    let chosen = files::choose_primary(&host.net, Some("99-bridge.conf")).unwrap();
    assert_eq!(chosen, Some(host.conf("99-bridge.conflist")));
    assert_eq!(
        files::choose_primary(&host.net, Some("50-none.conflist")).unwrap(),
        None
    );
}

#[test]
fn an_empty_dir_has_no_primary_and_a_missing_dir_is_an_error() {
    let host = Host::new();
    assert_eq!(files::choose_primary(&host.net, None).unwrap(), None);
    let err = files::choose_primary(&host.net.join("nope"), None).unwrap_err();
    assert!(err.to_string().contains("nope"), "{err}");
}

// ---- install, uninstall ----

#[tokio::test]
async fn install_puts_everything_in_place_once() {
    let host = Host::new();
    host.write("10-calico.conflist", &calico());
    fs::set_permissions(
        host.conf("10-calico.conflist"),
        fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let installer = host.installer();

    let report = installer.install(&kube_config()).await.unwrap();
    assert_eq!(report.binary, BinaryOutcome::Copied);
    assert!(report.kubeconfig_written);
    assert_eq!(
        report.conflist,
        ConflistState::Installed {
            path: host.conf("10-calico.conflist"),
            changed: true,
            wrapped_from: None
        }
    );
    assert!(*installer.ready().borrow());
    let doc = host.read("10-calico.conflist");
    assert!(is_ours_last(&doc));
    assert_eq!(doc, conflist::insert(calico(), &entry()).unwrap());
    assert_eq!(
        files::mode_of(&host.conf("10-calico.conflist")),
        Some(0o600)
    );
    assert_eq!(
        host.names(),
        ["10-calico.conflist"],
        "no temporary files left"
    );

    let before = fs::read(host.conf("10-calico.conflist")).unwrap();
    let again = installer.install(&kube_config()).await.unwrap();
    assert_eq!(again.binary, BinaryOutcome::Unchanged);
    assert!(!again.kubeconfig_written);
    assert!(matches!(
        again.conflist,
        ConflistState::Installed { changed: false, .. }
    ));
    assert_eq!(fs::read(host.conf("10-calico.conflist")).unwrap(), before);
}

#[tokio::test]
async fn a_single_conf_is_wrapped_into_a_conflist_and_uninstall_keeps_it_loadable() {
    let host = Host::new();
    let bridge = json!({
        "cniVersion": "0.4.0",
        "name": "bridge",
        "type": "bridge",
        "bridge": "cni0",
        "ipam": {"type": "host-local", "subnet": "10.244.0.0/16"}
    });
    host.write("10-bridge.conf", &bridge);
    let installer = host.installer();

    let report = installer.install(&kube_config()).await.unwrap();
    assert_eq!(
        report.conflist,
        ConflistState::Installed {
            path: host.conf("10-bridge.conflist"),
            changed: true,
            wrapped_from: Some(host.conf("10-bridge.conf")),
        }
    );
    assert_eq!(host.names(), ["10-bridge.conflist"]);
    let list = host.read("10-bridge.conflist");
    assert_eq!(list["name"], "bridge");
    assert_eq!(list["cniVersion"], "0.4.0");
    assert_eq!(list["plugins"][0], bridge);
    assert!(is_ours_last(&list));
    assert!(conflist::is_valid(&list, conflist::Shape::List));

    // A second pass finds the conflist and leaves it alone.
    let again = installer.install(&kube_config()).await.unwrap();
    assert!(matches!(
        again.conflist,
        ConflistState::Installed { changed: false, .. }
    ));

    installer.uninstall().unwrap();
    let list = host.read("10-bridge.conflist");
    assert_eq!(list["plugins"], json!([bridge]));
    assert!(conflist::is_valid(&list, conflist::Shape::List));
}

#[tokio::test]
async fn uninstall_removes_entry_everywhere_kubeconfig_and_binary_and_is_idempotent() {
    let host = Host::new();
    host.write("10-calico.conflist", &calico());
    let installer = host.installer();
    installer.install(&kube_config()).await.unwrap();
    // A file that was the primary earlier still carries our entry.
    host.write(
        "20-old.conflist",
        &conflist::insert(flannel(), &entry()).unwrap(),
    );
    fs::write(host.conf("30-garbage.conf"), b"{").unwrap();

    installer.uninstall().unwrap();
    assert_eq!(host.read("10-calico.conflist"), calico());
    assert_eq!(host.read("20-old.conflist"), flannel());
    assert_eq!(fs::read(host.conf("30-garbage.conf")).unwrap(), b"{");
    assert!(!host.run.join("istio-cni-kubeconfig").exists());
    assert!(!host.bin.join(OURS).exists());
    assert!(!*installer.ready().borrow());

    installer.uninstall().unwrap();
    assert_eq!(host.read("10-calico.conflist"), calico());
}

#[tokio::test]
async fn a_primary_we_cannot_extend_is_a_typed_error_naming_the_file() {
    let host = Host::new();
    let installer = Arc::new(Installer::new(host.config(Some("10-odd.conflist"))));
    host.write(
        "10-odd.conflist",
        &json!({"name": "odd", "plugins": {"type": "x"}}),
    );
    let err = installer.install(&kube_config()).await.unwrap_err();
    match &err {
        InstallError::Conflist { path, source } => {
            assert_eq!(path, &host.conf("10-odd.conflist"));
            assert_eq!(source, &ConflistError::PluginsNotArray);
        }
        other => panic!("unexpected error {other:?}"),
    }
    assert!(err.to_string().contains("10-odd.conflist"), "{err}");
    assert!(!*installer.ready().borrow());
}

// ---- keeping it installed ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_entry_comes_back_when_the_primary_rewrites_its_file() {
    let host = Host::new();
    host.write("10-calico.conflist", &calico());
    let installer = host.installer();
    installer.install(&kube_config()).await.unwrap();
    let keeper = Keeper::start(&installer).await;
    let path = host.conf("10-calico.conflist");

    // 1. Atomic rename over the file, content without our entry.
    let temp = host.net.join(".calico-tmp");
    fs::write(&temp, serde_json::to_vec_pretty(&calico()).unwrap()).unwrap();
    fs::rename(&temp, &path).unwrap();
    eventually("entry back after rename-over", || ours_in(&path) == 1).await;

    // 2. Truncate and write in place.
    fs::write(&path, serde_json::to_vec_pretty(&calico()).unwrap()).unwrap();
    eventually("entry back after in-place rewrite", || ours_in(&path) == 1).await;

    // 3. Someone deletes only our entry and keeps the rest.
    let without = conflist::remove(host.read("10-calico.conflist"), OURS);
    fs::write(&path, serde_json::to_vec_pretty(&without).unwrap()).unwrap();
    eventually("entry back after it was deleted", || ours_in(&path) == 1).await;

    // 4. Our entry moved away from the end: it goes last again, once.
    let mut doc = host.read("10-calico.conflist");
    let plugins = doc["plugins"].as_array_mut().unwrap();
    let mine = plugins.pop().unwrap();
    plugins.insert(0, mine);
    fs::write(&path, serde_json::to_vec_pretty(&doc).unwrap()).unwrap();
    eventually("entry last again", || {
        fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .is_some_and(|d| is_ours_last(&d) && ours_in(&path) == 1)
    })
    .await;

    let doc = host.read("10-calico.conflist");
    assert_eq!(doc, conflist::insert(calico(), &entry()).unwrap());
    assert!(*installer.ready().borrow());
    keeper.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_that_writes_its_conf_again_is_wrapped_again() {
    let host = Host::new();
    let bridge = json!({"cniVersion": "0.4.0", "name": "bridge", "type": "bridge"});
    host.write("10-bridge.conf", &bridge);
    let installer = host.installer();
    installer.install(&kube_config()).await.unwrap();
    let keeper = Keeper::start(&installer).await;

    // The primary's installer restores its single config next to our wrapped list; the
    // runtime would now load the `.conf` (it sorts first) and skip us.
    host.write("10-bridge.conf", &bridge);
    eventually("the .conf is wrapped again", || {
        !host.conf("10-bridge.conf").exists() && ours_in(&host.conf("10-bridge.conflist")) == 1
    })
    .await;
    assert_eq!(host.read("10-bridge.conflist")["plugins"][0], bridge);
    assert_eq!(host.names(), ["10-bridge.conflist"]);
    keeper.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_first_file_becomes_the_primary_and_gets_the_entry() {
    let host = Host::new();
    host.write("10-calico.conflist", &calico());
    let installer = host.installer();
    installer.install(&kube_config()).await.unwrap();
    let keeper = Keeper::start(&installer).await;

    host.write("05-cilium.conflist", &flannel());
    let new = host.conf("05-cilium.conflist");
    eventually("the new first file has our entry", || ours_in(&new) == 1).await;
    assert_eq!(
        ours_in(&host.conf("10-calico.conflist")),
        1,
        "the old one is left as is"
    );
    assert!(*installer.ready().borrow());
    keeper.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_primary_it_waits_not_ready_until_one_appears() {
    let host = Host::new();
    let installer = host.installer();
    let report = installer.install(&kube_config()).await.unwrap();
    assert_eq!(report.conflist, ConflistState::WaitingForPrimary);
    assert!(!report.is_installed());
    assert!(!*installer.ready().borrow());
    // The binary and kubeconfig are already there.
    assert!(host.bin.join(OURS).exists());
    assert!(host.run.join("istio-cni-kubeconfig").exists());

    let keeper = Keeper::start(&installer).await;
    let mut ready = installer.ready();
    // The primary CNI installs its config the usual way: temp file, then rename.
    let temp = host.net.join(".tmp-flannel");
    fs::write(&temp, serde_json::to_vec_pretty(&flannel()).unwrap()).unwrap();
    fs::rename(&temp, host.conf("10-flannel.conflist")).unwrap();

    tokio::time::timeout(DEADLINE, ready.wait_for(|r| *r))
        .await
        .expect("not ready within the deadline")
        .unwrap();
    assert_eq!(ours_in(&host.conf("10-flannel.conflist")), 1);
    keeper.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_binary_is_copied_back() {
    let host = Host::new();
    host.write("10-calico.conflist", &calico());
    let installer = host.installer();
    installer.install(&kube_config()).await.unwrap();
    let keeper = Keeper::start(&installer).await;

    let target = host.bin.join(OURS);
    fs::remove_file(&target).unwrap();
    eventually("binary back", || target.exists()).await;
    assert_eq!(fs::read(&target).unwrap(), fs::read(&host.source).unwrap());
    keeper.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_token_reaches_the_kubeconfig_on_the_periodic_check() {
    let host = Host::new();
    host.write("10-calico.conflist", &calico());
    let token = host.run.with_file_name("token");
    fs::write(&token, "token-1\n").unwrap();
    let mut kube = kube::Config::new("https://10.96.0.1".parse().unwrap());
    kube.auth_info.token_file = Some(token.to_string_lossy().into_owned());
    kube.accept_invalid_certs = true;
    let installer = Arc::new(
        Installer::new(host.config(None)).with_recheck_interval(Duration::from_millis(100)),
    );
    installer.install(&kube).await.unwrap();
    let kc = host.run.join("istio-cni-kubeconfig");
    assert!(fs::read_to_string(&kc).unwrap().contains("token-1"));

    let keeper = Keeper::start(&installer).await;
    fs::write(&token, "token-2\n").unwrap();
    eventually("rotated token written", || {
        fs::read_to_string(&kc).is_ok_and(|t| t.contains("token-2"))
    })
    .await;
    keeper.stop().await;
}

// ---- binary ----

#[test]
fn binary_copy_is_idempotent_and_replaces_by_rename() {
    let host = Host::new();
    let target = host.bin.join(OURS);
    assert_eq!(
        binary::ensure(&host.source, &target).unwrap(),
        BinaryOutcome::Copied
    );
    assert_eq!(
        binary::ensure(&host.source, &target).unwrap(),
        BinaryOutcome::Unchanged
    );
    assert_eq!(files::mode_of(&target), Some(0o755));
    let old_inode = fs::metadata(&target).unwrap().ino();
    // A runtime that has the old binary open keeps reading the old bytes.
    let held_open = fs::File::open(&target).unwrap();

    fs::write(&host.source, b"\x7fELF pretend plugin v2, longer").unwrap();
    assert_eq!(
        binary::ensure(&host.source, &target).unwrap(),
        BinaryOutcome::Copied
    );
    assert_ne!(
        fs::metadata(&target).unwrap().ino(),
        old_inode,
        "replaced, not overwritten"
    );
    assert_eq!(fs::read(&target).unwrap(), fs::read(&host.source).unwrap());
    let mut old = Vec::new();
    std::io::Read::read_to_end(&mut &held_open, &mut old).unwrap();
    assert_eq!(old, b"\x7fELF pretend plugin v1");
    assert_eq!(
        fs::read_dir(&host.bin).unwrap().count(),
        1,
        "no temporary files left"
    );

    // A wrong mode alone is repaired too.
    fs::set_permissions(&target, fs::Permissions::from_mode(0o644)).unwrap();
    assert_eq!(
        binary::ensure(&host.source, &target).unwrap(),
        BinaryOutcome::Copied
    );
    assert_eq!(files::mode_of(&target), Some(0o755));
}

#[test]
fn a_missing_source_binary_names_the_path() {
    let host = Host::new();
    let missing = host.source.with_file_name("absent");
    let err = binary::ensure(&missing, &host.bin.join(OURS)).unwrap_err();
    assert!(err.to_string().contains("absent"), "{err}");
}

// ---- kubeconfig ----

#[tokio::test]
async fn kubeconfig_parses_back_with_the_agents_credentials() {
    let host = Host::new();
    let path = host.run.join("istio-cni-kubeconfig");
    let agent = kube_config();
    assert!(kubeconfig::ensure(&agent, &path).unwrap());
    assert!(
        !kubeconfig::ensure(&agent, &path).unwrap(),
        "unchanged: not rewritten"
    );
    assert_eq!(
        fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );

    let parsed = kube::config::Kubeconfig::read_from(&path).unwrap();
    assert_eq!(parsed.current_context.as_deref(), Some("istio-cni-context"));
    let cluster = parsed.clusters[0].cluster.as_ref().unwrap();
    assert_eq!(cluster.server.as_deref(), Some("https://10.96.0.1:443"));
    assert!(cluster.certificate_authority_data.is_some());
    assert_eq!(cluster.insecure_skip_tls_verify, None);

    let plugin = kube::Config::from_custom_kubeconfig(parsed, &Default::default())
        .await
        .unwrap();
    assert_eq!(
        plugin.cluster_url.to_string(),
        agent.cluster_url.to_string()
    );
    assert_eq!(plugin.root_cert, agent.root_cert);
    let token = serde_json::to_value(&plugin.auth_info).unwrap()["token"].clone();
    assert_eq!(token, "token-1");
}

#[test]
fn kubeconfig_with_skip_verify_and_a_token_file() {
    let host = Host::new();
    let token = host.source.with_file_name("token");
    fs::write(&token, "abc.def.ghi\n").unwrap();
    let mut agent = kube::Config::new("https://[fd00::1]:6443".parse().unwrap());
    agent.accept_invalid_certs = true;
    agent.root_cert = Some(vec![b"ignored when skipping verification".to_vec()]);
    agent.auth_info.token_file = Some(token.to_string_lossy().into_owned());
    let path = host.run.join("istio-cni-kubeconfig");
    kubeconfig::ensure(&agent, &path).unwrap();

    let parsed = kube::config::Kubeconfig::read_from(&path).unwrap();
    let cluster = parsed.clusters[0].cluster.as_ref().unwrap();
    assert_eq!(cluster.server.as_deref(), Some("https://[fd00::1]:6443"));
    assert_eq!(cluster.insecure_skip_tls_verify, Some(true));
    assert_eq!(cluster.certificate_authority_data, None);
    let user = serde_json::to_value(parsed.auth_infos[0].auth_info.as_ref().unwrap()).unwrap();
    assert_eq!(user["token"], "abc.def.ghi");
    assert!(
        user.get("tokenFile").is_none(),
        "inlined, not a container path"
    );
}

#[test]
fn kubeconfig_errors_name_the_missing_file() {
    let host = Host::new();
    let mut agent = kube::Config::new("https://10.96.0.1".parse().unwrap());
    agent.auth_info.token_file = Some("/nonexistent/token".into());
    let err = kubeconfig::render(&agent).unwrap_err();
    assert!(err.to_string().contains("/nonexistent/token"), "{err}");
    agent.auth_info.token_file = None;
    agent.root_cert_file = Some(host.run.join("ca.crt"));
    let err = kubeconfig::render(&agent).unwrap_err();
    assert!(err.to_string().contains("ca.crt"), "{err}");
}

// ---- upgrade or uninstall ----

/// A one-route HTTP server on loopback that answers every request with `status` and `body`.
async fn api_server(status: u16, body: Value) -> (String, impl Future<Output = ()>) {
    use http_body_util::Full;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let body = bytes::Bytes::from(serde_json::to_vec(&body).unwrap());
    let serve = async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let body = body.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |_req| {
                    let body = body.clone();
                    async move {
                        http::Response::builder()
                            .status(status)
                            .header("content-type", "application/json")
                            .body(Full::new(body))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    };
    (url, serve)
}

async fn action_with(status: u16, body: Value) -> ShutdownAction {
    let (url, serve) = api_server(status, body).await;
    let server = tokio::spawn(serve);
    let cfg = kube::Config::new(url.parse().unwrap());
    let client = kube::Client::try_from(cfg).unwrap();
    let action = upgrade::shutdown_action(client, "istio-system", "istio-cni-node").await;
    server.abort();
    action
}

#[tokio::test]
async fn shutdown_keeps_the_plugin_while_the_daemonset_exists() {
    let ds = json!({
        "apiVersion": "apps/v1", "kind": "DaemonSet",
        "metadata": {"name": "istio-cni-node", "namespace": "istio-system"}
    });
    assert_eq!(action_with(200, ds).await, ShutdownAction::KeepForUpgrade);
}

#[tokio::test]
async fn shutdown_uninstalls_when_the_daemonset_is_gone_or_deleting() {
    let not_found = json!({
        "apiVersion": "v1", "kind": "Status", "status": "Failure", "reason": "NotFound",
        "code": 404, "message": "daemonsets.apps \"istio-cni-node\" not found"
    });
    assert_eq!(action_with(404, not_found).await, ShutdownAction::Uninstall);
    let deleting = json!({
        "apiVersion": "apps/v1", "kind": "DaemonSet",
        "metadata": {"name": "istio-cni-node", "namespace": "istio-system",
                     "deletionTimestamp": "2025-01-01T00:00:00Z"}
    });
    assert_eq!(action_with(200, deleting).await, ShutdownAction::Uninstall);
}
