//! The deployment manifests (`manifests/`) as a cluster receives them: each overlay rendered
//! by `kubectl kustomize` into JSON objects, and ([`pod_env`]) one container's environment
//! resolved as the kubelet would resolve it, so tests can hand it to the binaries' own config
//! loaders.
//!
//! ```text
//! use nodetunnel_testbed::manifests::{self, pod_env::{materialize, PodFacts}};
//!
//! if !manifests::kubectl_available("my_test") { return; }
//! let rendered = manifests::render("standalone", &nodetunnel_bin)?;
//! let ds = rendered.object("DaemonSet", "nodetunnel")?;
//! let pod = materialize(&rendered, ds, "nodetunnel", &PodFacts::example())?;
//! let out = pod.command(&nodetunnel_bin).arg("check-config").output()?;
//! ```

pub mod pod_env;
pub mod rbac;

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;
use serde_json::Value;

use crate::error::{Error, Result};

/// Every overlay under `manifests/overlays/`.
pub const OVERLAYS: [&str; 2] = ["with-istio", "standalone"];

/// The nodes the standalone overlay's secrets are made for when rendering (make-secrets.sh).
pub const STANDALONE_NODES: [&str; 2] = ["node-a", "node-b"];

/// The repository's `manifests/` directory.
pub fn source_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../manifests")
}

/// True when `kubectl` (with its built-in kustomize) can be run. Without it the test prints
/// "skipped" and returns; under `CI=true` that is a failure instead.
pub fn kubectl_available(test: &str) -> bool {
    let works = Command::new("kubectl")
        .args(["version", "--client"])
        .output()
        .is_ok_and(|out| out.status.success());
    if !works {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("{test}: needs kubectl (kustomize built in); CI=true, so this is a failure, not a skip");
        }
        eprintln!("{test}: skipped: needs kubectl");
    }
    works
}

/// One overlay, rendered. The objects are kept as JSON (`kind`, `metadata`, ...).
pub struct Rendered {
    pub overlay: String,
    pub objects: Vec<Value>,
    /// The copy of `manifests/` it was rendered from (with the standalone secrets).
    _dir: tempfile::TempDir,
}

impl Rendered {
    /// The object of `kind` named `name`, or an error naming what is there.
    pub fn object(&self, kind: &str, name: &str) -> Result<&Value> {
        self.objects
            .iter()
            .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
            .ok_or_else(|| {
                let have: Vec<String> = self
                    .objects
                    .iter()
                    .map(|o| format!("{}/{}", o["kind"], o["metadata"]["name"]))
                    .collect();
                Error::Invalid(format!(
                    "overlays/{}: no {kind} {name}; rendered: {}",
                    self.overlay,
                    have.join(", ")
                ))
            })
    }

    /// Every object of `kind`.
    pub fn of_kind<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
        self.objects.iter().filter(move |o| o["kind"] == kind)
    }
}

/// Renders `manifests/overlays/<overlay>` from a copy of `manifests/`. For the standalone
/// overlay its secrets are made first with its own `make-secrets.sh` for [`STANDALONE_NODES`],
/// the CA by `nodetunnel` (the binary at `nodetunnel_bin`), so what is rendered is what a user
/// gets.
pub fn render(overlay: &str, nodetunnel_bin: &Path) -> Result<Rendered> {
    let dir = tempfile::tempdir().map_err(|e| Error::io("creating a temp dir", e))?;
    let copy = dir.path().join("manifests");
    copy_tree(&source_dir(), &copy)?;
    let overlay_dir = copy.join("overlays").join(overlay);
    if overlay == "standalone" {
        let secrets = overlay_dir.join("secrets");
        let _ = std::fs::remove_dir_all(&secrets);
        let out = Command::new(overlay_dir.join("make-secrets.sh"))
            .arg("--out")
            .arg(&secrets)
            .args(STANDALONE_NODES)
            .env("NODETUNNEL", nodetunnel_bin)
            .output()
            .map_err(|e| Error::io("running make-secrets.sh", e))?;
        check(&out, "make-secrets.sh")?;
    }
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(&overlay_dir)
        .output()
        .map_err(|e| Error::io("running kubectl kustomize", e))?;
    check(&out, &format!("kubectl kustomize overlays/{overlay}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut objects = Vec::new();
    for doc in serde_yaml_ng::Deserializer::from_str(&text) {
        let value = Value::deserialize(doc)
            .map_err(|e| Error::Invalid(format!("overlays/{overlay}: rendered YAML: {e}")))?;
        if !value.is_null() {
            objects.push(value);
        }
    }
    Ok(Rendered {
        overlay: overlay.to_string(),
        objects,
        _dir: dir,
    })
}

fn check(out: &std::process::Output, what: &str) -> Result<()> {
    if out.status.success() {
        Ok(())
    } else {
        Err(Error::Command {
            cmd: what.to_string(),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }
}

/// Copies `from` into `to`, leaving out a `secrets/` directory a user's make-secrets.sh run
/// left in the checkout (the test makes its own).
fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to).map_err(|e| Error::io(format!("creating {}", to.display()), e))?;
    let entries =
        std::fs::read_dir(from).map_err(|e| Error::io(format!("reading {}", from.display()), e))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(format!("reading {}", from.display()), e))?;
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        if src.is_dir() {
            if entry.file_name() != "secrets" {
                copy_tree(&src, &dst)?;
            }
        } else {
            std::fs::copy(&src, &dst)
                .map_err(|e| Error::io(format!("copying {}", src.display()), e))?;
        }
    }
    Ok(())
}
