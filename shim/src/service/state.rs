//! What the task service remembers about each container and process.

use std::collections::HashMap;
use std::sync::Arc;

use containerd_shim::protos::api::{StateResponse, Status};
use oci_spec::runtime::Process;
use tokio::sync::watch;

use super::events::timestamp;
use crate::sandbox::{ExitStatus, Stdio};

/// One process: a container's init or an exec.
pub struct ProcState {
    pub pid: u32,
    pub status: Status,
    pub stdio: Stdio,
    pub exit: watch::Sender<Option<ExitStatus>>,
}

impl ProcState {
    pub fn new(pid: u32, status: Status, stdio: Stdio) -> ProcState {
        ProcState {
            pid,
            status,
            stdio,
            exit: watch::channel(None).0,
        }
    }

    /// The exit, once known.
    pub fn exited(&self) -> Option<ExitStatus> {
        *self.exit.borrow()
    }

    /// True while the process runs (or is paused).
    pub fn is_running(&self) -> bool {
        matches!(
            self.status,
            Status::RUNNING | Status::PAUSED | Status::PAUSING
        )
    }

    pub fn state(&self, id: &str, exec_id: &str, bundle: &str) -> StateResponse {
        let exit = self.exited();
        StateResponse {
            id: id.to_string(),
            bundle: bundle.to_string(),
            pid: self.pid,
            status: self.status.into(),
            stdin: self.stdio.stdin.clone(),
            stdout: self.stdio.stdout.clone(),
            stderr: self.stdio.stderr.clone(),
            terminal: self.stdio.terminal,
            exit_status: exit.map(|e| e.code).unwrap_or(0),
            exited_at: exit.map(|e| timestamp(e.at)).into(),
            exec_id: exec_id.to_string(),
            ..Default::default()
        }
    }
}

/// An exec process: its spec until started, then its process state.
pub struct ExecState {
    pub spec: Process,
    pub proc: ProcState,
}

/// One container of the pod.
pub struct ContainerState {
    pub bundle: String,
    pub init: ProcState,
    pub execs: HashMap<String, ExecState>,
    /// Held while a Start is in flight so that the exit is never published
    /// before the start.
    pub lifecycle: Arc<tokio::sync::Mutex<()>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_reports_exit() {
        let p = ProcState::new(42, Status::STOPPED, Stdio::default());
        let at = std::time::SystemTime::now();
        p.exit.send_replace(Some(ExitStatus { code: 3, at }));
        let s = p.state("c", "", "/b");
        assert_eq!(s.pid, 42);
        assert_eq!(s.exit_status, 3);
        assert_eq!(s.status.enum_value().unwrap(), Status::STOPPED);
        assert!(s.exited_at.is_some());
        assert!(!p.is_running());
    }
}
