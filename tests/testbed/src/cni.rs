//! A small container-runtime stand-in for CNI: runs a network configuration list the way
//! libcni (containerd, CRI-O) does, so plugins are tested as a runtime drives them.
//!
//! From the CNI spec ("Network Configuration Lists", "Execution Protocol"):
//! - each plugin is the executable named by its `type`, found in the `CNI_PATH` directories;
//! - it gets `CNI_COMMAND`, `CNI_CONTAINERID`, `CNI_NETNS`, `CNI_IFNAME`, `CNI_ARGS`,
//!   `CNI_PATH` in its environment and its config on stdin, with the list's `name` and
//!   `cniVersion` injected;
//! - `ADD` runs the plugins in order, each after the first getting the previous one's result
//!   as `prevResult`; the last result is the attachment's result;
//! - `DEL` runs them in reverse order and `CHECK` in order, each with the `ADD` result as
//!   `prevResult` (omitted for `DEL` when unknown);
//! - success is exit 0 (with a result on stdout for `ADD`); failure is a non-zero exit with
//!   `{"cniVersion","code","msg","details"}` on stdout; execution stops at the first failure.
//!
//! Not done here: capability `runtimeConfig`, result caching, the automatic `DEL` after a
//! failed `ADD` (tests call [`Runner::del`] themselves when they want it).

use std::fmt;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{Map, Value};

/// How long one plugin may run before the runner kills it.
pub const PLUGIN_DEADLINE: Duration = Duration::from_secs(60);

/// What went wrong running a plugin list.
#[derive(Debug)]
pub enum CniError {
    /// The configuration list is not one (`what` says which part).
    BadConfList(String),
    /// No executable named `plugin` in any search directory.
    PluginNotFound { plugin: String, search_path: String },
    /// The plugin could not be started or talked to.
    Io {
        plugin: String,
        what: &'static str,
        source: io::Error,
    },
    /// The plugin ran past [`PLUGIN_DEADLINE`] and was killed.
    TimedOut { plugin: String, command: String },
    /// The plugin exited non-zero.
    PluginFailed(Box<PluginFailure>),
    /// The plugin succeeded but its output is not what the spec asks for.
    BadOutput {
        plugin: String,
        command: String,
        reason: String,
        stdout: String,
    },
}

/// A plugin's non-zero exit and what it printed.
#[derive(Debug, Clone)]
pub struct PluginFailure {
    pub plugin: String,
    pub command: String,
    pub exit_code: Option<i32>,
    /// stdout parsed as JSON: the CNI error object, when the plugin kept to the spec.
    pub error: Option<Value>,
    pub stdout: String,
    pub stderr: String,
}

impl CniError {
    /// For [`CniError::PluginFailed`]: the error JSON's `code`.
    pub fn code(&self) -> Option<u64> {
        self.error_json()?.get("code")?.as_u64()
    }

    /// For [`CniError::PluginFailed`]: the parsed error JSON.
    pub fn error_json(&self) -> Option<&Value> {
        match self {
            CniError::PluginFailed(failure) => failure.error.as_ref(),
            _ => None,
        }
    }
}

impl fmt::Display for CniError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CniError::BadConfList(what) => write!(f, "invalid network configuration list: {what}"),
            CniError::PluginNotFound {
                plugin,
                search_path,
            } => write!(f, "CNI plugin {plugin:?} not found in {search_path:?}"),
            CniError::Io {
                plugin,
                what,
                source,
            } => write!(f, "CNI plugin {plugin}: {what}: {source}"),
            CniError::TimedOut { plugin, command } => write!(
                f,
                "CNI plugin {plugin} {command} did not finish within {PLUGIN_DEADLINE:?}"
            ),
            CniError::PluginFailed(p) => write!(
                f,
                "CNI plugin {} {} failed (exit {:?}): stdout {:?}, stderr {:?}",
                p.plugin,
                p.command,
                p.exit_code,
                p.stdout.trim(),
                p.stderr.trim()
            ),
            CniError::BadOutput {
                plugin,
                command,
                reason,
                stdout,
            } => write!(
                f,
                "CNI plugin {plugin} {command}: {reason}; stdout {:?}",
                stdout.trim()
            ),
        }
    }
}

