//! A running pod VM: its processes, the agent client, and its death.
//!
//! One task owns the exit of husk-vmm and of virtiofsd. When either dies
//! unexpectedly the other is killed and `dead` carries the reason: every
//! process of the pod then reports an error exit (see [`super::process`]).

use std::path::Path;
use std::time::{Duration, Instant};

use husk_agent_api::pb::agent_client::AgentClient;
use husk_agent_api::pb::{self, Empty};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use oci_spec::runtime::Spec;
use tokio::sync::watch;
use tonic::transport::Channel;

use super::launch::{self, PodPaths, Sizing};
use super::net::PodNet;
use super::podcg::{PodCgroup, PodCgroupError};
use crate::config::VmConfig;
use crate::sandbox::{ExitStatus, SandboxError};

/// How long a Shutdown may take before husk-vmm is killed.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// The VM of one pod.
pub struct PodVm {
    pub agent: AgentClient<Channel>,
    pub paths: PodPaths,
    vmm_pid: u32,
    fsd_pid: u32,
    /// Set when the VM stops; the reason, for error messages.
    pub dead: watch::Receiver<Option<String>>,
    /// husk-vmm's exit, once it has happened.
    vmm_done: watch::Receiver<Option<ExitStatus>>,
    fsd_done: watch::Receiver<Option<ExitStatus>>,
    stopping: watch::Sender<bool>,
    cgroup: Option<PodCgroup>,
}

/// What starting the VM needs besides the config.
pub struct BootRequest<'a> {
    pub cfg: &'a VmConfig,
    pub vmm: &'a Path,
    pub virtiofsd: &'a Path,
    pub paths: PodPaths,
    pub size: Sizing,
    /// The pod's host cgroup being set up (see [`CgroupSetup::start`]).
    pub cgroup: CgroupSetup,
    pub config_hint: String,
    /// The pod's tap, when its network namespace has an interface.
    pub net: Option<&'a PodNet>,
    /// When the shim began to set the pod up (its first Create).
    pub started: Instant,
}

/// A watch that turns `Some` when the process exits.
fn watch_exit(
    rx: tokio::sync::oneshot::Receiver<ExitStatus>,
) -> watch::Receiver<Option<ExitStatus>> {
    let (tx, out) = watch::channel(None);
    tokio::spawn(async move {
        if let Ok(s) = rx.await {
            tx.send_replace(Some(s));
        }
    });
    out
}

fn sigkill(pid: u32) {
    let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
}

