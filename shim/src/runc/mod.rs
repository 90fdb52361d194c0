//! Host runc mode: containers run directly on the host through a
//! runc-CLI compatible binary (runc, crun).

pub mod bundle;
mod cli;
mod process;

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use oci_spec::runtime::{LinuxResources, Process};

use crate::cgroup::{metrics_any, CgroupPaths, OomWatcher};
use crate::config::RuncConfig;
use crate::sandbox::{
    CreateRequest, EventSink, ExitStatus, Result, Sandbox, SandboxError, SandboxEvent, Stdio,
};

use crate::spec::rootfs_path;
pub use bundle::unmount;
pub use cli::{resolve_binary, Runc};
use process::HostProcess;

/// How long delete waits for a process's output to drain to the FIFOs.
const OUTPUT_DRAIN: Duration = Duration::from_secs(2);

/// Bookkeeping file written into the bundle, read by `shim delete` to clean
/// up after a crashed shim.
pub const BUNDLE_STATE_FILE: &str = "husk-runc.json";

/// What `shim delete` needs to clean up a container without its shim.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct BundleState {
    pub runc_binary: PathBuf,
    pub runc_root: PathBuf,
    pub systemd_cgroup: bool,
    pub state_dir: PathBuf,
    pub rootfs: Option<PathBuf>,
}

struct Container {
    dir: PathBuf,
    bundle: PathBuf,
    mounted_rootfs: Option<PathBuf>,
    init: HostProcess,
    execs: HashMap<String, HostProcess>,
    cgroups: Option<CgroupPaths>,
    oom: Option<OomWatcher>,
}

/// A pod's containers as host runc containers.
pub struct RuncSandbox {
    runc: Runc,
    dir: PathBuf,
    events: EventSink,
    containers: Mutex<HashMap<String, Container>>,
}

fn os(args: &[&str]) -> Vec<OsString> {
    args.iter().map(OsString::from).collect()
}

