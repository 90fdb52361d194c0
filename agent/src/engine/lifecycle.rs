//! Requests on existing containers: signals, waits, tty, stdin, cgroup
//! operations, removal, stdio attach.

use std::sync::Arc;
use std::time::Duration;

use husk_agent_api::ids::{validate_exec_id, validate_id};
use husk_agent_api::pb;
use husk_agent_api::stdio::StreamHeader;

use super::{Engine, EngineError, Exit, Status};
use crate::cgroup::Resources;
use crate::stdio::Attach;
use crate::sys::pty::resize;

/// How long Remove waits for killed processes to be reaped.
const REMOVE_WAIT: Duration = Duration::from_secs(10);

fn kill(pid: i32, sig: i32) -> Result<(), EngineError> {
    // SAFETY: kill takes integers only.
    if unsafe { libc::kill(pid, sig) } < 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ESRCH) {
            return Err(EngineError::Io(format!("kill {pid}"), e));
        }
    }
    Ok(())
}

impl Engine {
    fn ids(&self, id: &str, exec: &str) -> Result<(), EngineError> {
        validate_id(id)?;
        validate_exec_id(exec)?;
        Ok(())
    }

    pub fn signal(&self, r: &pb::SignalProcessRequest) -> Result<(), EngineError> {
        self.ids(&r.container_id, &r.exec_id)?;
        if r.signal == 0 || r.signal > 64 {
            return Err(EngineError::Invalid(format!(
                "signal {} out of range 1..=64",
                r.signal
            )));
        }
        let (pid, exited, cgroup) = {
            let mut t = self.tables();
            let cg = t.container(&r.container_id)?.cgroup.clone();
            let p = t.proc(&r.container_id, &r.exec_id)?;
            let exited = p.exit.borrow().is_some();
            (p.pid, exited, cg)
        };
        if r.all {
            for p in self.cgroups.processes(&cgroup)? {
                kill(p, r.signal as i32)?;
            }
            return Ok(());
        }
        if exited {
            return Err(EngineError::State(format!(
                "process {pid} has already exited"
            )));
        }
        kill(pid, r.signal as i32)
    }

    pub fn delete_exec(&self, id: &str, exec: &str) -> Result<(), EngineError> {
        self.ids(id, exec)?;
        if exec.is_empty() {
            return Err(EngineError::Invalid(
                "exec id is empty; remove the container to delete its init".into(),
            ));
        }
        let mut t = self.tables();
        let c = t.container(id)?;
        let p = c
            .execs
            .get(exec)
            .ok_or_else(|| EngineError::NoProcess(id.into(), exec.into()))?;
        if p.exit.borrow().is_none() {
            return Err(EngineError::State(format!(
                "exec {exec} is still running; signal it and wait first"
            )));
        }
        c.execs.remove(exec);
        Ok(())
    }

    pub async fn wait(&self, id: &str, exec: &str) -> Result<Exit, EngineError> {
        self.ids(id, exec)?;
        let mut rx = self.tables().proc(id, exec)?.exit.subscribe();
        let e = rx
            .wait_for(|e| e.is_some())
            .await
            .map_err(|_| EngineError::NoProcess(id.into(), exec.into()))?;
        Ok(e.expect("waited for Some"))
    }

    pub fn resize_tty(&self, r: &pb::ResizeTtyRequest) -> Result<(), EngineError> {
        self.ids(&r.container_id, &r.exec_id)?;
        let mut t = self.tables();
        let p = t.proc(&r.container_id, &r.exec_id)?;
        let pty =
            p.io.pty()
                .ok_or_else(|| EngineError::State("process has no terminal".into()))?;
        resize(pty, r.rows, r.cols).map_err(|e| EngineError::Io("resize tty".into(), e))
    }

    pub fn close_stdin(&self, id: &str, exec: &str) -> Result<(), EngineError> {
        self.ids(id, exec)?;
        self.tables().proc(id, exec)?.io.close_stdin();
        Ok(())
    }

