//! Starting a pod's VM: virtiofsd on the share, husk-vmm with the guest
//! kernel, and the first answer of the guest agent.
//!
//! Both helpers are children of the shim (reaped by [`crate::reaper`]) with
//! `PR_SET_PDEATHSIG = SIGKILL`: if the shim is killed, its VM goes too, and
//! `shim delete` only has mounts and files left to clean.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use husk_agent_api::pb::agent_client::AgentClient;
use husk_agent_api::pb::VersionRequest;
use husk_agent_api::GRPC_VSOCK_PORT;
use oci_spec::runtime::Spec;
use tokio::sync::oneshot;
use tonic::transport::Channel;

use super::cleanup::write_pidfile;
use super::net::PodNet;
use crate::config::VmConfig;
use crate::reaper::reaper;
use crate::sandbox::{ExitStatus, SandboxError};

const SANDBOX_MEMORY: &str = "io.kubernetes.cri.sandbox-memory";
const SANDBOX_CPU_QUOTA: &str = "io.kubernetes.cri.sandbox-cpu-quota";
const SANDBOX_CPU_PERIOD: &str = "io.kubernetes.cri.sandbox-cpu-period";
/// How long virtiofsd may take to create its socket.
const VIRTIOFSD_START: Duration = Duration::from_secs(10);

/// The files of a pod directory the VM's processes use.
#[derive(Debug, Clone)]
pub struct PodPaths {
    pub dir: PathBuf,
}

impl PodPaths {
    pub fn shared(&self) -> PathBuf {
        self.dir.join("shared")
    }
    pub fn vsock(&self) -> PathBuf {
        self.dir.join("vsock.sock")
    }
    pub fn fs_socket(&self) -> PathBuf {
        self.dir.join("fs.sock")
    }
    pub fn control(&self) -> PathBuf {
        self.dir.join("control.sock")
    }
    pub fn console(&self) -> PathBuf {
        self.dir.join("console.log")
    }
    /// The agent's gRPC address.
    pub fn grpc_address(&self) -> String {
        format!("hybrid-vsock:{}:{GRPC_VSOCK_PORT}", self.vsock().display())
    }
    /// The agent's stdio address.
    pub fn stdio_address(&self) -> String {
        format!(
            "hybrid-vsock:{}:{}",
            self.vsock().display(),
            husk_agent_api::STDIO_VSOCK_PORT
        )
    }
}

/// vCPUs and RAM of a pod's VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sizing {
    pub vcpus: u32,
    pub mem_mib: u32,
}

/// Sizes the VM from the CRI sandbox annotations (absent for `ctr run`):
/// the configured defaults plus the pod's limits, vCPUs capped at `max_vcpus`.
pub fn sizing(cfg: &VmConfig, spec: &Spec) -> Sizing {
    let ann = |k: &str| {
        spec.annotations()
            .as_ref()
            .and_then(|a| a.get(k))
            .and_then(|v| v.parse::<i64>().ok())
            .filter(|v| *v > 0)
    };
    let extra_mib = ann(SANDBOX_MEMORY).map_or(0, |b| (b as u64).div_ceil(1 << 20));
    let extra_cpus = match (ann(SANDBOX_CPU_QUOTA), ann(SANDBOX_CPU_PERIOD)) {
        (Some(q), Some(p)) => (q as u64).div_ceil(p as u64),
        _ => 0,
    };
    Sizing {
        vcpus: (cfg.vcpus as u64 + extra_cpus).min(cfg.max_vcpus.max(1) as u64) as u32,
        mem_mib: (cfg.mem_mib as u64 + extra_mib).min(u32::MAX as u64) as u32,
    }
}

/// A started helper process.
pub struct Started {
    pub pid: u32,
    pub exit: oneshot::Receiver<ExitStatus>,
}

fn log_file(path: &Path) -> Result<std::fs::File, SandboxError> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(SandboxError::io(format!("cannot open {}", path.display())))
}

