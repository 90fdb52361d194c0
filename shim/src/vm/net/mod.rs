//! Pod networking in VM mode. The CNI has set up the pod's network
//! namespace (named by the sandbox's OCI spec) with one interface, usually
//! a veth to a bridge. The shim creates a tap in that namespace, joins it
//! to the veth with tc redirects ([`wire`]), husk-vmm serves the tap as the
//! guest's virtio-net NIC with the veth's MAC, and the agent gives the
//! guest interface the veth's name, MTU, addresses and routes ([`view`]).
//! See docs/networking.md.

mod netns;
mod view;
mod wire;

use std::path::{Path, PathBuf};

use husk_agent_api::pb;
use oci_spec::runtime::{LinuxNamespaceType, Spec};
use serde::{Deserialize, Serialize};

pub use view::Plan;

/// The tap's name inside the pod's namespace (one per namespace).
pub const TAP_NAME: &str = "tap0_husk";
/// What [`attach`] made, for [`detach`] (also after a shim crash).
const STATE_FILE: &str = "net.json";

/// Network setup errors.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error(
        "the pod uses the host's network (its spec has no network namespace): a microVM \
         cannot share the host's network; run host-network pods with a runc-mode handler"
    )]
    HostNetwork,
    #[error("network namespace {path}: {source}")]
    Netns {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("netlink: {op}: {source}")]
    Netlink {
        op: &'static str,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("tap {name}: {source}")]
    Tap {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the pod's network namespace has {0}")]
    Unsupported(String),
    #[error("{path}: {source}")]
    State {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What the sandbox's spec says about the pod's network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpecNetwork {
    /// No network namespace: the host's network.
    Host,
    /// A new, empty namespace (`ctr run` without CNI): no NIC.
    Private,
    /// A namespace made beforehand (by the CRI and its CNI).
    Joined(PathBuf),
}

impl SpecNetwork {
    pub fn of(spec: &Spec) -> SpecNetwork {
        let ns = spec
            .linux()
            .as_ref()
            .and_then(|l| l.namespaces().as_ref())
            .and_then(|n| {
                n.iter()
                    .find(|n| n.typ() == LinuxNamespaceType::Network)
                    .cloned()
            });
        match ns {
            None => SpecNetwork::Host,
            Some(n) => match n.path() {
                Some(p) if !p.as_os_str().is_empty() => SpecNetwork::Joined(p.clone()),
                _ => SpecNetwork::Private,
            },
        }
    }
}

/// Recorded in the pod directory while the tap exists.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodNet {
    pub netns: PathBuf,
    pub tap: String,
    /// The CNI's interface (name and index in the namespace).
    pub veth: String,
    pub veth_index: u32,
    /// Its MAC, which the guest NIC gets.
    pub mac: String,
}

fn state_path(dir: &Path) -> PathBuf {
    dir.join(STATE_FILE)
}

/// Reads the namespace and, if it has an interface, wires a tap to it.
/// Returns what husk-vmm and the agent need, or `None` (no interface: the
/// guest gets no NIC). On failure nothing of it is left.
pub async fn attach(
    dir: &Path,
    netns: &Path,
) -> Result<Option<(PodNet, pb::NetworkConfig)>, NetError> {
    let path = netns.to_path_buf();
    let read = tokio::task::spawn_blocking(move || {
        netns::in_netns(&path, |h| async move { view::read(&h).await })
    })
    .await
    .map_err(|e| NetError::Unsupported(format!("a failed netlink task: {e}")))?;
    let view = read?.ok_or_else(|| NetError::Netns {
        path: netns.to_path_buf(),
        source: std::io::Error::from(std::io::ErrorKind::NotFound),
    })?;
    let Some(plan) = view::plan(&view, TAP_NAME)? else {
        tracing::info!(
            "network namespace {} has no interface: no NIC",
            netns.display()
        );
        return Ok(None);
    };
    if plan.skipped_v6 > 0 {
        tracing::warn!(
            "{} IPv6 addresses/routes of {} left out: the guest kernel has no IPv6",
            plan.skipped_v6,
            plan.link.name
        );
    }
    let net = PodNet {
        netns: netns.to_path_buf(),
        tap: TAP_NAME.to_string(),
        veth: plan.link.name.clone(),
        veth_index: plan.link.index,
        mac: plan.guest.interfaces[0].mac.clone(),
    };
    // Recorded before anything is made, so a crash leaves a trace.
    let state = state_path(dir);
    let text = serde_json::to_vec_pretty(&net).map_err(|e| NetError::State {
        path: state.clone(),
        source: e.into(),
    })?;
    std::fs::write(&state, text).map_err(|source| NetError::State {
        path: state.clone(),
        source,
    })?;
    let (tap, veth, mtu, path) = (
        net.tap.clone(),
        net.veth_index,
        plan.link.mtu,
        net.netns.clone(),
    );
    let wired = tokio::task::spawn_blocking(move || {
        netns::in_netns(&path, move |h| wire::wire(h, tap, veth, mtu))
    })
    .await
    .map_err(|e| NetError::Unsupported(format!("a failed netlink task: {e}")));
    match wired {
        Ok(Ok(Some(()))) => {
            tracing::info!(
                "pod network: {} ({}, mtu {}) <-> {} in {}",
                net.veth,
                net.mac,
                plan.link.mtu,
                net.tap,
                netns.display()
            );
            Ok(Some((net, plan.guest)))
        }
        other => {
            let _ = std::fs::remove_file(&state);
            Err(match other {
                Ok(Ok(_)) => NetError::Netns {
                    path: netns.to_path_buf(),
                    source: std::io::Error::from(std::io::ErrorKind::NotFound),
                },
                Ok(Err(e)) | Err(e) => e,
            })
        }
    }
}

/// Undoes [`attach`] from the record in `dir`: deletes the tap and the
/// veth's ingress qdisc. A missing record or namespace is fine (the CRI may
/// have deleted the namespace already, and the tap with it). Returns
/// whether there was something to undo.
pub fn detach(dir: &Path) -> Result<bool, NetError> {
    let state = state_path(dir);
    let text = match std::fs::read(&state) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(source) => {
            return Err(NetError::State {
                path: state,
                source,
            })
        }
    };
    let net: PodNet = serde_json::from_slice(&text).map_err(|e| NetError::State {
        path: state.clone(),
        source: e.into(),
    })?;
    let tap = net.tap.clone();
    netns::in_netns(&net.netns, move |h| async move {
        wire::unwire(&h, &tap, net.veth_index).await
    })?;
    std::fs::remove_file(&state).map_err(|source| NetError::State {
        path: state,
        source,
    })?;
    Ok(true)
}

#[cfg(test)]
mod tests;
