//! Events the shim publishes to containerd, kept in one ordered queue.

use containerd_shim::protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskIO, TaskOOM, TaskPaused,
    TaskResumed, TaskStart,
};
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::protobuf::Message;
use tokio::sync::mpsc;

use super::publisher::Publisher;
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

    /// Topic, protobuf type name and encoding, the way containerd decodes
    /// events (the type name is the message's full proto name, so no
    /// reflection is needed to build the `Any`).
    fn encode(&self) -> (&'static str, &'static str, Vec<u8>) {
        let (topic, type_name, bytes) = match self {
            TaskEvent::Create(e) => ("/tasks/create", "TaskCreate", e.write_to_bytes()),
            TaskEvent::Start(e) => ("/tasks/start", "TaskStart", e.write_to_bytes()),
            TaskEvent::Exit(e) => ("/tasks/exit", "TaskExit", e.write_to_bytes()),
            TaskEvent::ExecAdded(e) => ("/tasks/exec-added", "TaskExecAdded", e.write_to_bytes()),
            TaskEvent::ExecStarted(e) => {
                ("/tasks/exec-started", "TaskExecStarted", e.write_to_bytes())
            }
            TaskEvent::Oom(e) => ("/tasks/oom", "TaskOOM", e.write_to_bytes()),
            TaskEvent::Paused(e) => ("/tasks/paused", "TaskPaused", e.write_to_bytes()),
            TaskEvent::Resumed(e) => ("/tasks/resumed", "TaskResumed", e.write_to_bytes()),
            TaskEvent::Delete(e) => ("/tasks/delete", "TaskDelete", e.write_to_bytes()),
        };
        (topic, type_name, bytes.unwrap_or_default())
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

/// Forwards queued events to containerd, in order, until the queue closes.
pub fn forward(mut rx: mpsc::UnboundedReceiver<TaskEvent>, mut publisher: Publisher) {
    tokio::spawn(async move {
        while let Some(ev) = rx.recv().await {
            let (topic, type_name, value) = ev.encode();
            publisher
                .publish(topic, &format!("containerd.events.{type_name}"), value)
                .await;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use containerd_shim::event::Event;
    use containerd_shim::protos::protobuf::MessageDyn;

    #[test]
    fn topics_and_type_names_match_containerd() {
        let exit = TaskEvent::exit(
            "c",
            "c",
            7,
            ExitStatus {
                code: 3,
                at: std::time::SystemTime::now(),
            },
        );
        let (topic, name, bytes) = exit.encode();
        let TaskEvent::Exit(e) = &exit else {
            unreachable!()
        };
        assert_eq!(topic, e.topic());
        assert_eq!(
            format!("containerd.events.{name}"),
            e.descriptor_dyn().full_name()
        );
        assert_eq!(TaskExit::parse_from_bytes(&bytes).unwrap().exit_status, 3);
        let oom = TaskEvent::Oom(TaskOOM::default());
        let (topic, name, _) = oom.encode();
        assert_eq!(topic, TaskOOM::default().topic());
        assert_eq!(
            format!("containerd.events.{name}"),
            TaskOOM::default().descriptor_dyn().full_name()
        );
    }
}