impl std::error::Error for CniError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            CniError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// A validated network configuration list.
#[derive(Debug, Clone)]
pub struct ConfList {
    name: String,
    cni_version: String,
    plugins: Vec<Map<String, Value>>,
}

impl ConfList {
    /// Checks the shape the spec requires: `name`, `cniVersion`, and a non-empty `plugins`
    /// list of objects each with a `type`.
    pub fn parse(json: &Value) -> Result<ConfList, CniError> {
        let bad = |what: &str| CniError::BadConfList(what.to_string());
        let obj = json.as_object().ok_or_else(|| bad("not a JSON object"))?;
        let string = |key: &str| {
            obj.get(key)
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| bad(&format!("`{key}` is missing or not a string")))
        };
        let name = string("name")?;
        let cni_version = string("cniVersion")?;
        let plugins: Vec<Map<String, Value>> = obj
            .get("plugins")
            .and_then(Value::as_array)
            .ok_or_else(|| bad("`plugins` is missing or not a list"))?
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let p = p
                    .as_object()
                    .ok_or_else(|| bad(&format!("plugins[{i}] is not an object")))?;
                if p.get("type").and_then(Value::as_str).is_none() {
                    return Err(bad(&format!("plugins[{i}] has no string `type`")));
                }
                Ok(p.clone())
            })
            .collect::<Result<_, _>>()?;
        if plugins.is_empty() {
            return Err(bad("`plugins` is empty"));
        }
        Ok(ConfList {
            name,
            cni_version,
            plugins,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn cni_version(&self) -> &str {
        &self.cni_version
    }

    /// The `type` of each plugin, in list order.
    pub fn plugin_types(&self) -> Vec<&str> {
        self.plugins.iter().map(plugin_type).collect()
    }

    /// Plugin `index`'s config as the runtime hands it over: the list's `name` and
    /// `cniVersion` injected, and `prevResult` when given.
    pub fn plugin_config(&self, index: usize, prev_result: Option<&Value>) -> Option<Value> {
        let mut config = self.plugins.get(index)?.clone();
        config.insert("cniVersion".into(), Value::String(self.cni_version.clone()));
        config.insert("name".into(), Value::String(self.name.clone()));
        match prev_result {
            Some(prev) => {
                config.insert("prevResult".into(), prev.clone());
            }
            None => {
                config.remove("prevResult");
            }
        }
        Some(Value::Object(config))
    }
}

fn plugin_type(p: &Map<String, Value>) -> &str {
    p.get("type").and_then(Value::as_str).unwrap_or_default()
}

/// The per-attachment parameters (`CNI_CONTAINERID`, `CNI_NETNS`, `CNI_IFNAME`, `CNI_ARGS`).
#[derive(Debug, Clone)]
pub struct Attachment {
    pub container_id: String,
    pub netns: PathBuf,
    pub ifname: String,
    /// `KEY=VALUE;KEY=VALUE`, e.g. `K8S_POD_NAMESPACE=app;K8S_POD_NAME=web`.
    pub args: String,
}

/// What one plugin run printed.
#[derive(Debug, Clone)]
pub struct PluginRun {
    pub exit_code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Runs plugins from a search path, as a runtime does.
#[derive(Debug, Clone)]
pub struct Runner {
    search_path: Vec<PathBuf>,
}

impl Runner {
    /// `search_path` is `CNI_PATH`, in order (e.g. `/usr/lib/cni` and the directory of the
    /// plugin under test).
    pub fn new(search_path: Vec<PathBuf>) -> Runner {
        Runner { search_path }
    }

    /// `CNI_PATH` as the plugins see it.
    pub fn cni_path(&self) -> String {
        self.search_path
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(":")
    }

    /// The executable for `plugin_type`: the first search directory that has it.
    pub fn find(&self, plugin_type: &str) -> Result<PathBuf, CniError> {
        let valid = !plugin_type.is_empty() && !plugin_type.contains('/') && plugin_type != "..";
        valid
            .then(|| {
                self.search_path
                    .iter()
                    .map(|dir| dir.join(plugin_type))
                    .find(|p| p.is_file())
            })
            .flatten()
            .ok_or_else(|| CniError::PluginNotFound {
                plugin: plugin_type.to_string(),
                search_path: self.cni_path(),
            })
    }

    /// `ADD` through the list; returns the last plugin's result.
    pub fn add(&self, list: &ConfList, att: &Attachment) -> Result<Value, CniError> {
        let mut steps = self.add_steps(list, att)?;
        steps
            .pop()
            .ok_or_else(|| CniError::BadConfList("`plugins` is empty".into()))
    }

    /// `ADD` through the list; returns every plugin's result in order (to compare what a
    /// chained plugin printed with the `prevResult` it was given).
    pub fn add_steps(&self, list: &ConfList, att: &Attachment) -> Result<Vec<Value>, CniError> {
        let mut steps: Vec<Value> = Vec::new();
        for (i, ty) in list.plugin_types().into_iter().enumerate() {
            let config = list.plugin_config(i, steps.last()).unwrap_or_default();
            let run = self.invoke(ty, "ADD", &config, Some(att))?;
            let result: Value =
                serde_json::from_str(&run.stdout).map_err(|e| CniError::BadOutput {
                    plugin: ty.to_string(),
                    command: "ADD".into(),
                    reason: format!("result is not JSON: {e}"),
                    stdout: run.stdout.clone(),
                })?;
            if !result.is_object() {
                return Err(CniError::BadOutput {
                    plugin: ty.to_string(),
                    command: "ADD".into(),
                    reason: "result is not a JSON object".into(),
                    stdout: run.stdout,
                });
            }
            steps.push(result);
        }
        Ok(steps)
    }

    /// `DEL` through the list in reverse order, with the `ADD` result when known.
    pub fn del(
        &self,
        list: &ConfList,
        att: &Attachment,
        add_result: Option<&Value>,
    ) -> Result<(), CniError> {
        let types = list.plugin_types();
        for i in (0..types.len()).rev() {
            let config = list.plugin_config(i, add_result).unwrap_or_default();
            self.expect_silent(types[i], "DEL", &config, att)?;
        }
        Ok(())
    }

    /// `CHECK` through the list in order, with the `ADD` result.
    pub fn check(
        &self,
        list: &ConfList,
        att: &Attachment,
        add_result: &Value,
    ) -> Result<(), CniError> {
        for (i, ty) in list.plugin_types().into_iter().enumerate() {
            let config = list.plugin_config(i, Some(add_result)).unwrap_or_default();
            self.expect_silent(ty, "CHECK", &config, att)?;
        }
        Ok(())
    }

    /// `VERSION` of one plugin; stdin carries `{"cniVersion": <cni_version>}` as libcni sends.
    pub fn version(&self, plugin_type: &str, cni_version: &str) -> Result<Value, CniError> {
        let stdin = serde_json::json!({ "cniVersion": cni_version });
        let run = self.invoke(plugin_type, "VERSION", &stdin, None)?;
        serde_json::from_str(&run.stdout).map_err(|e| CniError::BadOutput {
            plugin: plugin_type.to_string(),
            command: "VERSION".into(),
            reason: format!("not JSON: {e}"),
            stdout: run.stdout,
        })
    }

    fn expect_silent(
        &self,
        ty: &str,
        command: &str,
        config: &Value,
        att: &Attachment,
    ) -> Result<(), CniError> {
        let run = self.invoke(ty, command, config, Some(att))?;
        if run.stdout.trim().is_empty() {
            Ok(())
        } else {
            Err(CniError::BadOutput {
                plugin: ty.to_string(),
                command: command.to_string(),
                reason: "expected no output on success".into(),
                stdout: run.stdout,
            })
        }
    }

    /// Runs one plugin; a non-zero exit is [`CniError::PluginFailed`].
    pub fn invoke(
        &self,
        plugin_type: &str,
        command: &str,
        config: &Value,
        att: Option<&Attachment>,
    ) -> Result<PluginRun, CniError> {
        let run = self.exec(plugin_type, command, config, att)?;
        if run.exit_code == Some(0) {
            return Ok(run);
        }
        Err(CniError::PluginFailed(Box::new(PluginFailure {
            plugin: plugin_type.to_string(),
            command: command.to_string(),
            exit_code: run.exit_code,
            error: serde_json::from_str(&run.stdout).ok(),
            stdout: run.stdout,
            stderr: run.stderr,
        })))
    }

    /// Runs one plugin and returns what it printed, whatever its exit status.
    pub fn exec(
        &self,
        plugin_type: &str,
        command: &str,
        config: &Value,
        att: Option<&Attachment>,
    ) -> Result<PluginRun, CniError> {
        let bin = self.find(plugin_type)?;
        let io_err = |what: &'static str| {
            let plugin = plugin_type.to_string();
            move |source| CniError::Io {
                plugin,
                what,
                source,
            }
        };
        let mut cmd = Command::new(&bin);
        // Only this invocation's CNI_* variables, never ones inherited from the test run.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("CNI_") {
                cmd.env_remove(key);
            }
        }
        cmd.env("CNI_COMMAND", command)
            .env("CNI_PATH", self.cni_path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(att) = att {
            cmd.env("CNI_CONTAINERID", &att.container_id)
                .env("CNI_NETNS", &att.netns)
                .env("CNI_IFNAME", &att.ifname)
                .env("CNI_ARGS", &att.args);
        }
        let mut child = cmd.spawn().map_err(io_err("spawning"))?;
        let input = serde_json::to_vec(config).unwrap_or_default();
        let stdin = child.stdin.take();
        let writer = thread::spawn(move || match stdin {
            Some(mut s) => s.write_all(&input),
            None => Ok(()),
        });
        let stdout = drain(child.stdout.take());
        let stderr = drain(child.stderr.take());
        let status = wait_with_deadline(&mut child, PLUGIN_DEADLINE).map_err(io_err("waiting"))?;
        let stdout = stdout.join().unwrap_or_default();
        let stderr = stderr.join().unwrap_or_default();
        // A plugin may exit without reading stdin (VERSION): a broken pipe is not an error.
        if let Ok(Err(e)) = writer.join() {
            if e.kind() != io::ErrorKind::BrokenPipe {
                return Err(io_err("writing the config to stdin")(e));
            }
        }
        match status {
            Some(status) => Ok(PluginRun {
                exit_code: status.code(),
                stdout,
                stderr,
            }),
            None => Err(CniError::TimedOut {
                plugin: plugin_type.to_string(),
                command: command.to_string(),
            }),
        }
    }
}

fn drain<R: Read + Send + 'static>(pipe: Option<R>) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut p) = pipe {
            let _ = p.read_to_end(&mut buf);
        }
        String::from_utf8_lossy(&buf).into_owned()
    })
}

/// Waits for `child`; kills it and returns `None` past `deadline`.
fn wait_with_deadline(
    child: &mut Child,
    deadline: Duration,
) -> io::Result<Option<std::process::ExitStatus>> {
    let end = Instant::now() + deadline;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() >= end {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(None);
        }
        thread::sleep(Duration::from_millis(5));
    }
}

/// The directory holding `bin` (to put a freshly built plugin on the search path).
pub fn dir_of(bin: &Path) -> PathBuf {
    bin.parent().map(Path::to_path_buf).unwrap_or_default()
}

#[cfg(test)]
mod tests;
