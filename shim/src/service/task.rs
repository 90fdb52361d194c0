//! The ttrpc `Task` service: one method per request, each a thin layer over
//! the sandbox plus the state and events containerd expects.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use containerd_shim::api::*;
use containerd_shim::protos::events::task::{
    TaskDelete, TaskExecAdded, TaskExecStarted, TaskPaused, TaskResumed, TaskStart,
};
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::Message;
use containerd_shim::protos::shim::oci::ProcessDetails;
use containerd_shim::protos::ttrpc::r#async::TtrpcContext;
use containerd_shim::protos::ttrpc::Result as TtrpcResult;
use containerd_shim::protos::types::task::ProcessInfo;
use containerd_shim::Task;
use oci_spec::runtime::{LinuxResources, Process};

use super::events::timestamp;
use super::state::{ContainerState, ExecState, ProcState};
use super::{invalid, not_found, precondition, validate_id, SResult, TaskEvent, TaskService};
use crate::sandbox::{CreateRequest, RootfsMount, Stdio};

/// How long Delete waits for the exit of a container it force-deleted.
const DELETE_EXIT_WAIT: Duration = Duration::from_secs(5);

/// The ttrpc face of a [`TaskService`].
#[derive(Clone)]
pub struct Tasks(pub Arc<TaskService>);

fn exec_of(exec_id: &str) -> Option<&str> {
    (!exec_id.is_empty()).then_some(exec_id)
}