impl PodVm {
    /// Starts virtiofsd and husk-vmm and waits for the agent. On failure
    /// everything started is stopped again (the caller removes the dir).
    pub async fn boot(req: BootRequest<'_>) -> Result<PodVm, SandboxError> {
        let paths = req.paths.clone();
        let t0 = Instant::now();
        let fsd = launch::start_virtiofsd(req.cfg, req.virtiofsd, &paths).await;
        if fsd.is_ok() {
            tracing::info!("vm phase=virtiofsd ms={}", t0.elapsed().as_millis());
        }
        let cgroup = req.cgroup.finish().await;
        let (fsd, cgroup) = match (fsd, cgroup) {
            (Ok(fsd), Ok(cgroup)) => (fsd, cgroup),
            (Err(e), cgroup) => {
                release_cgroup(&cgroup.unwrap_or(None));
                return Err(e);
            }
            (Ok(fsd), Err(e)) => {
                sigkill(fsd.pid);
                return Err(e);
            }
        };
        if let Some(cg) = &cgroup {
            if let Err(e) = cg.add(fsd.pid) {
                tracing::warn!("cannot move {} into the pod cgroup: {e}", fsd.pid);
            }
        }
        let t1 = Instant::now();
        let join = cgroup
            .as_ref()
            .map(PodCgroup::procs_files)
            .unwrap_or_default();
        let vmm = match launch::start_vmm(req.cfg, req.vmm, &paths, req.size, req.net, &join) {
            Ok(v) => v,
            Err(e) => {
                sigkill(fsd.pid);
                release_cgroup(&cgroup);
                return Err(e);
            }
        };
        // everything the shim does on the host before the VMM runs: state
        // dir, share, network, cgroup, virtiofsd, the spawn
        tracing::info!("vm phase=host ms={}", req.started.elapsed().as_millis());
        if let Some(cg) = &cgroup {
            // husk-vmm joined before exec; this checks it (and says so).
            if let Err(e) = cg.add(vmm.pid) {
                tracing::warn!("cannot move {} into the pod cgroup: {e}", vmm.pid);
            }
        }
        let (fsd_pid, vmm_pid) = (fsd.pid, vmm.pid);
        let mut vmm_exit = vmm.exit;
        let timeout = Duration::from_secs(req.cfg.boot_timeout_secs.max(1));
        let connected =
            launch::connect_agent(&paths, t1, &mut vmm_exit, timeout, &req.config_hint).await;
        let (agent, times) = match connected {
            Ok(c) => c,
            Err(e) => {
                sigkill(vmm_pid);
                sigkill(fsd_pid);
                let _ = tokio::time::timeout(Duration::from_secs(5), vmm_exit).await;
                let mut fx = fsd.exit;
                let _ = tokio::time::timeout(Duration::from_secs(5), &mut fx).await;
                release_cgroup(&cgroup);
                return Err(e);
            }
        };
        times.log();
        let vmm_done = watch_exit(vmm_exit);
        let fsd_done = watch_exit(fsd.exit);
        let (dead_tx, dead) = watch::channel(None);
        let (stopping, stop_rx) = watch::channel(false);
        tokio::spawn(supervise(
            vmm_done.clone(),
            fsd_done.clone(),
            stop_rx,
            dead_tx,
            vmm_pid,
            fsd_pid,
        ));
        Ok(PodVm {
            agent,
            paths,
            vmm_pid,
            fsd_pid,
            dead,
            vmm_done,
            fsd_done,
            stopping,
            cgroup,
        })
    }

    /// The reason the VM is gone, if it is.
    pub fn dead_reason(&self) -> Option<String> {
        self.dead.borrow().clone()
    }

    /// A client for one call.
    pub fn agent(&self) -> AgentClient<Channel> {
        self.agent.clone()
    }

    /// Sets the pod up in the guest from its first container's spec.
    pub async fn create_sandbox(&self, spec: &Spec) -> Result<(), SandboxError> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let req = pb::CreateSandboxRequest {
            hostname: spec.hostname().clone().unwrap_or_default(),
            realtime_ns: now.as_nanos() as u64,
            ..Default::default()
        };
        self.agent()
            .create_sandbox(req)
            .await
            .map_err(|s| super::agent_error(s, self))?;
        Ok(())
    }

    /// Gives the guest's NIC the pod interface's name, MTU, addresses and
    /// routes.
    pub async fn configure_network(&self, cfg: pb::NetworkConfig) -> Result<(), SandboxError> {
        self.agent()
            .configure_network(cfg)
            .await
            .map_err(|s| super::agent_error(s, self))?;
        Ok(())
    }

    /// Stops the VM (agent Shutdown, then SIGKILL after a grace period) and
    /// virtiofsd, and leaves the pod cgroup.
    pub async fn stop(&self) {
        self.stopping.send_replace(true);
        if self.vmm_done.borrow().is_none() {
            let mut agent = self.agent();
            let _ = tokio::time::timeout(Duration::from_secs(2), agent.shutdown(Empty {})).await;
            if !exited_within(&self.vmm_done, SHUTDOWN_GRACE).await {
                tracing::warn!("husk-vmm did not stop after Shutdown; killing it");
                sigkill(self.vmm_pid);
                exited_within(&self.vmm_done, SHUTDOWN_GRACE).await;
            }
        }
        // virtiofsd ends when its vhost-user peer goes; make sure.
        if !exited_within(&self.fsd_done, Duration::from_secs(2)).await {
            sigkill(self.fsd_pid);
            exited_within(&self.fsd_done, SHUTDOWN_GRACE).await;
        }
        release_cgroup(&self.cgroup);
    }
}

/// Whether the watched process exits within `limit`.
async fn exited_within(done: &watch::Receiver<Option<ExitStatus>>, limit: Duration) -> bool {
    let mut done = done.clone();
    tokio::time::timeout(limit, async {
        let _ = done.wait_for(|s| s.is_some()).await;
    })
    .await
    .is_ok()
}

