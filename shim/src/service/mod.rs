//! The containerd task API (v2) over a [`Sandbox`]: statuses, exit codes,
//! events, and the mapping of every error to its ttrpc code.

mod events;
mod publisher;
mod state;
mod task;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use containerd_shim::protos::api::Status;
use containerd_shim::protos::ttrpc;
use containerd_shim::ExitSignal;
use tokio::sync::{mpsc, OnceCell};

use events::EventQueue;
pub use events::{forward, timestamp, TaskEvent};
pub use publisher::Publisher;
use state::ContainerState;
pub use task::Tasks;

use crate::config::{Config, DEFAULT_CONFIG_PATH};
use crate::sandbox::{EventSink, Sandbox, SandboxError, SandboxEvent};

/// Builds the pod's sandbox from the configuration of its first container.
pub type SandboxFactory =
    Box<dyn Fn(&Config, EventSink) -> Result<Arc<dyn Sandbox>, SandboxError> + Send + Sync>;

/// Errors of the service itself (the sandbox's have their own type).
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    #[error("{0}")]
    Config(#[from] crate::config::ConfigError),
}

impl From<ServiceError> for ttrpc::Error {
    fn from(e: ServiceError) -> Self {
        let code = match &e {
            ServiceError::Sandbox(s) => s.code(),
            ServiceError::Config(crate::config::ConfigError::Parse { .. }) => {
                ttrpc::Code::INVALID_ARGUMENT
            }
            ServiceError::Config(_) => ttrpc::Code::FAILED_PRECONDITION,
        };
        tracing::info!(?code, "request failed: {e}");
        ttrpc::Error::RpcStatus(ttrpc::get_status(code, e.to_string()))
    }
}

type SResult<T> = Result<T, ServiceError>;

fn not_found(what: String) -> ServiceError {
    SandboxError::NotFound(what).into()
}

fn invalid(what: String) -> ServiceError {
    SandboxError::InvalidArgument(what).into()
}

fn precondition(what: String) -> ServiceError {
    SandboxError::FailedPrecondition(what).into()
}

/// Container ids must be usable as path components and runc ids.
pub fn validate_id(kind: &str, id: &str) -> SResult<()> {
    let ok = !id.is_empty()
        && id.len() <= 1024
        && id != "."
        && id != ".."
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '+'));
    if ok {
        Ok(())
    } else {
        Err(invalid(format!(
            "invalid {kind} {id:?}: use letters, digits, '-', '_', '.', '+'"
        )))
    }
}

/// The task service of one shim (one pod).
pub struct TaskService {
    namespace: String,
    /// `ConfigPath` given to `shim start`, used when Create carries none.
    start_config: Option<PathBuf>,
    factory: SandboxFactory,
    sandbox: OnceCell<Arc<dyn Sandbox>>,
    containers: Mutex<HashMap<String, ContainerState>>,
    events: EventQueue,
    exit: Arc<ExitSignal>,
    /// Serialises creates (and the lazy creation of the sandbox).
    create_lock: tokio::sync::Mutex<()>,
}

impl TaskService {
    /// A service publishing into `events`; `exit` is signalled on Shutdown.
    pub fn new(
        namespace: &str,
        start_config: Option<PathBuf>,
        factory: SandboxFactory,
        events: mpsc::UnboundedSender<TaskEvent>,
        exit: Arc<ExitSignal>,
    ) -> TaskService {
        TaskService {
            namespace: namespace.to_string(),
            start_config,
            factory,
            sandbox: OnceCell::new(),
            containers: Mutex::new(HashMap::new()),
            events,
            exit,
            create_lock: tokio::sync::Mutex::new(()),
        }
    }

    /// The containerd namespace this shim serves.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, ContainerState>> {
        self.containers.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn publish(&self, ev: TaskEvent) {
        let _ = self.events.send(ev);
    }

    fn sandbox(&self) -> SResult<&Arc<dyn Sandbox>> {
        self.sandbox
            .get()
            .ok_or_else(|| not_found("no container has been created in this shim".to_string()))
    }

    /// The configuration for a Create: `ConfigPath` of the request, else of
    /// `shim start`, else the default path.
    fn config_for(&self, options_path: Option<String>) -> SResult<(Config, PathBuf)> {
        let path = options_path
            .map(PathBuf::from)
            .or_else(|| self.start_config.clone())
            .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_PATH));
        let cfg = Config::load(&path)?;
        Ok((cfg, path))
    }

    async fn sandbox_for(&self, cfg: &Config) -> SResult<Arc<dyn Sandbox>> {
        let events = self.events.clone();
        let sink: EventSink = Arc::new(move |ev| match ev {
            SandboxEvent::Oom { container_id } => {
                let _ = events.send(TaskEvent::Oom(
                    containerd_shim::protos::events::task::TaskOOM {
                        container_id,
                        ..Default::default()
                    },
                ));
            }
        });
        let sb = self
            .sandbox
            .get_or_try_init(|| async { (self.factory)(cfg, sink) })
            .await?;
        Ok(sb.clone())
    }

    /// Waits for a process's exit in the sandbox, records it and publishes
    /// TaskExit (after TaskStart: the lifecycle lock orders them).
    fn watch_exit(self: &Arc<Self>, id: String, exec_id: Option<String>) {
        let svc = self.clone();
        tokio::spawn(async move {
            let Ok(sandbox) = svc.sandbox().cloned() else {
                return;
            };
            let status = match sandbox.wait(&id, exec_id.as_deref()).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!("lost the exit of {id}/{exec_id:?}: {e}");
                    return;
                }
            };
            let lifecycle = svc.lock().get(&id).map(|c| c.lifecycle.clone());
            let _guard = match &lifecycle {
                Some(l) => Some(l.lock().await),
                None => None,
            };
            let pid = {
                let mut map = svc.lock();
                let Some(c) = map.get_mut(&id) else { return };
                let proc = match &exec_id {
                    None => &mut c.init,
                    Some(e) => match c.execs.get_mut(e) {
                        Some(x) => &mut x.proc,
                        None => return,
                    },
                };
                proc.status = Status::STOPPED;
                proc.exit.send_replace(Some(status));
                proc.pid
            };
            tracing::info!(
                container = id,
                exec = exec_id.as_deref().unwrap_or(""),
                code = status.code,
                "exited"
            );
            svc.publish(TaskEvent::exit(
                &id,
                exec_id.as_deref().unwrap_or(&id),
                pid,
                status,
            ));
        });
    }

    /// Signals the shim to exit when no container is left.
    async fn shutdown_if_idle(&self) -> SResult<bool> {
        if !self.lock().is_empty() {
            return Ok(false);
        }
        if let Some(sb) = self.sandbox.get() {
            sb.shutdown().await?;
        }
        self.exit.signal();
        Ok(true)
    }
}

#[cfg(test)]
mod tests;
