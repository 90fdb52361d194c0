//! The task operations of a VM pod, each one agent call plus the shim's
//! bookkeeping.

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use husk_agent_api::pb;
use oci_spec::runtime::{LinuxResources, Process};

use super::cleanup::SandboxInfo;
use super::guest_spec::{self, Role};
use super::net::{self, NetError, SpecNetwork};
use super::pod::{BootRequest, CgroupSetup, PodVm};
use super::{
    agent_error, cleanup, share, stats, BundleMarker, Container, ContainerShare, GuestProcess,
    VmSandbox, BUNDLE_MARKER,
};
use crate::sandbox::{CreateRequest, ExitStatus, Result, Sandbox, SandboxError, Stdio};

fn internal(e: impl std::fmt::Display) -> SandboxError {
    SandboxError::Internal(e.to_string())
}

impl VmSandbox {
    /// Boots the pod's VM for its first container.
    async fn ensure_vm(&self, first: &CreateRequest) -> Result<Arc<PodVm>> {
        let vm = self
            .vm
            .get_or_try_init(|| async {
                let dir = &self.paths.dir;
                std::fs::create_dir_all(dir)
                    .map_err(SandboxError::io(format!("cannot create {}", dir.display())))?;
                let booted = self.boot(first).await;
                if booted.is_err() {
                    if let Err(e) = cleanup::teardown_dir(dir) {
                        tracing::warn!("cleanup after a failed boot: {e}");
                    }
                }
                booted.map(Arc::new)
            })
            .await?;
        Ok(vm.clone())
    }

    async fn boot(&self, first: &CreateRequest) -> Result<PodVm> {
        let started = Instant::now();
        let info = SandboxInfo {
            id: self.id.clone(),
            shim_pid: std::process::id(),
        };
        // Refused before anything starts: a VM cannot share the host's network.
        let spec_net = SpecNetwork::of(&first.spec);
        if spec_net == SpecNetwork::Host {
            return Err(SandboxError::FailedPrecondition(
                NetError::HostNetwork.to_string(),
            ));
        }
        cleanup::write_sandbox(&self.paths.dir, &info).map_err(internal)?;
        let cgroups_path = first
            .spec
            .linux()
            .as_ref()
            .and_then(|l| l.cgroups_path().as_ref())
            .map(|p| p.display().to_string());
        let cgroup = CgroupSetup::start(cgroups_path, &self.paths.dir);
        let prepared = self.prepare_host(&spec_net).await;
        let net = match prepared {
            Ok(net) => net,
            Err(e) => {
                // Recorded in the pod dir: the caller's teardown removes it.
                let _ = cgroup.finish().await;
                return Err(e);
            }
        };
        let vm = PodVm::boot(BootRequest {
            cfg: &self.cfg,
            vmm: &self.vmm,
            virtiofsd: &self.virtiofsd,
            paths: self.paths.clone(),
            size: super::launch::sizing(&self.cfg, &first.spec),
            cgroup,
            config_hint: self.config_hint.clone(),
            net: net.as_ref().map(|(n, _)| n),
            started,
        })
        .await?;
        let ready = async {
            let t = Instant::now();
            vm.create_sandbox(&first.spec).await?;
            if let Some((_, cfg)) = net {
                vm.configure_network(cfg).await?;
            }
            self.watch_events(&vm).await?;
            tracing::info!("vm phase=sandbox ms={}", t.elapsed().as_millis());
            Ok(())
        }
        .await;
        if let Err(e) = ready {
            vm.stop().await;
            return Err(e);
        }
        Ok(vm)
    }

    /// The pod's share, and its tap when the spec joins a network namespace.
    async fn prepare_host(
        &self,
        spec_net: &SpecNetwork,
    ) -> Result<Option<(net::PodNet, pb::NetworkConfig)>> {
        share::prepare(&self.paths.dir)?;
        match spec_net {
            SpecNetwork::Joined(netns) => {
                let t = Instant::now();
                let net = net::attach(&self.paths.dir, netns)
                    .await
                    .map_err(|e| match e {
                        NetError::Unsupported(_) => SandboxError::FailedPrecondition(e.to_string()),
                        _ => SandboxError::Internal(format!("pod network: {e}")),
                    })?;
                tracing::info!("vm phase=network ms={}", t.elapsed().as_millis());
                Ok(net)
            }
            _ => Ok(None),
        }
    }

    /// Subscribes to the agent's events (OOM) before any container runs.
    async fn watch_events(&self, vm: &PodVm) -> Result<()> {
        let mut stream = vm
            .agent()
            .events(pb::EventsRequest {})
            .await
            .map_err(|s| agent_error(s, vm))?
            .into_inner();
        let oom = self.oom.clone();
        tokio::spawn(async move {
            while let Ok(Some(ev)) = stream.message().await {
                if let Some(pb::event::Kind::Oom(o)) = ev.kind {
                    oom.seen_in_stream(&ev.container_id, o.oom_kills);
                }
            }
        });
        Ok(())
    }

