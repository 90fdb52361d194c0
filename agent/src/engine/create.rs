//! CreateContainer, StartContainer and ExecProcess.

use std::collections::HashMap;
use std::sync::Arc;

use husk_agent_api::ids::{validate_exec_id, validate_id};
use husk_agent_api::pb;
use oci_spec::runtime::{Process, Spec};
use tokio::sync::watch;

use super::{
    open_ns, Container, Engine, EngineError, Proc, Status, MAX_CONTAINERS, MAX_EXECS,
    MAX_SPEC_BYTES,
};
use crate::spec::{container_plan, process_plan};
use crate::stdio::ProcIo;
use crate::sys::plan::ChildPlan;
use crate::sys::spawn::spawn;

impl Engine {
    /// Sets up a container whose init waits for StartContainer.
    pub async fn create_container(
        self: &Arc<Self>,
        req: pb::CreateContainerRequest,
    ) -> Result<u32, EngineError> {
        let id = req.container_id.as_str();
        validate_id(id)?;
        if req.oci_spec_json.len() > MAX_SPEC_BYTES {
            return Err(EngineError::Invalid("oci spec larger than 1 MiB".into()));
        }
        let spec: Spec = serde_json::from_slice(&req.oci_spec_json)
            .map_err(|e| EngineError::Invalid(format!("oci spec is not valid json: {e}")))?;
        let _reservation = self.reserve(id)?;
        let rootfs = self.share.resolve(&req.rootfs, true)?;
        let cgroup2 = self.cgroups.version() == "v2";
        let mut plan = container_plan(&spec, rootfs.real, &self.share, cgroup2)?;
        plan.rootfs
            .detach_bind_sources()
            .map_err(|e| EngineError::Io("clone a bind-mount source (open_tree)".into(), e))?;
        let mut stdio_req = req.stdio.unwrap_or_default();
        stdio_req.terminal |= plan.terminal;
        let (stdio, io) = ProcIo::create(&stdio_req)?;
        let cgroup = format!(
            "{}/{id}",
            self.cgroup_parent.lock().unwrap_or_else(|p| p.into_inner())
        );
        self.cgroups.create(&cgroup, &plan.resources)?;
        let oom_base = self.cgroups.oom_kills(&cgroup).unwrap_or(0);
        let child = ChildPlan {
            join_ns: Vec::new(),
            userns_root: plan.clone_flags & libc::CLONE_NEWUSER != 0,
            unshare_cgroup: plan.unshare_cgroup,
            rootfs: Some(plan.rootfs),
            process: plan.process,
            stdio,
            wait_start: true,
        };
        let mut pending = match spawn(child, plan.clone_flags, None) {
            Ok(p) => p,
            Err(e) => {
                let _ = self.cgroups.remove(&cgroup);
                return Err(e.into());
            }
        };
        let pid = pending.pid;
        {
            let mut t = self.tables();
            if t.containers.contains_key(id) {
                // Lost a race with a concurrent create of the same id.
                drop(t);
                kill_and_forget(pid);
                return Err(EngineError::Exists(format!("container {id}")));
            }
            t.by_pid.insert(pid, (id.to_string(), String::new()));
            t.containers.insert(
                id.to_string(),
                Container {
                    cgroup: cgroup.clone(),
                    status: Status::Creating,
                    init: Proc {
                        pid,
                        oom_base,
                        io,
                        exit: watch::channel(None).0,
                    },
                    execs: HashMap::new(),
                    namespaces: plan.namespaces,
                    seccomp: plan.seccomp,
                    pending: None,
                    oom_seen: oom_base,
                    oom_task: None,
                },
            );
        }
        let setup = async {
            if !plan.uid_map.is_empty() {
                write_map(pid, "uid_map", &plan.uid_map)?;
                write_map(pid, "gid_map", &plan.gid_map)?;
            }
            self.cgroups.add_process(&cgroup, pid)?;
            pending.go().await?;
            pending.ready().await?;
            Ok::<_, EngineError>(())
        };
        if let Err(e) = setup.await {
            kill_and_forget(pid);
            self.forget_failed(id, pid).await;
            return Err(e);
        }
        let task = self.spawn_oom_watch(id, &cgroup);
        let mut t = self.tables();
        let c = t.container(id)?;
        if let Some(m) = pending.pty_master.take() {
            c.init.io.set_pty(m)?;
        }
        c.pending = Some(pending);
        c.oom_task = task;
        if c.status == Status::Creating {
            c.status = Status::Created;
        }
        Ok(pid as u32)
    }

    /// Claims `id` for one create at a time; released when the guard drops
    /// (also when the request is cancelled midway).
    fn reserve(self: &Arc<Self>, id: &str) -> Result<Reservation, EngineError> {
        let mut t = self.tables();
        if t.containers.contains_key(id) || t.reserved.contains(id) {
            return Err(EngineError::Exists(format!("container {id}")));
        }
        if t.containers.len() + t.reserved.len() >= MAX_CONTAINERS {
            return Err(EngineError::State(
                "too many containers; remove some first".into(),
            ));
        }
        t.reserved.insert(id.to_string());
        Ok(Reservation {
            engine: self.clone(),
            id: id.to_string(),
        })
    }