/// The pod cgroup being made, recorded and entered by the shim on a
/// blocking thread while the shim prepares the rest of the pod: the first
/// cgroup migration waits for an RCU grace period (8-24 ms on this
/// project's test machines), the ones right after it do not.
pub struct CgroupSetup(tokio::task::JoinHandle<Result<Option<PodCgroup>, SandboxError>>);

impl CgroupSetup {
    /// Starts the setup of the cgroup `cgroups_path` (the pod's first
    /// container's `linux.cgroupsPath`; none when empty) of the pod in `dir`.
    pub fn start(cgroups_path: Option<String>, dir: &Path) -> CgroupSetup {
        let dir = dir.to_path_buf();
        CgroupSetup(tokio::task::spawn_blocking(move || {
            let t = Instant::now();
            let path = cgroups_path.filter(|p| !p.is_empty());
            let cg = setup_cgroup(path.as_deref(), &dir);
            tracing::info!("vm phase=cgroup ms={}", t.elapsed().as_millis());
            cg
        }))
    }

    /// The cgroup, once it is set up. After an error nothing of it is left
    /// but what `cgroup.json` in the pod dir records.
    pub async fn finish(self) -> Result<Option<PodCgroup>, SandboxError> {
        self.0
            .await
            .unwrap_or_else(|e| Err(SandboxError::Internal(format!("pod cgroup setup: {e}"))))
    }
}

/// Creates the pod cgroup (when the spec names one), records it in the pod
/// dir and moves the shim into it.
fn setup_cgroup(cgroups_path: Option<&str>, dir: &Path) -> Result<Option<PodCgroup>, SandboxError> {
    let Some(p) = cgroups_path else {
        return Ok(None);
    };
    let mut cg = PodCgroup::create(p).map_err(|e| match e {
        PodCgroupError::Unsupported(_) => SandboxError::FailedPrecondition(e.to_string()),
        _ => SandboxError::Internal(format!("pod cgroup {p}: {e}")),
    })?;
    // Saved before the shim enters it (a crash in between still leaves a
    // record for `shim delete`), and again with the shim's origin.
    let saved = cg.save(dir).and_then(|()| match cg.enter_self() {
        Ok(()) => cg.save(dir),
        Err(e) => {
            tracing::warn!("cannot move the shim into the pod cgroup: {e}");
            Ok(())
        }
    });
    let cg = Some(cg);
    if let Err(e) = saved {
        release_cgroup(&cg);
        return Err(SandboxError::Internal(format!("save pod cgroup: {e}")));
    }
    Ok(cg)
}

fn release_cgroup(cg: &Option<PodCgroup>) {
    if let Some(cg) = cg {
        if let Err(e) = cg.leave_self() {
            tracing::warn!("cannot leave the pod cgroup: {e}");
        }
        if let Err(e) = cg.remove() {
            tracing::warn!("cannot remove the pod cgroup: {e}");
        }
    }
}

/// Waits for either helper to exit; unless the shim is stopping the VM,
/// that is the pod's death: kill the other one and publish the reason.
async fn supervise(
    mut vmm: watch::Receiver<Option<ExitStatus>>,
    mut fsd: watch::Receiver<Option<ExitStatus>>,
    stopping: watch::Receiver<bool>,
    dead: watch::Sender<Option<String>>,
    vmm_pid: u32,
    fsd_pid: u32,
) {
    let reason = tokio::select! {
        s = vmm.wait_for(|s| s.is_some()) => {
            let code = s.map(|s| s.map_or(0, |s| s.code)).unwrap_or(0);
            sigkill(fsd_pid);
            format!("husk-vmm exited with status {code}")
        }
        s = fsd.wait_for(|s| s.is_some()) => {
            let code = s.map(|s| s.map_or(0, |s| s.code)).unwrap_or(0);
            if !*stopping.borrow() {
                sigkill(vmm_pid);
            }
            format!("virtiofsd exited with status {code}")
        }
    };
    if !*stopping.borrow() {
        tracing::error!("the pod's VM died: {reason}");
    }
    dead.send_replace(Some(reason));
}