    async fn create_in_guest(
        &self,
        vm: &PodVm,
        req: &CreateRequest,
        spec_json: Vec<u8>,
    ) -> Result<GuestProcess> {
        let t = Instant::now();
        let resp = vm
            .agent()
            .create_container(pb::CreateContainerRequest {
                container_id: req.id.clone(),
                oci_spec_json: spec_json,
                rootfs: guest_spec::rootfs_rel(&req.id),
                stdio: Some(super::process::pb_stdio(&req.stdio)),
            })
            .await
            .map_err(|s| agent_error(s, vm))?
            .into_inner();
        match GuestProcess::attach(vm, &req.id, "", resp.pid, &req.stdio).await {
            Ok(p) => {
                tracing::info!("vm phase=container_create ms={}", t.elapsed().as_millis());
                Ok(p)
            }
            Err(e) => {
                let _ = vm
                    .agent()
                    .remove_container(pb::RemoveContainerRequest {
                        container_id: req.id.clone(),
                        force: true,
                    })
                    .await;
                Err(e)
            }
        }
    }

    fn with<T>(&self, id: &str, f: impl FnOnce(&mut Container) -> Result<T>) -> Result<T> {
        crate::sandbox::with_container(&mut self.lock(), id, f)
    }

    fn with_process<T>(
        &self,
        id: &str,
        exec_id: Option<&str>,
        f: impl FnOnce(&mut GuestProcess) -> Result<T>,
    ) -> Result<T> {
        crate::sandbox::with_process(&mut self.lock(), id, exec_id, f)
    }

    fn container_request(id: &str) -> pb::ContainerRequest {
        pb::ContainerRequest {
            container_id: id.to_string(),
        }
    }
}

#[async_trait]
impl Sandbox for VmSandbox {
    async fn create(&self, req: CreateRequest) -> Result<u32> {
        if self.lock().contains_key(&req.id) {
            return Err(SandboxError::AlreadyExists(format!(
                "container {} already exists",
                req.id
            )));
        }
        let vm = self.ensure_vm(&req).await?;
        let mut spec = req.spec.clone();
        let binds = guest_spec::rewrite(&mut spec, &req.id, Role::of(&req.spec))?;
        let spec_json = serde_json::to_vec(&spec).map_err(internal)?;
        let root_path = crate::spec::rootfs_path(&req.spec, &req.bundle);
        let mut share =
            ContainerShare::create(&vm.paths.shared(), &req.id, &req.rootfs, &root_path, &binds)?;
        let marker = BundleMarker {
            sandbox_dir: self.paths.dir.clone(),
            container_id: req.id.clone(),
        };
        let marker_path = req.bundle.join(BUNDLE_MARKER);
        let created = async {
            std::fs::write(&marker_path, serde_json::to_vec(&marker).map_err(internal)?)
                .map_err(SandboxError::io("cannot write the bundle marker"))?;
            self.create_in_guest(&vm, &req, spec_json).await
        }
        .await;
        match created {
            Ok(init) => {
                let pid = init.pid;
                self.lock().insert(
                    req.id.clone(),
                    Container {
                        init,
                        execs: Default::default(),
                        share,
                    },
                );
                Ok(pid)
            }
            Err(e) => {
                share.release();
                let _ = std::fs::remove_file(&marker_path);
                Err(e)
            }
        }
    }

    async fn start(&self, id: &str) -> Result<()> {
        let vm = self.booted()?.clone();
        self.with(id, |_| Ok(()))?;
        let t = Instant::now();
        vm.agent()
            .start_container(Self::container_request(id))
            .await
            .map_err(|s| agent_error(s, &vm))?;
        tracing::info!("vm phase=container_start ms={}", t.elapsed().as_millis());
        let oom = self.oom.clone();
        self.with(id, |c| {
            c.init.watch(&vm, id, "", oom);
            Ok(())
        })
    }

    async fn exec(&self, id: &str, exec_id: &str, process: &Process, stdio: &Stdio) -> Result<u32> {
        let vm = self.booted()?.clone();
        self.with(id, |c| {
            if c.execs.contains_key(exec_id) {
                return Err(SandboxError::AlreadyExists(format!(
                    "exec {exec_id} already exists in {id}"
                )));
            }
            Ok(())
        })?;
        let resp = vm
            .agent()
            .exec_process(pb::ExecProcessRequest {
                container_id: id.to_string(),
                exec_id: exec_id.to_string(),
                process_json: serde_json::to_vec(process).map_err(internal)?,
                stdio: Some(super::process::pb_stdio(stdio)),
            })
            .await
            .map_err(|s| agent_error(s, &vm))?
            .into_inner();
        let mut p = match GuestProcess::attach(&vm, id, exec_id, resp.pid, stdio).await {
            Ok(p) => p,
            Err(e) => {
                let mut agent = vm.agent();
                let req = pb::SignalProcessRequest {
                    container_id: id.to_string(),
                    exec_id: exec_id.to_string(),
                    signal: libc::SIGKILL as u32,
                    all: false,
                };
                let _ = agent.signal_process(req).await;
                return Err(e);
            }
        };
        p.watch(&vm, id, exec_id, self.oom.clone());
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
        Ok(status)
    }