    /// Removes a container whose setup failed, once its init is reaped.
    async fn forget_failed(&self, id: &str, pid: i32) {
        let rx = self
            .tables()
            .containers
            .get(id)
            .map(|c| c.init.exit.subscribe());
        if let Some(mut rx) = rx {
            let _ = tokio::time::timeout(
                std::time::Duration::from_secs(5),
                rx.wait_for(|e| e.is_some()),
            )
            .await;
        }
        let cg = {
            let mut t = self.tables();
            t.by_pid.remove(&pid);
            t.containers.remove(id).map(|c| c.cgroup)
        };
        if let Some(cg) = cg {
            let _ = self.cgroups.remove(&cg);
        }
    }

    /// Lets the init execve.
    pub async fn start_container(&self, id: &str) -> Result<(), EngineError> {
        validate_id(id)?;
        let mut pending = {
            let mut t = self.tables();
            let c = t.container(id)?;
            if c.status != Status::Created {
                return Err(EngineError::State(format!(
                    "container {id} is not in the created state"
                )));
            }
            c.pending
                .take()
                .ok_or_else(|| EngineError::State(format!("container {id} is being started")))?
        };
        pending.start().await?;
        let mut t = self.tables();
        if let Ok(c) = t.container(id) {
            if c.status == Status::Created {
                c.status = Status::Running;
            }
        }
        Ok(())
    }

    /// Starts a process inside a running container.
    pub async fn exec_process(&self, req: pb::ExecProcessRequest) -> Result<u32, EngineError> {
        let (id, eid) = (req.container_id.as_str(), req.exec_id.as_str());
        validate_id(id)?;
        validate_exec_id(eid)?;
        if eid.is_empty() {
            return Err(EngineError::Invalid("exec id must not be empty".into()));
        }
        if req.process_json.len() > MAX_SPEC_BYTES {
            return Err(EngineError::Invalid(
                "process json larger than 1 MiB".into(),
            ));
        }
        let p: Process = serde_json::from_slice(&req.process_json)
            .map_err(|e| EngineError::Invalid(format!("process is not valid json: {e}")))?;
        let (init_pid, namespaces, seccomp, cgroup, oom_base) = {
            let mut t = self.tables();
            let c = t.container(id)?;
            if c.status != Status::Running {
                return Err(EngineError::State(format!("container {id} is not running")));
            }
            if c.execs.contains_key(eid) {
                return Err(EngineError::Exists(format!("exec {eid} in container {id}")));
            }
            if c.execs.len() >= MAX_EXECS {
                return Err(EngineError::State(
                    "too many execs; wait for some first".into(),
                ));
            }
            let base = self.cgroups.oom_kills(&c.cgroup).unwrap_or(0);
            (
                c.init.pid,
                c.namespaces.clone(),
                c.seccomp.clone(),
                c.cgroup.clone(),
                base,
            )
        };
        let process = process_plan(&p, seccomp)?;
        let mut stdio_req = req.stdio.unwrap_or_default();
        stdio_req.terminal |= p.terminal().unwrap_or(false);
        let (stdio, io) = ProcIo::create(&stdio_req)?;
        let mut join_ns = Vec::new();
        let mut pid_ns = None;
        for (name, typ) in &namespaces {
            let fd = open_ns(init_pid, name)?;
            if *typ == libc::CLONE_NEWPID {
                pid_ns = Some(fd);
            } else {
                join_ns.push((fd, *typ));
            }
        }
        let userns_root = join_ns.iter().any(|(_, t)| *t == libc::CLONE_NEWUSER);
        let child = ChildPlan {
            join_ns,
            userns_root,
            unshare_cgroup: false,
            rootfs: None,
            process,
            stdio,
            wait_start: false,
        };
        let mut pending = spawn(child, 0, pid_ns.as_ref())?;
        let pid = pending.pid;
        {
            let mut t = self.tables();
            t.by_pid.insert(pid, (id.to_string(), eid.to_string()));
            match t.containers.get_mut(id) {
                Some(c) if !c.execs.contains_key(eid) => {
                    c.execs.insert(
                        eid.to_string(),
                        Proc {
                            pid,
                            oom_base,
                            io,
                            exit: watch::channel(None).0,
                        },
                    );
                }
                _ => {
                    drop(t);
                    kill_and_forget(pid);
                    return Err(EngineError::Exists(format!("exec {eid} in container {id}")));
                }
            }
        }
        let setup = async {
            self.cgroups.add_process(&cgroup, pid)?;
            pending.go().await?;
            pending.exec_done().await?;
            Ok::<_, EngineError>(())
        };
        if let Err(e) = setup.await {
            kill_and_forget(pid);
            let mut t = self.tables();
            if let Ok(c) = t.container(id) {
                c.execs.remove(eid);
            }
            return Err(e);
        }
        if let Some(m) = pending.pty_master.take() {
            self.tables().proc(id, eid)?.io.set_pty(m)?;
        }
        Ok(pid as u32)
    }
}

fn write_map(pid: i32, file: &str, map: &str) -> Result<(), EngineError> {
    let p = format!("/proc/{pid}/{file}");
    std::fs::write(&p, map).map_err(|e| EngineError::Io(format!("write {p}"), e))
}

/// SIGKILL a child whose setup failed; the reaper collects it.
fn kill_and_forget(pid: i32) {
    // SAFETY: kill with a pid we spawned and have not reaped yet.
    unsafe { libc::kill(pid, libc::SIGKILL) };
}

/// An id being created; see [`Engine::reserve`].
struct Reservation {
    engine: Arc<Engine>,
    id: String,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.engine.tables().reserved.remove(&self.id);
    }
}