    fn cgroup_of(&self, id: &str) -> Result<String, EngineError> {
        validate_id(id)?;
        Ok(self.tables().container(id)?.cgroup.clone())
    }

    pub fn update(&self, id: &str, r: Option<pb::Resources>) -> Result<(), EngineError> {
        let cg = self.cgroup_of(id)?;
        let r = r.unwrap_or_default();
        let res = Resources {
            memory_limit: r.memory_limit,
            memory_swap: r.memory_swap,
            pids_limit: r.pids_limit,
            cpu_shares: r.cpu_shares,
            cpu_quota: r.cpu_quota,
            cpu_period: r.cpu_period,
            io_weight: r.io_weight,
        };
        Ok(self.cgroups.update(&cg, &res)?)
    }

    pub fn stats(&self, id: &str) -> Result<pb::StatsContainerResponse, EngineError> {
        let s = self.cgroups.stats(&self.cgroup_of(id)?)?;
        Ok(pb::StatsContainerResponse {
            cpu_usage_ns: s.cpu_usage_ns,
            cpu_user_ns: s.cpu_user_ns,
            cpu_system_ns: s.cpu_system_ns,
            memory_usage: s.memory_usage,
            memory_limit: s.memory_limit,
            memory_max_usage: s.memory_max_usage,
            oom_kills: s.oom_kills,
            pids_current: s.pids_current,
            pids_limit: s.pids_limit,
            io_read_bytes: s.io_read_bytes,
            io_write_bytes: s.io_write_bytes,
        })
    }

    pub fn set_paused(&self, id: &str, paused: bool) -> Result<(), EngineError> {
        let cg = self.cgroup_of(id)?;
        Ok(self.cgroups.set_frozen(&cg, paused)?)
    }

    pub fn list(&self, id: &str) -> Result<Vec<u32>, EngineError> {
        let cg = self.cgroup_of(id)?;
        Ok(self
            .cgroups
            .processes(&cg)?
            .into_iter()
            .map(|p| p as u32)
            .collect())
    }

    /// Kills what is left (with `force`), waits for it, removes the cgroup.
    pub async fn remove(&self, id: &str, force: bool) -> Result<(), EngineError> {
        validate_id(id)?;
        let (cg, mut waits, running) = {
            let mut t = self.tables();
            let c = t.container(id)?;
            let running = c.init.exit.borrow().is_none();
            if running && c.status == Status::Running && !force {
                return Err(EngineError::State(format!(
                    "container {id} is running; stop it or remove with force"
                )));
            }
            let mut waits = vec![c.init.exit.subscribe()];
            waits.extend(c.execs.values().map(|p| p.exit.subscribe()));
            (c.cgroup.clone(), waits, running)
        };
        if running || force {
            for p in self.cgroups.processes(&cg).unwrap_or_default() {
                kill(p, libc::SIGKILL)?;
            }
            // A frozen task only dies once thawed (v1).
            let _ = self.cgroups.set_frozen(&cg, false);
        }
        for rx in &mut waits {
            let _ = tokio::time::timeout(REMOVE_WAIT, rx.wait_for(|e| e.is_some())).await;
        }
        self.cgroups.remove(&cg)?;
        let mut t = self.tables();
        if let Some(c) = t.containers.remove(id) {
            if let Some(task) = &c.oom_task {
                task.abort();
            }
            t.by_pid.retain(|_, (cid, _)| cid != id);
        }
        Ok(())
    }

    /// Finds the stream a stdio connection asks for.
    pub fn attach(self: &Arc<Self>, h: &StreamHeader) -> Result<Attach, EngineError> {
        self.ids(&h.container_id, &h.exec_id)?;
        let mut t = self.tables();
        Ok(t.proc(&h.container_id, &h.exec_id)?.io.take(h.kind)?)
    }
}