    async fn kill(&self, id: &str, exec_id: Option<&str>, signal: u32, all: bool) -> Result<()> {
        let vm = self.booted()?.clone();
        let exited = self.with_process(id, exec_id, |p| Ok(p.exited()))?;
        if exited && !all {
            return Err(SandboxError::NotFound(format!(
                "process {} of {id} already finished",
                exec_id.unwrap_or(id)
            )));
        }
        if vm.dead_reason().is_some() {
            // Nothing runs in a stopped VM.
            return Ok(());
        }
        vm.agent()
            .signal_process(pb::SignalProcessRequest {
                container_id: id.to_string(),
                exec_id: exec_id.unwrap_or("").to_string(),
                signal,
                all,
            })
            .await
            .map_err(|s| agent_error(s, &vm))?;
        Ok(())
    }

    async fn pids(&self, id: &str) -> Result<Vec<u32>> {
        let vm = self.booted()?.clone();
        self.with(id, |_| Ok(()))?;
        if vm.dead_reason().is_some() {
            return Ok(Vec::new());
        }
        let r = vm
            .agent()
            .list_processes(Self::container_request(id))
            .await
            .map_err(|s| agent_error(s, &vm))?;
        Ok(r.into_inner().pids)
    }

    async fn pause(&self, id: &str) -> Result<()> {
        let vm = self.booted()?.clone();
        self.with(id, |_| Ok(()))?;
        vm.agent()
            .pause_container(Self::container_request(id))
            .await
            .map_err(|s| agent_error(s, &vm))?;
        Ok(())
    }

    async fn resume(&self, id: &str) -> Result<()> {
        let vm = self.booted()?.clone();
        self.with(id, |_| Ok(()))?;
        vm.agent()
            .resume_container(Self::container_request(id))
            .await
            .map_err(|s| agent_error(s, &vm))?;
        Ok(())
    }

    async fn update(&self, id: &str, resources: &LinuxResources) -> Result<()> {
        let vm = self.booted()?.clone();
        self.with(id, |_| Ok(()))?;
        vm.agent()
            .update_container(pb::UpdateContainerRequest {
                container_id: id.to_string(),
                resources: Some(stats::resources(resources)),
            })
            .await
            .map_err(|s| agent_error(s, &vm))?;
        Ok(())
    }

    async fn stats(&self, id: &str) -> Result<Any> {
        let vm = self.booted()?.clone();
        self.with(id, |_| Ok(()))?;
        let r = vm
            .agent()
            .stats_container(Self::container_request(id))
            .await
            .map_err(|s| agent_error(s, &vm))?;
        Ok(stats::metrics_any(&r.into_inner()))
    }

    async fn resize_pty(
        &self,
        id: &str,
        exec_id: Option<&str>,
        width: u32,
        height: u32,
    ) -> Result<()> {
        let vm = self.booted()?.clone();
        self.with_process(id, exec_id, |_| Ok(()))?;
        vm.agent()
            .resize_tty(pb::ResizeTtyRequest {
                container_id: id.to_string(),
                exec_id: exec_id.unwrap_or("").to_string(),
                rows: height,
                cols: width,
            })
            .await
            .map_err(|s| agent_error(s, &vm))?;
        Ok(())
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
        let vm = self.booted()?.clone();
        let alive = vm.dead_reason().is_none();
        if let Some(e) = exec_id {
            self.with_process(id, exec_id, |p| {
                if p.exited() {
                    Ok(())
                } else {
                    Err(SandboxError::FailedPrecondition(format!(
                        "exec {e} of {id} is still running"
                    )))
                }
            })?;
            if alive {
                let req = pb::ProcessRequest {
                    container_id: id.to_string(),
                    exec_id: e.to_string(),
                };
                if let Err(s) = vm.agent().delete_process(req).await {
                    tracing::warn!(
                        container = id,
                        exec = e,
                        "agent DeleteProcess: {}",
                        s.message()
                    );
                }
            }
            self.with(id, |c| Ok(c.execs.remove(e)))?;
            return Ok(());
        }
        let running = self.with(id, |c| Ok(!c.init.exited()))?;
        if running && alive {
            return Err(SandboxError::FailedPrecondition(format!(
                "container {id} is still running; kill it first"
            )));
        }
        if alive {
            let req = pb::RemoveContainerRequest {
                container_id: id.to_string(),
                force: true,
            };
            match vm.agent().remove_container(req).await {
                Ok(_) => {}
                Err(s) if s.code() == tonic::Code::NotFound => {}
                Err(s) => return Err(agent_error(s, &vm)),
            }
        }
        let removed = self.lock().remove(id);
        if let Some(mut c) = removed {
            c.share.release();
        }
        Ok(())
    }

    async fn shutdown(&self) -> Result<()> {
        let Some(vm) = self.vm.get() else {
            return Ok(());
        };
        vm.stop().await;
        let containers: Vec<Container> = self.lock().drain().map(|(_, c)| c).collect();
        for mut c in containers {
            c.share.release();
        }
        cleanup::teardown_dir(&self.paths.dir)
            .map(|_| ())
            .map_err(|e| {
                SandboxError::Internal(format!("cleanup of {}: {e}", self.paths.dir.display()))
            })
    }
}