fn spawn(
    mut cmd: Command,
    what: &str,
    paths: &PodPaths,
    join: &[PathBuf],
) -> Result<Started, SandboxError> {
    let log = log_file(&paths.dir.join(format!("{what}.log")))?;
    cmd.stdin(Stdio::null())
        .stdout(log.try_clone().map_err(SandboxError::io("dup log"))?)
        .stderr(log);
    // Built before the fork: the child may not allocate.
    let join: Vec<CString> = join
        .iter()
        .filter_map(|p| CString::new(p.as_os_str().as_bytes()).ok())
        .collect();
    // SAFETY: prctl(PR_SET_PDEATHSIG), open, write and close are
    // async-signal-safe; the child only reads `join`, built before the
    // fork, and touches no other memory of the parent. It runs in the child
    // between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // Into the pod cgroup before exec, so that everything the
            // program allocates is charged to the pod. Failures are left
            // to the caller's check after the spawn (it logs them).
            for procs in &join {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd >= 0 {
                    libc::write(fd, b"0".as_ptr().cast(), 1);
                    libc::close(fd);
                }
            }
            Ok(())
        });
    }
    let (child, exit) = reaper().spawn(&mut cmd).map_err(|e| {
        SandboxError::FailedPrecondition(format!(
            "cannot start {what} ({}): {e}",
            cmd.get_program().to_string_lossy()
        ))
    })?;
    let pid = child.id();
    write_pidfile(&paths.dir.join(format!("{what}.pid")), pid)
        .map_err(|e| SandboxError::Internal(format!("cannot write {what}.pid: {e}")))?;
    Ok(Started { pid, exit })
}

