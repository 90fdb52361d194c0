//! A recording in-memory sandbox for unit tests of the task service.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::SystemTime;

use async_trait::async_trait;
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use oci_spec::runtime::{LinuxResources, Process};
use tokio::sync::watch;

use super::{
    CreateRequest, EventSink, ExitStatus, Result, Sandbox, SandboxError, SandboxEvent, Stdio,
};

type Key = (String, Option<String>);

/// Processes exit when a test calls [`FakeSandbox::exit`]; every call is recorded.
#[derive(Default)]
pub struct FakeSandbox {
    pub calls: Mutex<Vec<String>>,
    exits: Mutex<HashMap<Key, watch::Sender<Option<ExitStatus>>>>,
    next_pid: Mutex<u32>,
    pub events: Mutex<Option<EventSink>>,
    /// When set, `create` fails with this error.
    pub fail_create: Mutex<Option<fn() -> SandboxError>>,
}

impl FakeSandbox {
    fn record(&self, call: String) {
        self.calls.lock().unwrap().push(call);
    }

    fn add(&self, key: Key) -> u32 {
        let (tx, _) = watch::channel(None);
        self.exits.lock().unwrap().insert(key, tx);
        let mut pid = self.next_pid.lock().unwrap();
        *pid += 1;
        1000 + *pid
    }

    /// Makes a process exit with `code`.
    pub fn exit(&self, id: &str, exec_id: Option<&str>, code: u32) {
        let key = (id.to_string(), exec_id.map(str::to_string));
        let exits = self.exits.lock().unwrap();
        let tx = exits.get(&key).expect("no such fake process");
        tx.send_replace(Some(ExitStatus {
            code,
            at: SystemTime::now(),
        }));
    }

    /// Reports an OOM of container `id`.
    pub fn oom(&self, id: &str) {
        if let Some(sink) = self.events.lock().unwrap().as_ref() {
            sink(SandboxEvent::Oom {
                container_id: id.to_string(),
            });
        }
    }

    pub fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }
}

#[async_trait]
impl Sandbox for FakeSandbox {
    async fn create(&self, req: CreateRequest) -> Result<u32> {
        self.record(format!("create {}", req.id));
        if let Some(f) = *self.fail_create.lock().unwrap() {
            return Err(f());
        }
        Ok(self.add((req.id, None)))
    }
    async fn start(&self, id: &str) -> Result<()> {
        self.record(format!("start {id}"));
        Ok(())
    }
    async fn exec(&self, id: &str, exec_id: &str, _p: &Process, _s: &Stdio) -> Result<u32> {
        self.record(format!("exec {id} {exec_id}"));
        Ok(self.add((id.to_string(), Some(exec_id.to_string()))))
    }
    async fn wait(&self, id: &str, exec_id: Option<&str>) -> Result<ExitStatus> {
        let key = (id.to_string(), exec_id.map(str::to_string));
        let mut rx = self
            .exits
            .lock()
            .unwrap()
            .get(&key)
            .ok_or_else(|| SandboxError::NotFound(format!("no process {key:?}")))?
            .subscribe();
        let status = rx
            .wait_for(|s| s.is_some())
            .await
            .map_err(|_| SandboxError::Internal("fake dropped".into()))?;
        Ok(status.expect("checked by wait_for"))
    }
    async fn kill(&self, id: &str, exec_id: Option<&str>, signal: u32, all: bool) -> Result<()> {
        self.record(format!("kill {id} {exec_id:?} {signal} {all}"));
        Ok(())
    }
    async fn pids(&self, id: &str) -> Result<Vec<u32>> {
        self.record(format!("pids {id}"));
        Ok(vec![1001, 1002])
    }
    async fn pause(&self, id: &str) -> Result<()> {
        self.record(format!("pause {id}"));
        Ok(())
    }
    async fn resume(&self, id: &str) -> Result<()> {
        self.record(format!("resume {id}"));
        Ok(())
    }
    async fn update(&self, id: &str, r: &LinuxResources) -> Result<()> {
        let mem = r.memory().as_ref().and_then(|m| m.limit());
        self.record(format!("update {id} {mem:?}"));
        Ok(())
    }
    async fn stats(&self, id: &str) -> Result<Any> {
        self.record(format!("stats {id}"));
        Ok(Any {
            type_url: "io.containerd.cgroups.v1.Metrics".into(),
            ..Default::default()
        })
    }
    async fn resize_pty(&self, id: &str, exec_id: Option<&str>, w: u32, h: u32) -> Result<()> {
        self.record(format!("resize {id} {exec_id:?} {w}x{h}"));
        Ok(())
    }
    async fn close_stdin(&self, id: &str, exec_id: Option<&str>) -> Result<()> {
        self.record(format!("close_stdin {id} {exec_id:?}"));
        Ok(())
    }
    async fn delete(&self, id: &str, exec_id: Option<&str>) -> Result<()> {
        self.record(format!("delete {id} {exec_id:?}"));
        Ok(())
    }
    async fn shutdown(&self) -> Result<()> {
        self.record("shutdown".into());
        Ok(())
    }
}
