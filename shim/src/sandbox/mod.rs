//! The one seam of the shim: a `Sandbox` runs the containers of one pod.
//!
//! The task service ([`crate::service`]) keeps the containerd-facing state
//! (statuses, exit codes, events); a sandbox only does the work. Host runc
//! mode is [`crate::runc::RuncSandbox`]; the microVM mode will implement the
//! same trait by talking to the guest agent.

use std::path::PathBuf;
use std::time::SystemTime;

use async_trait::async_trait;
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::ttrpc::Code;
use oci_spec::runtime::{LinuxResources, Process, Spec};

#[cfg(test)]
pub mod fake;

/// Where a process's stdio goes: containerd's FIFO paths (empty = none).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stdio {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
}

/// A filesystem mount containerd asks the shim to perform for the rootfs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RootfsMount {
    pub fs_type: String,
    pub source: String,
    pub options: Vec<String>,
}

/// Everything needed to create a container.
#[derive(Debug, Clone)]
pub struct CreateRequest {
    pub id: String,
    pub bundle: PathBuf,
    pub spec: Spec,
    pub rootfs: Vec<RootfsMount>,
    pub stdio: Stdio,
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitStatus {
    /// The exit code, or 128 + signal number.
    pub code: u32,
    pub at: SystemTime,
}

/// Asynchronous things a sandbox reports on its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SandboxEvent {
    /// The memory cgroup of a container hit its limit and killed something.
    Oom { container_id: String },
}

/// How a sandbox reports [`SandboxEvent`]s; called in order of occurrence.
pub type EventSink = std::sync::Arc<dyn Fn(SandboxEvent) + Send + Sync>;

/// Errors of sandbox operations, each with the ttrpc code containerd acts on.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    Internal(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
}

impl SandboxError {
    /// The ttrpc status code for this error.
    pub fn code(&self) -> Code {
        match self {
            SandboxError::InvalidArgument(_) => Code::INVALID_ARGUMENT,
            SandboxError::NotFound(_) => Code::NOT_FOUND,
            SandboxError::AlreadyExists(_) => Code::ALREADY_EXISTS,
            SandboxError::FailedPrecondition(_) => Code::FAILED_PRECONDITION,
            SandboxError::Internal(_) => Code::INTERNAL,
            SandboxError::Io { source, .. } => match source.kind() {
                std::io::ErrorKind::NotFound => Code::NOT_FOUND,
                std::io::ErrorKind::AlreadyExists => Code::ALREADY_EXISTS,
                _ => Code::INTERNAL,
            },
        }
    }

    /// Builds an [`SandboxError::Io`] closure with a context message.
    pub fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> SandboxError {
        let context = context.into();
        move |source| SandboxError::Io { context, source }
    }
}

/// Result of sandbox operations.
pub type Result<T> = std::result::Result<T, SandboxError>;

/// Runs the containers of one pod. Ids are validated by the caller; an
/// `exec_id` of `None` means the container's init process.
#[async_trait]
pub trait Sandbox: Send + Sync {
    /// Creates a container (not started); returns the pid of its init process.
    async fn create(&self, req: CreateRequest) -> Result<u32>;
    /// Starts a created container's init process.
    async fn start(&self, id: &str) -> Result<()>;
    /// Starts an additional process in a running container; returns its pid.
    async fn exec(&self, id: &str, exec_id: &str, process: &Process, stdio: &Stdio) -> Result<u32>;
    /// Resolves when the process exits (any number of waiters).
    async fn wait(&self, id: &str, exec_id: Option<&str>) -> Result<ExitStatus>;
    /// Sends `signal` to one process, or with `all` to every process of the container.
    async fn kill(&self, id: &str, exec_id: Option<&str>, signal: u32, all: bool) -> Result<()>;
    /// The pids of all processes in the container.
    async fn pids(&self, id: &str) -> Result<Vec<u32>>;
    async fn pause(&self, id: &str) -> Result<()>;
    async fn resume(&self, id: &str) -> Result<()>;
    /// Applies new cgroup limits.
    async fn update(&self, id: &str, resources: &LinuxResources) -> Result<()>;
    /// Cgroup metrics as containerd's `io.containerd.cgroups.v1/v2.Metrics` `Any`.
    async fn stats(&self, id: &str) -> Result<Any>;
    /// Resizes the process's terminal.
    async fn resize_pty(
        &self,
        id: &str,
        exec_id: Option<&str>,
        width: u32,
        height: u32,
    ) -> Result<()>;
    /// Closes the process's stdin once what was written so far is delivered.
    async fn close_stdin(&self, id: &str, exec_id: Option<&str>) -> Result<()>;
    /// Releases an exited exec process, or a whole container (which must have
    /// no running processes left) with its rootfs mounts and stdio.
    async fn delete(&self, id: &str, exec_id: Option<&str>) -> Result<()>;
    /// Tears the sandbox down after its last container is deleted.
    async fn shutdown(&self) -> Result<()>;
}

/// A container as a sandbox keeps it: an init process and exec processes.
pub trait Processes {
    type Process;
    fn init_mut(&mut self) -> &mut Self::Process;
    fn exec_mut(&mut self, exec_id: &str) -> Option<&mut Self::Process>;
}

/// Runs `f` on container `id` of `map`; NotFound when there is none.
pub fn with_container<C, T>(
    map: &mut std::collections::HashMap<String, C>,
    id: &str,
    f: impl FnOnce(&mut C) -> Result<T>,
) -> Result<T> {
    let c = map
        .get_mut(id)
        .ok_or_else(|| SandboxError::NotFound(format!("container {id} not found")))?;
    f(c)
}

/// Runs `f` on the init (`exec_id` None) or an exec process of container `id`.
pub fn with_process<C: Processes, T>(
    map: &mut std::collections::HashMap<String, C>,
    id: &str,
    exec_id: Option<&str>,
    f: impl FnOnce(&mut C::Process) -> Result<T>,
) -> Result<T> {
    with_container(map, id, |c| match exec_id {
        None => f(c.init_mut()),
        Some(e) => f(c.exec_mut(e).ok_or_else(|| {
            SandboxError::NotFound(format!("exec {e} not found in container {id}"))
        })?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_map_to_ttrpc_codes() {
        assert_eq!(
            SandboxError::InvalidArgument("x".into()).code(),
            Code::INVALID_ARGUMENT
        );
        assert_eq!(SandboxError::NotFound("x".into()).code(), Code::NOT_FOUND);
        assert_eq!(
            SandboxError::AlreadyExists("x".into()).code(),
            Code::ALREADY_EXISTS
        );
        assert_eq!(
            SandboxError::FailedPrecondition("x".into()).code(),
            Code::FAILED_PRECONDITION
        );
        let io = SandboxError::io("open x")(std::io::Error::from(std::io::ErrorKind::NotFound));
        assert_eq!(io.code(), Code::NOT_FOUND);
        assert_eq!(io.to_string(), "open x: entity not found");
    }
}
