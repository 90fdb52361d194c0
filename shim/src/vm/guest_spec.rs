//! A container's OCI spec as the guest agent gets it.
//!
//! The host spec names host paths and host namespaces. In the guest the
//! rootfs and every host bind source live in the share; namespaces given by
//! path (the pod's, set up by the CRI on the host) become the VM's own, since
//! the VM is the pod; hooks, LSM labels and the host cgroup path do not apply.

use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxNamespaceType, Mount, MountBuilder, Spec};

use crate::sandbox::SandboxError;

/// Where the agent mounts the share in the guest.
pub const GUEST_SHARE: &str = "/run/husk/shared";

const CONTAINER_TYPE_ANNOTATION: &str = "io.kubernetes.cri.container-type";

/// What a container is to its pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The CRI's sandbox (pause) container: its namespaces are the pod's.
    PodSandbox,
    /// A CRI application container joining the pod.
    PodContainer,
    /// A container that is its own pod (`ctr run`, `husk run`).
    Standalone,
}

impl Role {
    /// The role from the CRI's annotations.
    pub fn of(spec: &Spec) -> Role {
        let kind = spec
            .annotations()
            .as_ref()
            .and_then(|a| a.get(CONTAINER_TYPE_ANNOTATION).cloned());
        match kind.as_deref() {
            Some("sandbox") => Role::PodSandbox,
            Some("container") => Role::PodContainer,
            _ => Role::Standalone,
        }
    }
}

/// A host path the container bind-mounts: exposed in the share as
/// `<cid>/mounts/<index>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostBind {
    pub index: usize,
    pub source: PathBuf,
    pub recursive: bool,
    pub readonly: bool,
}

/// Where a container's files are in the share, relative to its root.
pub fn rootfs_rel(cid: &str) -> String {
    format!("{cid}/rootfs")
}

/// The share-relative directory of bind mount `index` of `cid`.
pub fn bind_rel(cid: &str, index: usize) -> String {
    format!("{cid}/mounts/{index}")
}

fn is_bind(m: &Mount) -> bool {
    m.typ().as_deref() == Some("bind")
        || m.options()
            .iter()
            .flatten()
            .any(|o| o == "bind" || o == "rbind")
}

/// The pod's /dev/shm is a host tmpfs the CRI binds into each container; in
/// the guest each container gets its own tmpfs instead.
fn guest_shm() -> Mount {
    MountBuilder::default()
        .destination("/dev/shm")
        .typ("tmpfs")
        .source("shm")
        .options(
            ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]
                .map(String::from)
                .to_vec(),
        )
        .build()
        .expect("all fields set")
}