impl TaskService {
    pub(super) async fn create(
        self: &Arc<Self>,
        req: CreateTaskRequest,
    ) -> SResult<CreateTaskResponse> {
        validate_id("container id", &req.id)?;
        let _serial = self.create_lock.lock().await;
        if self.lock().contains_key(&req.id) {
            return Err(crate::sandbox::SandboxError::AlreadyExists(format!(
                "container {} already exists",
                req.id
            ))
            .into());
        }
        let options_path = match req.options.as_ref() {
            Some(any) => {
                crate::options::config_path_from_any(any).map_err(|e| invalid(e.to_string()))?
            }
            None => None,
        };
        let (cfg, path) = self.config_for(options_path)?;
        tracing::info!(id = req.id, config = %path.display(), "create");
        let bundle = PathBuf::from(&req.bundle);
        let spec = crate::spec::load_spec(&bundle)?;
        let sandbox = self.sandbox_for(&cfg).await?;
        let stdio = Stdio {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        let rootfs: Vec<RootfsMount> = req
            .rootfs
            .iter()
            .map(|m| RootfsMount {
                fs_type: m.type_.clone(),
                source: m.source.clone(),
                options: m.options.clone(),
            })
            .collect();
        let pid = sandbox
            .create(CreateRequest {
                id: req.id.clone(),
                bundle,
                spec,
                rootfs: rootfs.clone(),
                stdio: stdio.clone(),
            })
            .await?;
        self.lock().insert(
            req.id.clone(),
            ContainerState {
                bundle: req.bundle.clone(),
                init: ProcState::new(pid, Status::CREATED, stdio.clone()),
                execs: HashMap::new(),
                lifecycle: Arc::new(tokio::sync::Mutex::new(())),
            },
        );
        self.publish(TaskEvent::create(
            &req.id,
            &req.bundle,
            &rootfs,
            &stdio,
            pid,
        ));
        self.watch_exit(req.id.clone(), None);
        Ok(CreateTaskResponse {
            pid,
            ..Default::default()
        })
    }

    pub(super) async fn start(self: &Arc<Self>, req: StartRequest) -> SResult<StartResponse> {
        let sandbox = self.sandbox()?.clone();
        let lifecycle = self
            .lock()
            .get(&req.id)
            .map(|c| c.lifecycle.clone())
            .ok_or_else(|| not_found(format!("container {} not found", req.id)))?;
        let _guard = lifecycle.lock().await;
        match exec_of(&req.exec_id) {
            None => {
                let pid = {
                    let map = self.lock();
                    let c = map
                        .get(&req.id)
                        .ok_or_else(|| not_found(format!("container {} not found", req.id)))?;
                    if c.init.status != Status::CREATED {
                        return Err(precondition(format!(
                            "container {} is not in the created state",
                            req.id
                        )));
                    }
                    c.init.pid
                };
                sandbox.start(&req.id).await?;
                if let Some(c) = self.lock().get_mut(&req.id) {
                    if c.init.exited().is_none() {
                        c.init.status = Status::RUNNING;
                    }
                }
                self.publish(TaskEvent::Start(TaskStart {
                    container_id: req.id.clone(),
                    pid,
                    ..Default::default()
                }));
                Ok(StartResponse {
                    pid,
                    ..Default::default()
                })
            }
            Some(exec_id) => {
                let (spec, stdio) = {
                    let map = self.lock();
                    let c = map
                        .get(&req.id)
                        .ok_or_else(|| not_found(format!("container {} not found", req.id)))?;
                    let e = c.execs.get(exec_id).ok_or_else(|| {
                        not_found(format!("exec {exec_id} not found in container {}", req.id))
                    })?;
                    if e.proc.status != Status::CREATED {
                        return Err(precondition(format!("exec {exec_id} was already started")));
                    }
                    (e.spec.clone(), e.proc.stdio.clone())
                };
                let pid = sandbox.exec(&req.id, exec_id, &spec, &stdio).await?;
                if let Some(e) = self
                    .lock()
                    .get_mut(&req.id)
                    .and_then(|c| c.execs.get_mut(exec_id))
                {
                    e.proc.pid = pid;
                    e.proc.status = Status::RUNNING;
                }
                self.publish(TaskEvent::ExecStarted(TaskExecStarted {
                    container_id: req.id.clone(),
                    exec_id: exec_id.to_string(),
                    pid,
                    ..Default::default()
                }));
                self.watch_exit(req.id.clone(), Some(exec_id.to_string()));
                Ok(StartResponse {
                    pid,
                    ..Default::default()
                })
            }
        }
    }

    pub(super) fn state(&self, req: &StateRequest) -> SResult<StateResponse> {
        let map = self.lock();
        let c = map
            .get(&req.id)
            .ok_or_else(|| not_found(format!("container {} not found", req.id)))?;
        match exec_of(&req.exec_id) {
            None => Ok(c.init.state(&req.id, "", &c.bundle)),
            Some(e) => {
                let x = c.execs.get(e).ok_or_else(|| {
                    not_found(format!("exec {e} not found in container {}", req.id))
                })?;
                Ok(x.proc.state(&req.id, e, &c.bundle))
            }
        }
    }

    pub(super) async fn delete(self: &Arc<Self>, req: DeleteRequest) -> SResult<DeleteResponse> {
        let sandbox = self.sandbox()?.clone();
        if let Some(exec_id) = exec_of(&req.exec_id) {
            let (pid, started, exit) = {
                let map = self.lock();
                let c = map
                    .get(&req.id)
                    .ok_or_else(|| not_found(format!("container {} not found", req.id)))?;
                let e = c.execs.get(exec_id).ok_or_else(|| {
                    not_found(format!("exec {exec_id} not found in container {}", req.id))
                })?;
                if e.proc.is_running() {
                    return Err(precondition(format!(
                        "exec {exec_id} is still running; kill it first"
                    )));
                }
                (
                    e.proc.pid,
                    e.proc.status != Status::CREATED,
                    e.proc.exited(),
                )
            };
            if started {
                sandbox.delete(&req.id, Some(exec_id)).await?;
            }
            if let Some(c) = self.lock().get_mut(&req.id) {
                c.execs.remove(exec_id);
            }
            return Ok(DeleteResponse {
                pid,
                exit_status: exit.map(|e| e.code).unwrap_or(0),
                exited_at: exit.map(|e| timestamp(e.at)).into(),
                ..Default::default()
            });
        }
        let mut exit_rx = {
            let map = self.lock();
            let c = map
                .get(&req.id)
                .ok_or_else(|| not_found(format!("container {} not found", req.id)))?;
            if c.init.is_running() {
                return Err(precondition(format!(
                    "container {} is still running; kill it first",
                    req.id
                )));
            }
            c.init.exit.subscribe()
        };
        sandbox.delete(&req.id, None).await?;
        // A created container is killed by the delete: wait for its exit.
        let _ = tokio::time::timeout(DELETE_EXIT_WAIT, exit_rx.wait_for(|e| e.is_some())).await;
        let c = self
            .lock()
            .remove(&req.id)
            .ok_or_else(|| not_found(format!("container {} not found", req.id)))?;
        let exit = c.init.exited();
        let (code, at) = match exit {
            Some(e) => (e.code, timestamp(e.at)),
            None => (137, timestamp(std::time::SystemTime::now())),
        };
        self.publish(TaskEvent::Delete(TaskDelete {
            container_id: req.id.clone(),
            pid: c.init.pid,
            exit_status: code,
            exited_at: Some(at.clone()).into(),
            id: req.id.clone(),
            ..Default::default()
        }));
        Ok(DeleteResponse {
            pid: c.init.pid,
            exit_status: code,
            exited_at: Some(at).into(),
            ..Default::default()
        })
    }

    pub(super) fn exec(&self, req: ExecProcessRequest) -> SResult<()> {
        validate_id("exec id", &req.exec_id)?;
        let any = req
            .spec
            .as_ref()
            .ok_or_else(|| invalid("exec request has no process spec".to_string()))?;
        let spec: Process = serde_json::from_slice(&any.value)
            .map_err(|e| invalid(format!("invalid exec process spec: {e}")))?;
        if spec.args().as_ref().is_none_or(|a| a.is_empty()) {
            return Err(invalid(
                "invalid exec process spec: args is empty".to_string(),
            ));
        }
        {
            let mut map = self.lock();
            let c = map
                .get_mut(&req.id)
                .ok_or_else(|| not_found(format!("container {} not found", req.id)))?;
            if c.init.status != Status::RUNNING {
                return Err(precondition(format!("container {} is not running", req.id)));
            }
            if c.execs.contains_key(&req.exec_id) {
                return Err(crate::sandbox::SandboxError::AlreadyExists(format!(
                    "exec {} already exists",
                    req.exec_id
                ))
                .into());
            }
            let stdio = Stdio {
                stdin: req.stdin.clone(),
                stdout: req.stdout.clone(),
                stderr: req.stderr.clone(),
                terminal: req.terminal,
            };
            c.execs.insert(
                req.exec_id.clone(),
                ExecState {
                    spec,
                    proc: ProcState::new(0, Status::CREATED, stdio),
                },
            );
        }
        self.publish(TaskEvent::ExecAdded(TaskExecAdded {
            container_id: req.id.clone(),
            exec_id: req.exec_id.clone(),
            ..Default::default()
        }));
        Ok(())
    }

    pub(super) fn check(&self, id: &str, exec_id: Option<&str>) -> SResult<()> {
        let map = self.lock();
        let c = map
            .get(id)
            .ok_or_else(|| not_found(format!("container {id} not found")))?;
        if let Some(e) = exec_id {
            let x = c
                .execs
                .get(e)
                .ok_or_else(|| not_found(format!("exec {e} not found in container {id}")))?;
            if x.proc.status == Status::CREATED {
                return Err(precondition(format!("exec {e} is not started")));
            }
        }
        Ok(())
    }

    pub(super) async fn kill(&self, req: KillRequest) -> SResult<()> {
        let exec = exec_of(&req.exec_id);
        self.check(&req.id, exec)?;
        self.sandbox()?
            .kill(&req.id, exec, req.signal, req.all)
            .await?;
        Ok(())
    }

    pub(super) async fn set_paused(&self, id: &str, pause: bool) -> SResult<()> {
        {
            let map = self.lock();
            let c = map
                .get(id)
                .ok_or_else(|| not_found(format!("container {id} not found")))?;
            let want = if pause {
                Status::RUNNING
            } else {
                Status::PAUSED
            };
            if c.init.status != want {
                return Err(precondition(format!(
                    "container {id} is {:?}, not {want:?}",
                    c.init.status
                )));
            }
        }
        let sb = self.sandbox()?;
        if pause {
            sb.pause(id).await?;
        } else {
            sb.resume(id).await?;
        }
        if let Some(c) = self.lock().get_mut(id) {
            if c.init.exited().is_none() {
                c.init.status = if pause {
                    Status::PAUSED
                } else {
                    Status::RUNNING
                };
            }
        }
        let container_id = id.to_string();
        self.publish(if pause {
            TaskEvent::Paused(TaskPaused {
                container_id,
                ..Default::default()
            })
        } else {
            TaskEvent::Resumed(TaskResumed {
                container_id,
                ..Default::default()
            })
        });
        Ok(())
    }

    pub(super) async fn pids(&self, req: &PidsRequest) -> SResult<PidsResponse> {
        self.check(&req.id, None)?;
        let pids = self.sandbox()?.pids(&req.id).await?;
        let execs: HashMap<u32, String> = self
            .lock()
            .get(&req.id)
            .map(|c| {
                c.execs
                    .iter()
                    .map(|(k, v)| (v.proc.pid, k.clone()))
                    .collect()
            })
            .unwrap_or_default();
        let processes = pids
            .into_iter()
            .map(|pid| {
                let info = execs.get(&pid).and_then(|exec_id| {
                    let details = ProcessDetails {
                        exec_id: exec_id.clone(),
                        ..Default::default()
                    };
                    Some(Any {
                        type_url: "containerd.runc.v1.ProcessDetails".to_string(),
                        value: details.write_to_bytes().ok()?,
                        ..Default::default()
                    })
                });
                ProcessInfo {
                    pid,
                    info: info.into(),
                    ..Default::default()
                }
            })
            .collect();
        Ok(PidsResponse {
            processes,
            ..Default::default()
        })
    }

    pub(super) async fn wait(&self, req: &WaitRequest) -> SResult<WaitResponse> {
        let mut rx = {
            let map = self.lock();
            let c = map
                .get(&req.id)
                .ok_or_else(|| not_found(format!("container {} not found", req.id)))?;
            match exec_of(&req.exec_id) {
                None => c.init.exit.subscribe(),
                Some(e) => c
                    .execs
                    .get(e)
                    .ok_or_else(|| {
                        not_found(format!("exec {e} not found in container {}", req.id))
                    })?
                    .proc
                    .exit
                    .subscribe(),
            }
        };
        let exit = rx
            .wait_for(|e| e.is_some())
            .await
            .map_err(|_| not_found(format!("process {} was deleted while waiting", req.id)))?
            .expect("checked by wait_for");
        Ok(WaitResponse {
            exit_status: exit.code,
            exited_at: Some(timestamp(exit.at)).into(),
            ..Default::default()
        })
    }

    pub(super) async fn update(&self, req: &UpdateTaskRequest) -> SResult<()> {
        self.check(&req.id, None)?;
        let any = req
            .resources
            .as_ref()
            .ok_or_else(|| invalid("update request has no resources".to_string()))?;
        let resources: LinuxResources = serde_json::from_slice(&any.value)
            .map_err(|e| invalid(format!("invalid resources: {e}")))?;
        self.sandbox()?.update(&req.id, &resources).await?;
        Ok(())
    }
}

#[async_trait]
impl Task for Tasks {
    async fn state(&self, _ctx: &TtrpcContext, req: StateRequest) -> TtrpcResult<StateResponse> {
        Ok(self.0.state(&req)?)
    }