/// Starts virtiofsd on the share and waits for its socket.
pub async fn start_virtiofsd(
    cfg: &VmConfig,
    bin: &Path,
    paths: &PodPaths,
) -> Result<Started, SandboxError> {
    let mut cmd = Command::new(bin);
    cmd.arg(format!("--socket-path={}", paths.fs_socket().display()))
        .arg(format!("--shared-dir={}", paths.shared().display()))
        .arg(format!("--cache={}", cfg.virtiofs_cache))
        .arg("--announce-submounts")
        .arg("--log-level=warn");
    let mut started = spawn(cmd, "virtiofsd", paths, &[])?;
    let deadline = Instant::now() + VIRTIOFSD_START;
    while !paths.fs_socket().exists() {
        if let Ok(status) = started.exit.try_recv() {
            return Err(SandboxError::FailedPrecondition(format!(
                "virtiofsd exited with status {} before creating its socket: {}",
                status.code,
                tail(&paths.dir.join("virtiofsd.log"), 5)
            )));
        }
        if Instant::now() > deadline {
            return Err(SandboxError::Internal(format!(
                "virtiofsd did not create {} within {VIRTIOFSD_START:?}",
                paths.fs_socket().display()
            )));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(started)
}

/// Starts husk-vmm with the guest kernel, the share and the vsock socket.
/// It joins the cgroups whose `cgroup.procs` files `join` names before it
/// runs (the pod cgroup).
pub fn start_vmm(
    cfg: &VmConfig,
    bin: &Path,
    paths: &PodPaths,
    size: Sizing,
    net: Option<&PodNet>,
    join: &[PathBuf],
) -> Result<Started, SandboxError> {
    let mut cmd = Command::new(bin);
    cmd.arg("--kernel")
        .arg(&cfg.kernel)
        .arg("--initrd")
        .arg(&cfg.initrd)
        .args(["--vcpus", &size.vcpus.to_string()])
        .args(["--mem-mib", &size.mem_mib.to_string()])
        .args(["--cpu-profile", &cfg.cpu_profile])
        .arg("--console")
        .arg(paths.console())
        .arg("--vsock-uds")
        .arg(paths.vsock())
        .arg("--fs-socket")
        .arg(paths.fs_socket())
        .args(["--fs-tag", "husk"])
        .arg("--control-socket")
        .arg(paths.control());
    if !cfg.kernel_params.is_empty() {
        cmd.args(["--cmdline", &cfg.kernel_params]);
    }
    if let Some(n) = net {
        cmd.args(["--tap", &n.tap])
            .arg("--netns")
            .arg(&n.netns)
            .args(["--mac", &n.mac]);
    }
    spawn(cmd, "vmm", paths, join)
}

/// The last `n` lines of a log file, joined with " | " (for error messages).
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let start = lines.len().saturating_sub(n);
    let out = lines[start..].join(" | ");
    if out.is_empty() {
        format!("({} is empty)", path.display())
    } else {
        out
    }
}

/// Boot phases as they are observed from the host.
#[derive(Debug, Default, Clone, Copy)]
pub struct BootTimes {
    /// husk-vmm spawned → its first vCPU runs (it then opens the control socket).
    pub vmm_start: Option<Duration>,
    /// → the agent's start line on the console.
    pub kernel_boot: Option<Duration>,
    /// → the agent answered Version.
    pub agent_ready: Duration,
}

fn ms(d: Duration) -> u128 {
    d.as_millis()
}

impl BootTimes {
    pub fn log(&self) {
        if let Some(d) = self.vmm_start {
            tracing::info!("vm phase=vmm_start ms={}", ms(d));
        }
        if let (Some(a), Some(b)) = (self.vmm_start, self.kernel_boot) {
            tracing::info!("vm phase=kernel_boot ms={}", ms(b.saturating_sub(a)));
        }
        let since = self.kernel_boot.or(self.vmm_start).unwrap_or_default();
        tracing::info!(
            "vm phase=agent_ready ms={}",
            ms(self.agent_ready.saturating_sub(since))
        );
    }
}

async fn try_version(addr: &str) -> Option<(AgentClient<Channel>, String)> {
    let attempt = async {
        let mut client = husk_agent_api::connect::connect(addr).await.ok()?;
        let v = client.version(VersionRequest {}).await.ok()?.into_inner();
        Some((client, v.kernel_release))
    };
    tokio::time::timeout(Duration::from_secs(1), attempt)
        .await
        .ok()
        .flatten()
}

/// Dials the agent until it answers, the VMM exits, or `timeout` passes.
pub async fn connect_agent(
    paths: &PodPaths,
    spawned: Instant,
    vmm_exit: &mut oneshot::Receiver<ExitStatus>,
    timeout: Duration,
    config_hint: &str,
) -> Result<(AgentClient<Channel>, BootTimes), SandboxError> {
    let deadline = spawned + timeout;
    let mut times = BootTimes::default();
    let addr = paths.grpc_address();
    let console = paths.console();
    let mut last_try = Instant::now();
    loop {
        if let Ok(status) = vmm_exit.try_recv() {
            return Err(SandboxError::FailedPrecondition(format!(
                "husk-vmm exited with status {} before the guest agent answered; vmm: {}; guest console: {}",
                status.code,
                tail(&paths.dir.join("vmm.log"), 3),
                tail(&console, 5)
            )));
        }
        if times.vmm_start.is_none() && paths.control().exists() {
            times.vmm_start = Some(spawned.elapsed());
        }
        if times.kernel_boot.is_none() {
            let len = std::fs::metadata(&console).map(|m| m.len()).unwrap_or(0);
            if len > 0
                && std::fs::read_to_string(&console)
                    .map(|t| t.contains("husk-agent "))
                    .unwrap_or(false)
            {
                times.kernel_boot = Some(spawned.elapsed());
            }
        }
        // Dial once the agent has said it started (or once a second, for a
        // console that says nothing): a dial before that only waits.
        let due = times.kernel_boot.is_some() || last_try.elapsed() >= Duration::from_secs(1);
        if due && paths.vsock().exists() {
            last_try = Instant::now();
            if let Some((client, release)) = try_version(&addr).await {
                times.agent_ready = spawned.elapsed();
                tracing::info!(kernel = release, "guest agent answered");
                return Ok((client, times));
            }
        }
        if Instant::now() > deadline {
            return Err(SandboxError::FailedPrecondition(format!(
                "the guest agent did not answer within {} s (boot_timeout_secs in {config_hint}); guest console: {}",
                timeout.as_secs(),
                tail(&console, 5)
            )));
        }
        // Poll finely until the VMM is up, so its start time is exact.
        let pause = if times.vmm_start.is_none() { 1 } else { 20 };
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(ann: &str) -> Spec {
        serde_json::from_str(&format!(
            r#"{{"ociVersion": "1.0.2", "annotations": {{{ann}}}}}"#
        ))
        .unwrap()
    }

    #[test]
    fn sizing_adds_pod_limits_to_the_defaults() {
        let cfg = VmConfig {
            vcpus: 1,
            max_vcpus: 4,
            mem_mib: 256,
            ..Default::default()
        };
        assert_eq!(
            sizing(&cfg, &spec("")),
            Sizing {
                vcpus: 1,
                mem_mib: 256
            }
        );
        let s = spec(
            r#""io.kubernetes.cri.sandbox-memory": "134217728",
               "io.kubernetes.cri.sandbox-cpu-quota": "150000",
               "io.kubernetes.cri.sandbox-cpu-period": "100000""#,
        );
        assert_eq!(
            sizing(&cfg, &s),
            Sizing {
                vcpus: 3,
                mem_mib: 384
            }
        );
        let capped = VmConfig {
            max_vcpus: 1,
            ..cfg.clone()
        };
        assert_eq!(sizing(&capped, &s).vcpus, 1);
        let junk = spec(r#""io.kubernetes.cri.sandbox-memory": "lots""#);
        assert_eq!(sizing(&cfg, &junk).mem_mib, 256);
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("log");
        std::fs::write(&p, "a\nb\n\nc\nd\n").unwrap();
        assert_eq!(tail(&p, 2), "c | d");
        assert!(tail(&dir.path().join("none"), 2).contains("is empty"));
    }
}