impl RuncSandbox {
    /// A sandbox keeping its state in `state_dir` and runc's under
    /// `<runc.root>/<namespace>`. Fails when the runc binary is missing.
    pub fn new(
        cfg: &RuncConfig,
        namespace: &str,
        state_dir: PathBuf,
        events: EventSink,
    ) -> Result<RuncSandbox> {
        let binary = resolve_binary(&cfg.binary)?;
        Ok(RuncSandbox {
            runc: Runc {
                binary,
                root: cfg.root.join(namespace),
                systemd_cgroup: cfg.systemd_cgroup,
            },
            dir: state_dir,
            events,
            containers: Mutex::new(HashMap::new()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Container>> {
        self.containers.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn with<T>(&self, id: &str, f: impl FnOnce(&mut Container) -> Result<T>) -> Result<T> {
        crate::sandbox::with_container(&mut self.lock(), id, f)
    }

    fn with_process<T>(
        &self,
        id: &str,
        exec_id: Option<&str>,
        f: impl FnOnce(&mut HostProcess) -> Result<T>,
    ) -> Result<T> {
        crate::sandbox::with_process(&mut self.lock(), id, exec_id, f)
    }

    async fn create_inner(
        &self,
        req: &CreateRequest,
        dir: &Path,
        rootfs: &Path,
    ) -> Result<(HostProcess, bool)> {
        std::fs::create_dir_all(dir)
            .map_err(SandboxError::io(format!("cannot create {}", dir.display())))?;
        let mounted = bundle::mount(&req.rootfs, rootfs)?;
        let result = async {
            bundle::require_rootfs(rootfs)?;
            let state = BundleState {
                runc_binary: self.runc.binary.clone(),
                runc_root: self.runc.root.clone(),
                systemd_cgroup: self.runc.systemd_cgroup,
                state_dir: dir.to_path_buf(),
                rootfs: mounted.then(|| rootfs.to_path_buf()),
            };
            let json =
                serde_json::to_vec(&state).map_err(|e| SandboxError::Internal(e.to_string()))?;
            std::fs::write(req.bundle.join(BUNDLE_STATE_FILE), json)
                .map_err(SandboxError::io("cannot write bundle state"))?;
            let pid_file = dir.join("init.pid");
            let mut args = os(&["create", "--bundle"]);
            args.push(req.bundle.clone().into());
            args.push("--pid-file".into());
            args.push(pid_file.clone().into());
            HostProcess::spawn(&self.runc, args, &req.id, &req.stdio, dir, &pid_file).await
        }
        .await;
        match result {
            Ok(p) => Ok((p, mounted)),
            Err(e) => {
                if mounted {
                    unmount(rootfs);
                }
                Err(e)
            }
        }
    }

    fn report_oom(events: &EventSink, id: &str) {
        tracing::info!(container = id, "oom");
        events(SandboxEvent::Oom {
            container_id: id.to_string(),
        });
    }
}

#[async_trait]
impl Sandbox for RuncSandbox {
    async fn create(&self, req: CreateRequest) -> Result<u32> {
        if self.lock().contains_key(&req.id) || self.runc.root.join(&req.id).exists() {
            return Err(SandboxError::AlreadyExists(format!(
                "container {} already exists",
                req.id
            )));
        }
        let dir = self.dir.join(&req.id);
        let rootfs = rootfs_path(&req.spec, &req.bundle);
        let (init, mounted) = match self.create_inner(&req, &dir, &rootfs).await {
            Ok(v) => v,
            Err(e) => {
                // Leave nothing behind: runc state, our state dir, bundle file.
                let _ = self
                    .runc
                    .run(&os(&["delete", "--force", &req.id]), None)
                    .await;
                let _ = std::fs::remove_dir_all(&dir);
                let _ = std::fs::remove_file(req.bundle.join(BUNDLE_STATE_FILE));
                return Err(e);
            }
        };
        let pid = init.pid;
        let cgroups = CgroupPaths::of_pid(pid)
            .map_err(|e| tracing::warn!("no cgroups for {}: {e}", req.id))
            .ok();
        let oom = cgroups.as_ref().and_then(|cg| {
            let events = self.events.clone();
            let id = req.id.clone();
            OomWatcher::start(cg, move || Self::report_oom(&events, &id))
                .map_err(|e| tracing::warn!("no oom watch for {id}: {e}", id = req.id))
                .ok()
        });
        self.lock().insert(
            req.id.clone(),
            Container {
                dir,
                bundle: req.bundle.clone(),
                mounted_rootfs: mounted.then_some(rootfs),
                init,
                execs: HashMap::new(),
                cgroups,
                oom,
            },
        );
        Ok(pid)
    }

    async fn start(&self, id: &str) -> Result<()> {
        let log = self.with(id, |c| Ok(c.dir.join("runc.log")))?;
        self.runc
            .run(&os(&["start", id]), Some(&log))
            .await
            .map(drop)
    }

    async fn exec(&self, id: &str, exec_id: &str, process: &Process, stdio: &Stdio) -> Result<u32> {
        let dir = self.with(id, |c| {
            if c.execs.contains_key(exec_id) {
                return Err(SandboxError::AlreadyExists(format!(
                    "exec {exec_id} already exists in container {id}"
                )));
            }
            Ok(c.dir.clone())
        })?;
        let spec_file = dir.join(format!("exec-{exec_id}.json"));
        let json = serde_json::to_vec(process).map_err(|e| {
            SandboxError::InvalidArgument(format!("invalid exec process spec: {e}"))
        })?;
        std::fs::write(&spec_file, json).map_err(SandboxError::io("cannot write exec spec"))?;
        let pid_file = dir.join(format!("exec-{exec_id}.pid"));
        let mut args = os(&["exec", "--detach", "--process"]);
        args.push(spec_file.clone().into());
        args.push("--pid-file".into());
        args.push(pid_file.clone().into());
        let result = HostProcess::spawn(&self.runc, args, id, stdio, &dir, &pid_file).await;
        let _ = std::fs::remove_file(&spec_file);
        let _ = std::fs::remove_file(&pid_file);
        let p = result?;
        let pid = p.pid;
        self.with(id, |c| {
            c.execs.insert(exec_id.to_string(), p);
            Ok(())
        })?;
        Ok(pid)
    }

    async fn wait(&self, id: &str, exec_id: Option<&str>) -> Result<ExitStatus> {
        let mut rx = self.with_process(id, exec_id, |p| Ok(p.exit.clone()))?;
        let status = rx
            .wait_for(|s| s.is_some())
            .await
            .map_err(|_| SandboxError::Internal(format!("exit of {id} was lost")))?
            .expect("checked by wait_for");
        if exec_id.is_none() {
            // Report an OOM the watcher has not passed on yet before the exit.
            let pending = self
                .with(id, |c| Ok(c.oom.as_ref().is_some_and(|o| o.pending())))
                .unwrap_or(false);
            if pending {
                Self::report_oom(&self.events, id);
            }
        }
        Ok(status)
    }

    async fn kill(&self, id: &str, exec_id: Option<&str>, signal: u32, all: bool) -> Result<()> {
        let (pid, exited) =
            self.with_process(id, exec_id, |p| Ok((p.pid, p.exit.borrow().is_some())))?;
        if exec_id.is_none() {
            if exited && !all {
                return Err(SandboxError::NotFound(format!(
                    "process {id} already finished"
                )));
            }
            let log = self.with(id, |c| Ok(c.dir.join("runc.log")))?;
            let mut args = os(&["kill"]);
            if all {
                args.push("--all".into());
            }
            args.push(id.into());
            args.push(signal.to_string().into());
            return self.runc.run(&args, Some(&log)).await.map(drop);
        }
        if exited {
            return Err(SandboxError::NotFound(format!(
                "exec {} already finished",
                exec_id.unwrap_or_default()
            )));
        }
        let sig = Signal::try_from(signal as i32)
            .map_err(|_| SandboxError::InvalidArgument(format!("invalid signal {signal}")))?;
        nix::sys::signal::kill(Pid::from_raw(pid as i32), sig)
            .map_err(|e| SandboxError::NotFound(format!("cannot signal process {pid}: {e}")))
    }

    async fn pids(&self, id: &str) -> Result<Vec<u32>> {
        self.with(id, |_| Ok(()))?;
        let out = self
            .runc
            .run(&os(&["ps", "--format", "json", id]), None)
            .await?;
        serde_json::from_slice(&out)
            .map_err(|e| SandboxError::Internal(format!("cannot parse runc ps output: {e}")))
    }

    async fn pause(&self, id: &str) -> Result<()> {
        self.with(id, |_| Ok(()))?;
        self.runc.run(&os(&["pause", id]), None).await.map(drop)
    }

    async fn resume(&self, id: &str) -> Result<()> {
        self.with(id, |_| Ok(()))?;
        self.runc.run(&os(&["resume", id]), None).await.map(drop)
    }

    async fn update(&self, id: &str, resources: &LinuxResources) -> Result<()> {
        let dir = self.with(id, |c| Ok(c.dir.clone()))?;
        let file = dir.join("update.json");
        let json = serde_json::to_vec(resources)
            .map_err(|e| SandboxError::InvalidArgument(format!("invalid resources: {e}")))?;
        std::fs::write(&file, json).map_err(SandboxError::io("cannot write resources"))?;
        let mut args = os(&["update", "--resources"]);
        args.push(file.clone().into());
        args.push(id.into());
        let r = self.runc.run(&args, None).await.map(drop);
        let _ = std::fs::remove_file(&file);
        r
    }

    async fn stats(&self, id: &str) -> Result<Any> {
        let cg = self.with(id, |c| {
            c.cgroups
                .clone()
                .ok_or_else(|| SandboxError::NotFound(format!("container {id} has no cgroups")))
        })?;
        metrics_any(&cg)
            .map_err(|e| SandboxError::NotFound(format!("cannot read metrics of {id}: {e}")))
    }

    async fn resize_pty(
        &self,
        id: &str,
        exec_id: Option<&str>,
        width: u32,
        height: u32,
    ) -> Result<()> {
        self.with_process(id, exec_id, |p| {
            let pty = p.pty.as_ref().ok_or_else(|| {
                SandboxError::NotFound(format!("process in {id} has no terminal"))
            })?;
            pty.resize(width, height)
                .map_err(SandboxError::io("cannot resize terminal"))
        })
    }

    async fn close_stdin(&self, id: &str, exec_id: Option<&str>) -> Result<()> {
        self.with_process(id, exec_id, |p| {
            if let Some(io) = &p.io {
                io.close_stdin();
            }
            Ok(())
        })
    }

    async fn delete(&self, id: &str, exec_id: Option<&str>) -> Result<()> {
        if let Some(exec_id) = exec_id {
            let p = self.with(id, |c| {
                c.execs.remove(exec_id).ok_or_else(|| {
                    SandboxError::NotFound(format!("exec {exec_id} not found in container {id}"))
                })
            })?;
            p.finish(OUTPUT_DRAIN).await;
            return Ok(());
        }
        let log = self.with(id, |c| Ok(c.dir.join("runc.log")))?;
        match self
            .runc
            .run(&os(&["delete", "--force", id]), Some(&log))
            .await
        {
            Ok(_) | Err(SandboxError::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
        let c = self.with(id, |_| Ok(())).and_then(|_| {
            self.lock()
                .remove(id)
                .ok_or_else(|| SandboxError::NotFound(id.to_string()))
        })?;
        let Container {
            dir,
            bundle,
            mounted_rootfs,
            init,
            execs,
            oom,
            ..
        } = c;
        drop(oom);
        for (_, p) in execs {
            p.finish(Duration::ZERO).await;
        }
        init.finish(OUTPUT_DRAIN).await;
        if let Some(rootfs) = mounted_rootfs {
            unmount(&rootfs);
        }
        let _ = std::fs::remove_dir_all(&dir);
        let _ = std::fs::remove_file(bundle.join(BUNDLE_STATE_FILE));
        Ok(())
    }

    async fn shutdown(&self) -> Result<()> {
        let left: Vec<String> = self.lock().keys().cloned().collect();
        for id in left {
            let _ = self.kill(&id, None, 9, true).await;
            let _ = self.delete(&id, None).await;
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        Ok(())
    }
}

/// Cleans up a container whose shim is gone, from the bundle's state file
/// (`shim delete`). Returns whether there was anything to clean.
pub async fn cleanup_bundle(bundle: &Path, id: &str) -> Result<bool> {
    let Ok(text) = std::fs::read(bundle.join(BUNDLE_STATE_FILE)) else {
        return Ok(false);
    };
    let state: BundleState = serde_json::from_slice(&text)
        .map_err(|e| SandboxError::Internal(format!("invalid bundle state: {e}")))?;
    let runc = Runc {
        binary: state.runc_binary,
        root: state.runc_root,
        systemd_cgroup: state.systemd_cgroup,
    };
    match runc.run(&os(&["delete", "--force", id]), None).await {
        Ok(_) | Err(SandboxError::NotFound(_)) => {}
        Err(e) => tracing::warn!("{e}"),
    }
    if let Some(rootfs) = state.rootfs {
        unmount(&rootfs);
    }
    let _ = std::fs::remove_dir_all(&state.state_dir);
    // The pod's directory goes with its last container.
    if let Some(pod_dir) = state.state_dir.parent() {
        let _ = std::fs::remove_dir(pod_dir);
    }
    let _ = std::fs::remove_file(bundle.join(BUNDLE_STATE_FILE));
    Ok(true)
}

/// Shared handle type used by the service.
pub type SharedSandbox = Arc<dyn Sandbox>;

#[cfg(test)]
mod tests;

impl crate::sandbox::Processes for Container {
    type Process = HostProcess;
    fn init_mut(&mut self) -> &mut HostProcess {
        &mut self.init
    }
    fn exec_mut(&mut self, exec_id: &str) -> Option<&mut HostProcess> {
        self.execs.get_mut(exec_id)
    }
}