    async fn create(
        &self,
        _ctx: &TtrpcContext,
        req: CreateTaskRequest,
    ) -> TtrpcResult<CreateTaskResponse> {
        Ok(self.0.create(req).await?)
    }

    async fn start(&self, _ctx: &TtrpcContext, req: StartRequest) -> TtrpcResult<StartResponse> {
        Ok(self.0.start(req).await?)
    }

    async fn delete(&self, _ctx: &TtrpcContext, req: DeleteRequest) -> TtrpcResult<DeleteResponse> {
        Ok(self.0.delete(req).await?)
    }

    async fn pids(&self, _ctx: &TtrpcContext, req: PidsRequest) -> TtrpcResult<PidsResponse> {
        Ok(self.0.pids(&req).await?)
    }

    async fn pause(&self, _ctx: &TtrpcContext, req: PauseRequest) -> TtrpcResult<Empty> {
        self.0.set_paused(&req.id, true).await?;
        Ok(Empty::new())
    }

    async fn resume(&self, _ctx: &TtrpcContext, req: ResumeRequest) -> TtrpcResult<Empty> {
        self.0.set_paused(&req.id, false).await?;
        Ok(Empty::new())
    }

    async fn kill(&self, _ctx: &TtrpcContext, req: KillRequest) -> TtrpcResult<Empty> {
        self.0.kill(req).await?;
        Ok(Empty::new())
    }

