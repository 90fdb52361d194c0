//! microVM mode: each pod runs in its own KVM microVM (husk-vmm), its
//! containers created by husk-agent in the guest, their files shared by
//! virtiofsd. See docs/vm-pods.md.
//!
//! The first container's Create boots the VM; every container's rootfs and
//! host bind mounts are mounted into the pod's share; the spec is rewritten
//! for the guest ([`guest_spec`]); stdio is copied between containerd's
//! FIFOs and the agent's stdio streams.

pub mod binaries;
pub mod cleanup;
pub mod guest_spec;
mod launch;
pub mod mountinfo;
pub mod net;
mod ops;
pub mod pidfile;
mod pod;
pub mod podcg;
mod process;
pub mod share;
mod stats;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tokio::sync::OnceCell;

use crate::config::{Config, VmConfig};
use crate::sandbox::{EventSink, SandboxError};
use pod::PodVm;
use process::{GuestProcess, OomLedger};
use share::ContainerShare;

pub use launch::PodPaths;

/// Written into each container's bundle so `shim delete` finds the pod
/// after a shim crash.
pub const BUNDLE_MARKER: &str = "husk-vm.json";

/// Contents of [`BUNDLE_MARKER`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct BundleMarker {
    pub sandbox_dir: PathBuf,
    pub container_id: String,
}

struct Container {
    init: GuestProcess,
    execs: HashMap<String, GuestProcess>,
    share: ContainerShare,
}

/// The pod VM sandbox.
pub struct VmSandbox {
    cfg: VmConfig,
    config_hint: String,
    id: String,
    paths: PodPaths,
    vmm: PathBuf,
    virtiofsd: PathBuf,
    oom: OomLedger,
    vm: OnceCell<Arc<PodVm>>,
    containers: Mutex<HashMap<String, Container>>,
}

/// Maps an agent error to the sandbox error with the same meaning.
pub(crate) fn agent_error(s: tonic::Status, vm: &PodVm) -> SandboxError {
    use tonic::Code;
    let msg = s.message().to_string();
    match s.code() {
        Code::InvalidArgument => SandboxError::InvalidArgument(msg),
        Code::NotFound => SandboxError::NotFound(msg),
        Code::AlreadyExists => SandboxError::AlreadyExists(msg),
        Code::FailedPrecondition => SandboxError::FailedPrecondition(msg),
        _ => match vm.dead_reason() {
            Some(r) => SandboxError::FailedPrecondition(format!("the pod's VM is gone: {r}")),
            None => SandboxError::Internal(format!("guest agent: {msg}")),
        },
    }
}

impl VmSandbox {
    /// A sandbox for pod `sandbox_id`, kept in `<state_root>/<sandbox_id>`.
    /// Fails when husk-vmm, virtiofsd, the kernel or the initrd is missing.
    pub fn new(cfg: &Config, sandbox_id: &str, sink: EventSink) -> Result<VmSandbox, SandboxError> {
        Self::with_hint(cfg, sandbox_id, sink, "the husk config")
    }

    /// Like [`VmSandbox::new`]; `config_hint` names the config file in errors.
    pub fn with_hint(
        cfg: &Config,
        sandbox_id: &str,
        sink: EventSink,
        config_hint: &str,
    ) -> Result<VmSandbox, SandboxError> {
        let vm = &cfg.vm;
        for (what, p) in [("kernel", &vm.kernel), ("initrd", &vm.initrd)] {
            if !p.is_file() {
                return Err(SandboxError::FailedPrecondition(format!(
                    "guest {what} {} not found; build it with guest-image/build.sh and set [vm] {what} in {config_hint}",
                    p.display()
                )));
            }
        }
        let found = |what: &str, r: Result<PathBuf, binaries::NotFound>| {
            r.map_err(|e| {
                SandboxError::FailedPrecondition(format!(
                    "{what}: {e}; set [vm] {what} in {config_hint}"
                ))
            })
        };
        Ok(VmSandbox {
            vmm: found("vmm", binaries::vmm(vm))?,
            virtiofsd: found("virtiofsd", binaries::virtiofsd(vm))?,
            cfg: vm.clone(),
            config_hint: config_hint.to_string(),
            id: sandbox_id.to_string(),
            paths: PodPaths {
                dir: cfg.state_root.join(sandbox_id),
            },
            oom: OomLedger::new(sink),
            vm: OnceCell::new(),
            containers: Mutex::new(HashMap::new()),
        })
    }

    /// The pod's state directory.
    pub fn dir(&self) -> &Path {
        &self.paths.dir
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Container>> {
        self.containers.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn booted(&self) -> Result<&Arc<PodVm>, SandboxError> {
        self.vm.get().ok_or_else(|| {
            SandboxError::NotFound("no container has been created in this pod".into())
        })
    }
}

/// `shim delete` in VM mode: when the shim that served the bundle's pod is
/// gone, tears the pod down (VM, virtiofsd, mounts, cgroup, state dir).
/// Returns whether it did.
pub fn cleanup_bundle(bundle: &Path) -> Result<bool, cleanup::CleanupError> {
    let path = bundle.join(BUNDLE_MARKER);
    let Ok(text) = std::fs::read(&path) else {
        return Ok(false);
    };
    let Ok(marker) = serde_json::from_slice::<BundleMarker>(&text) else {
        tracing::warn!("ignoring malformed {}", path.display());
        return Ok(false);
    };
    if cleanup::pod_alive(&marker.sandbox_dir) {
        return Ok(false);
    }
    cleanup::teardown_dir(&marker.sandbox_dir)?;
    let _ = std::fs::remove_file(&path);
    Ok(true)
}

impl crate::sandbox::Processes for Container {
    type Process = GuestProcess;
    fn init_mut(&mut self) -> &mut GuestProcess {
        &mut self.init
    }
    fn exec_mut(&mut self, exec_id: &str) -> Option<&mut GuestProcess> {
        self.execs.get_mut(exec_id)
    }
}
