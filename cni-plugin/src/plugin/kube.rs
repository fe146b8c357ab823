//! The two API lookups `ADD` needs to decide: the pod and its namespace, with the kubeconfig
//! the agent writes to `<cni_agent_run_dir>/istio-cni-kubeconfig` (Istio's plugin does the
//! same two `GET`s in `isAmbientPod`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::config::{KubeConfigOptions, Kubeconfig, KubeconfigError};
use kube::{Api, Client, Config};

/// Bound on the whole lookup (config, connect, both GETs): the runtime is waiting.
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);
/// Connect and per-read bounds for the client.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("reading kubeconfig {}: {source}", path.display())]
    Kubeconfig {
        path: PathBuf,
        #[source]
        source: KubeconfigError,
    },
    #[error("building a Kubernetes client from {}: {source}", path.display())]
    Client {
        path: PathBuf,
        #[source]
        source: kube::Error,
    },
    /// The API server answered with an error status.
    #[error("GET {what}: the API server answered {code} {reason}: {message}")]
    Api {
        what: String,
        code: u16,
        reason: String,
        message: String,
    },
    /// No answer: connection, TLS, protocol or decoding trouble.
    #[error("GET {what}: {source}")]
    Get {
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error("the Kubernetes API did not answer within {0:?}")]
    Timeout(Duration),
}

impl KubeError {
    /// Whether trying again later may succeed: the API (or the agent's kubeconfig) is not
    /// reachable yet, or it answered with a server-side/throttling status. A definite answer
    /// (404, 403, …) is not transient.
    pub fn is_transient(&self) -> bool {
        match self {
            // The agent writes the file; until then (or while it rewrites it) try again.
            KubeError::Kubeconfig { source, .. } => {
                matches!(source, KubeconfigError::ReadConfig(..))
            }
            KubeError::Client { .. } | KubeError::Timeout(_) => true,
            KubeError::Api { code, .. } => *code == 429 || *code >= 500,
            KubeError::Get { .. } => true,
        }
    }
}

/// Fetches pod `namespace/name` and its Namespace.
pub async fn lookup(
    kubeconfig: &Path,
    namespace: &str,
    name: &str,
) -> Result<(Pod, Namespace), KubeError> {
    match tokio::time::timeout(
        LOOKUP_TIMEOUT,
        lookup_unbounded(kubeconfig, namespace, name),
    )
    .await
    {
        Ok(result) => result,
        Err(_) => Err(KubeError::Timeout(LOOKUP_TIMEOUT)),
    }
}

async fn lookup_unbounded(
    kubeconfig: &Path,
    namespace: &str,
    name: &str,
) -> Result<(Pod, Namespace), KubeError> {
    let client = client(kubeconfig).await?;
    let pod = Api::<Pod>::namespaced(client.clone(), namespace)
        .get(name)
        .await
        .map_err(|e| get_error(format!("pod {namespace}/{name}"), e))?;
    let ns = Api::<Namespace>::all(client)
        .get(namespace)
        .await
        .map_err(|e| get_error(format!("namespace {namespace}"), e))?;
    Ok((pod, ns))
}

fn get_error(what: String, error: kube::Error) -> KubeError {
    match error {
        kube::Error::Api(status) => KubeError::Api {
            what,
            code: status.code,
            reason: status.reason,
            message: status.message,
        },
        source => KubeError::Get { what, source },
    }
}

async fn client(path: &Path) -> Result<Client, KubeError> {
    let kubeconfig_err = |source| KubeError::Kubeconfig {
        path: path.to_path_buf(),
        source,
    };
    let kubeconfig = Kubeconfig::read_from(path).map_err(kubeconfig_err)?;
    let mut config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .map_err(kubeconfig_err)?;
    config.connect_timeout = Some(IO_TIMEOUT);
    config.read_timeout = Some(IO_TIMEOUT);
    config.write_timeout = Some(IO_TIMEOUT);
    Client::try_from(config).map_err(|source| KubeError::Client {
        path: path.to_path_buf(),
        source,
    })
}