    async fn exec(&self, _ctx: &TtrpcContext, req: ExecProcessRequest) -> TtrpcResult<Empty> {
        self.0.exec(req)?;
        Ok(Empty::new())
    }

    async fn resize_pty(&self, _ctx: &TtrpcContext, req: ResizePtyRequest) -> TtrpcResult<Empty> {
        let exec = exec_of(&req.exec_id);
        self.0.check(&req.id, exec)?;
        let sb = self.0.sandbox()?;
        sb.resize_pty(&req.id, exec, req.width, req.height)
            .await
            .map_err(super::ServiceError::from)?;
        Ok(Empty::new())
    }

    async fn close_io(&self, _ctx: &TtrpcContext, req: CloseIORequest) -> TtrpcResult<Empty> {
        let exec = exec_of(&req.exec_id);
        self.0.check(&req.id, exec)?;
        if req.stdin {
            let sb = self.0.sandbox()?;
            sb.close_stdin(&req.id, exec)
                .await
                .map_err(super::ServiceError::from)?;
        }
        Ok(Empty::new())
    }

    async fn update(&self, _ctx: &TtrpcContext, req: UpdateTaskRequest) -> TtrpcResult<Empty> {
        self.0.update(&req).await?;
        Ok(Empty::new())
    }

    async fn wait(&self, _ctx: &TtrpcContext, req: WaitRequest) -> TtrpcResult<WaitResponse> {
        Ok(self.0.wait(&req).await?)
    }

    async fn stats(&self, _ctx: &TtrpcContext, req: StatsRequest) -> TtrpcResult<StatsResponse> {
        self.0.check(&req.id, None)?;
        let sb = self.0.sandbox()?;
        let stats = sb.stats(&req.id).await.map_err(super::ServiceError::from)?;
        Ok(StatsResponse {
            stats: Some(stats).into(),
            ..Default::default()
        })
    }

    async fn connect(
        &self,
        _ctx: &TtrpcContext,
        req: ConnectRequest,
    ) -> TtrpcResult<ConnectResponse> {
        let task_pid = self.0.lock().get(&req.id).map(|c| c.init.pid).unwrap_or(0);
        Ok(ConnectResponse {
            shim_pid: std::process::id(),
            task_pid,
            version: env!("CARGO_PKG_VERSION").to_string(),
            ..Default::default()
        })
    }

    async fn shutdown(&self, _ctx: &TtrpcContext, _req: ShutdownRequest) -> TtrpcResult<Empty> {
        self.0.shutdown_if_idle().await?;
        Ok(Empty::new())
    }
}