/// Rewrites `spec` for the guest in place; returns the host binds the
/// caller must expose in the share before the agent creates the container.
pub fn rewrite(spec: &mut Spec, cid: &str, role: Role) -> Result<Vec<HostBind>, SandboxError> {
    let mut binds = Vec::new();
    let mut mounts = Vec::new();
    for m in spec.mounts().iter().flatten() {
        if !is_bind(m) {
            mounts.push(m.clone());
            continue;
        }
        if m.destination() == Path::new("/dev/shm") {
            mounts.push(guest_shm());
            continue;
        }
        let source = m.source().clone().ok_or_else(|| {
            SandboxError::InvalidArgument(format!(
                "bind mount at {} has no source",
                m.destination().display()
            ))
        })?;
        if !source.is_absolute() {
            return Err(SandboxError::InvalidArgument(format!(
                "bind mount source {} must be an absolute host path",
                source.display()
            )));
        }
        let opts = m.options().clone().unwrap_or_default();
        let index = binds.len();
        binds.push(HostBind {
            index,
            source,
            recursive: opts.iter().any(|o| o == "rbind"),
            readonly: opts.iter().any(|o| o == "ro"),
        });
        let mut g = m.clone();
        g.set_source(Some(Path::new(GUEST_SHARE).join(bind_rel(cid, index))));
        mounts.push(g);
    }
    spec.set_mounts(Some(mounts));
    if let Some(linux) = spec.linux_mut() {
        if let Some(nss) = linux.namespaces_mut() {
            nss.retain(|ns| {
                if ns.path().is_some() {
                    return false;
                }
                // The sandbox's network, IPC and UTS namespaces are the VM's.
                !(role == Role::PodSandbox
                    && matches!(
                        ns.typ(),
                        LinuxNamespaceType::Network
                            | LinuxNamespaceType::Ipc
                            | LinuxNamespaceType::Uts
                    ))
            });
        }
        linux.set_cgroups_path(None);
        linux.set_mount_label(None);
    }
    if let Some(p) = spec.process_mut() {
        p.set_apparmor_profile(None);
        p.set_selinux_label(None);
    }
    spec.set_hooks(None);
    if let Some(root) = spec.root_mut() {
        root.set_path(PathBuf::from(rootfs_rel(cid)));
    }
    Ok(binds)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: &str) -> Spec {
        serde_json::from_str(json).unwrap()
    }

    fn namespaces(s: &Spec) -> Vec<LinuxNamespaceType> {
        let linux = s.linux().as_ref().unwrap();
        linux
            .namespaces()
            .iter()
            .flatten()
            .map(|n| n.typ())
            .collect()
    }

    const CRI_APP: &str = r#"{
        "ociVersion": "1.0.2",
        "root": {"path": "/run/containerd/x/rootfs", "readonly": true},
        "process": {"user": {"uid": 0, "gid": 0}, "args": ["sh"], "cwd": "/", "apparmorProfile": "cri-containerd.apparmor.d"},
        "hooks": {"prestart": [{"path": "/bin/true"}]},
        "annotations": {"io.kubernetes.cri.container-type": "container"},
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/etc/hosts", "type": "bind", "source": "/var/lib/c/hosts", "options": ["rbind", "rprivate", "rw"]},
            {"destination": "/dev/shm", "type": "bind", "source": "/run/c/shm", "options": ["rbind", "ro"]},
            {"destination": "/data", "source": "/srv/vol", "options": ["bind", "ro"]}
        ],
        "linux": {
            "cgroupsPath": "/kubepods/pod1/c1",
            "namespaces": [
                {"type": "pid"},
                {"type": "ipc", "path": "/proc/42/ns/ipc"},
                {"type": "uts", "path": "/proc/42/ns/uts"},
                {"type": "mount"},
                {"type": "network", "path": "/var/run/netns/cni-1"}
            ]
        }
    }"#;

    #[test]
    fn cri_container_spec_is_rewritten_for_the_guest() {
        let mut s = spec(CRI_APP);
        assert_eq!(Role::of(&s), Role::PodContainer);
        let binds = rewrite(&mut s, "c1", Role::PodContainer).unwrap();
        assert_eq!(
            binds,
            vec![
                HostBind {
                    index: 0,
                    source: "/var/lib/c/hosts".into(),
                    recursive: true,
                    readonly: false
                },
                HostBind {
                    index: 1,
                    source: "/srv/vol".into(),
                    recursive: false,
                    readonly: true
                },
            ]
        );
        let mounts = s.mounts().clone().unwrap();
        assert_eq!(mounts.len(), 4);
        assert_eq!(
            mounts[1].source().as_deref(),
            Some(Path::new("/run/husk/shared/c1/mounts/0"))
        );
        assert_eq!(mounts[2].typ().as_deref(), Some("tmpfs"));
        assert_eq!(mounts[2].destination(), Path::new("/dev/shm"));
        assert_eq!(
            mounts[3].source().as_deref(),
            Some(Path::new("/run/husk/shared/c1/mounts/1"))
        );
        assert_eq!(
            namespaces(&s),
            vec![LinuxNamespaceType::Pid, LinuxNamespaceType::Mount]
        );
        let linux = s.linux().as_ref().unwrap();
        assert!(linux.cgroups_path().is_none());
        assert!(s.hooks().is_none());
        assert!(s.process().as_ref().unwrap().apparmor_profile().is_none());
        let root = s.root().as_ref().unwrap();
        assert_eq!(root.path(), Path::new("c1/rootfs"));
        assert_eq!(root.readonly(), Some(true));
    }

    #[test]
    fn pod_sandbox_uses_the_vms_network_ipc_and_uts() {
        let mut s = spec(
            r#"{"ociVersion": "1.0.2", "root": {"path": "rootfs"},
                "annotations": {"io.kubernetes.cri.container-type": "sandbox"},
                "linux": {"namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"},
                    {"type": "mount"}, {"type": "network", "path": "/var/run/netns/cni-1"}]}}"#,
        );
        assert_eq!(Role::of(&s), Role::PodSandbox);
        assert!(rewrite(&mut s, "pod", Role::PodSandbox).unwrap().is_empty());
        assert_eq!(
            namespaces(&s),
            vec![LinuxNamespaceType::Pid, LinuxNamespaceType::Mount]
        );
    }

    #[test]
    fn standalone_keeps_its_own_namespaces() {
        let mut s = spec(
            r#"{"ociVersion": "1.0.2", "root": {"path": "rootfs"},
                "linux": {"namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "uts"}]}}"#,
        );
        assert_eq!(Role::of(&s), Role::Standalone);
        rewrite(&mut s, "c", Role::Standalone).unwrap();
        assert_eq!(
            s.linux()
                .as_ref()
                .unwrap()
                .namespaces()
                .as_ref()
                .unwrap()
                .len(),
            3
        );
    }

    #[test]
    fn relative_bind_source_is_refused() {
        let mut s = spec(
            r#"{"ociVersion": "1.0.2", "mounts": [{"destination": "/x", "type": "bind", "source": "rel"}]}"#,
        );
        let e = rewrite(&mut s, "c", Role::Standalone).unwrap_err();
        assert!(e.to_string().contains("absolute host path"), "{e}");
    }
}
