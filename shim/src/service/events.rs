//! Events the shim publishes to containerd, kept in one ordered queue.

use containerd_shim::event::Event as _;
use containerd_shim::protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskIO, TaskOOM, TaskPaused,
    TaskResumed, TaskStart,
};
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::protobuf::MessageDyn;
use containerd_shim::protos::ttrpc::context::Context;
use containerd_shim::publisher::RemotePublisher;
use tokio::sync::mpsc;

use crate::sandbox::{ExitStatus, RootfsMount, Stdio};

/// One event for containerd.
#[derive(Debug, Clone, PartialEq)]
pub enum TaskEvent {
    Create(TaskCreate),
    Start(TaskStart),
    Exit(TaskExit),
    ExecAdded(TaskExecAdded),
    ExecStarted(TaskExecStarted),
    Oom(TaskOOM),
    Paused(TaskPaused),
    Resumed(TaskResumed),
    Delete(TaskDelete),
}

/// Sends events in order to the forwarding task.
pub type EventQueue = mpsc::UnboundedSender<TaskEvent>;

/// Protobuf timestamp of a moment.
pub fn timestamp(at: std::time::SystemTime) -> Timestamp {
    let d = at.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    Timestamp {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
        ..Default::default()
    }
}

impl TaskEvent {
    /// The short name used in logs and tests (`exit`, `oom`, ...).
    pub fn name(&self) -> &'static str {
        match self {
            TaskEvent::Create(_) => "create",
            TaskEvent::Start(_) => "start",
            TaskEvent::Exit(_) => "exit",
            TaskEvent::ExecAdded(_) => "exec-added",
            TaskEvent::ExecStarted(_) => "exec-started",
            TaskEvent::Oom(_) => "oom",
            TaskEvent::Paused(_) => "paused",
            TaskEvent::Resumed(_) => "resumed",
            TaskEvent::Delete(_) => "delete",
        }
    }

    fn into_message(self) -> (String, Box<dyn MessageDyn>) {
        match self {
            TaskEvent::Create(e) => (e.topic(), Box::new(e)),
            TaskEvent::Start(e) => (e.topic(), Box::new(e)),
            TaskEvent::Exit(e) => (e.topic(), Box::new(e)),
            TaskEvent::ExecAdded(e) => (e.topic(), Box::new(e)),
            TaskEvent::ExecStarted(e) => (e.topic(), Box::new(e)),
            TaskEvent::Oom(e) => (e.topic(), Box::new(e)),
            TaskEvent::Paused(e) => (e.topic(), Box::new(e)),
            TaskEvent::Resumed(e) => (e.topic(), Box::new(e)),
            TaskEvent::Delete(e) => (e.topic(), Box::new(e)),
        }
    }

    pub fn create(
        id: &str,
        bundle: &str,
        rootfs: &[RootfsMount],
        stdio: &Stdio,
        pid: u32,
    ) -> TaskEvent {
        TaskEvent::Create(TaskCreate {
            container_id: id.to_string(),
            bundle: bundle.to_string(),
            rootfs: rootfs
                .iter()
                .map(|m| containerd_shim::protos::types::mount::Mount {
                    type_: m.fs_type.clone(),
                    source: m.source.clone(),
                    options: m.options.clone(),
                    ..Default::default()
                })
                .collect(),
            io: Some(TaskIO {
                stdin: stdio.stdin.clone(),
                stdout: stdio.stdout.clone(),
                stderr: stdio.stderr.clone(),
                terminal: stdio.terminal,
                ..Default::default()
            })
            .into(),
            pid,
            ..Default::default()
        })
    }

    pub fn exit(container_id: &str, id: &str, pid: u32, status: ExitStatus) -> TaskEvent {
        TaskEvent::Exit(TaskExit {
            container_id: container_id.to_string(),
            id: id.to_string(),
            pid,
            exit_status: status.code,
            exited_at: Some(timestamp(status.at)).into(),
            ..Default::default()
        })
    }
}

/// Forwards queued events to containerd until the queue closes.
pub fn forward(
    mut rx: mpsc::UnboundedReceiver<TaskEvent>,
    publisher: RemotePublisher,
    namespace: String,
) {
    tokio::spawn(async move {
        while let Some(ev) = rx.recv().await {
            let name = ev.name();
            let (topic, msg) = ev.into_message();
            tracing::debug!(topic, "publish");
            if let Err(e) = publisher
                .publish(Context::default(), &topic, &namespace, msg)
                .await
            {
                tracing::warn!("cannot publish {name} event: {e}");
            }
        }
    });
}
