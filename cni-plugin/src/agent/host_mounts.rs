//! The host paths the agent reaches through its mounts. Under Istio's chart the agent has its
//! own mount namespace: the host's `/proc` is at `/host/proc` and `/var/run/netns` at
//! `/host/var/run/netns`, so a pod netns path the plugin reports (a host path, such as
//! `/var/run/netns/cni-1234` or `/proc/42/ns/net`) is opened under `/host`, as Istio's agent
//! does (`openNetnsInRoot(HostMountsPath)` in `cni/pkg/nodeagent/pod_cache.go`).

use std::path::{Component, Path, PathBuf};

/// A reported path that cannot name a file under the host mount.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HostPathError {
    #[error("netns path {0:?} is not absolute")]
    NotAbsolute(String),
    #[error("netns path {0:?} has a `..` component; refused so it cannot leave the host mount")]
    ParentComponent(String),
}

/// Where the host's filesystem is mounted into the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostMounts {
    root: PathBuf,
}

impl HostMounts {
    /// `root`: `/host` under the chart, `/` for an agent in the host's mount namespace.
    pub fn new(root: PathBuf) -> Self {
        HostMounts { root }
    }

    /// The agent's path of host path `reported` (`<root>/<reported>`).
    pub fn resolve(&self, reported: &str) -> Result<PathBuf, HostPathError> {
        let path = Path::new(reported);
        if !path.is_absolute() {
            return Err(HostPathError::NotAbsolute(reported.to_string()));
        }
        let mut out = self.root.clone();
        for component in path.components() {
            match component {
                Component::Normal(part) => out.push(part),
                Component::ParentDir => {
                    return Err(HostPathError::ParentComponent(reported.to_string()))
                }
                Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reported_paths_land_under_the_root() {
        let chart = HostMounts::new("/host".into());
        assert_eq!(
            chart.resolve("/var/run/netns/cni-1").unwrap(),
            PathBuf::from("/host/var/run/netns/cni-1")
        );
        assert_eq!(
            chart.resolve("/proc/42/ns/net").unwrap(),
            PathBuf::from("/host/proc/42/ns/net")
        );
        let host = HostMounts::new("/".into());
        assert_eq!(
            host.resolve("/var/run/netns/x").unwrap(),
            PathBuf::from("/var/run/netns/x")
        );
    }

    #[test]
    fn relative_and_escaping_paths_are_refused() {
        let chart = HostMounts::new("/host".into());
        assert!(matches!(
            chart.resolve("var/run/netns/x"),
            Err(HostPathError::NotAbsolute(_))
        ));
        assert!(matches!(
            chart.resolve("/var/run/../../etc/x"),
            Err(HostPathError::ParentComponent(_))
        ));
    }
}
